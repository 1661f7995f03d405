// Attention matching: the fit that compacts one layer of a document's KV cache into a cartridge's p rows
// ("Fast KV Compaction via Attention Matching", Zweiger, Fu, Guo, Kim, arXiv 2602.16284), in the form a
// PEFT cartridge can hold: keys and values only (PEFT has no per-row attention bias, the paper's mass
// term). docs/attention_matching.md derives it and gives the measurements behind each choice.
//
// For one layer and one KV head (head dim D, g = H / H_kv query heads per KV head):
//   K, V  [N, D]   the document's keys and values, keys rotated into the cartridge's frame (slot t of the
//                  document at RoPE position t - (N - p), so a reference token at p + i sees every key at
//                  the distance it had in the document);
//   Q     [R, D]   reference queries of the g heads, stacked (tokens that followed the document);
//   A = softmax(Q K^T * scale)   [R, N],   O = A V   [R, D]   (what the document contributes).
// 1. Keep p keys: the first `num_exact_rows` document slots (the attention sink, the cartridge's frozen
//    rows), then the p - F slots with the largest attention received, sqrt(mean_r A_rj^2) ("rms") or
//    max_r A_rj ("max"); kept in document order.
// 2. Values: the exact rows keep the document's own values; the others are the ridge least-squares fit
//    X_free Vc = O - X_exact V_exact with X = softmax(Q Kc^T * scale) [R, p], lambda = ridge * ||X^T X||_2.
// The fit runs in float32, the solve in float64.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

namespace cartridge {

enum class KeySelection {
  kAttentionRms,  // sqrt(mean over queries of the attention weight squared)
  kAttentionMax,  // max over queries of the attention weight
};

// "rms" / "max" (the spellings of --key-selection); InvalidArgumentError naming the choices otherwise.
KeySelection parse_key_selection(const std::string& name);
const char* key_selection_name(KeySelection selection);

struct AttentionMatchingOptions {
  int64_t num_virtual_tokens = 0;  // p
  int64_t num_exact_rows = 1;      // F: the document's first slots kept with their own keys and values
  KeySelection selection = KeySelection::kAttentionRms;
  double ridge = 1e-6;         // ridge of the value fit, relative to the largest eigenvalue of X^T X
  int64_t max_queries = 8192;  // reference query vectors per KV head used (an even stride over them)
};

// One layer of a cartridge made by attention matching.
struct CompactLayer {
  at::Tensor keys;    // [H_kv, p, D] float32, in the cartridge's frame
  at::Tensor values;  // [H_kv, p, D] float32
  at::Tensor kept;    // [H_kv, p] int64: the document slot each row's key is, ascending
};

// Fits one layer. keys / values [H_kv, N, D] (any float dtype; keys already in the cartridge's frame),
// queries [H, R, D] in the same frame, H a multiple of H_kv (head h serves KV head h / (H / H_kv)); scale
// multiplies q.k (1 / sqrt(D)). Throws InvalidArgumentError when p > N or F > p, MismatchError on shapes.
CompactLayer fit_compact_layer(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& queries,
                               double scale, const AttentionMatchingOptions& options);

}  // namespace cartridge
