// Highway compiles this file once per instruction set (foreach_target.h re-includes it); the part under
// HWY_ONCE is compiled once and dispatches to the best copy at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "model/float_block_kernels.cc"
#include <hwy/foreach_target.h>  // must come before highway.h

#include <hwy/highway.h>

#include <vector>

// Block layouts (ggml-common.h; docs/quantized.md): every block holds 32 values.
#ifndef CARTRIDGE_FLOAT_BLOCK_LAYOUTS
#define CARTRIDGE_FLOAT_BLOCK_LAYOUTS
namespace cartridge::float_block_kernels {
constexpr uint32_t kTypeQ4_0 = 2;  // half d, 16 bytes of nibbles: value i = d (q_i - 8)
constexpr uint32_t kTypeQ4_1 = 3;  // half d, half m, 16 bytes of nibbles: value i = d q_i + m
constexpr uint32_t kTypeQ8_0 = 8;  // half d, 32 int8: value i = d q_i
constexpr int64_t kBlockValues = 32;
// Low nibbles hold values 0..15 of a block, high nibbles values 16..31.
constexpr int64_t kHalfBlock = 16;

inline int64_t block_bytes(uint32_t type) { return type == kTypeQ4_0 ? 18 : type == kTypeQ4_1 ? 20 : 34; }
}  // namespace cartridge::float_block_kernels
#endif

HWY_BEFORE_NAMESPACE();
namespace cartridge::float_block_kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The half at `bytes` broadcast to every float lane: one broadcast and one conversion instruction where the
// CPU converts halves (F16C), no scalar bit manipulation per block.
template <class DF>
HWY_INLINE hn::Vec<DF> BroadcastHalf(DF df, const uint8_t* bytes) {
  const hn::Rebind<uint16_t, DF> du16;
  const hn::Rebind<hwy::float16_t, DF> df16;
  const uint16_t bits = static_cast<uint16_t>(bytes[0] | (bytes[1] << 8));
  return hn::PromoteTo(df, hn::BitCast(df16, hn::Set(du16, bits)));
}

// sum over the blocks of d * sum(q_i x_i) for one row of Q4_0 or Q4_1 blocks (the -8 offset or the minimum
// is added by the caller from the block sums of x).
template <bool kHasMinimum>
HWY_INLINE float DotNibbleRow(const uint8_t* row, const float* x, const float* block_sums, int64_t blocks) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const size_t lanes = hn::Lanes(df);
  const auto low_mask = hn::Set(du8, uint8_t{0x0F});
  auto total = hn::Zero(df);
  // sum over blocks of m * sum(x) (Q4_1) or -8 d * sum(x) (Q4_0), in every lane
  auto offsets = hn::Zero(df);
  const auto minus_eight = hn::Set(df, -8.0f);
  const int64_t stride = kHasMinimum ? 20 : 18;
  for (int64_t block = 0; block < blocks; ++block) {
    const uint8_t* bytes = row + block * stride;
    const auto scale = BroadcastHalf(df, bytes);
    const auto offset = kHasMinimum ? BroadcastHalf(df, bytes + 2) : hn::Mul(minus_eight, scale);
    offsets = hn::MulAdd(offset, hn::Set(df, block_sums[block]), offsets);
    const uint8_t* nibbles = bytes + (kHasMinimum ? 4 : 2);
    const float* values = x + block * kBlockValues;
    auto block_total = hn::Zero(df);
    for (size_t i = 0; i < static_cast<size_t>(kHalfBlock); i += lanes) {
      const auto packed = hn::LoadU(du8, nibbles + i);
      const auto low = hn::ConvertTo(df, hn::PromoteTo(di, hn::And(packed, low_mask)));
      const auto high = hn::ConvertTo(df, hn::PromoteTo(di, hn::ShiftRight<4>(packed)));
      block_total = hn::MulAdd(low, hn::LoadU(df, values + i), block_total);
      block_total = hn::MulAdd(high, hn::LoadU(df, values + kHalfBlock + i), block_total);
    }
    total = hn::MulAdd(scale, block_total, total);
  }
  return hn::GetLane(hn::SumOfLanes(df, total)) + hn::GetLane(offsets);
}

HWY_INLINE float DotQ8_0Row(const uint8_t* row, const float* x, int64_t blocks) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t lanes = hn::Lanes(df);
  auto total = hn::Zero(df);
  for (int64_t block = 0; block < blocks; ++block) {
    const uint8_t* bytes = row + block * 34;
    const int8_t* quants = reinterpret_cast<const int8_t*>(bytes + 2);
    const float* values = x + block * kBlockValues;
    auto block_total = hn::Zero(df);
    for (size_t i = 0; i < static_cast<size_t>(kBlockValues); i += lanes) {
      const auto q = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(di8, quants + i)));
      block_total = hn::MulAdd(q, hn::LoadU(df, values + i), block_total);
    }
    total = hn::MulAdd(BroadcastHalf(df, bytes), block_total, total);
  }
  return hn::GetLane(hn::SumOfLanes(df, total));
}

// Rows [row_begin, row_end) of blocks -> float32 values, `columns` per row, at output + row * columns: the
// same d q_i (+ m) in float32 as ggml's and the gguf package's dequantisation.
void DequantizeRows(uint32_t type, const uint8_t* weight, int64_t columns, int64_t row_begin, int64_t row_end,
                    float* output) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(df)> du8;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t lanes = hn::Lanes(df);
  const int64_t blocks = columns / kBlockValues;
  const int64_t stride = block_bytes(type);
  const auto low_mask = hn::Set(du8, uint8_t{0x0F});
  for (int64_t row = row_begin; row < row_end; ++row) {
    for (int64_t block = 0; block < blocks; ++block) {
      const uint8_t* bytes = weight + (row * blocks + block) * stride;
      float* values = output + row * columns + block * kBlockValues;
      const auto scale = BroadcastHalf(df, bytes);
      if (type == kTypeQ8_0) {
        const int8_t* quants = reinterpret_cast<const int8_t*>(bytes + 2);
        for (size_t i = 0; i < static_cast<size_t>(kBlockValues); i += lanes) {
          hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(di8, quants + i))), scale), df,
                     values + i);
        }
        continue;
      }
      // Q4_0: d q - 8 d; Q4_1: d q + m.
      const auto offset =
          type == kTypeQ4_1 ? BroadcastHalf(df, bytes + 2) : hn::Mul(hn::Set(df, -8.0f), scale);
      const uint8_t* nibbles = bytes + (type == kTypeQ4_1 ? 4 : 2);
      for (size_t i = 0; i < static_cast<size_t>(kHalfBlock); i += lanes) {
        const auto packed = hn::LoadU(du8, nibbles + i);
        const auto low = hn::ConvertTo(df, hn::PromoteTo(di, hn::And(packed, low_mask)));
        const auto high = hn::ConvertTo(df, hn::PromoteTo(di, hn::ShiftRight<4>(packed)));
        hn::StoreU(hn::MulAdd(low, scale, offset), df, values + i);
        hn::StoreU(hn::MulAdd(high, scale, offset), df, values + kHalfBlock + i);
      }
    }
  }
}

// sum(a_i b_i) over `count` floats (a multiple of the lanes), four accumulators deep.
HWY_INLINE float DotFloats(const float* a, const float* b, int64_t count) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  auto sum0 = hn::Zero(df), sum1 = hn::Zero(df), sum2 = hn::Zero(df), sum3 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 4 * lanes <= count; i += 4 * lanes) {
    sum0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), sum0);
    sum1 = hn::MulAdd(hn::LoadU(df, a + i + lanes), hn::LoadU(df, b + i + lanes), sum1);
    sum2 = hn::MulAdd(hn::LoadU(df, a + i + 2 * lanes), hn::LoadU(df, b + i + 2 * lanes), sum2);
    sum3 = hn::MulAdd(hn::LoadU(df, a + i + 3 * lanes), hn::LoadU(df, b + i + 3 * lanes), sum3);
  }
  for (; i < count; i += lanes) sum0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), sum0);
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(sum0, sum1), hn::Add(sum2, sum3))));
}

// output[token * rows + row] for row in [row_begin, row_end) and every token. block_sums [tokens, blocks]:
// sum(x) per block (Q4_0, Q4_1).
void MultiplyRows(uint32_t type, const uint8_t* weight, int64_t rows, int64_t columns, const float* input,
                  const float* block_sums, int64_t tokens, int64_t row_begin, int64_t row_end,
                  float* output) {
  const int64_t blocks = columns / kBlockValues;
  const int64_t row_bytes = blocks * block_bytes(type);
  if (tokens == 1) {
    // One token: the blocks' integers meet x straight from the weight bytes, which are read once anyway.
    for (int64_t row = row_begin; row < row_end; ++row) {
      const uint8_t* blocks_of_row = weight + row * row_bytes;
      switch (type) {
        case kTypeQ4_0: output[row] = DotNibbleRow<false>(blocks_of_row, input, block_sums, blocks); break;
        case kTypeQ4_1: output[row] = DotNibbleRow<true>(blocks_of_row, input, block_sums, blocks); break;
        default: output[row] = DotQ8_0Row(blocks_of_row, input, blocks); break;
      }
    }
    return;
  }
  // Several tokens: each row is dequantised once into a buffer that stays in L1, then every token's dot
  // product with it is plain float32 (the integer conversions are not repeated per token).
  std::vector<float> row_values(static_cast<size_t>(columns));  // [columns]
  for (int64_t row = row_begin; row < row_end; ++row) {
    DequantizeRows(type, weight + row * row_bytes, columns, 0, 1, row_values.data());
    for (int64_t token = 0; token < tokens; ++token) {
      output[token * rows + row] = DotFloats(row_values.data(), input + token * columns, columns);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace cartridge::float_block_kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <vector>

#include "model/float_block_kernels.h"

namespace cartridge::float_block_kernels {

HWY_EXPORT(MultiplyRows);
HWY_EXPORT(DequantizeRows);

namespace {

// The ggml level names CARTRIDGE_CPU_ISA takes (quantized_kernels.h) -> the best Highway target each
// allows. Highway has no AVX-only target: "sandybridge" runs SSE4.
int64_t target_cap(const std::string& level) {
  if (level == "x64" || level == "sse42" || level == "sandybridge") return HWY_SSE4;
  if (level == "haswell" || level == "alderlake") return HWY_AVX2;
  if (level == "skylakex") return HWY_AVX3;
  return HWY_AVX3_DL;  // icelake, sapphirerapids
}

// Applies CARTRIDGE_CPU_ISA once, before the first product.
void apply_environment_cap() {
  static const bool applied = [] {
    const char* level = std::getenv("CARTRIDGE_CPU_ISA");
    if (level != nullptr && *level != '\0') {
      // Lower bits are better targets: keep the cap and everything below it.
      const int64_t cap = target_cap(level);
      hwy::SetSupportedTargetsForTest(hwy::SupportedTargets() & ~(cap - 1));
    }
    return true;
  }();
  (void)applied;
}

}  // namespace

bool supports(uint32_t ggml_type) {
  return ggml_type == kTypeQ4_0 || ggml_type == kTypeQ4_1 || ggml_type == kTypeQ8_0;
}

void multiply(uint32_t ggml_type, const uint8_t* weight, int64_t rows, int64_t columns, const float* input,
              int64_t tokens, float* output) {
  TORCH_CHECK(supports(ggml_type), "float_block_kernels: no kernel for GGUF type ", ggml_type);
  TORCH_CHECK(columns % kBlockValues == 0, "float_block_kernels: ", columns, " columns are not whole blocks");
  apply_environment_cap();
  const int64_t blocks = columns / kBlockValues;
  std::vector<float> block_sums(static_cast<size_t>(tokens * blocks), 0.0f);  // [tokens, blocks]
  if (ggml_type != kTypeQ8_0 && tokens == 1) {  // only the one-token kernels use them
    for (int64_t token = 0; token < tokens; ++token) {
      for (int64_t block = 0; block < blocks; ++block) {
        const float* values = input + token * columns + block * kBlockValues;
        float sum = 0.0f;
        for (int64_t i = 0; i < kBlockValues; ++i) sum += values[i];
        block_sums[token * blocks + block] = sum;
      }
    }
  }
  constexpr int64_t kRowsPerTask = 16;
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    HWY_DYNAMIC_DISPATCH(MultiplyRows)
    (ggml_type, weight, rows, columns, input, block_sums.data(), tokens, begin, end, output);
  });
}

void dequantize(uint32_t ggml_type, const uint8_t* weight, int64_t rows, int64_t columns, float* output) {
  TORCH_CHECK(supports(ggml_type), "float_block_kernels: no kernel for GGUF type ", ggml_type);
  TORCH_CHECK(columns % kBlockValues == 0, "float_block_kernels: ", columns, " columns are not whole blocks");
  apply_environment_cap();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    HWY_DYNAMIC_DISPATCH(DequantizeRows)(ggml_type, weight, columns, begin, end, output);
  });
}

std::vector<std::string> runnable_targets() {
  apply_environment_cap();
  std::vector<std::string> names;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) names.push_back(hwy::TargetName(target));
  return names;
}

std::string current_target() {
  apply_environment_cap();
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  return targets.empty() ? "" : hwy::TargetName(targets.front());
}

void use_target(const std::string& target) {
  apply_environment_cap();
  if (target.empty()) {
    hwy::SetSupportedTargetsForTest(0);  // 0: back to what the CPU supports
    return;
  }
  hwy::SetSupportedTargetsForTest(0);  // search among everything the CPU runs, not the last choice
  for (int64_t candidate : hwy::SupportedAndGeneratedTargets()) {
    if (target == hwy::TargetName(candidate)) {
      hwy::SetSupportedTargetsForTest(candidate);
      return;
    }
  }
  TORCH_CHECK(false, "float_block_kernels: target ", target, " is not runnable here");
}

}  // namespace cartridge::float_block_kernels
#endif  // HWY_ONCE
