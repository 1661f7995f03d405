// Highway compiles this file once per instruction set (foreach_target.h re-includes it); the part under
// HWY_ONCE is compiled once and dispatches to the best copy at run time (the same choice, and the same
// CARTRIDGE_CPU_ISA cap, as float_block_kernels.cc: Highway's chosen target is process-wide).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "model/decode_kernels.cc"
#include <hwy/foreach_target.h>  // must come before highway.h

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include "model/decode_kernels.h"
#include "model/float_dot-inl.h"

#include <cmath>
#include <limits>
#include <vector>

HWY_BEFORE_NAMESPACE();
namespace cartridge::decode_kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using float_dot::HWY_NAMESPACE::DotFloats;

// output[i] += weight * x[i] for `count` floats.
HWY_INLINE void AddScaled(float weight, const float* x, int64_t count, float* output) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto scale = hn::Set(df, weight);
  int64_t i = 0;
  for (; i + lanes <= count; i += lanes) {
    hn::StoreU(hn::MulAdd(scale, hn::LoadU(df, x + i), hn::LoadU(df, output + i)), df, output + i);
  }
  for (; i < count; ++i) output[i] += weight * x[i];
}

// values[i] = exp(values[i] - shift) for `count` floats; returns their sum. -inf becomes 0.
HWY_INLINE float ExpShiftedAndSum(float* values, int64_t count, float shift) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto minus_shift = hn::Set(df, -shift);
  auto sum = hn::Zero(df);
  int64_t i = 0;
  for (; i + lanes <= count; i += lanes) {
    const auto exponentials = hn::Exp(df, hn::Add(hn::LoadU(df, values + i), minus_shift));
    hn::StoreU(exponentials, df, values + i);
    sum = hn::Add(sum, exponentials);
  }
  float total = hn::GetLane(hn::SumOfLanes(df, sum));
  for (; i < count; ++i) {
    values[i] = std::exp(values[i] - shift);
    total += values[i];
  }
  return total;
}

void AttendOneToken(const float* queries, int64_t group, int64_t head_dim, const KeyValueSlots* parts,
                    int64_t part_count, int64_t total_slots, float scale, float* scores, float* output) {
  constexpr float kMinusInfinity = -std::numeric_limits<float>::infinity();
  for (int64_t query = 0; query < group; ++query) {
    float* query_scores = scores + query * total_slots;  // the parts' slots one after another
    const float* query_vector = queries + query * head_dim;
    float largest = kMinusInfinity;
    for (int64_t part = 0; part < part_count; ++part) {
      const KeyValueSlots& slots = parts[part];
      for (int64_t slot = 0; slot < slots.slots; ++slot) {
        const float score =
            slots.allowed == nullptr || slots.allowed[slot]
                ? DotFloats(query_vector, slots.keys + slot * slots.slot_stride, head_dim) * scale
                : kMinusInfinity;
        *query_scores++ = score;
        largest = std::max(largest, score);
      }
    }
    query_scores = scores + query * total_slots;
    // Every row sees at least its own new token, so `largest` is finite.
    const float total = ExpShiftedAndSum(query_scores, total_slots, largest);
    const float normaliser = 1.0f / total;
    for (int64_t slot = 0; slot < total_slots; ++slot) query_scores[slot] *= normaliser;
    float* query_output = output + query * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) query_output[i] = 0.0f;
  }
  // Each value vector is read once for every query of the group.
  int64_t first_column = 0;  // the part's first slot among the scores
  for (int64_t part = 0; part < part_count; ++part) {
    const KeyValueSlots& slots = parts[part];
    for (int64_t slot = 0; slot < slots.slots; ++slot) {
      if (slots.allowed != nullptr && !slots.allowed[slot]) continue;
      const float* value = slots.values + slot * slots.slot_stride;
      for (int64_t query = 0; query < group; ++query) {
        AddScaled(scores[query * total_slots + first_column + slot], value, head_dim,
                  output + query * head_dim);
      }
    }
    first_column += slots.slots;
  }
}

void SiluTimesUp(const float* gate, const float* up, int64_t count, float* output) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto one = hn::Set(df, 1.0f);
  int64_t i = 0;
  for (; i + lanes <= count; i += lanes) {
    const auto x = hn::LoadU(df, gate + i);
    const auto silu = hn::Div(x, hn::Add(one, hn::Exp(df, hn::Neg(x))));  // x sigmoid(x)
    hn::StoreU(hn::Mul(silu, hn::LoadU(df, up + i)), df, output + i);
  }
  for (; i < count; ++i) output[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace HWY_NAMESPACE
}  // namespace cartridge::decode_kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace cartridge::decode_kernels {

HWY_EXPORT(AttendOneToken);
HWY_EXPORT(SiluTimesUp);

void attend_one_token(const float* queries, int64_t group, int64_t head_dim, const KeyValueSlots* parts,
                      int64_t part_count, float scale, float* output) {
  int64_t total_slots = 0;
  for (int64_t part = 0; part < part_count; ++part) total_slots += parts[part].slots;
  thread_local std::vector<float> scores;  // [group, total_slots]
  scores.resize(static_cast<size_t>(group * total_slots));
  HWY_DYNAMIC_DISPATCH(AttendOneToken)
  (queries, group, head_dim, parts, part_count, total_slots, scale, scores.data(), output);
}

void silu_times_up(const float* gate, const float* up, int64_t count, float* output) {
  HWY_DYNAMIC_DISPATCH(SiluTimesUp)(gate, up, count, output);
}

}  // namespace cartridge::decode_kernels
#endif  // HWY_ONCE
