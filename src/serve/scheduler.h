// Continuous batching for the server. One scheduler thread owns the model's running batch: a KV cache whose
// rows are requests in flight, each with its own cartridge prefix (or none), sampler, detokenizer, stop
// strings and token budget (generate/row_decoder.h). Every step it admits waiting requests (prefilled
// together, then their cache rows appended to the running batch), runs one decode forward for all rows,
// streams each row's new text to its request, and retires finished rows. HTTP handler threads only
// submit requests and read their streams.
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
#include <vector>

#include "generate/generation_request.h"
#include "generate/row_decoder.h"
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
    int64_t peak_kv_bytes = 0;     // largest running KV cache (rows x slots x bytes per slot), bytes
    int64_t kv_bytes = 0;          // current running KV cache, bytes
  };
  Stats stats() const;

 private:
  struct Job {
    GenerationRequest request;
    std::shared_ptr<RequestStream> stream;
    std::optional<RowDecoder> decoder;  // set at admission
  };

  void run();
  // Prefills `jobs` together and appends those still generating to the running batch.
  void admit(std::vector<std::unique_ptr<Job>> jobs);
  // One decode forward for every running row.
  void decode();
  // Samples each unfinished job's next token from its row of `last_logits` [N, V] (row i is jobs[i]),
  // streams the new text and finishes the jobs that are done. A job that was already finished (a request
  // for 0 tokens) is only finished. Returns the indices of the jobs still generating.
  struct SampleOutcome {
    std::vector<int64_t> still_running;
    int64_t sampled = 0;
    int64_t finished = 0;
  };
  static SampleOutcome sample_next_tokens(const std::vector<std::unique_ptr<Job>>& jobs,
                                          const at::Tensor& last_logits);
  // Keeps only running rows `kept` (indices into running_), retiring the others.
  void keep_rows(const std::vector<int64_t>& kept);
  void record_kv_bytes();

  std::shared_ptr<const Model> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  SchedulerOptions options_;
  int64_t kv_bytes_per_slot_;  // one row's K and V for all layers, bytes

  mutable std::mutex mutex_;  // guards waiting_, stopping_, stats_
  std::condition_variable work_;
  std::deque<std::unique_ptr<Job>> waiting_;
  bool stopping_ = false;
  Stats stats_;

  // Owned by the scheduler thread only.
  std::vector<std::unique_ptr<Job>> running_;  // row i of running_cache_ is running_[i]
  KvCache running_cache_;

  std::thread thread_;  // last: starts after everything above is built
};

}  // namespace cartridge
