// A bounded set of worker threads that runs jobs, for the server's connections: at most `max_threads`
// threads, started only when a job finds none idle, and at most `max_waiting` jobs waiting when all are
// busy; `try_run` refuses any job beyond that instead of queueing it without bound.
//
// An idle thread is handed the next job most-recently-idle first (a stack, not a queue). A thread pool whose
// threads wait on one condition variable wakes them in turn, so under steady traffic every thread of the
// pool serves requests sooner or later, and each keeps the stack pages and malloc arena it touched: the
// process grows towards (threads x what one request touches) although only a few requests run at once. Here
// a burst of N concurrent jobs warms N threads and later traffic reuses the same ones.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace cartridge {

class WorkerThreads {
 public:
  WorkerThreads(size_t max_threads, size_t max_waiting);
  ~WorkerThreads();  // shutdown()
  WorkerThreads(const WorkerThreads&) = delete;
  WorkerThreads& operator=(const WorkerThreads&) = delete;

  // Runs `job` on an idle thread, on a new one while fewer than max_threads exist, or later when a thread
  // frees up while fewer than max_waiting jobs wait. Returns false (and drops `job`) otherwise, or after
  // shutdown().
  bool try_run(std::function<void()> job);

  // Refuses new jobs, lets the threads finish the running and waiting ones, and joins them. Idempotent.
  void shutdown();

  size_t threads_started() const;
  size_t threads_idle() const;

 private:
  struct Worker {
    std::condition_variable wake;
    std::function<void()> job;  // handed over by try_run while the worker sits on idle_
  };
  void work(Worker& self);

  const size_t max_threads_;
  const size_t max_waiting_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Worker>> workers_;  // one per started thread
  std::vector<std::thread> threads_;
  std::vector<Worker*> idle_;  // most recently idle last
  std::deque<std::function<void()>> waiting_;
  bool shutting_down_ = false;
};

}  // namespace cartridge
