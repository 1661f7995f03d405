#include "cartridge/kv_prefix.h"

#include <c10/core/InferenceMode.h>

#include "util/error.h"

namespace cartridge {

KvPrefix kv_prefix_from_prompt_embeddings(const at::Tensor& prompt_embeddings, const ModelConfig& config,
                                          at::ScalarType dtype, at::Device device) {
  const int64_t layers = config.num_layers;
  const int64_t heads = config.num_key_value_heads;
  const int64_t head_dim = config.head_dim;
  TORCH_CHECK(prompt_embeddings.dim() == 2 && prompt_embeddings.size(1) == 2 * layers * heads * head_dim,
              "prompt_embeddings must be [P, 2*L*H_kv*D]");
  const int64_t length = prompt_embeddings.size(0);
  // [P, W] -> [P, 2L, H, D] -> [2L, H, P, D]; entry 2l is layer l's keys, 2l+1 its values.
  const at::Tensor blocks = prompt_embeddings.to(device, dtype)
                                .view({length, 2 * layers, heads, head_dim})
                                .permute({1, 2, 0, 3})
                                .contiguous();
  KvPrefix prefix;
  prefix.keys.reserve(layers);
  prefix.values.reserve(layers);
  for (int64_t layer = 0; layer < layers; ++layer) {
    prefix.keys.push_back(blocks[2 * layer]);        // [H, P, D]
    prefix.values.push_back(blocks[2 * layer + 1]);  // [H, P, D]
  }
  return prefix;
}

at::Tensor prompt_embeddings_from_kv_prefix(const KvPrefix& prefix) {
  TORCH_CHECK(!prefix.keys.empty() && prefix.keys.size() == prefix.values.size(),
              "empty or uneven KV prefix");
  std::vector<at::Tensor> blocks;  // 2L tensors [H, P, D]
  blocks.reserve(2 * prefix.keys.size());
  for (size_t layer = 0; layer < prefix.keys.size(); ++layer) {
    blocks.push_back(prefix.keys[layer]);
    blocks.push_back(prefix.values[layer]);
  }
  const at::Tensor stacked = at::stack(blocks, 0);  // [2L, H, P, D]
  const int64_t length = stacked.size(2);
  return stacked.permute({2, 0, 1, 3}).reshape({length, -1}).to(at::kCPU, at::kFloat).contiguous();  // [P, W]
}

KvCache kv_cache_with_prefix(const Model& model, const KvPrefix* prefix, int64_t batch_size) {
  if (prefix == nullptr || prefix->length() == 0) return model.new_cache(batch_size);
  TORCH_CHECK(static_cast<int64_t>(prefix->keys.size()) == model.config().num_layers,
              "KV prefix has a different layer count than the model");
  std::vector<at::Tensor> keys, values;  // per layer [1, H_kv, P, D], broadcast to the batch
  for (size_t layer = 0; layer < prefix->keys.size(); ++layer) {
    keys.push_back(prefix->keys[layer].unsqueeze(0));
    values.push_back(prefix->values[layer].unsqueeze(0));
  }
  const at::Tensor lengths = at::full({batch_size}, prefix->length(), at::kLong);  // [B]
  return KvCache::with_prefix(std::move(keys), std::move(values), lengths, batch_size);
}

at::Tensor prompt_logits(const Model& model, const KvPrefix* prefix, const std::vector<int32_t>& token_ids) {
  if (token_ids.empty()) throw InvalidArgumentError("the prompt is empty: give at least one token");
  c10::InferenceMode inference;
  KvCache cache = kv_cache_with_prefix(model, prefix, 1);
  const at::Tensor input_ids =
      at::tensor(std::vector<int64_t>(token_ids.begin(), token_ids.end()), at::kLong).unsqueeze(0);  // [1, T]
  const at::Tensor token_mask = at::ones_like(input_ids, at::kBool);                                 // [1, T]
  const at::Tensor logits = model.forward(input_ids.to(model.device()), token_mask.to(model.device()), cache);
  return logits[0].to(at::kCPU, at::kFloat).clone();  // [T, V]
}

}  // namespace cartridge
