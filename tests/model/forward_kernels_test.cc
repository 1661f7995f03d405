// The forward pass's replaceable steps (model/transformer_layer.h): `linear` and `attention` swapped for
// the naive float64 reference kernels through ForwardOptions::kernels give the fast path's logits on every
// tiny model family (biases, q/k norms, GQA), for each mask case (causal prefill, a padded batch after a
// prefix, single-token decode); and each fast kernel equals its naive reference on random inputs, as ncnn
// tests every optimised layer against the naive one.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "model/attention.h"
#include "model/linear.h"
#include "model/model.h"
#include "model_test_util.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::get;
using testing::max_abs_diff;

// The naive kernels accumulate in float64, the fast ones in float32 in another order: one kernel's outputs
// agree to float32 rounding of sums of a few hundred terms. Through a whole model the differences compound
// over the layers and logits reach tens, so the logits are held to the tolerance the models meet against
// transformers (another float32 implementation with another summation order).
constexpr double kKernelTolerance = 1e-5;
constexpr double kLogitTolerance = 1e-4;

ForwardKernels naive_kernels() {
  ForwardKernels kernels;
  kernels.linear = naive_linear;
  kernels.attention = naive_attention;
  return kernels;
}

class ForwardKernelsTest : public testing::TinyModelTest {
 protected:
  // Logits of a causal prefill of two rows and a decode step after it (no mask), then of the padded batch
  // after a 3-slot prefix per row and a decode step after that (masks): every case the forward has.
  std::vector<at::Tensor> run(const ForwardKernels* kernels) const {
    c10::InferenceMode inference;
    ForwardOptions options;
    options.kernels = kernels;
    std::vector<at::Tensor> logits;
    const at::Tensor& ids = get(cases_, "padded_ids");    // [3, 7]
    const at::Tensor& mask = get(cases_, "padded_mask");  // [3, 7]
    KvCache prefill_cache = model_->new_cache(2);
    logits.push_back(model_->forward(ids.narrow(0, 0, 1).expand({2, 7}), at::ones({2, 7}, at::kBool),
                                     prefill_cache, options));
    const KvPrefix prefix = prefill_cache.row_prefix(0, 3);
    logits.push_back(model_->forward(at::tensor({4, 5}, at::kLong).view({2, 1}), at::ones({2, 1}, at::kBool),
                                     prefill_cache, options));
    KvCache cache = model_->new_cache(3, &prefix);
    logits.push_back(
        model_->forward(ids, mask, cache, options).masked_fill(mask.logical_not().unsqueeze(-1), 0));
    logits.push_back(model_->forward(at::tensor({1, 2, 3}, at::kLong).view({3, 1}),
                                     at::ones({3, 1}, at::kBool), cache, options));
    return logits;
  }
};

TEST_P(ForwardKernelsTest, NaiveLinearAndAttentionGiveTheFastPathsLogits) {
  const std::vector<at::Tensor> fast = run(nullptr);
  const ForwardKernels naive = naive_kernels();
  const std::vector<at::Tensor> reference = run(&naive);
  ASSERT_EQ(fast.size(), reference.size());
  for (size_t index = 0; index < fast.size(); ++index) {
    EXPECT_LE(max_abs_diff(fast[index], reference[index]), kLogitTolerance) << "case " << index;
  }
}

TEST_P(ForwardKernelsTest, TheForwardRunsTheKernelsItIsGiven) {
  int64_t linear_calls = 0, attention_calls = 0;
  ForwardKernels counting;
  counting.linear = [&](const at::Tensor& x, const LinearWeight& weight) {
    ++linear_calls;
    return linear(x, weight);
  };
  counting.attention = [&](const AttentionInputs& inputs) {
    ++attention_calls;
    return sdpa_attention(inputs);
  };
  const std::vector<at::Tensor> counted = run(&counting);
  const int64_t layers = model_->config().num_layers;
  // Four forwards; per layer q/k/v, output, gate/up and down projections and one attention.
  EXPECT_EQ(linear_calls, 4 * 4 * layers);
  EXPECT_EQ(attention_calls, 4 * layers);
  // The default kernels given explicitly run the same layers (a decode step without them runs the fused
  // step instead, equal up to rounding: decode_step_test.cc).
  const ForwardKernels defaults;
  const std::vector<at::Tensor> fast = run(&defaults);
  for (size_t index = 0; index < fast.size(); ++index) EXPECT_TRUE(counted[index].equal(fast[index]));
  // A wrong attention changes the logits: the seam is not decorative.
  ForwardKernels broken;
  broken.attention = [](const AttentionInputs& inputs) { return at::zeros_like(inputs.query); };
  EXPECT_GT(max_abs_diff(run(&broken)[0], fast[0]), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, ForwardKernelsTest,
                         ::testing::Values("llama_tied", "mistral", "qwen2", "qwen3"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(LinearKernelTest, DenseEqualsNaiveWithAndWithoutBias) {
  at::manual_seed(0);
  LinearWeight weight;
  weight.weight = at::randn({37, 53});
  const at::Tensor x = at::randn({2, 5, 53});
  EXPECT_LE(max_abs_diff(linear(x, weight), naive_linear(x, weight)), kKernelTolerance);
  weight.bias = at::randn({37});
  EXPECT_LE(max_abs_diff(linear(x, weight), naive_linear(x, weight)), kKernelTolerance);
  EXPECT_EQ(weight.out_features(), 37);
  EXPECT_EQ(weight.in_features(), 53);
  EXPECT_STREQ(weight_storage_name(weight.storage), "dense");
}

// The mask cases every attention kernel must get right, for `rows` rows (at least 2) with 6 query heads on
// 2 KV heads: 3 new tokens after 4 old slots, row 1's second old slot and last new token padding (an explicit
// mask); a prefill (no old slots, all real: plain causal, no mask tensor); a decode step (one new token
// per row, every slot real: attend to everything, no mask).
std::vector<AttentionInputs> mask_cases(int64_t rows) {
  AttentionInputs padded;
  padded.query = at::randn({rows, 6, 3, 8});
  padded.keys = at::randn({rows, 2, 7, 8});
  padded.values = at::randn({rows, 2, 7, 8});
  padded.scale = 1.0 / std::sqrt(8.0);
  at::Tensor slot_mask = at::ones({rows, 4}, at::kBool);
  at::Tensor token_mask = at::ones({rows, 3}, at::kBool);
  slot_mask[1][1] = false;
  token_mask[1][2] = false;
  padded.mask = attention_mask(slot_mask, token_mask);

  AttentionInputs causal = padded;
  causal.keys = padded.keys.narrow(2, 4, 3);
  causal.values = padded.values.narrow(2, 4, 3);
  causal.mask = attention_mask(at::ones({rows, 0}, at::kBool), at::ones({rows, 3}, at::kBool));

  AttentionInputs decode = padded;
  decode.query = padded.query.narrow(2, 0, 1);
  decode.mask = attention_mask(at::ones({rows, 6}, at::kBool), at::ones({rows, 1}, at::kBool));
  return {padded, causal, decode};
}

TEST(AttentionKernelTest, SdpaEqualsNaiveForEveryMaskCase) {
  at::manual_seed(0);
  const std::vector<AttentionInputs> cases = mask_cases(2);
  ASSERT_TRUE(cases[0].mask.allowed.defined());
  EXPECT_FALSE(cases[1].mask.allowed.defined());
  EXPECT_TRUE(cases[1].mask.causal);
  EXPECT_FALSE(cases[2].mask.allowed.defined());
  EXPECT_FALSE(cases[2].mask.causal);
  for (const AttentionInputs& each : cases) {
    EXPECT_LE(max_abs_diff(sdpa_attention(each), naive_attention(each)), kKernelTolerance);
  }
}

// The mask cases for 3 rows with shared prefixes: row 0 reads prefix A, row 1 none, row 2 reads A then B
// (a composition).
std::vector<AttentionInputs> shared_prefix_cases() {
  at::manual_seed(1);
  std::vector<AttentionInputs> cases = mask_cases(3);
  const SharedPrefixSlots a{at::randn({2, 5, 8}), at::randn({2, 5, 8}), at::tensor({0, 2}, at::kLong)};
  const SharedPrefixSlots b{at::randn({2, 4, 8}), at::randn({2, 4, 8}), at::tensor({2}, at::kLong)};
  for (AttentionInputs& each : cases) each.shared_prefixes = {a, b};
  return cases;
}

TEST(AttentionKernelTest, SharedPrefixAttentionEqualsTheNaiveOneOnCopiedPrefixes) {
  const std::vector<AttentionInputs> cases = shared_prefix_cases();
  const AttentionInputs& inputs = cases[0];
  for (const AttentionInputs& each : cases) {
    const at::Tensor shared = shared_prefix_attention(each);
    EXPECT_LE(max_abs_diff(shared, naive_attention(each)), kKernelTolerance);
    EXPECT_TRUE(sdpa_attention(each).equal(shared));  // the fast kernel hands shared prefixes over
    // One query at a time (the chunking of long prefills), and the explicit float32 math other devices run
    // instead of the CPU's fused kernel, compute the same.
    SharedPrefixAttentionOptions one_query;
    one_query.max_score_elements = 1;
    EXPECT_LE(max_abs_diff(shared_prefix_attention(each, one_query), shared), 1e-6);
    SharedPrefixAttentionOptions explicit_math;
    explicit_math.fused_cpu_kernel = false;
    EXPECT_LE(max_abs_diff(shared_prefix_attention(each, explicit_math), naive_attention(each)),
              kKernelTolerance);
    explicit_math.max_score_elements = 1;
    EXPECT_LE(max_abs_diff(shared_prefix_attention(each, explicit_math), shared), kKernelTolerance);
  }
  // Without shared prefixes the naive reference is unchanged, and the prefix matters.
  AttentionInputs alone = inputs;
  alone.shared_prefixes.clear();
  EXPECT_GT(max_abs_diff(shared_prefix_attention(inputs), sdpa_attention(alone)), 1e-3);
  EXPECT_LE(max_abs_diff(shared_prefix_attention(alone), naive_attention(alone)), kKernelTolerance);
}

// The explicit float32 path is what CUDA runs: on a CUDA device it equals the naive reference computed on
// the CPU. Skipped on machines without one.
TEST(AttentionKernelTest, SharedPrefixAttentionOnCudaEqualsTheNaiveOne) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device on this machine";
  const at::Device cuda(at::kCUDA, 0);
  for (const AttentionInputs& on_cpu : shared_prefix_cases()) {
    AttentionInputs on_cuda = on_cpu;
    on_cuda.query = on_cpu.query.to(cuda);
    on_cuda.keys = on_cpu.keys.to(cuda);
    on_cuda.values = on_cpu.values.to(cuda);
    if (on_cpu.mask.allowed.defined()) on_cuda.mask.allowed = on_cpu.mask.allowed.to(cuda);
    for (SharedPrefixSlots& shared : on_cuda.shared_prefixes) {
      shared.keys = shared.keys.to(cuda);
      shared.values = shared.values.to(cuda);
      shared.row_index = shared.row_index.to(cuda);
    }
    EXPECT_LE(max_abs_diff(shared_prefix_attention(on_cuda).cpu(), naive_attention(on_cpu)),
              kKernelTolerance);
  }
}

}  // namespace
}  // namespace cartridge
