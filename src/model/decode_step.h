// The fused decode step: one transformer layer for one new token per row, as plain loops over float32
// buffers instead of ATen operations. At batch 1 a layer's matrix products take tens of microseconds, and
// the layer of named ATen steps (transformer_layer.h) adds a few dozen operations around them (norms,
// q/k/v views and transposes, RoPE's slices and products, the cache append, the attention kernel's set-up,
// SiLU, the residual adds), each a dispatch, an allocation and, with two threads, an OpenMP fork: together
// as long as the products themselves (issue 17). Here each of those is a loop over a few thousand floats
// in a buffer kept per thread, and the products and the cache append are the only calls out.
//
// Same steps, same order, same float32 arithmetic up to summation order and the vectorised exp: the
// layer of ATen steps is its oracle (decode_step_test, and ForwardKernelsTest against the naive kernels).
#pragma once

#include <ATen/core/Tensor.h>

#include "model/kv_cache.h"
#include "model/transformer_layer.h"

namespace cartridge {

// Whether fused_decode_layer runs a forward of `new_tokens` per row into `cache`: one new token, float32 on
// the CPU, no autograd recording through the cache. Rows may read shared prefixes (a served cartridge):
// the step reads each in place for each of its rows, before the row's own slots, as long as no prefix has
// more than 4 rows (beyond that the ATen layer's shared_prefix_attention, which reads it once for all of
// them, is faster).
bool fused_decode_applies(int64_t new_tokens, at::ScalarType dtype, at::Device device, const KvCache& cache);

// transformer_layer for hidden [B, 1, hidden] float32, contiguous, updated in place: appends the layer's
// new key and value to `cache` and adds the attention and MLP blocks' outputs to `hidden`. `inputs` as
// transformer_layer's, with rope_cos, rope_sin and mask.allowed (when defined) contiguous.
void fused_decode_layer(const LayerConfig& config, const LayerWeights& weights, at::Tensor& hidden,
                        const LayerInputs& inputs, KvCache& cache);

}  // namespace cartridge
