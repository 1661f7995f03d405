// The vector loops of the fused decode step (decode_step.h) that are not matrix products: attention of
// one new token over a row's cached slots, and the MLP's SiLU(gate) * up. Written with Google Highway like
// float_block_kernels.h (one copy per instruction set, the best chosen at run time). Each equals the ATen
// operations it replaces up to float32 rounding; decode_step_test holds them to that.
#pragma once

#include <cstdint>

namespace cartridge::decode_kernels {

// Consecutive slots that a new token attends to: slot s's key at keys + s * slot_stride and its value at
// values + s * slot_stride (head_dim contiguous floats each); allowed [slots] (false = padding, skipped)
// or null for every slot.
struct KeyValueSlots {
  const float* keys = nullptr;
  const float* values = nullptr;
  int64_t slot_stride = 0;
  int64_t slots = 0;
  const bool* allowed = nullptr;
};

// Attention of the `group` query heads that read one KV head, for one new token, over the slots of all
// `part_count` parts together (a row's shared prefixes and its own slots: one softmax over all of them):
//   output[g] = sum_s softmax_s(scale q_g . k_s) v_s
// queries [group, head_dim] float32, contiguous; output [group, head_dim]. At least one slot must be
// allowed.
void attend_one_token(const float* queries, int64_t group, int64_t head_dim, const KeyValueSlots* parts,
                      int64_t part_count, float scale, float* output);

// output[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i], for `count` floats.
void silu_times_up(const float* gate, const float* up, int64_t count, float* output);

}  // namespace cartridge::decode_kernels
