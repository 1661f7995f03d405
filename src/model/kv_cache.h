// The key/value cache of a batch of sequences. Each row may start with its own KV prefix (a cartridge, or
// several composed) of any length and may contain padding; a per-slot mask says which slots hold real
// keys, so rows of different lengths share one rectangular tensor per layer.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/model_config.h"

namespace cartridge {

struct KvCache {
  std::vector<at::Tensor>
      keys;  // per layer [B, H_kv, S, D] (post-RoPE, post k-norm: what transformers caches)
  std::vector<at::Tensor> values;  // per layer [B, H_kv, S, D]
  at::Tensor slot_mask;            // [B, S] bool: true where the slot holds a real key (prefix slot or token)
  at::Tensor next_positions;       // [B] int64: RoPE position of each row's next real token

  int64_t batch_size() const;  // B
  int64_t length() const;      // S, slots per row including padding
  int64_t num_layers() const { return static_cast<int64_t>(keys.size()); }

  // A cache with no slots (S = 0) for `batch_size` rows; next_positions = 0.
  static KvCache empty(const ModelConfig& config, int64_t batch_size, at::ScalarType dtype,
                       at::Device device);

  // A cache that starts with a prefix. prefix_keys/values: per layer [B, H_kv, P, D], or [1, H_kv, P, D]
  // broadcast to `batch_size` rows. prefix_lengths [B] int64 (any device): row b's valid prefix slots are
  // the first prefix_lengths[b] <= P, the rest are padding (masked out). next_positions = prefix_lengths,
  // so real tokens go at positions P_b + i (spec §A5). The prefix tensors are used as they are (no copy),
  // so autograd flows into them; the cache lives on their device and dtype.
  static KvCache with_prefix(std::vector<at::Tensor> prefix_keys, std::vector<at::Tensor> prefix_values,
                             at::Tensor prefix_lengths, int64_t batch_size);

  // The rows `row_indices` ([N] int64) of this cache, in that order (for continuous batching).
  KvCache select_rows(const at::Tensor& row_indices) const;

  // Stacks the rows of several caches (same layers, heads, head_dim, dtype, device) into one batch. Shorter
  // caches are padded on the right with masked slots up to the longest S.
  static KvCache concat_rows(const std::vector<KvCache>& caches);

  // Drops the slot columns that are padding in every row (e.g. after finished rows were removed). Keeps
  // the order of the remaining slots.
  void drop_padding_columns();

  // A deep copy (fresh tensors, detached from autograd), e.g. to fork a prefilled prompt.
  KvCache clone() const;

  // Makes room for `slots` more slots per row without reallocating on every append (used before a
  // decode loop; appends grow capacity by doubling anyway). No effect when autograd records the cache.
  void reserve(int64_t slots);

  // Appends one layer's new keys/values [B, H_kv, T, D] at the end of the slots. Used by Model::forward:
  // writes into preallocated capacity when no autograd is involved, concatenates otherwise (so tensors
  // saved for backward are never modified in place). Does not touch slot_mask / next_positions.
  void append_layer(int64_t layer, const at::Tensor& new_keys, const at::Tensor& new_values);

  // Preallocated storage behind keys[l]/values[l] (keys[l] is a view of its first S slots). Shared by
  // shallow copies of the cache; `used` tells which copy may still append in place (the one whose
  // length equals it), any other copy reallocates first, so forks never overwrite each other.
  struct GrowthBuffer {
    at::Tensor keys;    // [B, H_kv, capacity, D]
    at::Tensor values;  // [B, H_kv, capacity, D]
    int64_t used = 0;   // slots written
  };
  std::vector<std::shared_ptr<GrowthBuffer>> growth_buffers;  // per layer, null when none
};

}  // namespace cartridge
