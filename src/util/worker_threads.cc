#include "util/worker_threads.h"

#include <stdexcept>
#include <utility>

namespace cartridge {

WorkerThreads::WorkerThreads(size_t max_threads, size_t max_waiting)
    : max_threads_(max_threads), max_waiting_(max_waiting) {
  if (max_threads == 0) throw std::invalid_argument("WorkerThreads needs at least one thread");
}

WorkerThreads::~WorkerThreads() { shutdown(); }

bool WorkerThreads::try_run(std::function<void()> job) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (shutting_down_) return false;
  if (!idle_.empty()) {
    Worker* worker = idle_.back();  // the most recently idle: its stack and arena are warm
    idle_.pop_back();
    worker->job = std::move(job);
    lock.unlock();
    worker->wake.notify_one();
    return true;
  }
  if (threads_.size() < max_threads_) {
    workers_.push_back(std::make_unique<Worker>());
    Worker& worker = *workers_.back();
    worker.job = std::move(job);
    threads_.emplace_back([this, &worker] { work(worker); });
    return true;
  }
  if (waiting_.size() >= max_waiting_) return false;
  waiting_.push_back(std::move(job));
  return true;
}

void WorkerThreads::work(Worker& self) {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    std::function<void()> job = std::move(self.job);
    self.job = nullptr;
    lock.unlock();
    job();
    job = nullptr;  // destroy what the job captured outside the lock
    lock.lock();
    if (!waiting_.empty()) {
      self.job = std::move(waiting_.front());
      waiting_.pop_front();
      continue;
    }
    if (shutting_down_) return;
    idle_.push_back(&self);
    self.wake.wait(lock, [&] { return self.job != nullptr || shutting_down_; });
    if (self.job == nullptr) return;  // shutting down with nothing handed over
  }
}

void WorkerThreads::shutdown() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    shutting_down_ = true;
    threads.swap(threads_);
    for (Worker* worker : idle_) worker->wake.notify_one();
    idle_.clear();
  }
  for (std::thread& thread : threads) thread.join();
}

size_t WorkerThreads::threads_started() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return workers_.size();
}

size_t WorkerThreads::threads_idle() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return idle_.size();
}

}  // namespace cartridge
