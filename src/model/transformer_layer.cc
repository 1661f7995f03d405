#include "model/transformer_layer.h"

#include <cmath>
#include <vector>

#include <ATen/ATen.h>

#include "model/rope.h"

namespace cartridge {

std::vector<LayerConfig> layer_configs(const ModelConfig& config) {
  std::vector<LayerConfig> layers;
  for (int64_t index = 0; index < config.num_layers; ++index) {
    LayerConfig layer;
    layer.index = index;
    layer.query_heads = config.num_attention_heads;
    layer.kv_heads = config.num_key_value_heads;
    layer.head_dim = config.head_dim;
    layer.mlp_width = config.intermediate_size;
    layer.norm_epsilon = config.rms_norm_eps;
    layer.qk_norm = config.qk_norm;
    layers.push_back(layer);
  }
  return layers;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double epsilon) {
  if (x.scalar_type() == at::kFloat) {
    // One fused kernel; in float32 it is the same computation.
    return at::rms_norm(x, {x.size(-1)}, weight, epsilon);
  }
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor normalised = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + epsilon);
  return weight * normalised.to(x.scalar_type());
}

at::Tensor attention_block(const LayerConfig& config, const LayerWeights& weights, const at::Tensor& normed,
                           const LayerInputs& inputs, KvCache& cache, const ForwardKernels& kernels) {
  const int64_t batch = normed.size(0);
  const int64_t tokens = normed.size(1);
  const int64_t heads = config.query_heads;
  const int64_t kv_heads = config.kv_heads;
  const int64_t head_dim = config.head_dim;
  const at::Tensor qkv = kernels.linear(normed, weights.qkv);  // [B, T, (H + 2 H_kv) D]
  // One split rather than three narrows: in training, its backward writes the three gradients into one
  // [B, T, (H + 2 H_kv) D] tensor (a cat), where each narrow's would zero-fill a tensor of that size and
  // the three would then be added.
  const std::vector<at::Tensor> parts =
      qkv.split_with_sizes({heads * head_dim, kv_heads * head_dim, kv_heads * head_dim}, -1);
  at::Tensor query = parts[0].view({batch, tokens, heads, head_dim});
  at::Tensor key = parts[1].view({batch, tokens, kv_heads, head_dim});
  at::Tensor value = parts[2].view({batch, tokens, kv_heads, head_dim});
  if (config.qk_norm) {
    query = rms_norm(query, weights.q_norm, config.norm_epsilon);
    key = rms_norm(key, weights.k_norm, config.norm_epsilon);
  }
  query = apply_rope(query.transpose(1, 2), inputs.rope_cos, inputs.rope_sin);  // [B, H, T, D]
  key = apply_rope(key.transpose(1, 2), inputs.rope_cos, inputs.rope_sin);      // [B, H_kv, T, D]
  cache.append(config.index, key, value.transpose(1, 2));

  AttentionInputs attention;
  attention.query = query;
  attention.keys = cache.keys(config.index);      // [B, H_kv, S + T, D]
  attention.values = cache.values(config.index);  // [B, H_kv, S + T, D]
  attention.mask = inputs.mask;
  for (const KvCache::SharedPrefix& shared : cache.shared_prefixes()) {
    attention.shared_prefixes.push_back(SharedPrefixSlots{
        shared.prefix->keys[config.index], shared.prefix->values[config.index], shared.row_index});
  }
  attention.scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  attention.layer = config.index;
  const at::Tensor attended = kernels.attention(attention);  // [B, H, T, D]
  const at::Tensor merged = attended.transpose(1, 2).reshape({batch, tokens, heads * head_dim});
  return kernels.linear(merged, weights.output);  // [B, T, hidden]
}

at::Tensor mlp_block(const LayerConfig& config, const LayerWeights& weights, const at::Tensor& normed,
                     const ForwardKernels& kernels) {
  const int64_t width = config.mlp_width;
  const at::Tensor gate_up = kernels.linear(normed, weights.gate_up);  // [B, T, 2 I]
  const std::vector<at::Tensor> gate_and_up =
      gate_up.split(width, -1);  // one backward, as in attention_block
  const at::Tensor activated = at::silu(gate_and_up[0]) * gate_and_up[1];
  return kernels.linear(activated, weights.down);  // [B, T, hidden]
}

at::Tensor transformer_layer(const LayerConfig& config, const LayerWeights& weights, const at::Tensor& hidden,
                             const LayerInputs& inputs, KvCache& cache, const ForwardKernels& kernels) {
  const at::Tensor normed = rms_norm(hidden, weights.input_norm, config.norm_epsilon);
  const at::Tensor after_attention =
      hidden + attention_block(config, weights, normed, inputs, cache, kernels);
  const at::Tensor normed_mlp = rms_norm(after_attention, weights.post_norm, config.norm_epsilon);
  return after_attention + mlp_block(config, weights, normed_mlp, kernels);
}

}  // namespace cartridge
