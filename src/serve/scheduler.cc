#include "serve/scheduler.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "util/error.h"

namespace cartridge {

// ---- RequestStream ---------------------------------------------------------------------------------

void RequestStream::push_text(std::string text) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(Event{Event::Kind::kText, std::move(text), {}});
  }
  changed_.notify_all();
}

void RequestStream::finish(GenerationResult result) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(Event{Event::Kind::kFinished, "", std::move(result)});
  }
  changed_.notify_all();
}

void RequestStream::fail(std::string message) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(Event{Event::Kind::kFailed, std::move(message), {}});
  }
  changed_.notify_all();
}

std::optional<RequestStream::Event> RequestStream::next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!changed_.wait_for(lock, timeout, [this] { return !events_.empty(); })) return std::nullopt;
  Event event = std::move(events_.front());
  events_.pop_front();
  return event;
}

RequestStream::Event RequestStream::wait_for_end() {
  while (true) {
    std::optional<Event> event = next(std::chrono::milliseconds(1000));
    if (event && event->kind != Event::Kind::kText) return std::move(*event);
  }
}

// ---- Scheduler -------------------------------------------------------------------------------------

Scheduler::Scheduler(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                     SchedulerOptions options)
    : model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      options_(options),
      kv_bytes_per_slot_(model_->config().kv_bytes_per_token(model_->dtype())) {
  TORCH_CHECK(options_.max_batch >= 1, "Scheduler: max_batch must be >= 1");
  TORCH_CHECK(options_.max_prefill_tokens >= 1, "Scheduler: max_prefill_tokens must be >= 1");
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<RequestStream> Scheduler::submit(GenerationRequest request) {
  check_generation_request(model_->config(), request);
  Sampler validate_sampling(request.sampling);  // throws InvalidArgumentError for bad sampling options
  auto job = std::make_unique<Job>();
  job->request = std::move(request);
  job->stream = std::make_shared<RequestStream>();
  std::shared_ptr<RequestStream> stream = job->stream;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) throw InvalidArgumentError("the server is shutting down");
    waiting_.push_back(std::move(job));
    stats_.waiting = static_cast<int64_t>(waiting_.size());
  }
  work_.notify_one();
  return stream;
}

Scheduler::Stats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void Scheduler::run() {
  c10::InferenceMode inference_mode;
  while (true) {
    std::vector<std::unique_ptr<Job>> admitted;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_.wait(lock, [this] { return stopping_ || !waiting_.empty() || !running_.empty(); });
      if (stopping_) break;
      // Admit in arrival order while there is room in the batch and in this step's prefill budget.
      int64_t room = options_.max_batch - static_cast<int64_t>(running_.size());
      int64_t prefill_tokens = 0;
      while (!waiting_.empty() && room > 0) {
        std::unique_ptr<Job>& front = waiting_.front();
        if (front->stream->cancelled()) {
          waiting_.pop_front();
          ++stats_.completed;
          continue;
        }
        const int64_t prompt_tokens = static_cast<int64_t>(front->request.prompt_ids.size());
        if (!admitted.empty() && prefill_tokens + prompt_tokens > options_.max_prefill_tokens) break;
        prefill_tokens += prompt_tokens;
        admitted.push_back(std::move(front));
        waiting_.pop_front();
        --room;
      }
      stats_.waiting = static_cast<int64_t>(waiting_.size());
    }
    if (!admitted.empty()) admit(std::move(admitted));
    if (!running_.empty()) decode();
  }

  // Shutting down: nothing more will be computed.
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& job : waiting_) job->stream->fail("the server is shutting down");
  for (auto& job : running_) job->stream->fail("the server is shutting down");
  waiting_.clear();
  running_.clear();
}

void Scheduler::admit(std::vector<std::unique_ptr<Job>> jobs) {
  std::vector<const GenerationRequest*> requests;
  for (auto& job : jobs) {
    job->decoder.emplace(job->request, *tokenizer_);
    requests.push_back(&job->request);
  }
  KvCache cache;
  at::Tensor logits;  // [N, 1, V]
  try {
    std::tie(cache, logits) = prefill_batch(*model_, requests);
  } catch (const std::exception& error) {
    for (auto& job : jobs) job->stream->fail(error.what());
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.completed += static_cast<int64_t>(jobs.size());
    return;
  }
  const at::Tensor last_logits = logits.select(1, 0).to(at::kFloat);  // [N, V]
  const SampleOutcome outcome = sample_next_tokens(jobs, last_logits);
  const std::vector<int64_t>& kept = outcome.still_running;
  if (!kept.empty()) {
    if (kept.size() != jobs.size()) cache = cache.select_rows(at::tensor(kept, at::kLong));
    cache.drop_padding_columns();
    running_cache_ = running_.empty() ? std::move(cache) : KvCache::concat_rows({running_cache_, cache});
    for (int64_t i : kept) running_.push_back(std::move(jobs[i]));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.prefill_steps;
  stats_.generated_tokens += outcome.sampled;
  stats_.completed += outcome.finished;
  record_kv_bytes();
}

void Scheduler::decode() {
  std::vector<int64_t> kept;
  for (size_t i = 0; i < running_.size(); ++i) {
    if (!running_[i]->stream->cancelled()) kept.push_back(static_cast<int64_t>(i));
  }
  if (kept.size() != running_.size()) {
    const int64_t cancelled = static_cast<int64_t>(running_.size() - kept.size());
    keep_rows(kept);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.completed += cancelled;
      record_kv_bytes();
    }
    if (running_.empty()) return;
  }

  std::vector<int64_t> tokens;
  tokens.reserve(running_.size());
  for (const auto& job : running_) tokens.push_back(job->decoder->next_input_token());
  at::Tensor logits;  // [B, 1, V]
  try {
    logits = decode_step(*model_, running_cache_, tokens);
  } catch (const std::exception& error) {
    for (auto& job : running_) job->stream->fail(error.what());
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.completed += static_cast<int64_t>(running_.size());
    running_.clear();
    running_cache_ = KvCache();
    record_kv_bytes();
    return;
  }
  const at::Tensor last_logits = logits.select(1, 0).to(at::kFloat);  // [B, V]
  const SampleOutcome outcome = sample_next_tokens(running_, last_logits);
  const int64_t batch = static_cast<int64_t>(running_.size());
  if (outcome.still_running.size() != running_.size()) keep_rows(outcome.still_running);
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.decode_steps;
  stats_.generated_tokens += outcome.sampled;
  stats_.completed += outcome.finished;
  stats_.peak_batch = std::max(stats_.peak_batch, batch);
  record_kv_bytes();
}

Scheduler::SampleOutcome Scheduler::sample_next_tokens(const std::vector<std::unique_ptr<Job>>& jobs,
                                                       const at::Tensor& last_logits) {
  SampleOutcome outcome;
  for (size_t i = 0; i < jobs.size(); ++i) {
    Job& job = *jobs[i];
    if (!job.decoder->finished()) {  // a request for 0 tokens starts finished
      std::string text = job.decoder->advance(last_logits[static_cast<int64_t>(i)]);
      ++outcome.sampled;
      if (!text.empty()) job.stream->push_text(std::move(text));
    }
    if (job.decoder->finished()) {
      job.stream->finish(job.decoder->take_result());
      ++outcome.finished;
    } else {
      outcome.still_running.push_back(static_cast<int64_t>(i));
    }
  }
  return outcome;
}

void Scheduler::keep_rows(const std::vector<int64_t>& kept) {
  if (kept.empty()) {
    running_.clear();
    running_cache_ = KvCache();
    return;
  }
  running_cache_ = running_cache_.select_rows(at::tensor(kept, at::kLong));
  // Slots that only retired rows used are padding in every remaining row now.
  running_cache_.drop_padding_columns();
  std::vector<std::unique_ptr<Job>> remaining;
  remaining.reserve(kept.size());
  for (int64_t i : kept) remaining.push_back(std::move(running_[i]));
  running_ = std::move(remaining);
}

void Scheduler::record_kv_bytes() {
  // Caller holds mutex_. Counts the slots in use (padding included), not the growth capacity.
  const int64_t rows = static_cast<int64_t>(running_.size());
  stats_.running = rows;
  stats_.kv_bytes =
      rows == 0 ? 0 : running_cache_.batch_size() * running_cache_.length() * kv_bytes_per_slot_;
  stats_.peak_kv_bytes = std::max(stats_.peak_kv_bytes, stats_.kv_bytes);
}

}  // namespace cartridge
