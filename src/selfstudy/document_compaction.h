// A cartridge made by compacting a whole document's KV cache with attention matching
// (cartridge/attention_matching.h; docs/attention_matching.md). This half runs the model:
//  1. prefill the document (as the open system turn the cartridge will stand for) at positions 0..N-1 and
//     rotate its keys into the cartridge's frame (position t -> t - (N - p));
//  2. run the reference tokens (the document's conversation going on with "Repeat the previous context
//     verbatim." and the document again) at positions p, p+1, ..., layer after layer; at each layer the
//     attention step first fits that layer's p rows on the reference tokens' queries, then attends over
//     those rows and the reference tokens. The queries of layer l therefore come from tokens that saw the
//     compacted layers below (on-policy), as they will when the cartridge is used.
// A document whose prefill or repetition does not fit the model's context is compacted chunk by chunk:
// chunk k is prefilled after the rows of chunks 0..k-1 (at positions P_k, P_k + 1, ..., P_k the rows so
// far), becomes its share of the p rows by steps 1-2 (its reference tokens see all rows so far), and its
// rows are appended. What that loses is in docs/attention_matching.md ("Documents longer than the context").
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
  int64_t document_tokens = 0;   // N, all chunks together
  int64_t reference_tokens = 0;  // T, all chunks together
  int64_t chunks = 0;
  double seconds = 0;  // wall time, model already loaded
};

// One piece of a document compacted on its own.
struct CompactionChunk {
  std::vector<int32_t> prefill_ids;    // the chunk's tokens, run after the rows of the chunks before it
  std::vector<int32_t> reference_ids;  // run after those rows and this chunk's: the repeat request, the chunk
  int64_t rows = 0;                    // how many of the cartridge's rows this chunk becomes
};

// The token-level core: the chunks in document order, each compacted into chunk.rows rows (the first
// options.num_exact_rows rows of the first chunk are its own first slots, exact); options.num_virtual_tokens
// must be the sum of the chunks' rows. Throws InvalidArgumentError when a chunk has fewer tokens than rows,
// no reference tokens or no rows, UnsupportedError when a chunk's prefill or reference would pass the
// model's context.
Cartridge compact_document_chunks(const Model& model, const std::vector<CompactionChunk>& chunks,
                                  const AttentionMatchingOptions& options, bool show_progress = false,
                                  CompactionStats* stats = nullptr);

// How compact_document splits `document` for a cartridge of p rows:
//  - one chunk when the document as the open system turn (LoadedModel::encode_document_turn, N tokens) and
//    the reference after p rows fit the model's context and N <= max_chunk_tokens (0 = no limit): prefill
//    the whole turn, reference = the repeat request asked in that conversation, then the document's text;
//  - otherwise the turn's opening and the document's tokens, laid end to end (N tokens), cut into the
//    fewest K equal pieces [N k / K, N (k+1) / K) of at most S = min(context - p - request, max_chunk_tokens)
//    tokens each; chunk k's reference is the request, then its document tokens (the opening left out);
//    piece [s, e) gets floor(p e / N) - floor(p s / N) rows (rows in proportion to tokens).
// Throws InvalidArgumentError when the document has fewer than p tokens, UnsupportedError for a model
// without a chat template, a context that cannot hold p rows, the request and 16 tokens, or a plan that
// leaves a chunk without a row or the first with fewer than num_exact_rows.
std::vector<CompactionChunk> plan_document_compaction(const LoadedModel& model, const std::string& document,
                                                      int64_t num_virtual_tokens, int64_t num_exact_rows,
                                                      int64_t max_chunk_tokens = 0);

// plan_document_compaction, then compact_document_chunks.
Cartridge compact_document(const LoadedModel& model, const std::string& document,
                           const AttentionMatchingOptions& options, int64_t max_chunk_tokens = 0,
                           bool show_progress = false, CompactionStats* stats = nullptr);

// Whether compact_document can compact `document` into p rows (plan_document_compaction succeeds).
bool can_compact_document(const LoadedModel& model, const std::string& document, int64_t num_virtual_tokens,
                          int64_t num_exact_rows);

}  // namespace cartridge
