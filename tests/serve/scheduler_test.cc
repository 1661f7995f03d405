// Continuous batching on the real default model: requests with different cartridges (or none), joining a
// running batch at different times and leaving it at different times, give exactly what generate() gives
// for each request alone (the path of `cartridge generate`).
#include "serve/scheduler.h"

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "generate/generator.h"
#include "serve_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::cartridge_from_text;
using testing::cartridge_texts;
using testing::serve_model;

struct Collected {
  std::string streamed;  // text events, concatenated
  RequestStream::Event end;
};

Collected collect(RequestStream& stream) {
  Collected collected;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (std::chrono::steady_clock::now() < deadline) {
    std::optional<RequestStream::Event> event = stream.next(std::chrono::milliseconds(500));
    if (!event) continue;
    if (event->kind == RequestStream::Event::Kind::kText) {
      collected.streamed += event->text;
      continue;
    }
    collected.end = std::move(*event);
    return collected;
  }
  ADD_FAILURE() << "no end event within 5 minutes";
  return collected;
}

GenerationResult generate_alone(const GenerationRequest& request) {
  const LoadedModel& model = serve_model();
  return generate(*model.model, *model.tokenizer, {request}).front();
}

// Requests over several cartridges, a composition and the bare model, with different prompts and lengths.
// (Made once per test binary: the prefills are the slow part.)
const std::vector<std::shared_ptr<const KvPrefix>>& mixed_prefixes() {
  static const std::vector<std::shared_ptr<const KvPrefix>> prefixes = [] {
    const LoadedModel& model = serve_model();
    std::vector<std::shared_ptr<const KvPrefix>> made;
    const std::vector<int64_t> lengths = {8, 16, 11, 24, 5};
    for (size_t i = 0; i < lengths.size(); ++i) {
      made.push_back(cartridge_from_text(cartridge_texts()[i], lengths[i]).kv_prefix_for(*model.model));
    }
    made.push_back(Cartridge::compose({cartridge_from_text(cartridge_texts()[0], 8),
                                       cartridge_from_text(cartridge_texts()[3], 12)})
                       .kv_prefix_for(*model.model));
    made.push_back(nullptr);
    made.push_back(made[1]);  // two requests sharing one cartridge
    return made;
  }();
  return prefixes;
}

std::vector<GenerationRequest> mixed_requests() {
  const LoadedModel& model = serve_model();
  const std::vector<std::shared_ptr<const KvPrefix>>& prefixes = mixed_prefixes();
  const std::vector<std::string> prompts = {"The treaty was signed in",
                                            "On Mondays the bakery sells",
                                            "Each player starts with",
                                            "The satellite measures",
                                            "Whisk the",
                                            "A short story about a cat:",
                                            "Once upon a time",
                                            "Rolls are sold"};
  const std::vector<int64_t> budgets = {12, 20, 7, 16, 10, 14, 18, 9};
  std::vector<GenerationRequest> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest request;
    request.prompt_ids = model.tokenizer->encode(prompts[i], true);
    if (prefixes[i]) request.prefixes = {prefixes[i]};
    request.max_new_tokens = budgets[i];
    request.sampling.temperature = 0.0;
    requests.push_back(std::move(request));
  }
  return requests;
}

TEST(SchedulerTest, ContinuousBatchingGivesWhatEachRequestGivesAlone) {
  const LoadedModel& model = serve_model();
  const std::vector<GenerationRequest> requests = mixed_requests();
  SchedulerOptions options;
  options.max_batch = 3;  // fewer rows than requests: later requests join as earlier ones leave
  options.max_prefill_tokens = 12;
  Scheduler scheduler(model.model, model.tokenizer, options);

  // Two requests start; the rest arrive while they are decoding.
  std::vector<std::shared_ptr<RequestStream>> streams;
  streams.push_back(scheduler.submit(requests[0]));
  streams.push_back(scheduler.submit(requests[1]));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (scheduler.stats().decode_steps < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (size_t i = 2; i < requests.size(); ++i) {
    streams.push_back(scheduler.submit(requests[i]));
    if (i == 4) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::vector<Collected> collected;
  for (auto& stream : streams) collected.push_back(collect(*stream));

  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const GenerationResult expected = generate_alone(requests[i]);
    ASSERT_EQ(collected[i].end.kind, RequestStream::Event::Kind::kFinished) << collected[i].end.text;
    const GenerationResult& got = collected[i].end.result;
    EXPECT_EQ(got.token_ids, expected.token_ids);
    EXPECT_EQ(got.text, expected.text);
    EXPECT_EQ(got.finish_reason, expected.finish_reason);
    EXPECT_EQ(got.prompt_tokens, expected.prompt_tokens);
    EXPECT_EQ(collected[i].streamed, got.text);
  }
  const Scheduler::Stats stats = scheduler.stats();
  EXPECT_EQ(stats.completed, static_cast<int64_t>(requests.size()));
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.waiting, 0);
  EXPECT_EQ(stats.peak_batch, 3);
  EXPECT_GT(stats.prefill_steps, 2);  // admissions happened at several steps
}

TEST(SchedulerTest, StopStringsSeededSamplingAndZeroTokens) {
  const LoadedModel& model = serve_model();
  std::vector<GenerationRequest> requests = mixed_requests();
  requests.resize(4);
  requests[0].stop_strings = {" the", "\n"};
  requests[0].max_new_tokens = 30;
  requests[1].sampling.temperature = 0.7;
  requests[1].sampling.top_p = 0.9;
  requests[1].sampling.seed = 42;
  requests[2].max_new_tokens = 0;
  requests[3].sampling.temperature = 1.0;
  requests[3].sampling.top_k = 20;
  requests[3].sampling.seed = 7;
  Scheduler scheduler(model.model, model.tokenizer, SchedulerOptions{});
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const auto& request : requests) streams.push_back(scheduler.submit(request));
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const Collected collected = collect(*streams[i]);
    ASSERT_EQ(collected.end.kind, RequestStream::Event::Kind::kFinished);
    const GenerationResult expected = generate_alone(requests[i]);
    EXPECT_EQ(collected.end.result.token_ids, expected.token_ids);
    EXPECT_EQ(collected.end.result.text, expected.text);
    EXPECT_EQ(collected.end.result.finish_reason, expected.finish_reason);
    EXPECT_EQ(collected.streamed, expected.text);
  }
}

TEST(SchedulerTest, CancelledRequestsLeaveTheBatch) {
  const LoadedModel& model = serve_model();
  Scheduler scheduler(model.model, model.tokenizer, SchedulerOptions{});
  GenerationRequest long_request = mixed_requests()[6];
  long_request.max_new_tokens = 500;
  long_request.stop_at_eos = false;
  std::shared_ptr<RequestStream> stream = scheduler.submit(long_request);
  ASSERT_TRUE(stream->next(std::chrono::minutes(2)).has_value());  // it is decoding
  stream->cancel();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
  while (scheduler.stats().completed < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(scheduler.stats().completed, 1);
  EXPECT_EQ(scheduler.stats().running, 0);
  EXPECT_LT(scheduler.stats().generated_tokens, 500);
  // The scheduler goes on serving.
  const GenerationRequest next = mixed_requests()[2];
  const Collected collected = collect(*scheduler.submit(next));
  EXPECT_EQ(collected.end.result.token_ids, generate_alone(next).token_ids);
}

TEST(SchedulerTest, RefusesRequestsThatCannotRun) {
  const LoadedModel& model = serve_model();
  Scheduler scheduler(model.model, model.tokenizer, SchedulerOptions{});
  GenerationRequest empty;
  EXPECT_THROW(scheduler.submit(empty), InvalidArgumentError);
  GenerationRequest too_long = mixed_requests()[0];
  too_long.max_new_tokens = model.model->config().max_position_embeddings;
  EXPECT_THROW(scheduler.submit(too_long), InvalidArgumentError);
  GenerationRequest bad_sampling = mixed_requests()[0];
  bad_sampling.sampling.top_p = 0.0;
  EXPECT_THROW(scheduler.submit(bad_sampling), InvalidArgumentError);
}

}  // namespace
}  // namespace cartridge
