// Rotary position embeddings exactly as transformers computes them (LlamaRotaryEmbedding and
// `_compute_llama3_parameters`): float32 inverse frequencies, float32 angles, cos/sin cast to the model
// dtype, "rotate half" (non-interleaved) layout.
#pragma once

#include <utility>

#include <ATen/core/Tensor.h>

#include "model/model_config.h"

namespace cartridge {

// Inverse frequencies [D / 2] float32 on the CPU for config.head_dim, config.rope_theta and
// config.rope_scaling. `frequency_factors` ([D / 2], optional: GGUF's `rope_freqs` tensor, Llama 3.x
// converted by llama.cpp) divides them, as llama.cpp does.
at::Tensor rope_inverse_frequencies(const ModelConfig& config, const at::Tensor& frequency_factors = {});

// cos and sin [B, 1, T, D] in `dtype` for positions [B, T] (int64) and inverse frequencies [D / 2] float32
// on the positions' device.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& positions,
                                               const at::Tensor& inverse_frequencies, at::ScalarType dtype);

// x * cos + rotate_half(x) * sin for x [B, H, T, D] and cos/sin [B, 1, T, D].
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// Post-RoPE vectors x [..., T, D] moved by `delta` positions (any sign): rotations compose, so RoPE at t
// rotated by delta is RoPE at t + delta. In x's dtype, on its device.
at::Tensor rotate_positions(const at::Tensor& x, int64_t delta, const at::Tensor& inverse_frequencies);

}  // namespace cartridge
