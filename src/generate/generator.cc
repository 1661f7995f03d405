#include "generate/generator.h"

#include <algorithm>
#include <optional>

#include "generate/stop_matcher.h"
#include "util/error.h"

namespace cartridge {

KvCache make_prefixed_cache(const Model& model, const std::vector<std::shared_ptr<const KvPrefix>>& prefixes) {
  const ModelConfig& config = model.config();
  const int64_t batch = static_cast<int64_t>(prefixes.size());
  int64_t longest = 0;  // P_max, tokens
  for (const auto& prefix : prefixes) longest = std::max<int64_t>(longest, prefix ? prefix->length() : 0);
  if (longest == 0) return KvCache::empty(config, batch, model.dtype(), model.device());

  const auto tensor_options = at::TensorOptions().dtype(model.dtype()).device(model.device());
  std::vector<at::Tensor> keys, values;  // per layer [B, H_kv, P_max, D]
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    keys.push_back(at::zeros({batch, config.num_key_value_heads, longest, config.head_dim}, tensor_options));
    values.push_back(at::zeros({batch, config.num_key_value_heads, longest, config.head_dim}, tensor_options));
  }
  at::Tensor lengths = at::zeros({batch}, at::kLong);  // [B] valid prefix slots per row
  for (int64_t row = 0; row < batch; ++row) {
    const auto& prefix = prefixes[row];
    if (!prefix || prefix->length() == 0) continue;
    if (static_cast<int64_t>(prefix->keys.size()) != config.num_layers) {
      throw MismatchError("a cartridge has " + std::to_string(prefix->keys.size()) + " layers but the model has " +
                          std::to_string(config.num_layers) + " (use a cartridge made for this model)");
    }
    const int64_t length = prefix->length();
    for (int64_t layer = 0; layer < config.num_layers; ++layer) {
      keys[layer][row].narrow(1, 0, length).copy_(prefix->keys[layer]);
      values[layer][row].narrow(1, 0, length).copy_(prefix->values[layer]);
    }
    lengths[row] = length;
  }
  return KvCache::with_prefix(std::move(keys), std::move(values), lengths.to(model.device()), batch);
}

namespace {

// The per-row state of a generation in flight.
struct RowState {
  const GenerationRequest* request;
  Sampler sampler;
  StreamingDecoder decoder;
  StopMatcher stop_matcher;
  GenerationResult result;
  bool finished = false;
};

bool is_stop_token(const RowState& row, int32_t token, const Tokenizer& tokenizer) {
  const GenerationRequest& request = *row.request;
  if (request.stop_at_eos && tokenizer.eos_token_id() && token == *tokenizer.eos_token_id()) return true;
  return std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), token) !=
         request.stop_token_ids.end();
}

}  // namespace

std::vector<GenerationResult> generate(const Model& model, const Tokenizer& tokenizer,
                                       const std::vector<GenerationRequest>& requests, const TextCallback& on_text) {
  if (requests.empty()) return {};
  c10::InferenceMode inference_mode;
  const ModelConfig& config = model.config();
  const int64_t batch = static_cast<int64_t>(requests.size());

  std::vector<RowState> rows;
  rows.reserve(requests.size());
  int64_t longest_prompt = 0;
  std::vector<std::shared_ptr<const KvPrefix>> prefixes;
  for (const GenerationRequest& request : requests) {
    if (request.prompt_ids.empty()) throw InvalidArgumentError("the prompt is empty: give at least one token");
    if (request.max_new_tokens < 0) throw InvalidArgumentError("max_new_tokens must be >= 0");
    const int64_t prefix_length = request.prefix ? request.prefix->length() : 0;
    const int64_t needed = prefix_length + static_cast<int64_t>(request.prompt_ids.size()) + request.max_new_tokens;
    if (needed > config.max_position_embeddings) {
      throw InvalidArgumentError("cartridge (" + std::to_string(prefix_length) + ") + prompt (" +
                                 std::to_string(request.prompt_ids.size()) + ") + max_new_tokens (" +
                                 std::to_string(request.max_new_tokens) + ") tokens exceed the model's context of " +
                                 std::to_string(config.max_position_embeddings) + " (shorten the prompt or lower max_new_tokens)");
    }
    longest_prompt = std::max<int64_t>(longest_prompt, request.prompt_ids.size());
    prefixes.push_back(request.prefix);
    rows.push_back(RowState{&request, Sampler(request.sampling), StreamingDecoder(tokenizer, true),
                            StopMatcher(request.stop_strings), GenerationResult{}, false});
    rows.back().result.prompt_tokens = static_cast<int64_t>(request.prompt_ids.size());
  }

  // Prefill: prompts right-padded into [B, T]; padding is masked and takes no position.
  at::Tensor input_ids = at::zeros({batch, longest_prompt}, at::kLong);   // [B, T]
  at::Tensor token_mask = at::zeros({batch, longest_prompt}, at::kBool);  // [B, T]
  for (int64_t row = 0; row < batch; ++row) {
    const auto& prompt = requests[row].prompt_ids;
    for (size_t i = 0; i < prompt.size(); ++i) input_ids[row][i] = static_cast<int64_t>(prompt[i]);
    token_mask[row].narrow(0, 0, static_cast<int64_t>(prompt.size())).fill_(true);
  }
  KvCache cache = make_prefixed_cache(model, prefixes);
  ForwardOptions last_only;
  last_only.last_token_only = true;
  at::Tensor logits = model.forward(input_ids.to(model.device()), token_mask.to(model.device()), cache, last_only);

  // `active` maps cache rows to request rows; finished rows leave the batch.
  std::vector<int64_t> active(batch);
  for (int64_t row = 0; row < batch; ++row) active[row] = row;

  auto finish = [&](RowState& row, const std::string& reason) {
    std::string tail = row.stop_matcher.stopped() ? "" : row.stop_matcher.push(row.decoder.flush());
    tail += row.stop_matcher.flush();
    if (!tail.empty()) {
      row.result.text += tail;
      if (on_text) on_text(&row - rows.data(), tail);
    }
    row.result.finish_reason = reason;
    row.finished = true;
  };
  for (RowState& row : rows) {
    if (row.request->max_new_tokens == 0) finish(row, "length");
  }

  while (true) {
    const at::Tensor last_logits = logits.select(1, 0).to(at::kFloat);  // [B_active, V]
    std::vector<int64_t> next_tokens(active.size(), 0);
    std::vector<int64_t> still_active;  // positions in `active` that continue
    for (size_t slot = 0; slot < active.size(); ++slot) {
      RowState& row = rows[active[slot]];
      if (row.finished) continue;
      const int32_t token = static_cast<int32_t>(row.sampler.sample(last_logits[slot]));
      if (is_stop_token(row, token, tokenizer)) {
        finish(row, "stop");
        continue;
      }
      row.result.token_ids.push_back(token);
      const std::string visible = row.stop_matcher.push(row.decoder.push(token));
      if (!visible.empty()) {
        row.result.text += visible;
        if (on_text) on_text(active[slot], visible);
      }
      if (row.stop_matcher.stopped()) {
        finish(row, "stop");
        continue;
      }
      if (static_cast<int64_t>(row.result.token_ids.size()) >= row.request->max_new_tokens) {
        finish(row, "length");
        continue;
      }
      next_tokens[slot] = token;
      still_active.push_back(static_cast<int64_t>(slot));
    }
    if (still_active.empty()) break;
    if (still_active.size() != active.size()) {
      cache = cache.select_rows(at::tensor(still_active, at::kLong).to(model.device()));
      std::vector<int64_t> kept_rows, kept_tokens;
      for (int64_t slot : still_active) {
        kept_rows.push_back(active[slot]);
        kept_tokens.push_back(next_tokens[slot]);
      }
      active = std::move(kept_rows);
      next_tokens = std::move(kept_tokens);
    }
    const int64_t active_count = static_cast<int64_t>(active.size());
    const at::Tensor step_ids = at::tensor(next_tokens, at::kLong).view({active_count, 1}).to(model.device());
    const at::Tensor step_mask = at::ones({active_count, 1}, at::TensorOptions().dtype(at::kBool).device(model.device()));
    logits = model.forward(step_ids, step_mask, cache, last_only);
  }

  std::vector<GenerationResult> results;
  results.reserve(rows.size());
  for (RowState& row : rows) results.push_back(std::move(row.result));
  return results;
}

}  // namespace cartridge
