// The key/value cache of a batch of sequences, as an object with operations (after llama.cpp's
// llama-kv-cache): its tensors are private; callers build it, read it, and change it only through the
// operations below. Each row may start with its own KV prefix (a cartridge, or several composed) of any
// length and may hold padding; a per-slot mask says which slots hold real keys, so rows of different
// lengths share one rectangular tensor per layer. Positions and masks: docs/positions_and_masks.md.
//
// A prefix that several rows start with can instead be *shared*: held once, outside the rows' own slots,
// and read once per step for all its rows (attention.h's shared_prefix_attention, after Hydragen). Then
// keys(layer) holds only the rows' own slots and shared_prefixes() says which rows read which prefix.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/kv_prefix.h"
#include "model/model_config.h"

namespace cartridge {

class KvCache {
 public:
  KvCache() = default;  // no layers and no rows; assign a built cache to it

  // ---- building -------------------------------------------------------------------------------------
  // A cache with no slots (S = 0) for `batch_size` rows; next positions 0.
  static KvCache empty(const ModelConfig& config, int64_t batch_size, at::ScalarType dtype,
                       at::Device device);

  // Row b starts with the first prefix_lengths[b] <= P slots of per-layer prefix tensors [B, H_kv, P, D]
  // (the rest of its P slots are padding); real tokens then go at positions prefix_lengths[b] + i. The
  // tensors are used as they are (no copy), so autograd flows into them; the cache lives on their device
  // and dtype. prefix_lengths [B] int64 on any device.
  static KvCache from_prefix_tensors(std::vector<at::Tensor> keys, std::vector<at::Tensor> values,
                                     const at::Tensor& prefix_lengths);

  // Every row starts with the same `prefix` (P slots; held once and broadcast, not copied, so autograd
  // flows into a prefix that requires grad). Real tokens then go at positions P + i. The cache lives on the
  // prefix's device and dtype.
  static KvCache with_prefix(const KvPrefix& prefix, int64_t batch_size);

  // Row b starts with prefixes[b] (null or empty = none), copied into one tensor per layer padded to the
  // longest; row b's real tokens go at positions P_b + i. Throws MismatchError when a prefix has another
  // layer count than `config`.
  static KvCache with_row_prefixes(const ModelConfig& config, at::ScalarType dtype, at::Device device,
                                   const std::vector<std::shared_ptr<const KvPrefix>>& prefixes);

  // Row b starts with the prefixes prefixes[b] one after another (a composition; null or empty ones
  // skipped; none = no prefix), but nothing is copied: rows that read the same prefix object share it (one
  // SharedPrefix), and the rows' own slots start empty. Row b's real tokens go at positions sum P + i.
  // Throws MismatchError when a prefix has another layer count than `config`; the prefixes must be in
  // `dtype` on `device`.
  static KvCache with_shared_prefixes(
      const ModelConfig& config, at::ScalarType dtype, at::Device device,
      const std::vector<std::vector<std::shared_ptr<const KvPrefix>>>& prefixes);

  // A prefix held once and read by several rows; its slots come before each of those rows' own slots.
  struct SharedPrefix {
    std::shared_ptr<const KvPrefix> prefix;  // per layer [H_kv, P, D], never modified
    // Which use of the prefix in its rows this is: 0, or k for the (k+1)-th time a composition repeats it
    // (its slots are then read k+1 times, so each use is an entry of its own).
    int64_t occurrence = 0;
    std::vector<int64_t> rows;  // the rows that read it, ascending
    at::Tensor row_index;       // the same rows, [n] int64 on the cache's device
  };

  // ---- reading ---------------------------------------------------------------------------------------
  int64_t batch_size() const;  // B
  int64_t length() const;      // S, the rows' own slots including padding (shared prefixes not counted)
  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }
  const at::Tensor& keys(int64_t layer) const;                // [B, H_kv, S, D], post-RoPE (post k-norm)
  const at::Tensor& values(int64_t layer) const;              // [B, H_kv, S, D]
  const at::Tensor& slot_mask() const { return slot_mask_; }  // [B, S] bool: slot holds a real key
  // The shared prefixes, each with the rows that read it (empty unless built by with_shared_prefixes).
  const std::vector<SharedPrefix>& shared_prefixes() const { return shared_prefixes_; }
  // Bytes of K and V of the distinct shared prefixes (each counted once, however many rows read it).
  int64_t shared_prefix_bytes() const;
  // The most shared-prefix slots any row reads before its own slots.
  int64_t longest_shared_prefix() const;
  const at::Tensor& next_positions() const {
    return next_positions_;
  }  // [B] int64: next real token's position
  // True when autograd records through the cache (a trainable prefix in it).
  bool requires_grad() const;
  // Bytes of the rows' own K and V in use (rows x slots x layers x heads x dims), padding included,
  // capacity and shared prefixes excluded.
  int64_t bytes() const;

  // Row `row`'s first `slots` own slots as a prefix (views, no copy). The caller checks they are real
  // slots (slot_mask); e.g. a batch-1 prefill becomes a prefix for many rows this way. Not for a cache with
  // shared prefixes (the row's slots would start after them).
  KvPrefix row_prefix(int64_t row, int64_t slots) const;

  // ---- rows ------------------------------------------------------------------------------------------
  // The rows `row_indices` ([N] int64, distinct) of this cache, in that order (fresh tensors; shared
  // prefixes stay shared).
  KvCache select_rows(const at::Tensor& row_indices) const;
  // Stacks the rows of several caches (same layers, heads, head_dim, dtype, device) into one batch;
  // shorter caches are padded on the right with masked slots up to the longest S. Rows of different caches
  // that share the same prefix object end up in one SharedPrefix.
  static KvCache concat_rows(const std::vector<KvCache>& caches);
  // Drops the slot columns that are padding in every row (e.g. after finished rows left). Keeps the order.
  void drop_padding_columns();
  // A deep copy (fresh tensors, detached from autograd), e.g. to fork a prefilled prompt.
  KvCache clone() const;
  // Makes room for `slots` more slots per row so that appends write in place (decode loops call it once);
  // appends grow capacity by doubling anyway. No effect when autograd records the cache.
  void reserve(int64_t slots);

  // ---- the forward pass's protocol (Model::forward) ------------------------------------------------
  // Appends one layer's new keys/values [B, H_kv, T, D] after the slots: in place in reserved capacity
  // when no autograd is involved, by concatenation otherwise (tensors saved for backward are never
  // modified). Every layer gets the same T; then commit_tokens() records them.
  void append(int64_t layer, const at::Tensor& new_keys, const at::Tensor& new_values);
  // Records the T slots just appended to every layer: token_mask [B, T] bool says which are real, and the
  // rows' next positions become `next_positions` [B] int64.
  void commit_tokens(const at::Tensor& token_mask, const at::Tensor& next_positions);

 private:
  // Preallocated storage behind keys_[l] / values_[l] (which are views of its first S slots). Shared by
  // shallow copies of the cache; `used` tells which copy may still append in place (the one whose length
  // equals it): any other copy reallocates first, so forks never overwrite each other.
  struct GrowthBuffer {
    at::Tensor keys;    // [B, H_kv, capacity, D]
    at::Tensor values;  // [B, H_kv, capacity, D]
    int64_t used = 0;   // slots written
  };
  // Moves layer `layer` into a fresh buffer of `capacity` slots holding its current slots.
  void regrow(int64_t layer, int64_t capacity);

  std::vector<at::Tensor> keys_;                               // per layer [B, H_kv, S, D]
  std::vector<at::Tensor> values_;                             // per layer [B, H_kv, S, D]
  at::Tensor slot_mask_;                                       // [B, S] bool
  at::Tensor next_positions_;                                  // [B] int64
  std::vector<std::shared_ptr<GrowthBuffer>> growth_buffers_;  // per layer, null when none
  std::vector<SharedPrefix> shared_prefixes_;                  // distinct prefix objects, first use first
};

}  // namespace cartridge
