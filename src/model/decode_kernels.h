// The vector loops of the fused decode step (decode_step.h) that are not matrix products: attention of
// one new token over a row's cached slots, and the MLP's SiLU(gate) * up. Written with Google Highway like
// float_block_kernels.h (one copy per instruction set, the best chosen at run time). Each equals the ATen
// operations it replaces up to float32 rounding; decode_step_test holds them to that.
#pragma once

#include <cstdint>

namespace cartridge::decode_kernels {

// Attention of the `group` query heads that read one KV head, for one new token:
//   output[g] = sum_s softmax_s(scale q_g . k_s) v_s
// queries [group, head_dim] float32, contiguous; key and value of slot s at keys + s * slot_stride and
// values + s * slot_stride (head_dim contiguous floats each); allowed [slots] (false = padding, skipped)
// or null for every slot; output [group, head_dim]. At least one slot must be allowed.
void attend_one_token(const float* queries, int64_t group, int64_t head_dim, const float* keys,
                      const float* values, int64_t slot_stride, int64_t slots, const bool* allowed,
                      float scale, float* output);

// output[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i], for `count` floats.
void silu_times_up(const float* gate, const float* up, int64_t count, float* output);

}  // namespace cartridge::decode_kernels
