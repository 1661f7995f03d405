// A KV prefix ready for the model: what a cartridge becomes at run time (spec §A3.5). Stored keys are
// post-RoPE at positions 0..P-1; real tokens that follow go at positions P+i. No re-rotation ever.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "model/kv_cache.h"
#include "model/model.h"
#include "model/model_config.h"

namespace cartridge {

struct KvPrefix {
  std::vector<at::Tensor> keys;    // per layer [H_kv, P, D], model dtype and device
  std::vector<at::Tensor> values;  // per layer [H_kv, P, D]

  int64_t length() const { return keys.empty() ? 0 : keys.front().size(1); }  // P, in tokens
};

// Splits PEFT's `prompt_embeddings` layout [P, 2*L*H_kv*D] (row = [K_0|V_0|K_1|V_1|...], each block
// head-major then channel; spec §A3.3) into per-layer keys and values, cast to `dtype` on `device`.
// The result shares autograd history with `prompt_embeddings` (training flows through it).
KvPrefix kv_prefix_from_prompt_embeddings(const at::Tensor& prompt_embeddings, const ModelConfig& config,
                                          at::ScalarType dtype, at::Device device);

// The inverse: per-layer keys/values [H_kv, P, D] -> [P, 2*L*H_kv*D] float32 on the CPU.
at::Tensor prompt_embeddings_from_kv_prefix(const KvPrefix& prefix);

// A KV cache of `batch_size` rows that all start with `prefix` (shared, not copied), or an empty cache
// when `prefix` is null: real tokens then go at positions P+i.
KvCache kv_cache_with_prefix(const Model& model, const KvPrefix* prefix, int64_t batch_size = 1);

// The logits [T, V] float32 of every position of `token_ids` run after `prefix` (null = none), as
// PeftModel.forward(input_ids) gives them for a CARTRIDGE adapter. For parity checks (--logits-out).
at::Tensor prompt_logits(const Model& model, const KvPrefix* prefix, const std::vector<int32_t>& token_ids);

}  // namespace cartridge
