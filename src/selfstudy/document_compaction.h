// A cartridge made by compacting a whole document's KV cache with attention matching
// (cartridge/attention_matching.h; docs/attention_matching.md). This half runs the model:
//  1. prefill the document (as the open system turn the cartridge will stand for) at positions 0..N-1 and
//     rotate its keys into the cartridge's frame (position t -> t - (N - p));
//  2. run the reference tokens (the document's conversation going on with "Repeat the previous context
//     verbatim." and the document again) at positions p, p+1, ..., layer after layer; at each layer the
//     attention step first fits that layer's p rows on the reference tokens' queries, then attends over
//     those rows and the reference tokens. The queries of layer l therefore come from tokens that saw the
//     compacted layers below (on-policy), as they will when the cartridge is used.
// The result is a standard PEFT cartridge; its rows are the kept keys with fitted values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cartridge/attention_matching.h"
#include "cartridge/cartridge.h"
#include "generate/loaded_model.h"
#include "model/model.h"

namespace cartridge {

// The request whose answer's queries are the reference queries (the attention-matching paper's
// "repeat-prefill").
inline constexpr char kRepeatRequest[] = "Repeat the previous context verbatim.";

struct CompactionStats {
  int64_t document_tokens = 0;   // N
  int64_t reference_tokens = 0;  // T
  double seconds = 0;            // wall time, model already loaded
};

// The token-level core: document_ids prefilled at 0..N-1, reference_ids run after the compacted rows at
// p..p+T-1. Throws InvalidArgumentError when the document has fewer than p tokens or the reference is empty,
// UnsupportedError when the document or p + T passes the model's context.
Cartridge compact_document_tokens(const Model& model, const std::vector<int32_t>& document_ids,
                                  const std::vector<int32_t>& reference_ids,
                                  const AttentionMatchingOptions& options, bool show_progress = false,
                                  CompactionStats* stats = nullptr);

// The document as the open system turn of the chat template (LoadedModel::encode_document_turn, the
// system_turn framing), the reference as kRepeatRequest asked in that conversation followed by the
// document's text. Throws UnsupportedError for a model without a chat template, and as above.
Cartridge compact_document(const LoadedModel& model, const std::string& document,
                           const AttentionMatchingOptions& options, bool show_progress = false,
                           CompactionStats* stats = nullptr);

// Whether compact_document can compact `document` into p rows: a chat template, at least p document
// tokens, and the document and the reference tokens after p rows within the model's context.
bool can_compact_document(const LoadedModel& model, const std::string& document, int64_t num_virtual_tokens);

}  // namespace cartridge
