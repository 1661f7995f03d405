// The default model with its matrices kept as the GGUF stores them (Q4_1, and Q8_0 for the tied embedding;
// LoadOptions::quantized_weights) against the same model dequantised to fp32, which smollm2_test.cc holds to
// transformers. The weights are the same numbers. With float activations (int16 per 32 values for one token
// times Q4, Q5 or Q6_K blocks: 2^-16 of their largest, where llama.cpp's 8 bits are 2^-8) only rounding
// differs, so a greedy continuation may leave fp32's only where fp32 itself nearly hesitated: at the first
// token where the two differ, fp32's two best logits are within kMaxMarginAtDivergence. The quantised runs
// decode one prompt at a time, as `cartridge generate` does; the 32 prompts are
// tests/fixtures/make_model_smollm2.py's (chat questions and plain text).
//
// CARTRIDGE_TEST_GGUF names another GGUF of the same vocabulary to hold to the same bar, e.g. the default
// model requantised to Q4_K_M by llama.cpp's llama-quantize (Q5_0, Q8_0, Q4_K and Q6_K matrices; see
// docs/quantized.md).
#include <cstdlib>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "model/model.h"
#include "model_test_util.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::get;

constexpr int kPrompts = 32;
constexpr int64_t kGreedyTokens = 32;
// The bar (issue 17): a divergence from fp32 only where fp32's top-2 margin is below 0.05 nats.
constexpr double kMaxMarginAtDivergence = 0.05;

std::shared_ptr<const Model> load_default_model(QuantizedWeights quantized_weights) {
  const char* other = std::getenv("CARTRIDGE_TEST_GGUF");
  LoadOptions options;
  options.show_progress = false;
  options.quantized_weights = quantized_weights;
  return Model::load(
      testing::gguf_model_files(other != nullptr && *other != '\0' ? other : testing::default_model_path()),
      options);
}

struct Greedy {
  std::vector<int64_t> tokens;  // [kGreedyTokens]
  std::vector<double> margins;  // per step: best logit minus the second best
};

Greedy greedy(const Model& model, const at::Tensor& prompt) {
  ForwardOptions last_only;
  last_only.last_token_only = true;
  KvCache cache = model.new_cache(1);
  const at::Tensor ids = prompt.unsqueeze(0);                                                     // [1, T]
  at::Tensor logits = model.forward(ids, at::ones_like(ids, at::kBool), cache, last_only)[0][0];  // [V]
  Greedy result;
  for (int64_t step = 0; step < kGreedyTokens; ++step) {
    const auto [values, indices] = logits.topk(2);
    result.tokens.push_back(indices[0].item<int64_t>());
    result.margins.push_back((values[0] - values[1]).item<double>());
    const at::Tensor next = at::full({1, 1}, result.tokens.back(), at::kLong);
    logits = model.forward(next, at::ones({1, 1}, at::kBool), cache, last_only)[0][0];
  }
  return result;
}

// How many of the prompts' greedy continuations equal fp32's; every divergence printed with fp32's margin.
struct Agreement {
  int identical = 0;
  double largest_margin_at_divergence = 0.0;
};

Agreement compare_with_fp32(const Model& model, const std::vector<Greedy>& reference,
                            const std::map<std::string, at::Tensor>& prompts, const char* label) {
  Agreement agreement;
  for (int prompt = 0; prompt < kPrompts; ++prompt) {
    const Greedy ours = greedy(model, get(prompts, "prompt_" + std::to_string(prompt)));
    const Greedy& fp32 = reference[prompt];
    int64_t step = 0;
    while (step < kGreedyTokens && fp32.tokens[step] == ours.tokens[step]) ++step;
    if (step == kGreedyTokens) {
      ++agreement.identical;
      continue;
    }
    std::printf("%s, prompt %d: first divergence at token %lld, fp32 top-2 margin %.4f\n", label, prompt,
                static_cast<long long>(step), fp32.margins[step]);
    agreement.largest_margin_at_divergence =
        std::max(agreement.largest_margin_at_divergence, fp32.margins[step]);
  }
  std::printf("%s: %d of %d greedy continuations of %lld tokens identical to fp32\n", label,
              agreement.identical, kPrompts, static_cast<long long>(kGreedyTokens));
  return agreement;
}

// fp32's greedy continuations of every prompt, decoded as one left-padded batch (the dense path gives a
// row the same logits in a batch as alone, up to float32 rounding: smollm2_test.cc).
std::vector<Greedy> batched_fp32_reference(const Model& dense,
                                           const std::map<std::string, at::Tensor>& prompts) {
  int64_t longest = 0;
  for (int prompt = 0; prompt < kPrompts; ++prompt) {
    longest = std::max(longest, get(prompts, "prompt_" + std::to_string(prompt)).size(0));
  }
  at::Tensor ids = at::zeros({kPrompts, longest}, at::kLong);   // [P, T]
  at::Tensor mask = at::zeros({kPrompts, longest}, at::kBool);  // [P, T]
  for (int prompt = 0; prompt < kPrompts; ++prompt) {
    const at::Tensor& prompt_ids = get(prompts, "prompt_" + std::to_string(prompt));
    ids[prompt].narrow(0, longest - prompt_ids.size(0), prompt_ids.size(0)).copy_(prompt_ids);
    mask[prompt].narrow(0, longest - prompt_ids.size(0), prompt_ids.size(0)).fill_(true);
  }
  ForwardOptions last_only;
  last_only.last_token_only = true;
  KvCache cache = dense.new_cache(kPrompts);
  at::Tensor logits = dense.forward(ids, mask, cache, last_only).select(1, 0);  // [P, V]
  std::vector<Greedy> reference(kPrompts);
  for (int64_t step = 0; step < kGreedyTokens; ++step) {
    const auto [values, indices] = logits.topk(2);  // [P, 2]
    for (int prompt = 0; prompt < kPrompts; ++prompt) {
      reference[prompt].tokens.push_back(indices[prompt][0].item<int64_t>());
      reference[prompt].margins.push_back((values[prompt][0] - values[prompt][1]).item<double>());
    }
    const at::Tensor next = indices.select(1, 0).unsqueeze(1).contiguous();  // [P, 1]
    logits = dense.forward(next, at::ones({kPrompts, 1}, at::kBool), cache, last_only).select(1, 0);
  }
  return reference;
}

// One test, so the fp32 reference is decoded once.
TEST(SmolLM2QuantizedTest, FloatActivationsKeepFp32sGreedyContinuationsAndInt8ActivationsAreCounted) {
  c10::InferenceMode inference;
  const auto prompts = testing::read_tensors(fixture_path("model_smollm2/quantized_prompts.safetensors"));
  std::vector<Greedy> reference;
  {
    const std::shared_ptr<const Model> dense = load_default_model(QuantizedWeights::kDequantize);
    ASSERT_FALSE(dense->has_quantized_weights());
    reference = batched_fp32_reference(*dense, prompts);
  }
  {
    const std::shared_ptr<const Model> stored = load_default_model(QuantizedWeights::kFloatActivations);
    ASSERT_TRUE(stored->has_quantized_weights());
    const Agreement agreement = compare_with_fp32(*stored, reference, prompts, "stored");
    // Issue 17's bar for a default inference path: at least 28 of 32, and divergences only at near-ties.
    EXPECT_GE(agreement.identical, 28);
    EXPECT_LT(agreement.largest_margin_at_divergence, kMaxMarginAtDivergence);
  }
  {
    // llama.cpp's arithmetic: measured and printed, not held to the bar (docs/quantized.md: 14 of 32).
    const std::shared_ptr<const Model> stored = load_default_model(QuantizedWeights::kInt8Activations);
    ASSERT_TRUE(stored->has_quantized_weights());
    const Agreement agreement = compare_with_fp32(*stored, reference, prompts, "stored-int8");
    // A broken kernel leaves fp32 on every prompt at once; the 8-bit rounding leaves it on about half of
    // them (14 of 32 identical when measured).
    EXPECT_GE(agreement.identical, 8);
  }
}

}  // namespace
}  // namespace cartridge
