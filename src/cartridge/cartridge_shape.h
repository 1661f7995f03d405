// The per-token layout of a cartridge: how many layers, KV heads and channels one row of PEFT's
// `prompt_embeddings` [p, 2*L*H_kv*D] holds (docs/cartridge_format.md).
#pragma once

#include <cstdint>
#include <string>

#include "model/model_config.h"

namespace cartridge {

struct CartridgeShape {
  int64_t num_layers = 0;    // L
  int64_t num_kv_heads = 0;  // H_kv (PEFT's num_attention_heads after its GQA rule)
  int64_t head_dim = 0;      // D

  // PEFT's `token_dim`: one layer's keys (or values) per token, H_kv * D.
  int64_t token_dim() const { return num_kv_heads * head_dim; }
  // W, one row of prompt_embeddings: 2 * L * H_kv * D (keys and values of every layer).
  int64_t width() const { return 2 * num_layers * token_dim(); }

  // PEFT's GQA rule (docs/cartridge_format.md) on our config: KV heads, and head_dim from the config when it
  // has one.
  static CartridgeShape of_model(const ModelConfig& config) {
    return {config.num_layers, config.num_key_value_heads, config.head_dim};
  }

  bool operator==(const CartridgeShape& other) const {
    return num_layers == other.num_layers && num_kv_heads == other.num_kv_heads && head_dim == other.head_dim;
  }
  bool operator!=(const CartridgeShape& other) const { return !(*this == other); }

  // "2 layers x 2 KV heads x head_dim 16".
  std::string describe() const {
    return std::to_string(num_layers) + " layers x " + std::to_string(num_kv_heads) +
           " KV heads x head_dim " + std::to_string(head_dim);
  }
};

}  // namespace cartridge
