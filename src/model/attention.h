// The attention step of a transformer layer: the queries of this forward's tokens against every slot of
// the layer's cache (prefix, earlier tokens, these tokens), with grouped-query heads. One function type, so
// that another implementation (a reference, a shared-prefix attention) plugs in through ForwardKernels
// without touching the layer. Which slots a query sees: docs/positions_and_masks.md.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace cartridge {

// Which cache slots each new token attends to.
struct AttentionMask {
  at::Tensor allowed;   // [B, 1, T, S] bool (true = attend), or undefined when no mask is needed:
  bool causal = false;  // with `allowed` undefined: causal over the T new tokens (S == T), else everything
};

// The mask for T new tokens token_mask [B, T] (false = padding) appended after a cache whose slots are
// slot_mask [B, S_old] (false = padding). Query i sees the real old slots, the real new tokens j <= i,
// and always itself (an all-masked row would make the softmax NaN, and NaN * 0 poisons gradients).
// Returns no tensor when it can: every slot and token real and either one new token (attend to all) or
// no old slots (plain causal).
AttentionMask attention_mask(const at::Tensor& slot_mask, const at::Tensor& token_mask);

// One layer of a prefix that several rows read before their own slots (KvCache::SharedPrefix). Every
// query of those rows attends to all of its slots.
struct SharedPrefixSlots {
  at::Tensor keys;       // [H_kv, P, D], post-RoPE
  at::Tensor values;     // [H_kv, P, D]
  at::Tensor row_index;  // [n] int64: the batch rows that read it
};

struct AttentionInputs {
  at::Tensor query;    // [B, H, T, D], post-RoPE
  at::Tensor keys;     // [B, H_kv, S, D]: the rows' own slots, the T new ones last
  at::Tensor values;   // [B, H_kv, S, D]
  AttentionMask mask;  // over the rows' own slots
  // Prefixes held once for several rows; they come before `keys` for their rows. Empty for most caches.
  std::vector<SharedPrefixSlots> shared_prefixes;
  double scale = 1;   // applied to q.k (1 / sqrt(D))
  int64_t layer = 0;  // the calling layer's index (for kernels that keep per-layer state)
};

// softmax(q k^T * scale, masked) v, [B, H, T, D] in the query's dtype; each KV head serves H / H_kv
// consecutive query heads. ATen's scaled_dot_product_attention (flash kernel on the CPU); with shared
// prefixes, shared_prefix_attention.
at::Tensor sdpa_attention(const AttentionInputs& inputs);

// The same result when rows read shared prefixes, without copying a prefix per row (after Hydragen,
// arXiv 2402.05099): each shared prefix is attended once for all its rows, as one matrix product per KV
// head (the queries of every row and query head of the group stacked), the rows' own slots per row, and
// the partial results merged exactly by their log-sum-exp (in float32).
struct SharedPrefixAttentionOptions {
  // Queries are taken as many at a time as keep one score tensor within this many elements (at least one
  // query), so that a long prefill does not materialise [B, H, T, S] at once.
  int64_t max_score_elements = int64_t{16} << 20;
  // On the CPU, ATen's fused flash kernel (which returns its log-sum-exp); false = explicit float32 scores,
  // softmax and products, what other devices run (the tests compare the two).
  bool fused_cpu_kernel = true;
};
at::Tensor shared_prefix_attention(const AttentionInputs& inputs,
                                   const SharedPrefixAttentionOptions& options = {});

// The reference: shared prefixes copied in front of each row's own slots, keys and values repeated per
// query group, explicit scores, mask, softmax and weighted sum in float64, rounded to the query's dtype at
// the end. Slow; for tests only.
at::Tensor naive_attention(const AttentionInputs& inputs);

}  // namespace cartridge
