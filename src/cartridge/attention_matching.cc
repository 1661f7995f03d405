#include "cartridge/attention_matching.h"

#include <ATen/ATen.h>

#include "util/error.h"

namespace cartridge {

KeySelection parse_key_selection(const std::string& name) {
  if (name == "rms") return KeySelection::kAttentionRms;
  if (name == "max") return KeySelection::kAttentionMax;
  throw InvalidArgumentError("unknown key selection '" + name + "' (expected rms or max)");
}

const char* key_selection_name(KeySelection selection) {
  return selection == KeySelection::kAttentionRms ? "rms" : "max";
}

namespace {

// Rows [R', D] of `queries` [R, D]: all of them, or `limit` at an even stride (first and last included).
at::Tensor subsample_rows(const at::Tensor& queries, int64_t limit) {
  const int64_t rows = queries.size(0);
  if (limit <= 0 || rows <= limit) return queries;
  const at::Tensor picked =
      at::linspace(0, static_cast<double>(rows - 1), limit, at::TensorOptions().dtype(at::kDouble))
          .round()
          .to(at::kLong);
  return queries.index_select(0, picked);
}

// The kept document slots [p] int64, ascending: 0..F-1, then the p - F best-scored of the others.
at::Tensor select_kept_slots(const at::Tensor& attention, const AttentionMatchingOptions& options) {
  const int64_t exact = options.num_exact_rows;
  const int64_t chosen = options.num_virtual_tokens - exact;
  at::Tensor score = options.selection == KeySelection::kAttentionRms
                         ? attention.pow(2).mean(0).sqrt()  // [N]
                         : attention.amax(0);               // [N]
  const at::Tensor sink = at::arange(exact, at::TensorOptions().dtype(at::kLong));
  if (chosen == 0) return sink;
  score = score.clone();
  score.narrow(0, 0, exact).fill_(-1.0);  // below every attention weight: never chosen twice
  const at::Tensor best = std::get<1>(at::topk(score, chosen));
  return std::get<0>(at::sort(at::cat({sink, best})));
}

// (X^T X + lambda I)^-1 X^T Y in float64 with lambda = ridge * ||X^T X||_2 (plus a 1e-12 relative jitter so
// a rank-deficient X still solves), returned in float32. X [R, k], Y [R, D].
at::Tensor ridge_solve(const at::Tensor& x, const at::Tensor& y, double ridge) {
  const at::Tensor x64 = x.to(at::kDouble);
  at::Tensor gram = at::matmul(x64.t(), x64);  // [k, k]
  const double spectral = ridge > 0 ? at::linalg_eigvalsh(gram).max().item<double>() : 0.0;
  const double jitter = 1e-12 * gram.diagonal().mean().item<double>();
  gram.diagonal().add_(ridge * spectral + jitter);
  return at::linalg_solve(gram, at::matmul(x64.t(), y.to(at::kDouble))).to(at::kFloat);
}

}  // namespace

CompactLayer fit_compact_layer(const at::Tensor& keys_in, const at::Tensor& values_in,
                               const at::Tensor& queries_in, double scale,
                               const AttentionMatchingOptions& options) {
  if (keys_in.dim() != 3 || values_in.sizes() != keys_in.sizes() || queries_in.dim() != 3 ||
      queries_in.size(2) != keys_in.size(2) || queries_in.size(0) % keys_in.size(0) != 0) {
    throw MismatchError(
        "attention matching: keys/values must be [H_kv, N, D] and queries [H, R, D] with H "
        "a multiple of H_kv");
  }
  const int64_t kv_heads = keys_in.size(0);
  const int64_t document_slots = keys_in.size(1);
  const int64_t head_dim = keys_in.size(2);
  const int64_t group = queries_in.size(0) / kv_heads;
  const int64_t rows = options.num_virtual_tokens;
  const int64_t exact = options.num_exact_rows;
  if (rows <= 0 || rows > document_slots) {
    throw InvalidArgumentError("attention matching: p = " + std::to_string(rows) +
                               " rows from a document of " + std::to_string(document_slots) +
                               " tokens (p must be in [1, N])");
  }
  if (exact < 0 || exact > rows) {
    throw InvalidArgumentError("attention matching: " + std::to_string(exact) +
                               " exact rows do not fit p = " + std::to_string(rows));
  }
  const at::Tensor keys = keys_in.to(at::kFloat);
  const at::Tensor values = values_in.to(at::kFloat);
  // [H, R, D] -> [H_kv, g R, D]: the g heads of a KV head stacked.
  const at::Tensor grouped =
      queries_in.to(at::kFloat).reshape({kv_heads, group * queries_in.size(1), head_dim});

  CompactLayer layer;
  std::vector<at::Tensor> kept_keys, kept_values, kept_slots;
  for (int64_t head = 0; head < kv_heads; ++head) {
    const at::Tensor query = subsample_rows(grouped[head], options.max_queries);             // [R, D]
    const at::Tensor attention = at::softmax(at::matmul(query, keys[head].t()) * scale, 1);  // [R, N]
    const at::Tensor kept = select_kept_slots(attention, options);                           // [p]
    const at::Tensor compact_keys = keys[head].index_select(0, kept);                        // [p, D]
    at::Tensor compact_values = values[head].index_select(0, kept).clone();                  // [p, D]
    if (exact < rows) {
      const at::Tensor target = at::matmul(attention, values[head]);                           // [R, D], O
      const at::Tensor weights = at::softmax(at::matmul(query, compact_keys.t()) * scale, 1);  // [R, p], X
      // The exact rows are the first F (kept is ascending and holds 0..F-1).
      const at::Tensor residual =
          exact > 0 ? target - at::matmul(weights.narrow(1, 0, exact), compact_values.narrow(0, 0, exact))
                    : target;
      compact_values.narrow(0, exact, rows - exact)
          .copy_(ridge_solve(weights.narrow(1, exact, rows - exact), residual, options.ridge));
    }
    kept_keys.push_back(compact_keys);
    kept_values.push_back(compact_values);
    kept_slots.push_back(kept);
  }
  layer.keys = at::stack(kept_keys);
  layer.values = at::stack(kept_values);
  layer.kept = at::stack(kept_slots);
  return layer;
}

}  // namespace cartridge
