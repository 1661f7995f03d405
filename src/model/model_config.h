// The shape and hyper-parameters of a decoder-only transformer (Llama, Qwen2, Qwen3 families), read from a
// Hugging Face config.json or from GGUF metadata, with the same defaults transformers applies.
#pragma once

#include <cstdint>
#include <string>

#include <c10/core/ScalarType.h>

#include "model/architecture.h"

namespace cartridge {

class GgufFile;

// RoPE frequency scaling (transformers' `rope_parameters` / older `rope_scaling`). Supported types:
// "default" (no scaling) and "llama3" (Llama 3.1+ wavelength-dependent interpolation).
struct RopeScaling {
  std::string type = "default";
  double factor = 1;
  double low_freq_factor = 1;
  double high_freq_factor = 4;
  int64_t original_max_position_embeddings = 8192;  // tokens
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string model_type;  // "llama", "qwen2", "qwen3" (also "mistral", run as Llama)

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // MLP width
  int64_t num_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // GQA: query heads are grouped onto these
  int64_t head_dim = 0;             // from the config when present (Qwen3: 128 by default), not hidden/heads
  int64_t max_position_embeddings = 0;  // tokens
  // Sliding-window attention span in tokens, 0 when the model attends to everything (the only case we
  // run: a forward that would need the window is refused with UnsupportedError).
  int64_t sliding_window = 0;

  double rms_norm_eps = 1e-6;
  double rope_theta = 10000;
  RopeScaling rope_scaling;

  bool tie_word_embeddings = false;    // lm_head shares the token embedding matrix
  bool attention_bias = false;         // q, k, v projections have a bias (Qwen2 always; Llama/Qwen3 if set)
  bool attention_output_bias = false;  // o_proj has a bias (Llama with attention_bias)
  bool mlp_bias = false;               // gate/up/down have biases (Llama with mlp_bias)
  bool qk_norm = false;                // RMSNorm over head_dim on q and k before RoPE (Qwen3)

  // Reads config.json as transformers 5 does (also the older `rope_theta` + `rope_scaling` keys). Throws
  // FileNotFoundError / FormatError naming the file, and UnsupportedError naming the file and the
  // architecture (listing the supported ones) for any other model_type, activation or RoPE type.
  static ModelConfig from_hf_config_json(const std::string& config_path);

  // Reads `general.architecture` and `<arch>.*` keys (llama, qwen2, qwen3) like transformers' GGUF loader:
  // head counts, rope freq base, rms eps, `rope.dimension_count` / `attention.key_length` for head_dim,
  // context length, vocab size (from the token list when `<arch>.vocab_size` is absent), tied embeddings
  // when the file has no `output.weight`.
  static ModelConfig from_gguf(const GgufFile& gguf);

  // Elements of one token's K and V over all layers: 2 * num_layers * num_key_value_heads * head_dim.
  int64_t kv_width() const;
  // Bytes of one token's K and V over all layers when stored in `dtype`.
  int64_t kv_bytes_per_token(at::ScalarType dtype) const;

  // Checks the invariants the runtime relies on (positive sizes, heads divisible by KV heads, even
  // head_dim); throws FormatError naming `source` otherwise.
  void validate(const std::string& source) const;
};

}  // namespace cartridge
