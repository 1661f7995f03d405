// One decoder layer as named steps (after gemma.cpp's TransformerLayer): norm -> attention (q/k/v
// projection, optional q/k norm, RoPE, cache append, attention, output projection) -> residual -> norm ->
// gated MLP -> residual. What differs between model families is data, not code: a per-layer config says
// which norms and biases a layer has; the weights say how they are stored. The two replaceable steps,
// `linear` and `attention`, come from ForwardKernels, so a quantised matmul or a shared-prefix attention
// plugs in without touching the layer.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/attention.h"
#include "model/kv_cache.h"
#include "model/linear.h"
#include "model/model_config.h"

namespace cartridge {

// What a layer of a given family has, derived from the ModelConfig (model_config.h) at load.
struct LayerConfig {
  int64_t index = 0;
  int64_t query_heads = 0;     // H
  int64_t kv_heads = 0;        // H_kv
  int64_t head_dim = 0;        // D
  int64_t mlp_width = 0;       // I
  double norm_epsilon = 1e-6;  // RMSNorm epsilon
  bool qk_norm = false;        // RMSNorm over D on queries and keys before RoPE (Qwen3)
};

// The layer configs of a model: one per layer (today every layer of a family is alike).
std::vector<LayerConfig> layer_configs(const ModelConfig& config);

// A layer's weights in the model's compute dtype and device. q/k/v (and gate/up) are stored fused,
// row-stacked in that order, so one matmul computes them.
struct LayerWeights {
  at::Tensor input_norm;  // [hidden]
  LinearWeight qkv;      // [(H + 2 H_kv) D, hidden], bias [(H + 2 H_kv) D] (Qwen2; Llama with attention_bias)
  at::Tensor q_norm;     // [D] or undefined (Qwen3)
  at::Tensor k_norm;     // [D] or undefined (Qwen3)
  LinearWeight output;   // [hidden, H D], bias [hidden] (Llama with attention_bias)
  at::Tensor post_norm;  // [hidden]
  LinearWeight gate_up;  // [2 I, hidden], bias [2 I] (Llama with mlp_bias)
  LinearWeight down;     // [hidden, I], bias [hidden] (Llama with mlp_bias)
};

// The replaceable steps. The defaults are the fast kernels; tests swap in naive_linear / naive_attention.
struct ForwardKernels {
  std::function<at::Tensor(const at::Tensor& x, const LinearWeight& weight)> linear = cartridge::linear;
  std::function<at::Tensor(const AttentionInputs& inputs)> attention = sdpa_attention;
};

// What every layer of one forward shares: the batch's RoPE tables and attention mask.
struct LayerInputs {
  at::Tensor rope_cos;  // [B, 1, T, D] in the model dtype
  at::Tensor rope_sin;  // [B, 1, T, D]
  AttentionMask mask;   // computed before the cache grew
};

// RMSNorm as transformers' LlamaRMSNorm: normalise in float32, round back to the input dtype, then scale
// by the weight in the input dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double epsilon);

// hidden [B, T, hidden] -> hidden after this layer; appends the layer's new keys/values to `cache`.
at::Tensor transformer_layer(const LayerConfig& config, const LayerWeights& weights, const at::Tensor& hidden,
                             const LayerInputs& inputs, KvCache& cache, const ForwardKernels& kernels);

// The attention half: normed hidden [B, T, hidden] -> the attention block's output [B, T, hidden].
at::Tensor attention_block(const LayerConfig& config, const LayerWeights& weights, const at::Tensor& normed,
                           const LayerInputs& inputs, KvCache& cache, const ForwardKernels& kernels);

// The MLP half: normed hidden [B, T, hidden] -> down(silu(gate) * up) [B, T, hidden].
at::Tensor mlp_block(const LayerConfig& config, const LayerWeights& weights, const at::Tensor& normed,
                     const ForwardKernels& kernels);

}  // namespace cartridge
