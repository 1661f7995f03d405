// ggml's quantised matrix kernels (model/quantized_kernels.h) against the oracle "dequantise with the gguf
// package, then multiply in float64", for every GGUF type we multiply as stored, at every instruction-set
// level this CPU runs (x64 and sse42 are plain C, sandybridge AVX, haswell AVX2, ...), on shapes that reach
// every remainder path (tests/fixtures/make_quantized.py).
//
// The tolerance comes from the kernels' arithmetic. They round each block of activations to 8 bits
// (Q8_0 / Q8_1: 32 values, Q8_K: 256) with the scale d = amax / 127, so a value moves by at most d / 2; the
// Q8_0 and Q8_1 scales are themselves stored in half precision (relative error 2^-11, times at most 127
// steps). Per output the error is then at most sum over blocks of sum |w| * amax * (1/254 + 2^-11). Q8_1
// also stores d * sum(q) in half precision for the Q4_1 / Q5_1 minimum term, which the block's largest
// |w| bounds: 32 * 2^-11 * max|w| * amax per block. Float32 products and sums in any order add at most
// n * 2^-24 of sum |w x| (5e-5 for our n <= 768).
#include <cmath>
#include <cstdlib>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "io/ggml_types.h"
#include "model/float_block_kernels.h"
#include "model/linear.h"
#include "model/quantized_kernels.h"
#include "model_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::get;
using testing::read_tensors;

struct QuantizedCase {
  uint32_t ggml_type;
  std::string name;
  at::Tensor blocks;       // [rows, bytes per row] uint8
  at::Tensor dequantized;  // [rows, columns] float32 (gguf package)
  at::Tensor input;        // [tokens, columns] float32
  int64_t activation_block;
};

// The fixture of one block type (tests/fixtures/make_quantized.py), read once per test program; the tests
// only read its tensors.
const std::map<std::string, at::Tensor>& fixture_tensors(const std::string& type_name) {
  static std::map<std::string, std::map<std::string, at::Tensor>> read;
  auto found = read.find(type_name);
  if (found == read.end()) {
    found =
        read.emplace(type_name, read_tensors(fixture_path("quantized/" + type_name + ".safetensors"))).first;
  }
  return found->second;
}

// Every type the kernels support, with its fixture; a supported type without a fixture fails.
std::vector<QuantizedCase> all_cases(const QuantizedKernels& kernels) {
  std::vector<QuantizedCase> cases;
  for (uint32_t type = 0; type < 64; ++type) {
    if (!kernels.supports(type)) continue;
    const GgmlTypeTraits* traits = find_ggml_type(type);
    EXPECT_NE(traits, nullptr) << type;
    if (traits == nullptr) continue;
    const auto& tensors = fixture_tensors(traits->name);
    cases.push_back({type, traits->name, get(tensors, "blocks"), get(tensors, "dequantized"),
                     get(tensors, "input"), traits->block_elements == 256 ? 256 : 32});
  }
  return cases;
}

// The bound of the file comment for every output [tokens, rows], float64.
at::Tensor error_bound(const QuantizedCase& test_case) {
  const at::Tensor x = test_case.input.to(at::kDouble);        // [T, C]
  const at::Tensor w = test_case.dequantized.to(at::kDouble);  // [R, C]
  const int64_t block = test_case.activation_block;
  const int64_t blocks = x.size(1) / block;
  const at::Tensor activation_amax = x.abs().view({x.size(0), blocks, block}).amax(-1);  // [T, B]
  const at::Tensor weight_sum = w.abs().view({w.size(0), blocks, block}).sum(-1);        // [R, B]
  const at::Tensor weight_max = w.abs().view({w.size(0), blocks, block}).amax(-1);       // [R, B]
  const double half_step = 1.0 / 254.0 + std::ldexp(1.0, -11);
  const double minimum_term = 32.0 * std::ldexp(1.0, -11);
  return at::matmul(activation_amax, weight_sum.t()) * half_step +
         at::matmul(activation_amax, weight_max.t()) * minimum_term + at::matmul(x.abs(), w.abs().t()) * 5e-5;
}

at::Tensor reference_product(const QuantizedCase& test_case, int64_t tokens) {
  return at::matmul(test_case.input.slice(0, 0, tokens).to(at::kDouble),
                    test_case.dequantized.to(at::kDouble).t());  // [tokens, R]
}

// Every |output - reference| within its bound; returns the largest error / bound.
double check_within_bound(const at::Tensor& output, const QuantizedCase& test_case, int64_t tokens,
                          const std::string& what) {
  const at::Tensor error = (output.to(at::kDouble) - reference_product(test_case, tokens)).abs();
  const at::Tensor bound = error_bound(test_case).slice(0, 0, tokens);
  const int64_t outside = (error > bound).sum().item<int64_t>();
  EXPECT_EQ(outside, 0) << what << ": " << outside << " of " << error.numel()
                        << " outputs outside the bound; largest error " << error.max().item<double>();
  return (error / bound.clamp_min(1e-300)).max().item<double>();
}

TEST(QuantizedKernelsTest, EveryLevelThisCpuRunsIsInstalledAndTheFallbackIsAmongThem) {
  const std::vector<std::string> variants = QuantizedKernels::runnable_variants();
  ASSERT_FALSE(variants.empty()) << "no ggml CPU variant loads from " << QuantizedKernels::library_folder();
  EXPECT_EQ(variants.front(), "x64");  // plain C: runs on every x86-64
  EXPECT_EQ(QuantizedKernels::for_this_cpu().name(),
            std::getenv("CARTRIDGE_CPU_ISA") != nullptr ? std::getenv("CARTRIDGE_CPU_ISA") : variants.back());
  EXPECT_THROW(QuantizedKernels::variant("no-such-level"), UnsupportedError);
}

TEST(QuantizedKernelsTest, EveryTypeAtEveryLevelEqualsTheGgufDequantisationWithinTheKernelsRounding) {
  c10::InferenceMode inference;
  const std::vector<std::string> variants = QuantizedKernels::runnable_variants();
  ASSERT_FALSE(variants.empty());
  const std::vector<QuantizedCase> cases = all_cases(QuantizedKernels::variant(variants.front()));
  ASSERT_EQ(cases.size(), 10u) << "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K";
  for (const std::string& variant : variants) {
    const QuantizedKernels& kernels = QuantizedKernels::variant(variant);
    for (const QuantizedCase& test_case : cases) {
      ASSERT_TRUE(kernels.supports(test_case.ggml_type)) << variant << " " << test_case.name;
      const int64_t rows = test_case.blocks.size(0);
      const int64_t columns = test_case.dequantized.size(1);
      for (int64_t tokens : {int64_t{1}, int64_t{3}, test_case.input.size(0)}) {
        at::Tensor output = at::empty({tokens, rows}, at::kFloat);
        kernels.multiply(test_case.ggml_type, test_case.blocks.data_ptr<uint8_t>(), rows, columns,
                         test_case.input.data_ptr<float>(), tokens, output.data_ptr<float>());
        const double ratio = check_within_bound(
            output, test_case, tokens, variant + " " + test_case.name + " x" + std::to_string(tokens));
        // The bound is loose by design (worst-case rounding); the typical error is far inside it.
        EXPECT_LT(ratio, 1.0) << variant << " " << test_case.name;
      }
    }
  }
}

TEST(QuantizedKernelsTest, DequantisationEqualsTheGgufPackage) {
  for (const QuantizedCase& test_case : all_cases(QuantizedKernels::for_this_cpu())) {
    at::Tensor values = at::empty_like(test_case.dequantized);
    QuantizedKernels::dequantize(test_case.ggml_type, test_case.blocks.data_ptr<uint8_t>(),
                                 test_case.blocks.size(0), values.size(1), values.data_ptr<float>());
    // Both compute d * q (+ m) per value in float32; the K-quants' scale products may round differently.
    const double tolerance = 1e-6 * test_case.dequantized.abs().max().item<double>();
    EXPECT_LE((values - test_case.dequantized).abs().max().item<double>(), tolerance) << test_case.name;
  }
}

TEST(QuantizedKernelsTest, LinearOnStoredBlocksMatchesTheReferenceForDecodeAndPrefillShapes) {
  c10::InferenceMode inference;
  const QuantizedKernels& kernels = QuantizedKernels::for_this_cpu();
  for (const QuantizedCase& test_case : all_cases(kernels)) {
    const int64_t columns = test_case.dequantized.size(1);
    LinearWeight weight = ggml_blocks_weight(test_case.blocks, test_case.ggml_type, columns, &kernels);
    EXPECT_EQ(weight.in_features(), columns);
    EXPECT_EQ(weight.out_features(), test_case.blocks.size(0));
    // 1 and 7 rows go through the integer kernels, all 37 through dequantisation and at::linear.
    for (int64_t tokens : {int64_t{1}, int64_t{7}, test_case.input.size(0)}) {
      const at::Tensor x = test_case.input.slice(0, 0, tokens).view({1, tokens, columns});
      const at::Tensor output = linear(x, weight);  // [1, tokens, R]
      ASSERT_EQ(output.sizes(), (std::vector<int64_t>{1, tokens, test_case.blocks.size(0)}));
      check_within_bound(output[0], test_case, tokens, test_case.name + " linear x" + std::to_string(tokens));
    }
    // The naive reference sees the same matrix.
    EXPECT_LE((dense_weight(weight) - test_case.dequantized).abs().max().item<double>(),
              1e-6 * test_case.dequantized.abs().max().item<double>())
        << test_case.name;
    // An embedding lookup dequantises the rows asked for.
    const at::Tensor ids = at::tensor(std::vector<int64_t>{5, 0, 40, 5}).view({2, 2});
    const at::Tensor rows = weight_rows(weight, ids);  // [2, 2, columns]
    EXPECT_LE((rows.view({4, columns}) - test_case.dequantized.index_select(0, ids.view({4})))
                  .abs()
                  .max()
                  .item<double>(),
              1e-6 * test_case.dequantized.abs().max().item<double>())
        << test_case.name;
  }
}

// float_block_kernels: no activation rounding, so each output is the float64 product up to float32
// rounding of the products and of two stages of sums (per block, then over blocks and lanes): at most
// 4 n 2^-24 sum |w x|, n the values per row.
at::Tensor float_error_bound(const QuantizedCase& test_case, int64_t tokens) {
  const at::Tensor x = test_case.input.slice(0, 0, tokens).to(at::kDouble);  // [tokens, C]
  const at::Tensor w = test_case.dequantized.to(at::kDouble);                // [R, C]
  return at::matmul(x.abs(), w.abs().t()) * (4.0 * x.size(1) * std::ldexp(1.0, -24));
}

// One token times Q4_0, Q4_1, Q5_0, Q5_1 or Q6_K rounds each block of 32 activations to int16 (step = amax
// / 32767; a value moves by at most step / 2, and the float32 x / step by a rounding more, 2^-22 amax),
// so the term d q_i x_i moves by at most |d q_i| amax (1/65534 + 2^-22). For Q6_K, d q_i (q_i - 32 there,
// times its group's scale) is w_i. For the others |d q_i| = |w_i - offset| <= |w_i| + max|w| of the block:
// in the fixtures (gguf quantisations) the block's offset (m, or -8 d, -16 d) is the value of its element
// with q = 0. Float32 rounding then adds the float bound above over the terms d q_i x_i and offset x_i,
// each at most (|w_i| + max|w|) |x_i|.
bool rounds_one_token(const QuantizedCase& test_case) {
  return test_case.name == "Q4_0" || test_case.name == "Q4_1" || test_case.name == "Q5_0" ||
         test_case.name == "Q5_1" || test_case.name == "Q6_K";
}

at::Tensor rounded_error_bound(const QuantizedCase& test_case) {
  const at::Tensor x = test_case.input.slice(0, 0, 1).to(at::kDouble);  // [1, C]
  const at::Tensor w = test_case.dequantized.to(at::kDouble);           // [R, C]
  const int64_t blocks = x.size(1) / 32;
  const at::Tensor activation_amax = x.abs().view({1, blocks, 32}).amax(-1);    // [1, B]
  const at::Tensor activation_sum = x.abs().view({1, blocks, 32}).sum(-1);      // [1, B]
  const at::Tensor weight_sum = w.abs().view({w.size(0), blocks, 32}).sum(-1);  // [R, B]
  // The offset's share of |d q_i|: max|w| of the block, none for Q6_K.
  const at::Tensor offset = test_case.name == "Q6_K"
                                ? at::zeros_like(weight_sum)
                                : w.abs().view({w.size(0), blocks, 32}).amax(-1);  // [R, B]
  const double step_half = 1.0 / 65534.0 + std::ldexp(1.0, -22);
  const double float_rounding = 4.0 * x.size(1) * std::ldexp(1.0, -24);
  return at::matmul(activation_amax, (weight_sum + 32.0 * offset).t()) * step_half +
         (at::matmul(x.abs(), w.abs().t()) + 2.0 * at::matmul(activation_sum, offset.t())) * float_rounding;
}

// The bound of one product: rounded_error_bound for one token of the rounding types, float_error_bound
// otherwise.
at::Tensor float_kernels_error_bound(const QuantizedCase& test_case, int64_t tokens) {
  return tokens == 1 && rounds_one_token(test_case) ? rounded_error_bound(test_case)
                                                    : float_error_bound(test_case, tokens);
}

TEST(FloatBlockKernelsTest, EveryTypeAtEveryTargetEqualsTheGgufDequantisationUpToFloat32Rounding) {
  c10::InferenceMode inference;
  const std::vector<std::string> targets = float_block_kernels::runnable_targets();
  ASSERT_FALSE(targets.empty());
  std::vector<QuantizedCase> cases;
  for (const QuantizedCase& test_case : all_cases(QuantizedKernels::for_this_cpu())) {
    if (float_block_kernels::supports(test_case.ggml_type)) cases.push_back(test_case);
  }
  ASSERT_EQ(cases.size(), 7u) << "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q6_K";
  for (const std::string& target : targets) {
    float_block_kernels::use_target(target);
    EXPECT_EQ(float_block_kernels::current_target(), target);
    for (const QuantizedCase& test_case : cases) {
      const int64_t rows = test_case.blocks.size(0);
      const int64_t columns = test_case.dequantized.size(1);
      // Dequantisation: d q (+ m) per value in float32 on both sides, up to an FMA's last bit.
      at::Tensor values = at::empty_like(test_case.dequantized);
      float_block_kernels::dequantize(test_case.ggml_type, test_case.blocks.data_ptr<uint8_t>(), rows,
                                      columns, values.data_ptr<float>());
      EXPECT_LE((values - test_case.dequantized).abs().max().item<double>(),
                1e-6 * test_case.dequantized.abs().max().item<double>())
          << target << " " << test_case.name << " dequantised";
      for (int64_t tokens : {int64_t{1}, int64_t{3}, test_case.input.size(0)}) {
        at::Tensor output = at::empty({tokens, rows}, at::kFloat);
        float_block_kernels::multiply(test_case.ggml_type, test_case.blocks.data_ptr<uint8_t>(), rows,
                                      columns, test_case.input.data_ptr<float>(), tokens,
                                      output.data_ptr<float>());
        const at::Tensor error = (output.to(at::kDouble) - reference_product(test_case, tokens)).abs();
        const int64_t outside = (error > float_kernels_error_bound(test_case, tokens)).sum().item<int64_t>();
        EXPECT_EQ(outside, 0) << target << " " << test_case.name << " x" << tokens << ": largest error "
                              << error.max().item<double>();
      }
    }
  }
  float_block_kernels::use_target("");
  EXPECT_EQ(float_block_kernels::current_target(), targets.front());
}

TEST(FloatBlockKernelsTest, LinearOnStoredBlocksWithFloatActivationsMatchesTheReference) {
  c10::InferenceMode inference;
  for (const QuantizedCase& test_case : all_cases(QuantizedKernels::for_this_cpu())) {
    if (!float_block_kernels::supports(test_case.ggml_type)) continue;
    const int64_t columns = test_case.dequantized.size(1);
    const LinearWeight weight = ggml_blocks_weight(test_case.blocks, test_case.ggml_type, columns);
    EXPECT_EQ(weight.storage, WeightStorage::kGgmlBlocks);
    // 1 and 7 rows through the kernels, all 37 through dequantisation and at::linear.
    for (int64_t tokens : {int64_t{1}, int64_t{7}, test_case.input.size(0)}) {
      const at::Tensor x = test_case.input.slice(0, 0, tokens).view({1, tokens, columns});
      const at::Tensor error =
          (linear(x, weight)[0].to(at::kDouble) - reference_product(test_case, tokens)).abs();
      EXPECT_EQ((error > float_kernels_error_bound(test_case, tokens)).sum().item<int64_t>(), 0)
          << test_case.name << " x" << tokens;
    }
  }
}

TEST(QuantizedKernelsTest, RefusesWhatItCannotMultiply) {
  const QuantizedKernels& kernels = QuantizedKernels::for_this_cpu();
  const std::vector<QuantizedCase> cases = all_cases(kernels);
  ASSERT_FALSE(cases.empty());
  const QuantizedCase& test_case = cases.front();
  const int64_t columns = test_case.dequantized.size(1);
  const LinearWeight weight = ggml_blocks_weight(test_case.blocks, test_case.ggml_type, columns, &kernels);
  // No backward through quantised weights: training must load the model dense.
  const at::Tensor needs_grad = test_case.input.slice(0, 0, 2).clone().requires_grad_(true);
  EXPECT_THROW(linear(needs_grad, weight), c10::Error);
  EXPECT_THROW(linear(test_case.input.slice(0, 0, 2).to(at::kBFloat16), weight), c10::Error);
  // F32 (type 0) and F16 (1) are not block types: they load dense.
  EXPECT_FALSE(kernels.supports(0));
  EXPECT_FALSE(kernels.supports(1));
  EXPECT_THROW(ggml_blocks_weight(test_case.blocks, test_case.ggml_type, columns + 32, &kernels), c10::Error);
}

}  // namespace
}  // namespace cartridge
