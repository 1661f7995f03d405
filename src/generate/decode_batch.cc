#include "generate/decode_batch.h"

#include <algorithm>
#include <unordered_set>

#include <ATen/ATen.h>

namespace cartridge {

DecodeBatch::DecodeBatch(const Model& model, const Tokenizer& tokenizer, DecodeHooks hooks,
                         PrefixStorage prefix_storage)
    : model_(model), tokenizer_(tokenizer), hooks_(std::move(hooks)), prefix_storage_(prefix_storage) {}

at::Tensor DecodeBatch::prefill(const std::vector<const GenerationRequest*>& requests,
                                const std::vector<RowId>& ids, KvCache& cache) {
  const int64_t batch = static_cast<int64_t>(requests.size());
  int64_t longest_prompt = 0;
  bool wants_prompt_logits = false;
  for (const GenerationRequest* request : requests) {
    longest_prompt = std::max<int64_t>(longest_prompt, static_cast<int64_t>(request->prompt_ids.size()));
    wants_prompt_logits = wants_prompt_logits || request->prompt_logits_from > 0;
  }
  std::vector<int64_t> input(batch * longest_prompt, 0);  // [B, T] row-major, right-padded
  std::vector<uint8_t> mask(batch * longest_prompt, 0);   // [B, T]
  for (int64_t row = 0; row < batch; ++row) {
    const std::vector<int32_t>& prompt = requests[row]->prompt_ids;
    std::copy(prompt.begin(), prompt.end(), input.begin() + row * longest_prompt);
    std::fill_n(mask.begin() + row * longest_prompt, prompt.size(), 1);
    counts_.prefill_tokens += static_cast<int64_t>(prompt.size());
  }
  const at::Device device = model_.device();
  const at::Tensor input_ids =
      at::tensor(input, at::kLong).view({batch, longest_prompt}).to(device);  // [B, T]
  const at::Tensor token_mask =
      at::tensor(mask, at::kByte).view({batch, longest_prompt}).to(at::kBool).to(device);  // [B, T]
  ++counts_.prefill_steps;
  ForwardOptions options;
  if (!wants_prompt_logits) {
    options.last_token_only = true;
    return model_.forward(input_ids, token_mask, cache, options);  // [B, 1, V]
  }
  // Some rows want their prompt's distributions too: hidden states of every column, turned into logits
  // one row at a time (a [B, T, V] float32 tensor would be B * T * V * 4 bytes).
  options.final_hidden_states = true;
  const at::Tensor hidden = model_.forward(input_ids, token_mask, cache, options);  // [B, T, hidden]
  std::vector<at::Tensor> last_logits;                                              // per row [V]
  for (int64_t row = 0; row < batch; ++row) {
    const int64_t real = static_cast<int64_t>(requests[row]->prompt_ids.size());  // columns [0, real)
    const int64_t from = requests[row]->prompt_logits_from;
    // Column c predicts prompt token c + 1; the last real column predicts the first new token.
    const int64_t first_column = from > 0 ? from - 1 : real - 1;
    const at::Tensor row_logits =
        model_.logits_from_hidden(hidden[row].narrow(0, first_column, real - first_column));
    if (from > 0 && hooks_.on_prompt_logits)
      hooks_.on_prompt_logits(ids[row], row_logits.narrow(0, 0, real - from));
    last_logits.push_back(row_logits[real - 1 - first_column]);
  }
  return at::stack(last_logits).unsqueeze(1);  // [B, 1, V]
}

std::vector<RowId> DecodeBatch::add(const std::vector<const GenerationRequest*>& requests) {
  if (requests.empty()) return {};
  std::vector<std::vector<std::shared_ptr<const KvPrefix>>> prefixes;  // per row, in order
  int64_t longest_prompt = 0, most_new_tokens = 0;
  for (const GenerationRequest* request : requests) {
    check_generation_request(model_.config(), *request);
    prefixes.push_back(request->prefixes);
    longest_prompt = std::max<int64_t>(longest_prompt, static_cast<int64_t>(request->prompt_ids.size()));
    most_new_tokens = std::max(most_new_tokens, request->max_new_tokens);
  }
  std::vector<Row> rows;
  std::vector<RowId> ids;
  const Clock::time_point joined = Clock::now();
  for (size_t index = 0; index < requests.size(); ++index) {
    ids.push_back(next_row_id_ + static_cast<RowId>(index));
    rows.push_back(Row{ids.back(), RowDecoder(*requests[index], tokenizer_), joined, std::nullopt});
  }
  KvCache cache;
  if (prefix_storage_ == PrefixStorage::kShared) {
    cache = KvCache::with_shared_prefixes(model_.config(), model_.dtype(), model_.device(), prefixes);
  } else {
    std::vector<std::shared_ptr<const KvPrefix>> composed;  // per row: its prefixes copied into one
    for (const auto& row_prefixes : prefixes) {
      composed.push_back(row_prefixes.size() == 1
                             ? row_prefixes.front()
                             : std::make_shared<const KvPrefix>(concatenate_prefixes(row_prefixes)));
    }
    cache = KvCache::with_row_prefixes(model_.config(), model_.dtype(), model_.device(), composed);
  }
  // With copied prefixes, a batch that starts here decodes in this cache: one allocation for the whole
  // generation. Otherwise the prefill's rows move into the row pool below.
  if (rows_.empty() && prefix_storage_ == PrefixStorage::kCopiedPerRow)
    cache.reserve(longest_prompt + most_new_tokens);
  const at::Tensor logits = prefill(requests, ids, cache);  // [N, 1, V]
  next_row_id_ += static_cast<RowId>(requests.size());

  const std::vector<int64_t> kept = sample(rows, logits.select(1, 0));
  std::vector<RowId> running;
  if (kept.empty()) return running;
  if (prefix_storage_ == PrefixStorage::kShared) {
    // Into the pool's free rows, with room for the rest of their generation; no running row moves.
    int64_t most_left = 0;
    for (int64_t index : kept) most_left = std::max(most_left, rows[index].decoder.tokens_left());
    if (rows_.empty()) cache_ = KvCache::row_pool(model_.config(), model_.dtype(), model_.device());
    cache_.add_rows(cache, kept, most_left);
  } else {
    if (kept.size() != rows.size()) {
      cache = cache.select_rows(at::tensor(kept, at::kLong));
      cache.drop_padding_columns();
    }
    cache_ = rows_.empty() ? std::move(cache) : KvCache::concat_rows({cache_, cache});
  }
  for (int64_t index : kept) {
    running.push_back(rows[index].id);
    rows_.push_back(std::move(rows[index]));
  }
  return running;
}

std::vector<int64_t> DecodeBatch::sample(std::vector<Row>& rows, const at::Tensor& logits_in) {
  const at::Tensor logits = logits_in.to(at::kFloat);  // [N, V]
  const Clock::time_point now = Clock::now();          // the step that made these logits is done
  if (hooks_.on_logits) {
    std::vector<RowId> ids;
    for (const Row& row : rows) ids.push_back(row.id);
    hooks_.on_logits(ids, logits);
  }
  // All rows greedy (self-study's answers): one argmax and one transfer for the whole batch.
  const bool all_greedy =
      std::all_of(rows.begin(), rows.end(), [](const Row& row) { return row.decoder.is_greedy(); });
  at::Tensor greedy_tokens;  // [N] int64 on the CPU
  if (all_greedy) greedy_tokens = logits.argmax(-1).to(at::kCPU).contiguous();

  std::vector<int64_t> still_running;
  for (size_t index = 0; index < rows.size(); ++index) {
    Row& row = rows[index];
    if (!row.first_token) row.first_token = now;
    if (!row.decoder.finished()) {  // a request for 0 tokens starts finished
      const int64_t token = all_greedy ? greedy_tokens.data_ptr<int64_t>()[index]
                                       : row.decoder.choose(logits[static_cast<int64_t>(index)]);
      const std::string text = row.decoder.accept(static_cast<int32_t>(token));
      ++counts_.generated_tokens;
      if (!text.empty() && hooks_.on_text) hooks_.on_text(row.id, text);
    }
    if (row.decoder.finished()) {
      GenerationResult result = row.decoder.take_result();
      const auto milliseconds = [](Clock::duration duration) {
        return std::chrono::duration<double, std::milli>(duration).count();
      };
      result.timings.prompt_tokens = result.prompt_tokens;
      result.timings.prompt_ms = milliseconds(*row.first_token - row.joined);
      result.timings.generated_tokens =
          static_cast<int64_t>(result.token_ids.size()) + (result.stop_token_id >= 0 ? 1 : 0);
      result.timings.generated_ms = milliseconds(now - *row.first_token);
      if (hooks_.on_finished) hooks_.on_finished(row.id, std::move(result));
    } else {
      still_running.push_back(static_cast<int64_t>(index));
    }
  }
  return still_running;
}

void DecodeBatch::step() {
  if (rows_.empty()) return;
  const int64_t batch = static_cast<int64_t>(rows_.size());
  std::vector<int64_t> tokens;
  tokens.reserve(rows_.size());
  for (const Row& row : rows_) tokens.push_back(row.decoder.next_input_token());
  const at::Device device = model_.device();
  const at::Tensor step_ids = at::tensor(tokens, at::kLong).view({batch, 1}).to(device);  // [B, 1]
  const at::Tensor step_mask = at::ones({batch, 1}, at::TensorOptions().dtype(at::kBool).device(device));
  ForwardOptions options;
  options.last_token_only = true;
  const at::Tensor logits = model_.forward(step_ids, step_mask, cache_, options);  // [B, 1, V]
  ++counts_.decode_steps;
  const std::vector<int64_t> kept = sample(rows_, logits.select(1, 0));
  if (kept.size() != rows_.size()) keep_rows(kept);
}

void DecodeBatch::keep_rows(const std::vector<int64_t>& kept) {
  if (kept.empty()) {
    clear();
    return;
  }
  if (cache_.is_row_pool()) {
    // The pool moves its last rows into the places that free up; the rows follow the same order.
    std::vector<bool> keep(rows_.size(), false);
    for (int64_t index : kept) keep[index] = true;
    std::vector<int64_t> leaving;
    for (size_t index = 0; index < rows_.size(); ++index) {
      if (!keep[index]) leaving.push_back(static_cast<int64_t>(index));
    }
    const std::vector<int64_t> order = cache_.remove_rows(leaving);
    std::vector<Row> remaining;
    remaining.reserve(order.size());
    for (int64_t index : order) remaining.push_back(std::move(rows_[index]));
    rows_ = std::move(remaining);
    return;
  }
  cache_ = cache_.select_rows(at::tensor(kept, at::kLong));
  // Slots that only the rows that left used are padding in every remaining row now.
  cache_.drop_padding_columns();
  std::vector<Row> remaining;
  remaining.reserve(kept.size());
  int64_t most_left = 0;  // tokens the remaining rows may still generate
  for (int64_t index : kept) {
    remaining.push_back(std::move(rows_[index]));
    most_left = std::max(most_left, remaining.back().decoder.tokens_left());
  }
  rows_ = std::move(remaining);
  // select_rows copied into fresh tensors: give them room for the rest of the generation at once.
  cache_.reserve(most_left);
}

void DecodeBatch::remove(const std::vector<RowId>& rows) {
  const std::unordered_set<RowId> removed(rows.begin(), rows.end());
  std::vector<int64_t> kept;
  for (size_t index = 0; index < rows_.size(); ++index) {
    if (removed.count(rows_[index].id) == 0) kept.push_back(static_cast<int64_t>(index));
  }
  if (kept.size() != rows_.size()) keep_rows(kept);
}

void DecodeBatch::clear() {
  rows_.clear();
  cache_ = KvCache();
}

}  // namespace cartridge
