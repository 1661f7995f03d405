#include "model/attention.h"

#include <limits>

#include <ATen/ATen.h>

namespace cartridge {
namespace {

// Each KV head repeated for its query group, as transformers' repeat_kv: [B, H_kv, S, D] -> [B, H, S, D].
at::Tensor repeat_kv_heads(const at::Tensor& tensor, int64_t query_heads) {
  const int64_t kv_heads = tensor.size(1);
  if (kv_heads == query_heads) return tensor;
  const int64_t groups = query_heads / kv_heads;
  const auto sizes = tensor.sizes();
  return tensor.unsqueeze(2)
      .expand({sizes[0], kv_heads, groups, sizes[2], sizes[3]})
      .reshape({sizes[0], query_heads, sizes[2], sizes[3]});
}

}  // namespace

AttentionMask attention_mask(const at::Tensor& slot_mask, const at::Tensor& token_mask) {
  const int64_t batch = token_mask.size(0);
  const int64_t new_tokens = token_mask.size(1);
  const int64_t old_slots = slot_mask.size(1);
  const bool all_real = token_mask.all().item<bool>();
  const bool old_all_real = old_slots == 0 || slot_mask.all().item<bool>();
  if (all_real && old_all_real && new_tokens == 1) return {};  // one token per row: attend to everything
  if (all_real && old_slots == 0) return {at::Tensor(), /*causal=*/true};

  const auto bool_options = at::TensorOptions().dtype(at::kBool).device(token_mask.device());
  const at::Tensor causal = at::ones({new_tokens, new_tokens}, bool_options).tril();  // [T, T]
  const at::Tensor diagonal = at::eye(new_tokens, bool_options);                      // [T, T]
  const at::Tensor new_part =
      causal.unsqueeze(0).logical_and(token_mask.unsqueeze(1)).logical_or(diagonal);  // [B, T, T]
  if (old_slots == 0) return {new_part.unsqueeze(1)};                                 // [B, 1, T, T]
  const at::Tensor old_part =
      slot_mask.to(token_mask.device()).unsqueeze(1).expand({batch, new_tokens, old_slots});  // [B, T, S]
  return {at::cat({old_part, new_part}, 2).unsqueeze(1)};  // [B, 1, T, S + T]
}

at::Tensor sdpa_attention(const AttentionInputs& inputs) {
  const int64_t heads = inputs.query.size(1);
  const int64_t kv_heads = inputs.keys.size(1);
  const bool masked = inputs.mask.allowed.defined();
  // SDPA's native GQA is fastest on the CPU (flash kernel, any mask) and on CUDA without a mask; CUDA's
  // kernels that take a mask (memory-efficient) do not support GQA and SDPA would fall back to the slow
  // math path, so there the KV heads are expanded instead (what transformers does too).
  const bool expand_kv_heads = kv_heads != heads && inputs.query.is_cuda() && masked;
  const at::Tensor keys = expand_kv_heads ? repeat_kv_heads(inputs.keys, heads) : inputs.keys;
  const at::Tensor values = expand_kv_heads ? repeat_kv_heads(inputs.values, heads) : inputs.values;
  return at::scaled_dot_product_attention(
      inputs.query, keys, values, masked ? std::optional<at::Tensor>(inputs.mask.allowed) : std::nullopt, 0.0,
      inputs.mask.causal, inputs.scale,
      /*enable_gqa=*/kv_heads != heads && !expand_kv_heads);  // [B, H, T, D]
}

at::Tensor naive_attention(const AttentionInputs& inputs) {
  const int64_t heads = inputs.query.size(1);
  const int64_t new_tokens = inputs.query.size(2);
  const at::Tensor query = inputs.query.to(at::kDouble);                            // [B, H, T, D]
  const at::Tensor keys = repeat_kv_heads(inputs.keys, heads).to(at::kDouble);      // [B, H, S, D]
  const at::Tensor values = repeat_kv_heads(inputs.values, heads).to(at::kDouble);  // [B, H, S, D]
  at::Tensor scores = at::matmul(query, keys.transpose(2, 3)) * inputs.scale;       // [B, H, T, S]
  const int64_t slots = scores.size(3);
  at::Tensor allowed = inputs.mask.allowed;  // [B, 1, T, S]
  if (!allowed.defined() && inputs.mask.causal) {
    allowed = at::ones({new_tokens, slots}, at::TensorOptions().dtype(at::kBool).device(scores.device()))
                  .tril(slots - new_tokens);
  }
  if (allowed.defined())
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1), values).to(inputs.query.scalar_type());  // [B, H, T, D]
}

}  // namespace cartridge
