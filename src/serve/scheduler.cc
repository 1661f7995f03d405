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
      batch_(*model_, *tokenizer_, stream_hooks(), options.prefix_storage) {
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
      work_.wait(lock, [this] { return stopping_ || !waiting_.empty() || !batch_.empty(); });
      if (stopping_) break;
      // Admit in arrival order while there is room in the batch and in this step's prefill budget.
      int64_t room = options_.max_batch - batch_.size();
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
    if (!batch_.empty()) decode();
  }

  // Shutting down: nothing more will be computed.
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& job : waiting_) job->stream->fail("the server is shutting down");
  for (auto& [row, job] : running_) job->stream->fail("the server is shutting down");
  waiting_.clear();
  running_.clear();
  batch_.clear();
}

DecodeHooks Scheduler::stream_hooks() {
  DecodeHooks hooks;
  hooks.on_text = [this](RowId row, const std::string& text) { running_.at(row)->stream->push_text(text); };
  hooks.on_finished = [this](RowId row, GenerationResult result) {
    running_.at(row)->stream->finish(std::move(result));
    running_.erase(row);
    ++finished_in_batch_;
  };
  return hooks;
}

void Scheduler::admit(std::vector<std::unique_ptr<Job>> jobs) {
  // The batch numbers rows in the order they are added: register the jobs under the ids they will get,
  // so that a row finishing at its first token finds its stream.
  const RowId first = batch_.next_row_id();
  std::vector<const GenerationRequest*> requests;
  for (size_t index = 0; index < jobs.size(); ++index) {
    requests.push_back(&jobs[index]->request);
    running_.emplace(first + static_cast<RowId>(index), std::move(jobs[index]));
  }
  try {
    batch_.add(requests);
  } catch (const std::exception& error) {
    // The batch is unchanged: these jobs fail, the running ones go on.
    for (size_t index = 0; index < requests.size(); ++index) {
      const RowId row = first + static_cast<RowId>(index);
      running_.at(row)->stream->fail(error.what());
      running_.erase(row);
      ++finished_in_batch_;
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  record_stats();
}

void Scheduler::decode() {
  std::vector<RowId> cancelled;
  for (const auto& [row, job] : running_) {
    if (job->stream->cancelled()) cancelled.push_back(row);
  }
  if (!cancelled.empty()) {
    batch_.remove(cancelled);
    for (RowId row : cancelled) running_.erase(row);
    finished_in_batch_ += static_cast<int64_t>(cancelled.size());
  }
  if (!batch_.empty()) {
    const int64_t rows = batch_.size();
    try {
      batch_.step();
    } catch (const std::exception& error) {
      fail_running(error.what());
    }
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_batch = std::max(stats_.peak_batch, rows);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  record_stats();
}

void Scheduler::fail_running(const std::string& message) {
  for (auto& [row, job] : running_) job->stream->fail(message);
  finished_in_batch_ += static_cast<int64_t>(running_.size());
  running_.clear();
  batch_.clear();
}

void Scheduler::record_stats() {
  // Caller holds mutex_. kv_bytes counts the slots in use (padding included), kv_capacity_bytes the storage.
  const DecodeBatch::Counts& counts = batch_.counts();
  stats_.running = batch_.size();
  stats_.completed += finished_in_batch_;
  finished_in_batch_ = 0;
  stats_.prefill_steps = counts.prefill_steps;
  stats_.decode_steps = counts.decode_steps;
  stats_.generated_tokens = counts.generated_tokens;
  stats_.kv_bytes = batch_.empty() ? 0 : batch_.kv_bytes();
  stats_.peak_kv_bytes = std::max(stats_.peak_kv_bytes, stats_.kv_bytes);
  stats_.kv_capacity_bytes = batch_.empty() ? 0 : batch_.kv_capacity_bytes();
  stats_.peak_kv_capacity_bytes = std::max(stats_.peak_kv_capacity_bytes, stats_.kv_capacity_bytes);
  stats_.cartridge_kv_bytes = batch_.empty() ? 0 : batch_.shared_prefix_bytes();
  stats_.peak_cartridge_kv_bytes = std::max(stats_.peak_cartridge_kv_bytes, stats_.cartridge_kv_bytes);
}

}  // namespace cartridge
