// Highway compiles this file once per instruction set (foreach_target.h re-includes it); the part under
// HWY_ONCE is compiled once and dispatches to the best copy at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "model/float_block_kernels.cc"
#include <hwy/foreach_target.h>  // must come before highway.h

#include <hwy/highway.h>

#include "model/float_dot-inl.h"

#include <algorithm>
#include <cstring>
#include <vector>

// Block layouts (ggml-common.h; docs/quantized.md). Q4_0, Q4_1 and Q8_0 blocks hold 32 values; the
// K-quants' super-blocks hold 256.
#ifndef CARTRIDGE_FLOAT_BLOCK_LAYOUTS
#define CARTRIDGE_FLOAT_BLOCK_LAYOUTS
namespace cartridge::float_block_kernels {
constexpr uint32_t kTypeQ4_0 = 2;   // half d, 16 bytes of nibbles: value i = d (q_i - 8)
constexpr uint32_t kTypeQ4_1 = 3;   // half d, half m, 16 bytes of nibbles: value i = d q_i + m
constexpr uint32_t kTypeQ5_0 = 6;   // half d, 32 high bits, 16 bytes of nibbles: value i = d (q_i - 16)
constexpr uint32_t kTypeQ5_1 = 7;   // half d, half m, 32 high bits, 16 bytes of nibbles: value i = d q_i + m
constexpr uint32_t kTypeQ8_0 = 8;   // half d, 32 int8: value i = d q_i
constexpr uint32_t kTypeQ4_K = 12;  // half d, half dmin, 12 bytes of 6-bit scales and minimums, 128 bytes
                                    // of nibbles: value i of sub-block j = (d sc_j) q_i - (dmin m_j)
constexpr uint32_t kTypeQ6_K = 14;  // 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales,
                                    // half d: value i of group g (16 values) = (d sc_g) (q_i - 32)
constexpr int64_t kBlockValues = 32;
constexpr int64_t kSuperBlockValues = 256;
// Low nibbles hold values 0..15 of a block, high nibbles values 16..31.
constexpr int64_t kHalfBlock = 16;

constexpr bool is_k_quant(uint32_t type) { return type == kTypeQ4_K || type == kTypeQ6_K; }
inline bool is_five_bit(uint32_t type) { return type == kTypeQ5_0 || type == kTypeQ5_1; }
constexpr int64_t block_values(uint32_t type) { return is_k_quant(type) ? kSuperBlockValues : kBlockValues; }
constexpr int64_t block_bytes(uint32_t type) {
  switch (type) {
    case kTypeQ4_0: return 18;
    case kTypeQ4_1: return 20;
    case kTypeQ5_0: return 22;
    case kTypeQ5_1: return 24;
    case kTypeQ8_0: return 34;
    case kTypeQ4_K: return 144;
    default: return 210;  // Q6_K
  }
}

// The types whose one-token kernel rounds the activations to int16 (DotSmallIntRow, DotQ6_KRow).
inline bool rounds_activations(uint32_t type) {
  return type == kTypeQ4_0 || type == kTypeQ4_1 || is_five_bit(type) || type == kTypeQ6_K;
}
// What multiplies sum(x) of a block in each value's offset: m (Q4_1, Q5_1; the factor 1 leaves it to the
// block's m), -8 d (Q4_0) or -16 d (Q5_0); Q6_K's -32 is in its integers (factor 0, unused).
inline float offset_factor(uint32_t type) {
  return type == kTypeQ4_0 ? -8.0f : type == kTypeQ5_0 ? -16.0f : type == kTypeQ6_K ? 0.0f : 1.0f;
}
// Largest |int16| an activation rounds to: the block's largest |x| maps here.
constexpr float kInt16Steps = 32767.0f;
// The two floats per block of 32 activations that DotSmallIntRow reads with one load: the int16 step
// (max |x| / 32767, the value of 1 in the rounded block) and sum(x) times offset_factor.
constexpr int64_t kCoefficientsPerBlock = 2;

// What the one-token kernels read besides x itself, per block of 32 values of x (computed once per product
// for all rows). Each pointer is set only where the type needs it.
struct OneTokenActivations {
  const float* block_sums = nullptr;    // [columns / 32]: sum(x) (Q4_K)
  const int16_t* rounded = nullptr;     // [columns]: x / step rounded to int16 (rounds_activations types)
  const float* coefficients = nullptr;  // [columns / 32, kCoefficientsPerBlock] (rounds_activations types)
};

// Byte b of a Q5 block's 32-bit word of fifth bits -> the 8 values' fifth bits, each as 0 or 16 (bit k of b
// is value k's): one 8-byte copy per byte instead of a shift per value.
struct FifthBitTable {
  uint8_t bytes[256][8];
  constexpr FifthBitTable() : bytes() {
    for (int b = 0; b < 256; ++b)
      for (int k = 0; k < 8; ++k) bytes[b][k] = static_cast<uint8_t>(((b >> k) & 1) << 4);
  }
};
inline constexpr FifthBitTable kFifthBits{};

// A Q5 block's 32-bit word of fifth bits at `high_bits` -> fifth[i], value i's fifth bit as 0 or 16.
inline void fifth_bits_of_block(const uint8_t* high_bits, uint8_t fifth[kBlockValues]) {
  for (int byte = 0; byte < 4; ++byte) std::memcpy(fifth + 8 * byte, kFifthBits.bytes[high_bits[byte]], 8);
}

// Q4_K's 6-bit scale and minimum of sub-block j (0..7, 32 values each) from its 12 packed bytes: j < 4 in
// the low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte j + 4 with the top 2 bits of bytes
// j - 4 and j (ggml's get_scale_min_k4).
inline void q4_k_scale_and_minimum(const uint8_t* packed, int j, float* scale, float* minimum) {
  if (j < 4) {
    *scale = static_cast<float>(packed[j] & 63);
    *minimum = static_cast<float>(packed[j + 4] & 63);
  } else {
    *scale = static_cast<float>((packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4));
    *minimum = static_cast<float>((packed[j + 4] >> 4) | ((packed[j] >> 6) << 4));
  }
}
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

// Byte-select indices for TableLookupBytesOr0 that turn a block's 16 nibble bytes, repeated in every
// 128-bit part of a vector (LoadDup128), into lanes of kLaneBytes (2: int16, 4: int32): for `group` g,
// lane k takes byte g * lanes + k into its low byte and zeros above it (an index with the top bit set gives
// 0). Every index stays within its own 128-bit part, as the byte shuffle (pshufb) of x86 wants.
#if HWY_TARGET != HWY_SCALAR
template <size_t kLaneBytes, class DU8>
HWY_INLINE hn::Vec<DU8> NibbleByteIndices(DU8 du8, size_t group) {
  constexpr size_t kMaxBytes = hn::MaxLanes(DU8());
  alignas(64) uint8_t indices[kMaxBytes];
  const size_t bytes = hn::Lanes(du8);
  const size_t lanes = bytes / kLaneBytes;
  for (size_t byte = 0; byte < bytes; ++byte) {
    indices[byte] =
        byte % kLaneBytes == 0 ? static_cast<uint8_t>(group * lanes + byte / kLaneBytes) : uint8_t{0x80};
  }
  return hn::Load(du8, indices);
}

// The byte-select indices of every group of lanes of kLaneBytes (NibbleByteIndices), built once per kernel
// call: the compiler does not fold their construction from arrays, and building them per block or per row
// costs more than the arithmetic.
template <size_t kLaneBytes, class DU8>
struct SmallIntShuffles {
  SmallIntShuffles() {
    const DU8 du8;
    const size_t groups = static_cast<size_t>(kHalfBlock) / (hn::Lanes(du8) / kLaneBytes);  // at most 4
    for (size_t group = 0; group < groups; ++group) {
      nibble_indices[group] = NibbleByteIndices<kLaneBytes>(du8, group);
    }
  }
  hn::Vec<DU8> nibble_indices[4];
};

// The two layouts' indices: int16 lanes of at most a half block (the one-token products, DotSmallIntRow)
// and int32 lanes of a float vector (dequantisation, ForEachSmallIntVector).
using Int16Shuffles = SmallIntShuffles<2, hn::Repartition<uint8_t, hn::CappedTag<int16_t, kHalfBlock>>>;
using Int32Shuffles = SmallIntShuffles<4, hn::Repartition<uint8_t, hn::ScalableTag<float>>>;
#else
struct Int16Shuffles {};  // the scalar target multiplies value by value
struct Int32Shuffles {};
#endif

// One token's activations x [columns] -> rounded [columns] int16 and coefficients [columns / 32, 2]: per
// block of 32 values, step = max |x| / 32767 and x / step rounded to the nearest integer (so x = step *
// rounded up to step / 2 per value, 2^-16 of the block's largest |x|), then (step, sum(x) * factor), the
// sum unrounded. An all-zero block gets step 0 and zeros.
void RoundActivationBlocks(const float* x, int64_t columns, float factor, int16_t* rounded,
                           float* coefficients) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int16_t, decltype(df)> d16;
  const size_t lanes = hn::Lanes(df);
  for (int64_t block = 0; block < columns / kBlockValues; ++block) {
    const float* values = x + block * kBlockValues;
    auto largest = hn::Zero(df);
    auto sum = hn::Zero(df);
    for (size_t i = 0; i < static_cast<size_t>(kBlockValues); i += lanes) {
      const auto value = hn::LoadU(df, values + i);
      largest = hn::Max(largest, hn::Abs(value));
      sum = hn::Add(sum, value);
    }
    const float amax = hn::GetLane(hn::MaxOfLanes(df, largest));
    const auto inverse = hn::Set(df, amax > 0.0f ? kInt16Steps / amax : 0.0f);
    for (size_t i = 0; i < static_cast<size_t>(kBlockValues); i += lanes) {
      // |x| * inverse <= 32767 up to a rounding, and DemoteTo saturates.
      const auto steps = hn::NearestInt(hn::Mul(hn::LoadU(df, values + i), inverse));
      hn::StoreU(hn::DemoteTo(d16, steps), d16, rounded + block * kBlockValues + i);
    }
    coefficients[block * kCoefficientsPerBlock] = amax / kInt16Steps;
    coefficients[block * kCoefficientsPerBlock + 1] = hn::GetLane(hn::SumOfLanes(df, sum)) * factor;
  }
}

// sum over the blocks of d * sum(q_i x_i) + (m, or the offset -8 d or -16 d) * sum(x_i) for one row of
// Q4_0, Q4_1, Q5_0 or Q5_1 blocks (`kType`) and one token, x rounded per block to int16
// (RoundActivationBlocks: x_i = step * r_i, so sum(q_i x_i) = step * sum(q_i r_i)).
//
// sum(q_i r_i) is exact in int32 (at most 31 * 32767 * 32 < 2^31) and comes from int16 pair
// multiply-adds (pmaddwd, 16 values per AVX2 instruction where float32 needs a conversion and a
// multiply-add per 8); one conversion and one multiply-add by d * step per block then make it float. The
// integers come from the 16 nibble bytes loaded once into every 128-bit part (LoadDup128), masked (low
// nibbles) or shifted (high nibbles), a Q5 block's fifth bits or-ed in as 0 or 16 per byte (kFifthBits),
// and an in-lane byte shuffle (pshufb) that puts each lane's byte at the bottom of its int16. d and m (or d
// twice) are converted together and multiplied by the block's (step, sum(x) * factor) in one two-lane
// product. On AVX2 that is 15 vector instructions per Q4_1 block of 32 values where float32 activations
// took 24. The scalar target multiplies value by value, in the same integers.
template <uint32_t kType>
HWY_INLINE float DotSmallIntRow(const uint8_t* row, const OneTokenActivations& activations, int64_t blocks,
                                const Int16Shuffles& shuffles) {
  constexpr bool kFiveBit = kType == kTypeQ5_0 || kType == kTypeQ5_1;
  constexpr bool kHasMinimum = kType == kTypeQ4_1 || kType == kTypeQ5_1;
  constexpr int64_t kStride = block_bytes(kType);
  const int16_t* rounded = activations.rounded;
  const float* coefficients = activations.coefficients;
#if HWY_TARGET != HWY_SCALAR
  const hn::CappedTag<int16_t, kHalfBlock> d16;  // at most a half block per vector
  const hn::Repartition<uint8_t, decltype(d16)> du8;
  const hn::Repartition<uint16_t, decltype(d16)> du16;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Repartition<float, decltype(d16)> df;
  const hn::CappedTag<float, kCoefficientsPerBlock> d2;  // (d, m) times (step, sum(x) * factor)
  const hn::Rebind<hwy::float16_t, decltype(d2)> d2_half;
  const size_t lanes = hn::Lanes(d16);
  const size_t groups = static_cast<size_t>(kHalfBlock) / lanes;  // vectors per half block: 1 or 2
  const auto low_mask = hn::Set(du8, uint8_t{0x0F});
  auto total = hn::Zero(df);
  auto offsets = hn::Zero(d2);  // lane 1: the offset or minimum times sum(x), summed over the blocks
  for (int64_t block = 0; block < blocks; ++block) {
    const uint8_t* bytes = row + block * kStride;
    // (d, m) for Q4_1 and Q5_1, (d, d) for Q4_0 and Q5_0, whose factor -8 or -16 is in the coefficients.
    auto scales = hn::PromoteTo(d2, hn::LoadU(d2_half, reinterpret_cast<const hwy::float16_t*>(bytes)));
    if constexpr (!kHasMinimum) scales = hn::Broadcast<0>(scales);
    const auto scaled = hn::Mul(scales, hn::LoadU(d2, coefficients + block * kCoefficientsPerBlock));
    offsets = hn::Add(offsets, scaled);
    const uint8_t* high_bits = bytes + (kHasMinimum ? 4 : 2);  // Q5 only
    const uint8_t* nibbles = high_bits + (kFiveBit ? 4 : 0);
    const int16_t* values = rounded + block * kBlockValues;
    const auto packed = hn::LoadDup128(du8, nibbles);
    auto low = hn::And(packed, low_mask);
    // The shift works on 16-bit lanes; the mask drops what crossed from the byte above.
    auto high = hn::And(hn::BitCast(du8, hn::ShiftRight<4>(hn::BitCast(du16, packed))), low_mask);
    if constexpr (kFiveBit) {
      alignas(16) uint8_t fifth[kBlockValues];  // value i's fifth bit as 0 or 16
      fifth_bits_of_block(high_bits, fifth);
      low = hn::Or(low, hn::LoadDup128(du8, fifth));
      high = hn::Or(high, hn::LoadDup128(du8, fifth + kHalfBlock));
    }
    // Separate low and high sums, so that their multiply-adds do not wait on each other. On x86 the
    // products arrive whole in the first sum and `odd` stays zero.
    auto low_sum = hn::Zero(d32), high_sum = hn::Zero(d32), odd = hn::Zero(d32);
    for (size_t group = 0; group < groups; ++group) {
      const auto low_q = hn::BitCast(d16, hn::TableLookupBytesOr0(low, shuffles.nibble_indices[group]));
      const auto high_q = hn::BitCast(d16, hn::TableLookupBytesOr0(high, shuffles.nibble_indices[group]));
      low_sum =
          hn::ReorderWidenMulAccumulate(d32, low_q, hn::LoadU(d16, values + group * lanes), low_sum, odd);
      high_sum = hn::ReorderWidenMulAccumulate(
          d32, high_q, hn::LoadU(d16, values + kHalfBlock + group * lanes), high_sum, odd);
    }
    const auto block_sum = hn::RearrangeToOddPlusEven(hn::Add(low_sum, high_sum), odd);  // lanes add up
    total = hn::MulAdd(hn::ConvertTo(df, block_sum), hn::Set(df, hn::GetLane(scaled)), total);
  }
  return hn::GetLane(hn::SumOfLanes(df, total)) + hn::ExtractLane(offsets, 1);
#else
  (void)shuffles;
  const hn::ScalableTag<float> df;
  float total = 0.0f;
  float offsets = 0.0f;
  for (int64_t block = 0; block < blocks; ++block) {
    const uint8_t* bytes = row + block * kStride;
    const float scale = hn::GetLane(BroadcastHalf(df, bytes));
    const float minimum_or_scale = kHasMinimum ? hn::GetLane(BroadcastHalf(df, bytes + 2)) : scale;
    const uint8_t* high_bits = bytes + (kHasMinimum ? 4 : 2);  // Q5 only
    const uint8_t* nibbles = high_bits + (kFiveBit ? 4 : 0);
    const int16_t* values = rounded + block * kBlockValues;
    uint8_t fifth[kBlockValues];  // Q5: value i's fifth bit as 0 or 16
    if constexpr (kFiveBit) fifth_bits_of_block(high_bits, fifth);
    int32_t block_sum = 0;
    for (int64_t i = 0; i < kHalfBlock; ++i) {
      int32_t low = nibbles[i] & 0x0F, high = nibbles[i] >> 4;
      if constexpr (kFiveBit) {
        low |= fifth[i];
        high |= fifth[kHalfBlock + i];
      }
      block_sum += low * values[i] + high * values[kHalfBlock + i];
    }
    total += static_cast<float>(block_sum) * (scale * coefficients[block * kCoefficientsPerBlock]);
    offsets += minimum_or_scale * coefficients[block * kCoefficientsPerBlock + 1];
  }
  return total + offsets;
#endif
}

HWY_INLINE float DotQ8_0Row(const uint8_t* row, const float* x, int64_t blocks) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const size_t lanes = hn::Lanes(df);
  auto total = hn::Zero(df);
  for (int64_t block = 0; block < blocks; ++block) {
    const uint8_t* bytes = row + block * block_bytes(kTypeQ8_0);
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

// The 32 values q_i of a Q4_0 or Q4_1 (0..15), Q5_0 or Q5_1 (0..31) block as floats, handed to
// `use(low, high, i)` a vector at a time (values i and 16 + i): the low nibble and then the high nibble of
// byte i of `nibbles`, Q5 (`kFiveBit`) with its fifth bit from the block's 32-bit word at `high_bits` (bit
// i, bit 16 + i). Vector targets load the 16 bytes once into every 128-bit part (LoadDup128), mask or
// shift them, or in the fifth bits, and move each lane's byte to the bottom of its int32 with an in-lane
// byte shuffle: on AVX2 that replaces widening 8 bytes at a time (vpmovzxbd, across 128-bit halves).
template <bool kFiveBit, class DF, class Use>
HWY_INLINE void ForEachSmallIntVector(DF df, const Int32Shuffles& shuffles, const uint8_t* high_bits,
                                      const uint8_t* nibbles, Use&& use) {
  const size_t lanes = hn::Lanes(df);
  alignas(16) uint8_t fifth[kBlockValues];  // Q5: value i's fifth bit as 0 or 16
  if constexpr (kFiveBit) fifth_bits_of_block(high_bits, fifth);
#if HWY_TARGET != HWY_SCALAR
  const hn::Repartition<uint8_t, DF> du8;
  const hn::Repartition<uint16_t, DF> du16;
  const hn::Repartition<int32_t, DF> di;
  const auto low_mask = hn::Set(du8, uint8_t{0x0F});
  const auto packed = hn::LoadDup128(du8, nibbles);
  auto low = hn::And(packed, low_mask);
  // The shift works on 16-bit lanes; the mask drops what crossed from the byte above.
  auto high = hn::And(hn::BitCast(du8, hn::ShiftRight<4>(hn::BitCast(du16, packed))), low_mask);
  if constexpr (kFiveBit) {
    low = hn::Or(low, hn::LoadDup128(du8, fifth));
    high = hn::Or(high, hn::LoadDup128(du8, fifth + kHalfBlock));
  }
  for (size_t i = 0; i < static_cast<size_t>(kHalfBlock); i += lanes) {
    const auto& indices = shuffles.nibble_indices[i / lanes];
    use(hn::ConvertTo(df, hn::BitCast(di, hn::TableLookupBytesOr0(low, indices))),
        hn::ConvertTo(df, hn::BitCast(di, hn::TableLookupBytesOr0(high, indices))), i);
  }
#else
  (void)shuffles;
  const hn::Rebind<int32_t, DF> di;
  for (size_t i = 0; i < static_cast<size_t>(kHalfBlock); i += lanes) {
    const int32_t low = (nibbles[i] & 0x0F) | (kFiveBit ? fifth[i] : 0);
    const int32_t high = (nibbles[i] >> 4) | (kFiveBit ? fifth[kHalfBlock + i] : 0);
    use(hn::ConvertTo(df, hn::Set(di, low)), hn::ConvertTo(df, hn::Set(di, high)), i);
  }
#endif
}

// A Q8_0 block -> its 32 float32 values d q.
HWY_INLINE void DequantizeQ8_0Block(const uint8_t* bytes, float* values) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> di8;
  const auto scale = BroadcastHalf(df, bytes);
  const int8_t* quants = reinterpret_cast<const int8_t*>(bytes + 2);
  for (size_t i = 0; i < static_cast<size_t>(kBlockValues); i += hn::Lanes(df)) {
    hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(di8, quants + i))), scale), df,
               values + i);
  }
}

// Block `bytes` of Q4_0, Q4_1, Q5_0 or Q5_1 (`kType`) -> its 32 float32 values: d q - 8 d (Q4_0), d q -
// 16 d (Q5_0), d q + m (Q4_1, Q5_1), each with one rounding (an FMA; 8 d and 16 d are exact).
template <uint32_t kType>
HWY_INLINE void DequantizeSmallIntBlock(const Int32Shuffles& shuffles, const uint8_t* bytes, float* values) {
  constexpr bool kFiveBit = kType == kTypeQ5_0 || kType == kTypeQ5_1;
  constexpr bool kHasMinimum = kType == kTypeQ4_1 || kType == kTypeQ5_1;
  const hn::ScalableTag<float> df;
  const auto scale = BroadcastHalf(df, bytes);
  const auto offset =
      kHasMinimum ? BroadcastHalf(df, bytes + 2) : hn::Mul(hn::Set(df, kFiveBit ? -16.0f : -8.0f), scale);
  const uint8_t* high_bits = bytes + (kHasMinimum ? 4 : 2);  // Q5 only
  ForEachSmallIntVector<kFiveBit>(df, shuffles, high_bits, high_bits + (kFiveBit ? 4 : 0),
                                  [&](auto low, auto high, size_t i) {
                                    hn::StoreU(hn::MulAdd(low, scale, offset), df, values + i);
                                    hn::StoreU(hn::MulAdd(high, scale, offset), df, values + kHalfBlock + i);
                                  });
}

// The 32 values of Q4_K sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles) of chunk c: the 32 bytes at
// `nibbles` as floats, handed to `use(low, high, i)` a vector at a time (value i and 32 + i of the chunk).
template <class DF, class Use>
HWY_INLINE void ForEachQ4_KChunkVector(DF df, const uint8_t* nibbles, Use&& use) {
  const hn::Rebind<int32_t, DF> di;
  const hn::Rebind<uint8_t, DF> du8;
  const auto low_mask = hn::Set(du8, uint8_t{0x0F});
  for (size_t i = 0; i < static_cast<size_t>(kBlockValues); i += hn::Lanes(df)) {
    const auto packed = hn::LoadU(du8, nibbles + i);
    use(hn::ConvertTo(df, hn::PromoteTo(di, hn::And(packed, low_mask))),
        hn::ConvertTo(df, hn::PromoteTo(di, hn::ShiftRight<4>(packed))), i);
  }
}

// sum over the super-blocks of sum_j (d sc_j) sum(q_i x_i) - (dmin m_j) sum(x), sub-block by sub-block;
// sub_block_sums: sum(x) per 32 values.
HWY_INLINE float DotQ4_KRow(const uint8_t* row, const float* x, const float* sub_block_sums, int64_t blocks) {
  const hn::ScalableTag<float> df;
  auto total = hn::Zero(df);
  auto minimums = hn::Zero(df);  // sum of dmin m_j sum(x) over the sub-blocks, in every lane
  for (int64_t block = 0; block < blocks; ++block) {
    const uint8_t* bytes = row + block * block_bytes(kTypeQ4_K);
    const auto scale = BroadcastHalf(df, bytes);
    const auto minimum_scale = BroadcastHalf(df, bytes + 2);
    const uint8_t* packed_scales = bytes + 4;
    for (int chunk = 0; chunk < 4; ++chunk) {
      const float* low_x = x + block * kSuperBlockValues + chunk * 64;
      auto low_total = hn::Zero(df), high_total = hn::Zero(df);
      ForEachQ4_KChunkVector(df, bytes + 16 + chunk * 32, [&](auto low, auto high, size_t i) {
        low_total = hn::MulAdd(low, hn::LoadU(df, low_x + i), low_total);
        high_total = hn::MulAdd(high, hn::LoadU(df, low_x + kBlockValues + i), high_total);
      });
      for (int half = 0; half < 2; ++half) {
        const int sub_block = 2 * chunk + half;
        float sub_scale, sub_minimum;
        q4_k_scale_and_minimum(packed_scales, sub_block, &sub_scale, &sub_minimum);
        total = hn::MulAdd(hn::Mul(scale, hn::Set(df, sub_scale)), half == 0 ? low_total : high_total, total);
        minimums = hn::MulAdd(hn::Mul(minimum_scale, hn::Set(df, sub_minimum)),
                              hn::Set(df, sub_block_sums[block * 8 + sub_block]), minimums);
      }
    }
  }
  return hn::GetLane(hn::SumOfLanes(df, total)) - hn::GetLane(minimums);
}

// The 128 values of Q6_K half-block `half` (0 or 1) as floats q - 32, handed to `use(q, value index, group)`
// a vector at a time: values l, 32 + l, 64 + l and 96 + l of the half take the low nibbles of bytes l and
// 32 + l, then their high nibbles, each with 2 bits of byte l of the highs; `group` is the value's group
// of 16 within the half (its scale).
template <class DF, class Use>
HWY_INLINE void ForEachQ6_KHalfVector(DF df, const uint8_t* block, int half, Use&& use) {
  const hn::Rebind<int32_t, DF> di;
  const hn::Rebind<uint8_t, DF> du8;
  const auto low_mask = hn::Set(du8, uint8_t{0x0F});
  const auto two_bits = hn::Set(du8, uint8_t{0x03});
  const auto offset = hn::Set(di, 32);
  const uint8_t* low_bits = block + half * 64;
  const uint8_t* high_bits = block + 128 + half * 32;
  auto to_float = [&](auto q) { return hn::ConvertTo(df, hn::Sub(hn::PromoteTo(di, q), offset)); };
  for (size_t l = 0; l < 32; l += hn::Lanes(df)) {  // a vector never straddles two groups of 16
    const auto first = hn::LoadU(du8, low_bits + l);
    const auto second = hn::LoadU(du8, low_bits + 32 + l);
    const auto highs = hn::LoadU(du8, high_bits + l);
    const int group = static_cast<int>(l / 16);
    use(to_float(hn::Or(hn::And(first, low_mask), hn::ShiftLeft<4>(hn::And(highs, two_bits)))), l, group);
    use(to_float(
            hn::Or(hn::And(second, low_mask), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(highs), two_bits)))),
        32 + l, group + 2);
    use(to_float(
            hn::Or(hn::ShiftRight<4>(first), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(highs), two_bits)))),
        64 + l, group + 4);
    use(to_float(hn::Or(hn::ShiftRight<4>(second), hn::ShiftLeft<4>(hn::ShiftRight<6>(highs)))), 96 + l,
        group + 6);
  }
}

// sum over the super-blocks of sum_g (d sc_g) sum(q_i x_i), q_i in -32..31, for one token, x rounded per
// block of 32 to int16 (RoundActivationBlocks: x_i = step_b r_i).
//
// Each group's integers are built in int16 lanes from the zero-extended bytes (ForEachQ6_KHalfVector's
// layout), made signed (q - 32) and multiplied by the group's int8 scale there: |(q - 32) sc| <= 32 * 128
// fits int16. int16 pair multiply-adds with r (pmaddwd) then sum each block of 32 values into int32 lanes
// exactly: a lane holds at most 8 products of at most 4096 * 32767 (SSE4; 4 on AVX2), below 2^31. One
// conversion and one multiply-add by d step_b per block of 32 make it float. The scalar target sums the
// same integers in int64.
HWY_INLINE float DotQ6_KRow(const uint8_t* row, const OneTokenActivations& activations, int64_t blocks) {
  const int16_t* rounded = activations.rounded;
  const float* coefficients = activations.coefficients;
  constexpr int64_t kBlocksPerSuperBlock = kSuperBlockValues / kBlockValues;  // 8 blocks of 32 values
  constexpr int64_t kHalfValues = kSuperBlockValues / 2;                      // 128
#if HWY_TARGET != HWY_SCALAR
  const hn::CappedTag<int16_t, kHalfBlock> d16;  // at most 16 lanes: a vector never straddles two groups
  const hn::Rebind<uint8_t, decltype(d16)> du8;
  const hn::Rebind<uint16_t, decltype(d16)> du16;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Repartition<float, decltype(d16)> df;
  const size_t lanes = hn::Lanes(d16);
  // A value's byte zero-extended to an int16 lane.
  const auto widened = [&](const uint8_t* bytes) {
    return hn::BitCast(d16, hn::PromoteTo(du16, hn::LoadU(du8, bytes)));
  };
  const auto low_mask = hn::Set(d16, int16_t{0x0F});
  const auto high_mask = hn::Set(d16, int16_t{0x30});
  const auto offset = hn::Set(d16, int16_t{32});
  auto total = hn::Zero(df);
  for (int64_t block = 0; block < blocks; ++block) {
    const uint8_t* bytes = row + block * block_bytes(kTypeQ6_K);
    const int8_t* group_scales = reinterpret_cast<const int8_t*>(bytes + 192);
    const float scale = hn::GetLane(BroadcastHalf(df, bytes + 208));
    const int16_t* block_x = rounded + block * kSuperBlockValues;
    const float* block_steps = coefficients + block * kBlocksPerSuperBlock * kCoefficientsPerBlock;
    for (int half = 0; half < 2; ++half) {
      const uint8_t* low_bits = bytes + half * 64;
      const uint8_t* high_bits = bytes + 128 + half * 32;
      const int8_t* half_scales = group_scales + half * 8;
      const int16_t* half_x = block_x + half * kHalfValues;
      // Blocks 4 half + k (k = 0..3: values 32 k + l of the half) accumulate in sums[k].
      // On x86 the products arrive whole in sums[k] and odds[k] stays zero.
      hn::Vec<decltype(d32)> sums[4] = {hn::Zero(d32), hn::Zero(d32), hn::Zero(d32), hn::Zero(d32)};
      hn::Vec<decltype(d32)> odds[4] = {hn::Zero(d32), hn::Zero(d32), hn::Zero(d32), hn::Zero(d32)};
      for (size_t l = 0; l < 32; l += lanes) {
        const int group = static_cast<int>(l / 16);
        const auto first = widened(low_bits + l);
        const auto second = widened(low_bits + 32 + l);
        const auto highs = widened(high_bits + l);
        const hn::Vec<decltype(d16)> q[4] = {
            hn::Or(hn::And(first, low_mask), hn::And(hn::ShiftLeft<4>(highs), high_mask)),
            hn::Or(hn::And(second, low_mask), hn::And(hn::ShiftLeft<2>(highs), high_mask)),
            hn::Or(hn::ShiftRight<4>(first), hn::And(highs, high_mask)),
            hn::Or(hn::ShiftRight<4>(second), hn::And(hn::ShiftRight<2>(highs), high_mask)),
        };
        for (int k = 0; k < 4; ++k) {
          const auto scaled =
              hn::Mul(hn::Sub(q[k], offset), hn::Set(d16, int16_t{half_scales[group + 2 * k]}));
          sums[k] = hn::ReorderWidenMulAccumulate(d32, scaled, hn::LoadU(d16, half_x + 32 * k + l), sums[k],
                                                  odds[k]);
        }
      }
      for (int k = 0; k < 4; ++k) {
        const float step = block_steps[(4 * half + k) * kCoefficientsPerBlock];
        const auto block_sum = hn::RearrangeToOddPlusEven(sums[k], odds[k]);
        total = hn::MulAdd(hn::ConvertTo(df, block_sum), hn::Set(df, scale * step), total);
      }
    }
  }
  return hn::GetLane(hn::SumOfLanes(df, total));
#else
  const hn::ScalableTag<float> df;
  float total = 0.0f;
  for (int64_t block = 0; block < blocks; ++block) {
    const uint8_t* bytes = row + block * block_bytes(kTypeQ6_K);
    const int8_t* group_scales = reinterpret_cast<const int8_t*>(bytes + 192);
    const float scale = hn::GetLane(BroadcastHalf(df, bytes + 208));
    for (int half = 0; half < 2; ++half) {
      const uint8_t* low_bits = bytes + half * 64;
      const uint8_t* high_bits = bytes + 128 + half * 32;
      const int16_t* half_x = rounded + block * kSuperBlockValues + half * kHalfValues;
      int64_t sums[4] = {0, 0, 0, 0};  // blocks 4 half + k
      for (int l = 0; l < 32; ++l) {
        const int q[4] = {(low_bits[l] & 0x0F) | ((high_bits[l] & 3) << 4),
                          (low_bits[l + 32] & 0x0F) | (((high_bits[l] >> 2) & 3) << 4),
                          (low_bits[l] >> 4) | (((high_bits[l] >> 4) & 3) << 4),
                          (low_bits[l + 32] >> 4) | ((high_bits[l] >> 6) << 4)};
        for (int k = 0; k < 4; ++k) {
          sums[k] += static_cast<int64_t>((q[k] - 32) * group_scales[half * 8 + l / 16 + 2 * k]) *
                     half_x[32 * k + l];
        }
      }
      for (int k = 0; k < 4; ++k) {
        const float step =
            coefficients[(block * kBlocksPerSuperBlock + 4 * half + k) * kCoefficientsPerBlock];
        total += static_cast<float>(sums[k]) * (scale * step);
      }
    }
  }
  return total;
#endif
}

// One super-block of Q4_K or Q6_K -> 256 float32 values: (d sc) q - (dmin m), or (d sc) (q - 32), each
// scale product rounded to float32 first, as ggml and the gguf package do.
HWY_INLINE void DequantizeKQuantBlock(uint32_t type, const uint8_t* bytes, float* values) {
  const hn::ScalableTag<float> df;
  if (type == kTypeQ4_K) {
    const auto scale = BroadcastHalf(df, bytes);
    const auto minimum_scale = BroadcastHalf(df, bytes + 2);
    for (int chunk = 0; chunk < 4; ++chunk) {
      float low_scale, low_minimum, high_scale, high_minimum;
      q4_k_scale_and_minimum(bytes + 4, 2 * chunk, &low_scale, &low_minimum);
      q4_k_scale_and_minimum(bytes + 4, 2 * chunk + 1, &high_scale, &high_minimum);
      const auto low_step = hn::Mul(scale, hn::Set(df, low_scale));
      const auto low_offset = hn::Mul(minimum_scale, hn::Set(df, low_minimum));
      const auto high_step = hn::Mul(scale, hn::Set(df, high_scale));
      const auto high_offset = hn::Mul(minimum_scale, hn::Set(df, high_minimum));
      float* chunk_values = values + chunk * 64;
      ForEachQ4_KChunkVector(df, bytes + 16 + chunk * 32, [&](auto low, auto high, size_t i) {
        hn::StoreU(hn::MulSub(low, low_step, low_offset), df, chunk_values + i);
        hn::StoreU(hn::MulSub(high, high_step, high_offset), df, chunk_values + kBlockValues + i);
      });
    }
    return;
  }
  const int8_t* group_scales = reinterpret_cast<const int8_t*>(bytes + 192);
  const auto scale = BroadcastHalf(df, bytes + 208);
  for (int half = 0; half < 2; ++half) {
    ForEachQ6_KHalfVector(df, bytes, half, [&](auto q, size_t value, int group) {
      const auto step = hn::Mul(scale, hn::Set(df, static_cast<float>(group_scales[half * 8 + group])));
      hn::StoreU(hn::Mul(step, q), df, values + half * 128 + value);
    });
  }
}

// One row of blocks (`columns` values) -> float32 values: the same d q_i (+ m) in float32 as ggml's and
// the gguf package's dequantisation.
HWY_INLINE void DequantizeRow(uint32_t type, const Int32Shuffles& shuffles, const uint8_t* row,
                              int64_t columns, float* values) {
  for (int64_t block = 0; block < columns / block_values(type); ++block) {
    const uint8_t* bytes = row + block * block_bytes(type);
    float* block_start = values + block * block_values(type);
    switch (type) {
      case kTypeQ4_0: DequantizeSmallIntBlock<kTypeQ4_0>(shuffles, bytes, block_start); break;
      case kTypeQ4_1: DequantizeSmallIntBlock<kTypeQ4_1>(shuffles, bytes, block_start); break;
      case kTypeQ5_0: DequantizeSmallIntBlock<kTypeQ5_0>(shuffles, bytes, block_start); break;
      case kTypeQ5_1: DequantizeSmallIntBlock<kTypeQ5_1>(shuffles, bytes, block_start); break;
      case kTypeQ8_0: DequantizeQ8_0Block(bytes, block_start); break;
      default: DequantizeKQuantBlock(type, bytes, block_start); break;
    }
  }
}

// Rows [row_begin, row_end) of blocks -> float32 values, `columns` per row, at output + row * columns.
void DequantizeRows(uint32_t type, const uint8_t* weight, int64_t columns, int64_t row_begin, int64_t row_end,
                    float* output) {
  const int64_t row_bytes = columns / block_values(type) * block_bytes(type);
  const Int32Shuffles shuffles{};
  for (int64_t row = row_begin; row < row_end; ++row) {
    DequantizeRow(type, shuffles, weight + row * row_bytes, columns, output + row * columns);
  }
}

using float_dot::HWY_NAMESPACE::DotFloats;

// The dot products of one row `w` with kTokens (4 or 8) tokens' activations x + t * columns (`count` a
// multiple of the lanes) into results[t]: each vector of w is loaded once for all the tokens, so the loop
// issues 1 + 1 / kTokens loads per multiply-add instead of DotFloats' 2.
template <int kTokens>
HWY_INLINE void DotFloatsTokens(const float* w, const float* x, int64_t columns, int64_t count,
                                float* results) {
  static_assert(kTokens == 4 || kTokens == 8, "four or eight tokens");
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  auto sum0 = hn::Zero(df), sum1 = hn::Zero(df), sum2 = hn::Zero(df), sum3 = hn::Zero(df);
  auto sum4 = hn::Zero(df), sum5 = hn::Zero(df), sum6 = hn::Zero(df), sum7 = hn::Zero(df);
  for (int64_t i = 0; i < count; i += lanes) {
    const auto weights = hn::LoadU(df, w + i);
    sum0 = hn::MulAdd(weights, hn::LoadU(df, x + i), sum0);
    sum1 = hn::MulAdd(weights, hn::LoadU(df, x + columns + i), sum1);
    sum2 = hn::MulAdd(weights, hn::LoadU(df, x + 2 * columns + i), sum2);
    sum3 = hn::MulAdd(weights, hn::LoadU(df, x + 3 * columns + i), sum3);
    if constexpr (kTokens == 8) {
      sum4 = hn::MulAdd(weights, hn::LoadU(df, x + 4 * columns + i), sum4);
      sum5 = hn::MulAdd(weights, hn::LoadU(df, x + 5 * columns + i), sum5);
      sum6 = hn::MulAdd(weights, hn::LoadU(df, x + 6 * columns + i), sum6);
      sum7 = hn::MulAdd(weights, hn::LoadU(df, x + 7 * columns + i), sum7);
    }
  }
  results[0] = hn::GetLane(hn::SumOfLanes(df, sum0));
  results[1] = hn::GetLane(hn::SumOfLanes(df, sum1));
  results[2] = hn::GetLane(hn::SumOfLanes(df, sum2));
  results[3] = hn::GetLane(hn::SumOfLanes(df, sum3));
  if constexpr (kTokens == 8) {
    results[4] = hn::GetLane(hn::SumOfLanes(df, sum4));
    results[5] = hn::GetLane(hn::SumOfLanes(df, sum5));
    results[6] = hn::GetLane(hn::SumOfLanes(df, sum6));
    results[7] = hn::GetLane(hn::SumOfLanes(df, sum7));
  }
}

// output[token * rows + row] for row in [row_begin, row_end) and every token; `one_token` is read only
// with one token.
void MultiplyRows(uint32_t type, const uint8_t* weight, int64_t rows, int64_t columns, const float* input,
                  const OneTokenActivations& one_token, int64_t tokens, int64_t row_begin, int64_t row_end,
                  float* output) {
  const int64_t blocks = columns / block_values(type);
  const int64_t row_bytes = blocks * block_bytes(type);
  if (tokens == 1) {
    const Int16Shuffles one_token_shuffles{};
    // One token: the blocks' integers meet x straight from the weight bytes, which are read once anyway.
    for (int64_t row = row_begin; row < row_end; ++row) {
      const uint8_t* blocks_of_row = weight + row * row_bytes;
      switch (type) {
        case kTypeQ4_0:
          output[row] = DotSmallIntRow<kTypeQ4_0>(blocks_of_row, one_token, blocks, one_token_shuffles);
          break;
        case kTypeQ4_1:
          output[row] = DotSmallIntRow<kTypeQ4_1>(blocks_of_row, one_token, blocks, one_token_shuffles);
          break;
        case kTypeQ5_0:
          output[row] = DotSmallIntRow<kTypeQ5_0>(blocks_of_row, one_token, blocks, one_token_shuffles);
          break;
        case kTypeQ5_1:
          output[row] = DotSmallIntRow<kTypeQ5_1>(blocks_of_row, one_token, blocks, one_token_shuffles);
          break;
        case kTypeQ4_K: output[row] = DotQ4_KRow(blocks_of_row, input, one_token.block_sums, blocks); break;
        case kTypeQ6_K: output[row] = DotQ6_KRow(blocks_of_row, one_token, blocks); break;
        default: output[row] = DotQ8_0Row(blocks_of_row, input, blocks); break;
      }
    }
    return;
  }
  // Several tokens: each row is dequantised once into a buffer that stays in L1, then every token's dot
  // product with it is plain float32 (the integer conversions are not repeated per token), eight or four
  // tokens at a time. The columns go in chunks whose activations, for every token, fit beside that buffer
  // in L1 (`kActivationBytesInL1`), and each chunk passes over all the task's rows before the next: with
  // 8 tokens a row of 1536 columns has 48 KiB of activations, and read whole for every row they came from
  // L2 (`linear_bench --rows 8`, one thread: [576, 1536] took 0.355 ms where [1536, 576], the same work,
  // took 0.236). A chunk's products are added to the earlier chunks' in the output.
  constexpr int64_t kActivationBytesInL1 = 24 * 1024;
  const int64_t activation_bytes = columns * tokens * static_cast<int64_t>(sizeof(float));
  const int64_t chunks = (activation_bytes + kActivationBytesInL1 - 1) / kActivationBytesInL1;
  const int64_t chunk_blocks = (blocks + chunks - 1) / chunks;  // whole blocks per chunk
  std::vector<float> row_values(static_cast<size_t>(chunk_blocks * block_values(type)));  // [chunk columns]
  const Int32Shuffles dequantize_shuffles{};
  float products[8];
  for (int64_t first_block = 0; first_block < blocks; first_block += chunk_blocks) {
    const int64_t first_column = first_block * block_values(type);
    const int64_t count = std::min(chunk_blocks, blocks - first_block) * block_values(type);  // columns
    const float* chunk_input = input + first_column;
    // The first chunk writes the output, the later ones add to it.
    const auto store = [&](int64_t token, int64_t row, float product) {
      float& result = output[token * rows + row];
      result = first_block == 0 ? product : result + product;
    };
    for (int64_t row = row_begin; row < row_end; ++row) {
      DequantizeRow(type, dequantize_shuffles, weight + row * row_bytes + first_block * block_bytes(type),
                    count, row_values.data());
      int64_t token = 0;
      for (; token + 8 <= tokens; token += 8) {
        DotFloatsTokens<8>(row_values.data(), chunk_input + token * columns, columns, count, products);
        for (int64_t t = 0; t < 8; ++t) store(token + t, row, products[t]);
      }
      for (; token + 4 <= tokens; token += 4) {
        DotFloatsTokens<4>(row_values.data(), chunk_input + token * columns, columns, count, products);
        for (int64_t t = 0; t < 4; ++t) store(token + t, row, products[t]);
      }
      for (; token < tokens; ++token) {
        store(token, row, DotFloats(row_values.data(), chunk_input + token * columns, count));
      }
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
HWY_EXPORT(RoundActivationBlocks);
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
  return ggml_type == kTypeQ4_0 || ggml_type == kTypeQ4_1 || is_five_bit(ggml_type) ||
         ggml_type == kTypeQ8_0 || is_k_quant(ggml_type);
}

void multiply(uint32_t ggml_type, const uint8_t* weight, int64_t rows, int64_t columns, const float* input,
              int64_t tokens, float* output) {
  TORCH_CHECK(supports(ggml_type), "float_block_kernels: no kernel for GGUF type ", ggml_type);
  TORCH_CHECK(columns % block_values(ggml_type) == 0, "float_block_kernels: ", columns,
              " columns are not whole blocks");
  apply_environment_cap();
  const int64_t blocks = columns / kBlockValues;  // of 32 values, whatever the type's block
  // What the one-token kernels read besides x, once for all rows; kept per thread so that a decode step
  // allocates nothing.
  thread_local std::vector<float> block_sums;    // [blocks]
  thread_local std::vector<int16_t> rounded;     // [columns]
  thread_local std::vector<float> coefficients;  // [blocks, kCoefficientsPerBlock]
  OneTokenActivations one_token;
  if (tokens == 1 && rounds_activations(ggml_type)) {
    rounded.resize(static_cast<size_t>(columns));
    coefficients.resize(static_cast<size_t>(blocks * kCoefficientsPerBlock));
    HWY_DYNAMIC_DISPATCH(RoundActivationBlocks)
    (input, columns, offset_factor(ggml_type), rounded.data(), coefficients.data());
    one_token.rounded = rounded.data();
    one_token.coefficients = coefficients.data();
  } else if (tokens == 1 && ggml_type == kTypeQ4_K) {
    block_sums.resize(static_cast<size_t>(blocks));
    for (int64_t block = 0; block < blocks; ++block) {
      const float* values = input + block * kBlockValues;
      float sum = 0.0f;
      for (int64_t i = 0; i < kBlockValues; ++i) sum += values[i];
      block_sums[static_cast<size_t>(block)] = sum;
    }
    one_token.block_sums = block_sums.data();
  }
  constexpr int64_t kRowsPerTask = 16;
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    HWY_DYNAMIC_DISPATCH(MultiplyRows)
    (ggml_type, weight, rows, columns, input, one_token, tokens, begin, end, output);
  });
}

void dequantize(uint32_t ggml_type, const uint8_t* weight, int64_t rows, int64_t columns, float* output) {
  TORCH_CHECK(supports(ggml_type), "float_block_kernels: no kernel for GGUF type ", ggml_type);
  TORCH_CHECK(columns % block_values(ggml_type) == 0, "float_block_kernels: ", columns,
              " columns are not whole blocks");
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
