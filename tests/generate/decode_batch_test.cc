// The one decode loop (generate/decode_batch.h) on the default model: rows added at different steps and
// removed mid-decode give exactly what generate() gives for each request alone; the hooks see every row's
// logits, its prompt's logits (equal to a plain forward's), its text and its result once.
#include "generate/decode_batch.h"

#include <map>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "generate/generator.h"
#include "generate/loaded_model.h"
#include "generate_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::default_model;

GenerationRequest request_for(const std::string& prompt, int64_t max_new_tokens, double temperature = 0) {
  GenerationRequest request;
  request.prompt_ids = default_model().tokenizer->encode(prompt, /*add_special_tokens=*/false);
  request.max_new_tokens = max_new_tokens;
  request.sampling.temperature = temperature;
  request.sampling.seed = 7;
  return request;
}

// The KV of `text` run alone, as a prefix (what a cartridge becomes at run time).
std::shared_ptr<const KvPrefix> prefix_of(const std::string& text) {
  const LoadedModel& model = default_model();
  KvCache cache = model.model->new_cache(1);
  const std::vector<int32_t> ids = model.tokenizer->encode(text, false);
  const at::Tensor input = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).view({1, -1});
  model.model->forward(input, at::ones_like(input, at::kBool), cache);
  return std::make_shared<const KvPrefix>(cache.row_prefix(0, cache.length()));
}

GenerationResult alone(const GenerationRequest& request) {
  return generate(*default_model().model, *default_model().tokenizer, {request}).front();
}

TEST(DecodeBatchTest, RowsJoiningAndLeavingDecodeAsAlone) {
  const LoadedModel& model = default_model();
  c10::InferenceMode inference;
  std::vector<GenerationRequest> requests = {
      request_for("The lighthouse keeper", 9), request_for("Once upon a time there was", 14, 0.8),
      request_for("Three facts about rivers:", 6), request_for("The recipe starts with", 11)};
  // Request 1 starts after a prefix: the KV of another text, as a cartridge would be.
  {
    KvCache cache = model.model->new_cache(1);
    const std::vector<int32_t> text = model.tokenizer->encode("Notes from the harbour office, 1874.", false);
    const at::Tensor ids =
        at::tensor(std::vector<int64_t>(text.begin(), text.end()), at::kLong).view({1, -1});
    model.model->forward(ids, at::ones_like(ids, at::kBool), cache);
    requests[1].prefixes = {std::make_shared<const KvPrefix>(cache.row_prefix(0, cache.length()))};
  }
  std::map<RowId, GenerationResult> finished;
  std::map<RowId, std::string> streamed;
  std::map<RowId, int64_t> logits_seen;
  DecodeHooks hooks;
  hooks.on_finished = [&](RowId row, GenerationResult result) {
    EXPECT_EQ(finished.count(row), 0u) << "row " << row << " finished twice";
    finished[row] = std::move(result);
  };
  hooks.on_text = [&](RowId row, const std::string& text) { streamed[row] += text; };
  hooks.on_logits = [&](const std::vector<RowId>& rows, const at::Tensor& logits) {
    EXPECT_EQ(logits.size(0), static_cast<int64_t>(rows.size()));
    EXPECT_EQ(logits.size(1), model.model->config().vocab_size);
    for (RowId row : rows) ++logits_seen[row];
  };
  DecodeBatch batch(*model.model, *model.tokenizer, hooks);
  EXPECT_EQ(batch.add({&requests[0], &requests[1]}), (std::vector<RowId>{0, 1}));
  batch.step();
  batch.step();
  const int64_t bytes_with_two = batch.kv_bytes();
  EXPECT_EQ(batch.add({&requests[2], &requests[3]}), (std::vector<RowId>{2, 3}));
  EXPECT_EQ(batch.size(), 4);
  EXPECT_GT(batch.kv_bytes(), bytes_with_two);
  batch.step();
  batch.remove({3});  // cancelled: leaves without a result
  EXPECT_EQ(batch.size(), 3);
  while (!batch.empty()) batch.step();

  ASSERT_EQ(finished.size(), 3u);
  for (RowId row : {0, 1, 2}) {
    const GenerationResult expected = alone(requests[row]);
    EXPECT_EQ(finished[row].token_ids, expected.token_ids) << "row " << row;
    EXPECT_EQ(finished[row].text, expected.text) << "row " << row;
    EXPECT_EQ(streamed[row], expected.text) << "row " << row;
    EXPECT_EQ(finished[row].finish_reason, expected.finish_reason) << "row " << row;
    // One logits row per sampled token (a stop token included).
    EXPECT_EQ(logits_seen[row],
              static_cast<int64_t>(expected.token_ids.size()) + (expected.stop_token_id >= 0));
    // llama.cpp's timings: the prompt, and every token chosen (as many as the logits rows seen).
    const GenerationTimings& timings = finished[row].timings;
    EXPECT_EQ(timings.prompt_tokens, static_cast<int64_t>(requests[row].prompt_ids.size())) << "row " << row;
    EXPECT_EQ(timings.generated_tokens, logits_seen[row]) << "row " << row;
    EXPECT_GT(timings.prompt_ms, 0) << "row " << row;
    EXPECT_GT(timings.generated_ms, 0) << "row " << row;  // every row chose more than one token here
    EXPECT_DOUBLE_EQ(timings.generated_tokens_per_second(),
                     timings.generated_tokens * 1000.0 / timings.generated_ms);
  }
  EXPECT_EQ(finished.count(3), 0u);
  EXPECT_EQ(batch.counts().prefill_steps, 2);
  EXPECT_EQ(batch.next_row_id(), 4);
}

TEST(DecodeBatchTest, PromptLogitsAreThoseOfAPlainForward) {
  const LoadedModel& model = default_model();
  c10::InferenceMode inference;
  GenerationRequest request = request_for("A cartridge is a small trained cache that", 3);
  request.prompt_logits_from = 4;
  GenerationRequest other = request_for("Short", 2);  // a shorter row in the same prefill (padding)
  at::Tensor reported;
  DecodeHooks hooks;
  hooks.on_prompt_logits = [&](RowId row, const at::Tensor& logits) {
    EXPECT_EQ(row, 0);
    reported = logits.clone();
  };
  std::map<RowId, GenerationResult> finished;
  hooks.on_finished = [&](RowId row, GenerationResult result) { finished[row] = std::move(result); };
  DecodeBatch batch(*model.model, *model.tokenizer, hooks);
  batch.add({&request, &other});
  while (!batch.empty()) batch.step();
  const at::Tensor full = prompt_logits(*model.model, nullptr, request.prompt_ids);  // [T, V]
  const int64_t count = static_cast<int64_t>(request.prompt_ids.size()) - request.prompt_logits_from;
  ASSERT_TRUE(reported.defined());
  ASSERT_EQ(reported.size(0), count);
  // Row i predicted prompt token from + i: the logits at position from - 1 + i.
  EXPECT_LE((reported - full.narrow(0, request.prompt_logits_from - 1, count)).abs().max().item<double>(),
            1e-4);
  EXPECT_EQ(finished[0].token_ids,
            alone(request_for("A cartridge is a small trained cache that", 3)).token_ids);
}

TEST(DecodeBatchTest, SharedPrefixesGiveTheTokensAndLogitsOfCopiedOnes) {
  const LoadedModel& model = default_model();
  c10::InferenceMode inference;
  const auto harbour = prefix_of("Notes from the harbour office, 1874. The ship Aurora left for Bergen.");
  const auto bakery = prefix_of("Marta's bakery sells rye bread on Wednesdays.");
  std::vector<GenerationRequest> requests = {
      request_for("The ship", 9),          request_for("The harbour office", 12, 0.8),
      request_for("Rye bread is sold", 7), request_for("A poem about the sea:", 10),
      request_for("Aurora sailed to", 11), request_for("In 1874", 8)};
  for (int index : {0, 1, 4, 5}) requests[index].prefixes = {harbour};  // many rows on one cartridge
  requests[2].prefixes = {bakery,
                          harbour};  // a composition: another cartridge, then the first; row 3 has none

  // The same schedule on both paths: rows join mid-decode and one is cancelled.
  struct Run {
    std::map<RowId, std::vector<at::Tensor>> logits;  // per row, per sampled token [V]
    std::map<RowId, GenerationResult> finished;
    int64_t shared_bytes_with_all = 0, own_bytes_with_all = 0;
  };
  auto run = [&](PrefixStorage storage) {
    Run result;
    DecodeHooks hooks;
    hooks.on_logits = [&](const std::vector<RowId>& rows, const at::Tensor& logits) {
      for (size_t index = 0; index < rows.size(); ++index)
        result.logits[rows[index]].push_back(logits[static_cast<int64_t>(index)].clone());
    };
    hooks.on_finished = [&](RowId row, GenerationResult finished) {
      result.finished[row] = std::move(finished);
    };
    DecodeBatch batch(*model.model, *model.tokenizer, hooks, storage);
    batch.add({&requests[0], &requests[1], &requests[2]});
    batch.step();
    batch.add({&requests[3], &requests[4]});
    batch.step();
    batch.add({&requests[5]});
    result.shared_bytes_with_all = batch.shared_prefix_bytes();
    result.own_bytes_with_all = batch.kv_bytes();
    batch.step();
    batch.remove({1});
    while (!batch.empty()) batch.step();
    return result;
  };
  const Run shared = run(PrefixStorage::kShared);
  const Run copied = run(PrefixStorage::kCopiedPerRow);
  ASSERT_EQ(shared.finished.size(), 5u);
  for (const auto& [row, result] : copied.finished) {
    EXPECT_EQ(shared.finished.at(row).token_ids, result.token_ids) << "row " << row;
    EXPECT_EQ(shared.finished.at(row).text, result.text) << "row " << row;
  }
  for (const auto& [row, steps] : copied.logits) {
    ASSERT_EQ(shared.logits.at(row).size(), steps.size()) << "row " << row;
    for (size_t step = 0; step < steps.size(); ++step) {
      EXPECT_LE((shared.logits.at(row)[step] - steps[step]).abs().max().item<double>(), 1e-4)
          << "row " << row << " step " << step;
    }
  }
  // Each cartridge held once by the shared batch; the copied one holds a copy per row in its own KV.
  const int64_t bytes_per_slot = model.model->config().kv_bytes_per_token(model.model->dtype());
  EXPECT_EQ(shared.shared_bytes_with_all, (harbour->length() + bakery->length()) * bytes_per_slot);
  EXPECT_EQ(copied.shared_bytes_with_all, 0);
  EXPECT_GE(copied.own_bytes_with_all - shared.own_bytes_with_all,
            6 * harbour->length() * bytes_per_slot / 2);
}

TEST(DecodeBatchTest, ABadRequestLeavesTheBatchUnchanged) {
  const LoadedModel& model = default_model();
  c10::InferenceMode inference;
  GenerationRequest good = request_for("Hello", 5);
  GenerationRequest empty;  // no prompt
  DecodeBatch batch(*model.model, *model.tokenizer);
  batch.add({&good});
  const int64_t rows = batch.size();
  EXPECT_THROW(batch.add({&empty}), InvalidArgumentError);
  EXPECT_EQ(batch.size(), rows);
  EXPECT_EQ(batch.next_row_id(), 1);
}

}  // namespace
}  // namespace cartridge
