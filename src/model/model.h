// A decoder-only transformer (Llama, Qwen2, Qwen3 families) loaded from a Hugging Face folder or a GGUF
// file, computing the same logits and KV cache as Hugging Face transformers. Immutable after load: one
// Model is shared read-only (std::shared_ptr<const Model>) by many generations, cartridges and trainers.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "io/model_files.h"
#include "model/kv_cache.h"
#include "model/model_config.h"

namespace cartridge {

class WeightSource;

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // kFloat (exact parity), kBFloat16 or kHalf
  at::Device device = at::kCPU;       // e.g. at::Device(at::kCUDA, 0) when torch::cuda::is_available()
  bool show_progress = true;          // progress bar on stderr while reading weights
};

struct ForwardOptions {
  // Return logits only for each row's last real token ([B, 1, V]) instead of every input position.
  bool last_token_only = false;
  // Explicit RoPE positions [B, T] int64 (on any device) instead of next_positions + running count.
  std::optional<at::Tensor> positions;
  // Return the final-normed hidden states [B, T (or 1), hidden] in the model dtype instead of logits, so a
  // caller that needs the logits of many positions can run Model::logits_from_hidden on a few at a time
  // (a [B, T, V] float32 tensor can be gigabytes).
  bool final_hidden_states = false;
};

class Model {
 public:
  // Loads config and weights (HF folder: config.json + model.safetensors or shards, F32/F16/BF16; GGUF:
  // metadata + dequantised tensors, Llama Q/K rows un-permuted back to the HF layout). Throws the typed
  // errors of util/error.h with one line naming the file: unsupported architecture, missing tensor, wrong
  // tensor shape, unsupported dtype.
  static std::shared_ptr<const Model> load(const ModelFiles& files, const LoadOptions& options = {});

  // Builds a model from tensors named as in a Hugging Face checkpoint
  // ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "lm_head.weight", ...), any float
  // dtype, converted to options.dtype/device. `source` names where they came from, for error messages.
  static std::shared_ptr<const Model> from_weights(const ModelConfig& config,
                                                   const std::map<std::string, at::Tensor>& weights,
                                                   const LoadOptions& options, const std::string& source);

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // An empty cache for `batch_size` rows in this model's dtype and device.
  KvCache new_cache(int64_t batch_size) const;

  // Runs input_ids [B, T] (int64) through the model, appending their K/V to `cache` (T slots per row,
  // padding included, masked). token_mask [B, T] bool marks real tokens (false = padding, at any position).
  // Positions of real tokens are cache.next_positions[b] + (running count of real tokens in the row before
  // them), unless options.positions gives them. Every real token attends to all valid slots already in the
  // cache and causally to the real tokens of this call. Afterwards next_positions[b] is one past the row's
  // last real position. Returns logits [B, T, V] float32, or [B, 1, V] for each row's last real token when
  // last_token_only (a row without real tokens then gives the logits of column T-1, meaningless).
  // Differentiable with respect to cache tensors that require grad (the model weights never do); runs
  // without autograd recording when nothing requires grad.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_mask, KvCache& cache,
                     const ForwardOptions& options = {}) const;

  // The language-model head on final-normed hidden states [..., hidden] (from forward with
  // final_hidden_states): logits [..., V] float32.
  at::Tensor logits_from_hidden(const at::Tensor& hidden) const;

  // Per-layer weights in this model's dtype/device. q/k/v (and gate/up) are stored fused, row-stacked in
  // that order, so one matmul computes them.
  struct LayerWeights {
    at::Tensor input_norm;      // [hidden]
    at::Tensor qkv_weight;      // [(H + 2 H_kv) D, hidden]
    at::Tensor qkv_bias;        // [(H + 2 H_kv) D] or undefined
    at::Tensor q_norm;          // [D] or undefined (Qwen3)
    at::Tensor k_norm;          // [D] or undefined (Qwen3)
    at::Tensor output_weight;   // [hidden, H D]
    at::Tensor output_bias;     // [hidden] or undefined
    at::Tensor post_norm;       // [hidden]
    at::Tensor gate_up_weight;  // [2 I, hidden]
    at::Tensor gate_up_bias;    // [2 I] or undefined
    at::Tensor down_weight;     // [hidden, I]
    at::Tensor down_bias;       // [hidden] or undefined
  };

 private:
  Model() = default;

  // Reads every tensor from `source`, checks shapes against `config`, converts to options.dtype/device.
  static std::shared_ptr<const Model> build(const ModelConfig& config, WeightSource& source,
                                            const LoadOptions& options);

  // cos and sin [B, 1, T, D] in the model dtype for RoPE positions [B, T].
  std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions) const;
  at::Tensor attention_mask(const KvCache& cache, const at::Tensor& token_mask) const;

  ModelConfig config_;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::kCPU;
  at::Tensor embedding_;            // [V, hidden]
  at::Tensor final_norm_;           // [hidden]
  at::Tensor lm_head_;              // [V, hidden] (the embedding itself when tied)
  at::Tensor inverse_frequencies_;  // [D / 2] float32, RoPE (after scaling)
  std::vector<LayerWeights> layers_;
};

}  // namespace cartridge
