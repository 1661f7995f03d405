#include "cartridge/prompt_embeddings.h"

#include <ATen/ATen.h>

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

}  // namespace cartridge
