// Continuous batching for the server. One scheduler thread owns the model's running batch, a DecodeBatch
// (generate/decode_batch.h) whose rows are requests in flight, each with its own cartridge prefix (or
// none), sampler, detokenizer, stop strings and token budget. Every step it admits waiting requests
// (prefilled together, then added to the running batch), runs one decode step for all rows, streams each
// row's new text to its request, and retires finished rows. HTTP handler threads only submit requests and
// read their streams.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "generate/decode_batch.h"
#include "generate/generation_request.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

// What the scheduler sends to one request: text pieces as they become visible, then either the result or
// an error. Thread-safe: the scheduler writes, the request's handler reads.
class RequestStream {
 public:
  struct Event {
    enum class Kind { kText, kFinished, kFailed } kind;
    std::string text;         // kText: new visible text; kFailed: the error message
    GenerationResult result;  // kFinished: the whole result (text, tokens, finish reason, prompt tokens)
  };

  // Scheduler side.
  void push_text(std::string text);
  void finish(GenerationResult result);
  void fail(std::string message);

  // Handler side. Waits for the next event up to `timeout`; nullopt on timeout. After kFinished or
  // kFailed nothing more comes.
  std::optional<Event> next(std::chrono::milliseconds timeout);
  // Waits for the end and returns it (kFinished or kFailed); text events are folded into the result.
  Event wait_for_end();
  // The client went away: the scheduler drops the row at its next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Event> events_;
  std::atomic<bool> cancelled_{false};
};

struct SchedulerOptions {
  int64_t max_batch = 32;             // most rows decoded together
  int64_t max_prefill_tokens = 4096;  // most prompt tokens prefilled in one step (a longer prompt goes alone)
  // Shared: rows that use the same cartridge read one copy of its KV. Copied per row: the old path, kept
  // as a reference and for benchmarks.
  PrefixStorage prefix_storage = PrefixStorage::kShared;
};

class Scheduler {
 public:
  // Starts the scheduler thread.
  Scheduler(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
            SchedulerOptions options);
  // Stops the thread; requests still waiting or running fail with "the server is shutting down".
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request and returns its stream. Throws InvalidArgumentError when the request cannot run on
  // this model (see check_generation_request).
  std::shared_ptr<RequestStream> submit(GenerationRequest request);

  struct Stats {
    int64_t waiting = 0;           // requests queued, not yet admitted
    int64_t running = 0;           // rows in the running batch
    int64_t completed = 0;         // requests finished (any reason)
    int64_t prefill_steps = 0;     // batched prefills run
    int64_t decode_steps = 0;      // decode forwards run
    int64_t generated_tokens = 0;  // tokens sampled, all requests
    int64_t peak_batch = 0;        // most rows decoded together
    // The running rows' own KV (their tokens; with copied prefixes also the copies), bytes: now and the
    // largest so far.
    int64_t kv_bytes = 0;
    int64_t peak_kv_bytes = 0;
    // The storage behind them (the row pool's rows x slots of capacity, which grows by doubling and is
    // freed when the batch empties), bytes: now and the largest so far.
    int64_t kv_capacity_bytes = 0;
    int64_t peak_kv_capacity_bytes = 0;
    // The cartridge KV the running rows read, each cartridge counted once (also when composed), bytes: now
    // and the largest so far (0 with copied prefixes, where the copies count in kv_bytes).
    int64_t cartridge_kv_bytes = 0;
    int64_t peak_cartridge_kv_bytes = 0;
  };
  Stats stats() const;

 private:
  struct Job {
    GenerationRequest request;
    std::shared_ptr<RequestStream> stream;
  };

  void run();
  // Adds `jobs` to the running batch (one prefill for all of them).
  void admit(std::vector<std::unique_ptr<Job>> jobs);
  // Retires cancelled rows, then one decode step for every running row.
  void decode();
  // The hooks that route the batch's text and results to the jobs' streams.
  DecodeHooks stream_hooks();
  // Fails every running job with `message` and empties the batch.
  void fail_running(const std::string& message);
  void record_stats();

  std::shared_ptr<const Model> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  SchedulerOptions options_;

  mutable std::mutex mutex_;  // guards waiting_, stopping_, stats_
  std::condition_variable work_;
  std::deque<std::unique_ptr<Job>> waiting_;
  bool stopping_ = false;
  Stats stats_;

  // Owned by the scheduler thread only.
  std::unordered_map<RowId, std::unique_ptr<Job>> running_;  // the batch's rows, by id
  DecodeBatch batch_;
  int64_t finished_in_batch_ = 0;  // jobs the hooks finished since the last record_stats()

  std::thread thread_;  // last: starts after everything above is built
};

}  // namespace cartridge
