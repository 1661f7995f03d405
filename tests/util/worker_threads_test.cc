#include "util/worker_threads.h"

#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace cartridge {
namespace {
using namespace std::chrono_literals;

// Waits (up to 10 s) until every started thread sits idle, so the next job's choice of thread is decided.
void wait_until_all_idle(const WorkerThreads& workers) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (workers.threads_idle() != workers.threads_started() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  ASSERT_EQ(workers.threads_idle(), workers.threads_started());
}

// Runs one job and returns the id of the thread it ran on.
std::thread::id run_one(WorkerThreads& workers) {
  std::promise<std::thread::id> ran_on;
  EXPECT_TRUE(workers.try_run([&] { ran_on.set_value(std::this_thread::get_id()); }));
  return ran_on.get_future().get();
}

TEST(WorkerThreadsTest, StartsThreadsOnlyWhenNoneIsIdle) {
  WorkerThreads workers(/*max_threads=*/64, /*max_waiting=*/64);
  std::set<std::thread::id> used;
  for (int job = 0; job < 20; ++job) {
    used.insert(run_one(workers));
    wait_until_all_idle(workers);
  }
  EXPECT_EQ(workers.threads_started(), 1u);
  EXPECT_EQ(used.size(), 1u);
}

// After a burst of 4 concurrent jobs has started 4 threads, one job at a time runs on the most recently idle
// thread every time; a pool that wakes its threads in turn would spread the jobs over all 4.
TEST(WorkerThreadsTest, SteadyTrafficAfterABurstReusesOneThread) {
  WorkerThreads workers(64, 64);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> started = 0;
  for (int job = 0; job < 4; ++job) {
    ASSERT_TRUE(workers.try_run([&, released] {
      ++started;
      released.wait();
    }));
  }
  while (started < 4) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(workers.threads_started(), 4u);
  release.set_value();
  wait_until_all_idle(workers);
  std::set<std::thread::id> used;
  for (int job = 0; job < 20; ++job) {
    used.insert(run_one(workers));
    wait_until_all_idle(workers);
  }
  EXPECT_EQ(used.size(), 1u);
  EXPECT_EQ(workers.threads_started(), 4u);
}

TEST(WorkerThreadsTest, RefusesJobsBeyondTheThreadsAndTheWaitingRoom) {
  WorkerThreads workers(/*max_threads=*/2, /*max_waiting=*/1);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> finished = 0;
  auto blocked_job = [&, released] {
    released.wait();
    ++finished;
  };
  EXPECT_TRUE(workers.try_run(blocked_job));
  EXPECT_TRUE(workers.try_run(blocked_job));
  EXPECT_TRUE(workers.try_run(blocked_job));   // waits for a thread
  EXPECT_FALSE(workers.try_run(blocked_job));  // no thread and no room to wait
  EXPECT_EQ(workers.threads_started(), 2u);
  release.set_value();
  workers.shutdown();
  EXPECT_EQ(finished, 3);  // the waiting job ran too
}

TEST(WorkerThreadsTest, ShutdownFinishesWaitingJobsAndRefusesNewOnes) {
  WorkerThreads workers(1, 8);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> finished = 0;
  ASSERT_TRUE(workers.try_run([&, released] {
    released.wait();
    ++finished;
  }));
  for (int job = 0; job < 5; ++job) ASSERT_TRUE(workers.try_run([&] { ++finished; }));
  std::thread stopper([&] { workers.shutdown(); });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(workers.try_run([&] { ++finished; }));
  release.set_value();
  stopper.join();
  EXPECT_EQ(finished, 6);
  workers.shutdown();  // idempotent
}

// Many threads submitting at once: every accepted job runs exactly once.
TEST(WorkerThreadsTest, EveryAcceptedJobRunsOnceUnderContention) {
  std::atomic<int> accepted = 0, ran = 0;
  {
    WorkerThreads workers(8, 1000);
    std::vector<std::thread> submitters;
    for (int submitter = 0; submitter < 4; ++submitter) {
      submitters.emplace_back([&] {
        for (int job = 0; job < 500; ++job)
          if (workers.try_run([&] { ++ran; })) ++accepted;
      });
    }
    for (std::thread& submitter : submitters) submitter.join();
  }  // the destructor shuts down after the waiting jobs
  EXPECT_GT(accepted, 0);
  EXPECT_EQ(ran, accepted);
  EXPECT_LE(accepted, 2000);
}

}  // namespace
}  // namespace cartridge
