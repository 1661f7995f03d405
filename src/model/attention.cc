#include "model/attention.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

namespace cartridge {
namespace {

// Each KV head repeated for its query group, as transformers' repeat_kv: [B, H_kv, S, D] -> [B, H, S, D].
at::Tensor repeat_kv_heads(const at::Tensor& tensor, int64_t query_heads) {
  const int64_t kv_heads = tensor.size(1);
  if (kv_heads == query_heads) return tensor;
  const int64_t groups = query_heads / kv_heads;
  const auto sizes = tensor.sizes();
  return tensor.unsqueeze(2)
      .expand({sizes[0], kv_heads, groups, sizes[2], sizes[3]})
      .reshape({sizes[0], query_heads, sizes[2], sizes[3]});
}

// Which own slots the queries see, explicitly: [B or 1, 1, T, S] bool (see AttentionMask).
at::Tensor explicit_allowed(const AttentionMask& mask, int64_t new_tokens, int64_t slots, at::Device device) {
  if (mask.allowed.defined()) return mask.allowed;
  const at::Tensor all =
      at::ones({1, 1, new_tokens, slots}, at::TensorOptions().dtype(at::kBool).device(device));
  return mask.causal ? all.tril(slots - new_tokens) : all;
}

// The same, or undefined when every query sees every slot (a decode step: no mask to build).
at::Tensor allowed_or_none(const AttentionMask& mask, int64_t new_tokens, int64_t slots, at::Device device) {
  if (!mask.allowed.defined() && !mask.causal) return at::Tensor();
  return explicit_allowed(mask, new_tokens, slots, device);
}

// Attention of grouped queries [N, H_kv, Q, D] over keys/values [N, H_kv, S, D] (same N), in their dtype,
// with `allowed` [N or 1, 1, Q, S] bool or undefined (every slot): the output [N, H_kv, Q, D] float32 and
// the log-sum-exp of each query's scaled scores [N, H_kv, Q] float32. The softmax is normalised by that
// log-sum-exp, so partial results over disjoint slot sets merge exactly (merge_partial). On the CPU with
// `fused_cpu_kernel`, ATen's flash kernel computes it; otherwise explicit float32 math.
struct PartialAttention {
  at::Tensor output;
  at::Tensor log_sum_exp;
};

PartialAttention partial_attention(const at::Tensor& queries, const at::Tensor& keys,
                                   const at::Tensor& values, const at::Tensor& allowed, double scale,
                                   bool fused_cpu_kernel) {
  constexpr float kMinusInfinity = -std::numeric_limits<float>::infinity();
  if (queries.is_cpu() && fused_cpu_kernel) {
    // ATen's flash kernel on the CPU returns the log-sum-exp it normalised by: one fused call instead of
    // the score, mask, softmax and product steps below, whose per-operation cost dominates at small
    // batches. It takes an additive float mask.
    std::optional<at::Tensor> bias;
    if (allowed.defined()) {
      bias =
          at::zeros(allowed.sizes(), queries.options()).masked_fill_(allowed.logical_not(), kMinusInfinity);
    }
    auto [output, log_sum_exp] =
        at::_scaled_dot_product_flash_attention_for_cpu(queries, keys, values, 0.0, false, bias, scale);
    return {output.to(at::kFloat), log_sum_exp};
  }
  // Elsewhere (not every CUDA kernel returns its log-sum-exp): explicit scores in float32.
  at::Tensor scores = at::matmul(queries.to(at::kFloat), keys.to(at::kFloat).transpose(-1, -2)) * scale;
  if (allowed.defined()) scores.masked_fill_(allowed.logical_not(), kMinusInfinity);  // [N, H_kv, Q, S]
  const at::Tensor log_sum_exp = at::logsumexp(scores, -1, /*keepdim=*/true);         // [N, H_kv, Q, 1]
  return {at::matmul((scores - log_sum_exp).exp_(), values.to(at::kFloat)), log_sum_exp.squeeze(-1)};
}

// Folds `part` (output [n, H, T, D], log-sum-exp [n, H, T], for the batch rows `rows` [n], distinct) into
// the running result of every row: out = (e^lse_a out_a + e^lse_b out_b) / (e^lse_a + e^lse_b).
void merge_partial(at::Tensor& output, at::Tensor& log_sum_exp, const PartialAttention& part,
                   const at::Tensor& rows) {
  const bool every_row = rows.size(0) == output.size(0);  // then no gather and scatter
  const at::Tensor before = every_row ? log_sum_exp : log_sum_exp.index_select(0, rows);  // [n, H, T]
  const at::Tensor merged = at::logaddexp(before, part.log_sum_exp);                      // [n, H, T]
  const at::Tensor weight_before = (before - merged).exp_().unsqueeze(-1);                // [n, H, T, 1]
  const at::Tensor weight_part = (part.log_sum_exp - merged).exp_().unsqueeze(-1);        // [n, H, T, 1]
  if (every_row) {
    output = output * weight_before + part.output * weight_part;
    log_sum_exp = merged;
    return;
  }
  output.index_copy_(0, rows, output.index_select(0, rows) * weight_before + part.output * weight_part);
  log_sum_exp.index_copy_(0, rows, merged);
}

// Copies each row's shared prefixes in front of its own slots (zero-padded to the longest, masked), so
// the result has no shared prefixes: what a cache without sharing would hold.
AttentionInputs with_shared_prefixes_copied(const AttentionInputs& inputs) {
  if (inputs.shared_prefixes.empty()) return inputs;
  const int64_t batch = inputs.keys.size(0);
  const int64_t new_tokens = inputs.query.size(2);
  std::vector<std::vector<int64_t>> rows_of;  // per shared prefix: its rows
  std::vector<int64_t> prefix_slots(batch, 0);
  for (const SharedPrefixSlots& shared : inputs.shared_prefixes) {
    const at::Tensor rows = shared.row_index.to(at::kCPU).contiguous();
    rows_of.emplace_back(rows.data_ptr<int64_t>(), rows.data_ptr<int64_t>() + rows.numel());
    for (int64_t row : rows_of.back()) prefix_slots[row] += shared.keys.size(1);
  }
  const int64_t longest = *std::max_element(prefix_slots.begin(), prefix_slots.end());
  std::vector<int64_t> shape = inputs.keys.sizes().vec();
  shape[2] = longest;
  at::Tensor front_keys = at::zeros(shape, inputs.keys.options());      // [B, H_kv, P_max, D]
  at::Tensor front_values = at::zeros(shape, inputs.values.options());  // [B, H_kv, P_max, D]
  at::Tensor front_valid = at::zeros({batch, longest}, at::kBool);      // [B, P_max]
  std::vector<int64_t> filled(batch, 0);
  for (size_t index = 0; index < rows_of.size(); ++index) {
    const SharedPrefixSlots& shared = inputs.shared_prefixes[index];
    const int64_t length = shared.keys.size(1);
    for (int64_t row : rows_of[index]) {
      front_keys[row].narrow(1, filled[row], length).copy_(shared.keys);
      front_values[row].narrow(1, filled[row], length).copy_(shared.values);
      front_valid[row].narrow(0, filled[row], length).fill_(true);
      filled[row] += length;
    }
  }
  const at::Device device = inputs.keys.device();
  const at::Tensor own_allowed = explicit_allowed(inputs.mask, new_tokens, inputs.keys.size(2), device)
                                     .expand({batch, 1, new_tokens, inputs.keys.size(2)});  // [B, 1, T, S]
  const at::Tensor front_allowed =
      front_valid.to(device).view({batch, 1, 1, longest}).expand({batch, 1, new_tokens, longest});
  AttentionInputs copied = inputs;
  copied.keys = at::cat({front_keys, inputs.keys}, 2);
  copied.values = at::cat({front_values, inputs.values}, 2);
  copied.mask = AttentionMask{at::cat({front_allowed, own_allowed}, 3), false};
  copied.shared_prefixes.clear();
  return copied;
}

}  // namespace

AttentionMask attention_mask(const at::Tensor& slot_mask, const at::Tensor& token_mask) {
  const int64_t batch = token_mask.size(0);
  const int64_t new_tokens = token_mask.size(1);
  const int64_t old_slots = slot_mask.size(1);
  const bool all_real = token_mask.all().item<bool>();
  const bool old_all_real = old_slots == 0 || slot_mask.all().item<bool>();
  if (all_real && old_all_real && new_tokens == 1) return {};  // one token per row: attend to everything
  if (all_real && old_slots == 0) return {at::Tensor(), /*causal=*/true};

  const auto bool_options = at::TensorOptions().dtype(at::kBool).device(token_mask.device());
  const at::Tensor causal = at::ones({new_tokens, new_tokens}, bool_options).tril();  // [T, T]
  const at::Tensor diagonal = at::eye(new_tokens, bool_options);                      // [T, T]
  const at::Tensor new_part =
      causal.unsqueeze(0).logical_and(token_mask.unsqueeze(1)).logical_or(diagonal);  // [B, T, T]
  if (old_slots == 0) return {new_part.unsqueeze(1)};                                 // [B, 1, T, T]
  const at::Tensor old_part =
      slot_mask.to(token_mask.device()).unsqueeze(1).expand({batch, new_tokens, old_slots});  // [B, T, S]
  return {at::cat({old_part, new_part}, 2).unsqueeze(1)};  // [B, 1, T, S + T]
}

at::Tensor sdpa_attention(const AttentionInputs& inputs) {
  if (!inputs.shared_prefixes.empty()) return shared_prefix_attention(inputs);
  const int64_t heads = inputs.query.size(1);
  const int64_t kv_heads = inputs.keys.size(1);
  const bool masked = inputs.mask.allowed.defined();
  // SDPA's native GQA is fastest on the CPU (flash kernel, any mask) and on CUDA without a mask; CUDA's
  // kernels that take a mask (memory-efficient) do not support GQA and SDPA would fall back to the slow
  // math path, so there the KV heads are expanded instead (what transformers does too).
  const bool expand_kv_heads = kv_heads != heads && inputs.query.is_cuda() && masked;
  const at::Tensor keys = expand_kv_heads ? repeat_kv_heads(inputs.keys, heads) : inputs.keys;
  const at::Tensor values = expand_kv_heads ? repeat_kv_heads(inputs.values, heads) : inputs.values;
  return at::scaled_dot_product_attention(
      inputs.query, keys, values, masked ? std::optional<at::Tensor>(inputs.mask.allowed) : std::nullopt, 0.0,
      inputs.mask.causal, inputs.scale,
      /*enable_gqa=*/kv_heads != heads && !expand_kv_heads);  // [B, H, T, D]
}

at::Tensor shared_prefix_attention(const AttentionInputs& inputs,
                                   const SharedPrefixAttentionOptions& options) {
  const at::Tensor& query = inputs.query;  // [B, H, T, D]
  const int64_t batch = query.size(0), heads = query.size(1), new_tokens = query.size(2);
  const int64_t head_dim = query.size(3);
  const int64_t kv_heads = inputs.keys.size(1);
  const int64_t group = heads / kv_heads;  // query heads per KV head
  const int64_t own_slots = inputs.keys.size(2);
  const at::Tensor allowed = allowed_or_none(inputs.mask, new_tokens, own_slots, query.device());
  int64_t longest_prefix = 0;
  for (const SharedPrefixSlots& shared : inputs.shared_prefixes) {
    longest_prefix = std::max(longest_prefix, shared.keys.size(1));
  }

  // Queries are taken `chunk` at a time so that a long prefill's scores stay within the budget (by
  // default 16 Mi float32 = 64 MiB).
  const int64_t widest = batch * heads * std::max(own_slots, longest_prefix);
  const int64_t chunk =
      std::clamp<int64_t>(options.max_score_elements / std::max<int64_t>(widest, 1), 1, new_tokens);
  std::vector<at::Tensor> outputs;  // per chunk [B, H, c, D] float32
  for (int64_t start = 0; start < new_tokens; start += chunk) {
    const int64_t count = std::min(chunk, new_tokens - start);
    const at::Tensor chunk_query = query.narrow(2, start, count);  // [B, H, c, D]
    // Query head h = kv_head * group + g, so [B, H, c, D] reads as [B, H_kv, group * c, D].
    at::Tensor chunk_allowed;  // [B or 1, 1, group * c, S]; undefined = every slot
    if (allowed.defined()) {
      chunk_allowed = allowed.narrow(2, start, count)
                          .unsqueeze(2)
                          .expand({allowed.size(0), 1, group, count, own_slots})
                          .reshape({allowed.size(0), 1, group * count, own_slots});
    }
    const PartialAttention own =
        partial_attention(chunk_query.reshape({batch, kv_heads, group * count, head_dim}), inputs.keys,
                          inputs.values, chunk_allowed, inputs.scale, options.fused_cpu_kernel);
    at::Tensor output = own.output.reshape({batch, heads, count, head_dim});
    at::Tensor log_sum_exp = own.log_sum_exp.reshape({batch, heads, count});
    for (const SharedPrefixSlots& shared : inputs.shared_prefixes) {
      const at::Tensor& rows = shared.row_index;  // [n]
      const int64_t members = rows.size(0);
      const at::Tensor member_queries = members == batch ? chunk_query : chunk_query.index_select(0, rows);
      // Every query of every row of the group against each KV head's prefix: one matrix product per KV
      // head, [H_kv, n * group * c, D] x [H_kv, D, P].
      const at::Tensor grouped = member_queries.reshape({members, kv_heads, group * count, head_dim})
                                     .transpose(0, 1)
                                     .reshape({1, kv_heads, members * group * count, head_dim});
      const PartialAttention part =
          partial_attention(grouped, shared.keys.unsqueeze(0), shared.values.unsqueeze(0), at::Tensor(),
                            inputs.scale, options.fused_cpu_kernel);
      const PartialAttention per_row{part.output.reshape({kv_heads, members, group * count, head_dim})
                                         .transpose(0, 1)
                                         .reshape({members, heads, count, head_dim}),
                                     part.log_sum_exp.reshape({kv_heads, members, group * count})
                                         .transpose(0, 1)
                                         .reshape({members, heads, count})};
      merge_partial(output, log_sum_exp, per_row, rows);
    }
    outputs.push_back(output);
  }
  const at::Tensor output = outputs.size() == 1 ? outputs.front() : at::cat(outputs, 2);
  return output.to(inputs.query.scalar_type());  // [B, H, T, D]
}

at::Tensor naive_attention(const AttentionInputs& shared_inputs) {
  const AttentionInputs inputs = with_shared_prefixes_copied(shared_inputs);
  const int64_t heads = inputs.query.size(1);
  const int64_t new_tokens = inputs.query.size(2);
  const at::Tensor query = inputs.query.to(at::kDouble);                            // [B, H, T, D]
  const at::Tensor keys = repeat_kv_heads(inputs.keys, heads).to(at::kDouble);      // [B, H, S, D]
  const at::Tensor values = repeat_kv_heads(inputs.values, heads).to(at::kDouble);  // [B, H, S, D]
  at::Tensor scores = at::matmul(query, keys.transpose(2, 3)) * inputs.scale;       // [B, H, T, S]
  const int64_t slots = scores.size(3);
  at::Tensor allowed = inputs.mask.allowed;  // [B, 1, T, S]
  if (!allowed.defined() && inputs.mask.causal) {
    allowed = at::ones({new_tokens, slots}, at::TensorOptions().dtype(at::kBool).device(scores.device()))
                  .tril(slots - new_tokens);
  }
  if (allowed.defined())
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1), values).to(inputs.query.scalar_type());  // [B, H, T, D]
}

}  // namespace cartridge
