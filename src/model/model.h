// A decoder-only transformer (Llama, Qwen2, Qwen3 families) loaded from a Hugging Face folder or a GGUF
// file, computing the same logits and KV cache as Hugging Face transformers. Immutable after load: one
// Model is shared read-only (std::shared_ptr<const Model>) by many generations, cartridges and trainers.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "io/model_files.h"
#include "model/kv_cache.h"
#include "model/model_config.h"
#include "model/transformer_layer.h"

namespace cartridge {

class WeightSource;

// How a GGUF's block-quantised matrices (Q4_1, Q8_0, Q4_K, ...) are held and multiplied.
enum class QuantizedWeights {
  kDequantize,  // converted to the model dtype at load: exact parity with transformers (the default)
  // Kept as stored; float32 activations times the blocks (float_block_kernels.h; one token times Q4_0,
  // Q4_1, Q5_0, Q5_1 or Q6_K rounds them to int16 per 32 values, 2^-16 of their largest): the dense fp32
  // results up to rounding, several times faster to decode. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q6_K;
  // other types dequantise.
  kFloatActivations,
  // Kept as stored; activations rounded to 8-bit blocks and ggml's integer kernels (quantized_kernels.h),
  // as llama.cpp computes: every block type, fastest with several rows, not equal to fp32.
  kInt8Activations,
};

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // kFloat (exact parity), kBFloat16 or kHalf
  at::Device device = at::kCPU;       // e.g. at::Device(at::kCUDA, 0) when torch::cuda::is_available()
  bool show_progress = true;          // progress bar on stderr while reading weights
  // GGUF only: what happens to matrices stored in a quantised block type. Both kinds of kept blocks need
  // dtype kFloat on the CPU, and run inference only (no backward through them).
  QuantizedWeights quantized_weights = QuantizedWeights::kDequantize;
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
  // The linear and attention steps to run (null = the fast kernels). Tests pass the naive ones.
  const ForwardKernels* kernels = nullptr;
  // One new token per row, float32 on the CPU, no autograd, no shared prefix, `kernels` null: run each
  // layer as the fused decode step (decode_step.h), whose per-token cost is a few calls instead of a few
  // dozen ATen operations. false = the layer of named ATen steps, which the tests hold it to.
  bool fused_decode = true;
};

class Model {
 public:
  // Loads config and weights (HF folder: config.json + model.safetensors or shards, F32/F16/BF16; GGUF:
  // metadata + dequantised tensors, Llama Q/K rows un-permuted back to the HF layout). Throws the typed
  // errors of util/error.h with one line naming the file: unsupported architecture, missing tensor, wrong
  // tensor shape, unsupported dtype.
  static std::shared_ptr<const Model> load(const ModelFiles& files, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  // Whether some matrices are held in GGUF block types (LoadOptions::quantized_weights): such a model runs
  // inference only (no gradients flow through its quantised products).
  bool has_quantized_weights() const { return has_quantized_weights_; }
  at::Device device() const { return device_; }
  // RoPE inverse frequencies [D / 2] float32 on the model's device (rope.h's rotate_positions takes them).
  const at::Tensor& inverse_frequencies() const { return inverse_frequencies_; }

  // An empty cache for `batch_size` rows in this model's dtype and device.
  KvCache new_cache(int64_t batch_size) const;
  // A cache for `batch_size` rows that all start with `prefix` (held once, not copied; autograd flows into
  // it), or an empty one when `prefix` is null or has no slots. Throws MismatchError when the prefix has
  // another layer count than the model.
  KvCache new_cache(int64_t batch_size, const KvPrefix* prefix) const;

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

 private:
  Model() = default;

  // Reads every tensor from `source`, checks shapes against `config`, converts to options.dtype/device.
  static std::shared_ptr<const Model> build(const ModelConfig& config, WeightSource& source,
                                            const LoadOptions& options);

  // Throws (TORCH_CHECK) unless input_ids/token_mask [B, T] and the cache's rows, layers, heads and dtype
  // fit this model; UnsupportedError when the sequence would pass a sliding window; InvalidArgumentError
  // for a real token id outside the vocabulary.
  void check_forward_inputs(const at::Tensor& input_ids, const at::Tensor& token_mask,
                            const KvCache& cache) const;
  // RoPE positions [B, T] int64 of this forward's tokens (see forward()).
  at::Tensor token_positions(const at::Tensor& token_mask, const KvCache& cache,
                             const ForwardOptions& options) const;
  // Final norm and language-model head on the last layer's hidden [B, T, hidden], per options.
  at::Tensor output_head(at::Tensor hidden, const at::Tensor& last_columns,
                         const ForwardOptions& options) const;

  ModelConfig config_;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::kCPU;
  bool has_quantized_weights_ = false;
  LinearWeight embedding_;                  // [V, hidden], looked up by weight_rows
  at::Tensor final_norm_;                   // [hidden]
  LinearWeight lm_head_;                    // [V, hidden] (the embedding itself when tied)
  at::Tensor inverse_frequencies_;          // [D / 2] float32, RoPE (after scaling)
  std::vector<LayerConfig> layer_configs_;  // per layer: heads, norms (transformer_layer.h)
  std::vector<LayerWeights> layers_;        // per layer, in the model dtype
};

// The logits [T, V] float32 of every position of `token_ids` run after `prefix` (null = none), as
// PeftModel.forward(input_ids) gives them for a CARTRIDGE adapter. For parity checks (--logits-out).
at::Tensor prompt_logits(const Model& model, const KvPrefix* prefix, const std::vector<int32_t>& token_ids);

}  // namespace cartridge
