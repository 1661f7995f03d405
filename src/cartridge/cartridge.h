// A cartridge: p trained KV-cache rows that stand in for a document (docs/cartridge_format.md). Stored as
// PEFT's CARTRIDGE encoder stores it: float32 `frozen` rows [F, W] (the attention sink, never trained)
// followed by `trainable` rows [p - F, W], W = 2*L*H_kv*D, each row laid out [K_0 | V_0 | K_1 | V_1 | ...],
// each block head-major then channel (docs/cartridge_format.md). Keys are post-RoPE at positions 0..p-1; real
// tokens that follow go at positions p+i; nothing is ever re-rotated (docs/positions_and_masks.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cartridge/cartridge_shape.h"
#include "cartridge/prompt_embeddings.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace cartridge {

class Cartridge {
 public:
  // Takes float32 CPU-or-device tensors as they are (no copy). Throws InvalidArgumentError when their
  // shapes do not fit `shape` or each other, or p = 0.
  Cartridge(const CartridgeShape& shape, at::Tensor frozen_embedding /* [F, W] */,
            at::Tensor trainable_embedding /* [p-F, W] */);

  // Splits PEFT's `prompt_embeddings` [p, W] (any float dtype, upcast to float32 as PEFT does) into the
  // first `num_frozen_tokens` frozen rows and the rest. Copies.
  static Cartridge from_prompt_embeddings(const CartridgeShape& shape, const at::Tensor& prompt_embeddings,
                                          int64_t num_frozen_tokens);

  // N(0, 1) rows as PEFT's CartridgeEncoder initialises them: normal_ on the frozen block, then on the
  // trainable block, from a CPU generator seeded with `seed` (the same values as torch.manual_seed(seed)
  // followed by get_peft_model).
  static Cartridge random(const CartridgeShape& shape, int64_t num_virtual_tokens, int64_t num_frozen_tokens,
                          uint64_t seed);

  // The first `num_virtual_tokens` slots of row `row` of a KV cache filled by a prefill that started at
  // position 0 (as PEFT's initialize_kv_prefix_from_past_key_values). Throws InvalidArgumentError when the
  // row has fewer valid slots (saying how many it has).
  static Cartridge from_kv_cache(const KvCache& cache, int64_t num_virtual_tokens, int64_t num_frozen_tokens,
                                 int64_t row = 0);

  // Base-model prefill of `token_ids` at positions 0..n-1, keeping the first `num_virtual_tokens` cached
  // slots (PEFT's initialize_kv_prefix_from_text after tokenization). Only those first p tokens are run:
  // with causal attention the rest cannot change them. The prefill runs in the model's dtype; the result is
  // upcast to float32. Throws InvalidArgumentError when there are fewer than p tokens.
  static Cartridge from_token_ids(const Model& model, const std::vector<int32_t>& token_ids,
                                  int64_t num_virtual_tokens, int64_t num_frozen_tokens);

  // Composition by concatenation (docs/cartridge_format.md, "Composing cartridges"): rows in order, the
  // frozen count of the first, no re-rotation. Throws MismatchError for fewer than one part or parts of
  // different shapes.
  static Cartridge compose(const std::vector<Cartridge>& parts);

  const CartridgeShape& shape() const { return shape_; }
  int64_t num_virtual_tokens() const { return frozen_.size(0) + trainable_.size(0); }  // p
  int64_t num_frozen_tokens() const { return frozen_.size(0); }                        // F
  int64_t num_trainable_tokens() const { return trainable_.size(0); }                  // p - F

  // The tensors themselves (handles share storage): a trainer may set requires_grad on the trainable one
  // and update it in place.
  const at::Tensor& frozen_embedding() const { return frozen_; }        // [F, W] float32
  const at::Tensor& trainable_embedding() const { return trainable_; }  // [p-F, W] float32

  // [p, W] float32: frozen rows then trainable rows (differentiable w.r.t. the trainable rows).
  at::Tensor prompt_embeddings() const;

  // Bytes of the float32 parameters (p * W * 4).
  int64_t parameter_bytes() const { return num_virtual_tokens() * shape_.width() * 4; }

  // Throws MismatchError when this cartridge's layout does not fit `config` (layers, KV heads, head_dim) or
  // its rows fill the model's context, naming `what` (e.g. the adapter folder) and `model_name`.
  void check_fits(const ModelConfig& config, const std::string& what, const std::string& model_name) const;

  // The per-layer keys/values [H_kv, p, D] in `dtype` on `device`, for Model::forward / generate().
  // Differentiable w.r.t. the trainable rows. Checks the shape against `config` first.
  KvPrefix kv_prefix(const ModelConfig& config, at::ScalarType dtype, at::Device device) const;
  // The same in the model's dtype and device, shareable by many generation rows.
  std::shared_ptr<const KvPrefix> kv_prefix_for(const Model& model) const;

 private:
  CartridgeShape shape_;
  at::Tensor frozen_;     // [F, W] float32
  at::Tensor trainable_;  // [p-F, W] float32
};

}  // namespace cartridge
