#include "generate/generator.h"

#include <ATen/ATen.h>

namespace cartridge {

std::vector<GenerationResult> generate(const Model& model, const Tokenizer& tokenizer,
                                       const std::vector<GenerationRequest>& requests,
                                       const TextCallback& on_text) {
  if (requests.empty()) return {};
  c10::InferenceMode inference_mode;

  std::vector<RowDecoder> rows;
  rows.reserve(requests.size());
  std::vector<const GenerationRequest*> batch;
  for (const GenerationRequest& request : requests) {
    check_generation_request(model.config(), request);
    rows.emplace_back(request, tokenizer);
    batch.push_back(&request);
  }
  auto [cache, logits] = prefill_batch(model, batch);  // logits [B, 1, V]

  // `active` maps cache rows to request rows; finished rows leave the batch.
  std::vector<int64_t> active(requests.size());
  for (size_t row = 0; row < requests.size(); ++row) active[row] = static_cast<int64_t>(row);

  while (true) {
    const at::Tensor last_logits = logits.select(1, 0).to(at::kFloat);  // [B_active, V]
    std::vector<int64_t> still_active;                                  // positions in `active` that continue
    for (size_t slot = 0; slot < active.size(); ++slot) {
      RowDecoder& row = rows[active[slot]];
      if (row.finished()) continue;  // max_new_tokens == 0
      const std::string visible = row.advance(last_logits[static_cast<int64_t>(slot)]);
      if (!visible.empty() && on_text) on_text(static_cast<size_t>(active[slot]), visible);
      if (!row.finished()) still_active.push_back(static_cast<int64_t>(slot));
    }
    if (still_active.empty()) break;
    if (still_active.size() != active.size()) {
      cache = cache.select_rows(at::tensor(still_active, at::kLong).to(model.device()));
      std::vector<int64_t> kept_rows;
      for (int64_t slot : still_active) kept_rows.push_back(active[slot]);
      active = std::move(kept_rows);
    }
    std::vector<int64_t> next_tokens;
    next_tokens.reserve(active.size());
    for (int64_t row : active) next_tokens.push_back(rows[row].next_input_token());
    logits = decode_step(model, cache, next_tokens);
  }

  std::vector<GenerationResult> results;
  results.reserve(rows.size());
  for (RowDecoder& row : rows) results.push_back(row.take_result());
  return results;
}

}  // namespace cartridge
