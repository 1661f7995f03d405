// The key/value cache of a batch of sequences, as an object with operations (after llama.cpp's
// llama-kv-cache): its tensors are private; callers build it, read it, and change it only through the
// operations below. Each row may start with its own KV prefix (a cartridge, or several composed) of any
// length and may hold padding; a per-slot mask says which slots hold real keys, so rows of different
// lengths share one rectangular tensor per layer. Positions and masks: docs/positions_and_masks.md.
//
// A prefix that several rows start with can instead be *shared*: held once, outside the rows' own slots,
// and read once per step for all its rows (attention.h's shared_prefix_attention, after Hydragen). Then
// keys(layer) holds only the rows' own slots and shared_prefixes() says which rows read which prefix.
//
// Two layouts of the rows' own slots:
// - rectangular (every builder below but row_pool): all rows append at the same column, so a row shorter
//   than the others holds padding, and taking rows out or in (select_rows, concat_rows) copies every row.
//   Autograd flows through it (training); it is the reference the row pool is tested against.
// - the row pool (row_pool, for decoding requests that come and go): each row keeps its own length and
//   appends at its own column of preallocated per-layer storage, so rows of any lengths hold no padding;
//   a joining row is written into the next free row and a leaving row's place is taken by the last row,
//   so a request joining moves no other request's KV and one leaving moves at most one row (after
//   llama.cpp's per-sequence cells and vLLM's block pool, without pages: attention reads each layer's
//   rows as one tensor). Inference only.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/attention.h"
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

  // An empty row pool (no rows; storage grows as rows join). The rows' prompts must be right-padded (a
  // row's real tokens first), which is how every batched prefill here pads; commit_tokens checks it.
  static KvCache row_pool(const ModelConfig& config, at::ScalarType dtype, at::Device device);

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
  // capacity and shared prefixes excluded. A row pool has no padding: the sum of its rows' lengths.
  int64_t bytes() const;
  // Bytes of the storage behind the rows' own K and V: a row pool's rows x slots of capacity, or for a
  // rectangular cache its growth buffers (or bytes() when it has none). Shared prefixes excluded.
  int64_t capacity_bytes() const;
  bool is_row_pool() const { return row_pool_; }

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

  // ---- a row pool's rows (is_row_pool()) -------------------------------------------------------------
  // Adds rows `rows` (distinct indices, in that order) of `joining`, a rectangular cache with the same
  // layers, heads, dtype and device (e.g. their prefill), after the pool's rows: each row's real slots
  // (joining.slot_mask()) are copied to the start of a free row of storage, its next position and the
  // shared prefixes it reads come along. The storage is made to hold `room` more slots for each of them;
  // it grows by doubling (copying the pool once) only when rows or slots run out.
  void add_rows(const KvCache& joining, const std::vector<int64_t>& rows, int64_t room);
  // Removes rows `rows` (distinct indices; unknown ones are an error). The last rows move into the places
  // that free up below the new batch size; no other row moves. Returns, for each row of the new order,
  // its index before, so that callers reorder their per-row state the same way.
  std::vector<int64_t> remove_rows(const std::vector<int64_t>& rows);

  // ---- the forward pass's protocol (Model::forward) ------------------------------------------------
  // Which slots T new tokens token_mask [B, T] (false = padding) attend to, given where append() will put
  // them: the free function attention_mask() for a rectangular cache or a pool whose rows have one length;
  // otherwise query t of row b sees columns [0, length_b + t] of the rows' own slots.
  AttentionMask attention_mask_for(const at::Tensor& token_mask) const;
  // Appends one layer's new keys/values [B, H_kv, T, D] after the slots: in place in reserved capacity
  // when no autograd is involved, by concatenation otherwise (tensors saved for backward are never
  // modified); in a row pool at each row's own length. Every layer gets the same T; then commit_tokens()
  // records them.
  void append(int64_t layer, const at::Tensor& new_keys, const at::Tensor& new_values);
  // Records the T slots just appended to every layer: token_mask [B, T] bool says which are real, and the
  // rows' next positions become `next_positions` [B] int64. A row pool's rows grow by their real tokens
  // (their padding, after them, is overwritten by the next append).
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
  // Row pool: moves every layer into storage of at least `rows` rows and `slots` slots (doubling), keeping
  // the rows' slots; no effect when the storage is large enough.
  void grow_pool(int64_t rows, int64_t slots);
  // Row pool: keys_/values_ become views of the first B rows and `slots` slots of the storage, and
  // slot_mask_ says which of those slots each row holds.
  void refresh_pool_views(int64_t slots);
  bool pool_lengths_equal() const;
  void append_to_pool(int64_t layer, const at::Tensor& new_keys, const at::Tensor& new_values);
  void commit_to_pool(const at::Tensor& token_mask, const at::Tensor& next_positions);

  std::vector<at::Tensor> keys_;                               // per layer [B, H_kv, S, D]
  std::vector<at::Tensor> values_;                             // per layer [B, H_kv, S, D]
  at::Tensor slot_mask_;                                       // [B, S] bool
  at::Tensor next_positions_;                                  // [B] int64
  std::vector<std::shared_ptr<GrowthBuffer>> growth_buffers_;  // per layer, null when none
  std::vector<SharedPrefix> shared_prefixes_;                  // distinct prefix objects, first use first

  // The row pool (row_pool_ true): keys_[l] / values_[l] are views [B, H_kv, S, D] of the storage.
  bool row_pool_ = false;
  std::vector<at::Tensor> pool_keys_;    // per layer [R, H_kv, C, D]: R rows, C slots of capacity
  std::vector<at::Tensor> pool_values_;  // per layer [R, H_kv, C, D]
  std::vector<int64_t> row_lengths_;     // [B] own slots of each row (S = the largest)
  // Where this forward's tokens go when rows have unequal lengths: storage[write_rows_, :, write_columns_].
  at::Tensor write_rows_;     // [B, 1] int64
  at::Tensor write_columns_;  // [B, T] int64: length_b + t
};

}  // namespace cartridge
