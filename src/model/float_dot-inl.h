// The float32 dot product both Highway kernel files use (float_block_kernels.cc, decode_kernels.cc),
// compiled once per instruction set with the file that includes it: Highway's -inl.h pattern, whose guard
// flips with HWY_TARGET_TOGGLE so that each foreach_target pass gets its own copy.
#if defined(CARTRIDGE_MODEL_FLOAT_DOT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef CARTRIDGE_MODEL_FLOAT_DOT_INL_H_
#undef CARTRIDGE_MODEL_FLOAT_DOT_INL_H_
#else
#define CARTRIDGE_MODEL_FLOAT_DOT_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace cartridge::float_dot {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// sum(a_i b_i) over `count` floats: whole vectors four accumulators deep, then whole vectors one at a time,
// then a scalar tail.
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
  for (; i + lanes <= count; i += lanes) sum0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), sum0);
  float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(sum0, sum1), hn::Add(sum2, sum3))));
  for (; i < count; ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace HWY_NAMESPACE
}  // namespace cartridge::float_dot
HWY_AFTER_NAMESPACE();

#endif  // CARTRIDGE_MODEL_FLOAT_DOT_INL_H_
