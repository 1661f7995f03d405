// The one decode loop: a running batch of generations, each row with its own prompt, KV prefix (a
// cartridge, composed cartridges, or a prompt prefix prefilled once and shared), sampler and stop rules.
// generate() runs a fixed batch to the end; the server's scheduler adds rows and steps while requests come
// and go; self-study's synthesizer records the teacher's top-k through the logits hooks. After gemma.cpp's
// RuntimeConfig: callers observe and record through hooks instead of keeping a loop of their own.
//
// Rows are identified by a RowId, assigned in the order rows are added, from 0 for a new batch.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "generate/generation_request.h"
#include "generate/row_decoder.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

using RowId = int64_t;

struct DecodeHooks {
  // Before the rows sample their next token: logits [N, V] float32, row i of which belongs to rows[i]
  // (e.g. to record the teacher's top-k of every generated token).
  std::function<void(const std::vector<RowId>& rows, const at::Tensor& logits)> on_logits;
  // At prefill, for a request with prompt_logits_from >= 1: logits [m, V] float32 whose row i is the
  // distribution that predicted prompt token prompt_logits_from + i (m = prompt size - prompt_logits_from).
  std::function<void(RowId row, const at::Tensor& logits)> on_prompt_logits;
  // Text that became visible in a row (held back while it might start a stop string).
  std::function<void(RowId row, const std::string& text)> on_text;
  // A row ended ("stop" or "length"); it has left the batch.
  std::function<void(RowId row, GenerationResult result)> on_finished;
};

// How rows hold their KV prefixes.
enum class PrefixStorage {
  // One copy per prefix object, read once per step by all its rows (KvCache shared prefixes); the rows'
  // own tokens in a row pool, so rows joining and leaving move no other row's KV.
  kShared,
  // Each row holds its own copy in its slots, in a rectangular cache that rows joining or leaving copy
  // (the simple path, kept as the reference).
  kCopiedPerRow,
};

class DecodeBatch {
 public:
  struct Counts {
    int64_t prefill_tokens = 0;    // prompt tokens run through the model (not the prefixes)
    int64_t generated_tokens = 0;  // tokens sampled (a stop token included)
    int64_t prefill_steps = 0;     // add() calls that ran a forward
    int64_t decode_steps = 0;      // step() calls that ran a forward
  };

  // The model and tokenizer must outlive the batch.
  DecodeBatch(const Model& model, const Tokenizer& tokenizer, DecodeHooks hooks = {},
              PrefixStorage prefix_storage = PrefixStorage::kShared);

  // Checks every request (check_generation_request; throws InvalidArgumentError, nothing added), prefills
  // them together, each after its own prefix (right-padded; padding is masked and takes no position),
  // samples each one's first token and adds those that did not finish to the running batch. Returns their
  // ids in order. The requests must outlive their rows. On an exception the batch is unchanged.
  std::vector<RowId> add(const std::vector<const GenerationRequest*>& requests);

  // One forward for every running row (its last token), then each row samples; finished rows leave.
  void step();

  // Drops rows (e.g. cancelled requests) without finishing them; unknown ids are ignored.
  void remove(const std::vector<RowId>& rows);
  // Drops every row.
  void clear();

  bool empty() const { return rows_.empty(); }
  int64_t size() const { return static_cast<int64_t>(rows_.size()); }
  RowId next_row_id() const { return next_row_id_; }  // the id the next added row will get
  // The running rows' own K and V in use (prefix copies included with kCopiedPerRow), bytes.
  int64_t kv_bytes() const { return cache_.bytes(); }
  // The storage behind them (the row pool's rows x slots of capacity), bytes.
  int64_t kv_capacity_bytes() const { return cache_.capacity_bytes(); }
  // The shared prefixes the running rows read, each counted once (0 with kCopiedPerRow), bytes.
  int64_t shared_prefix_bytes() const { return cache_.shared_prefix_bytes(); }
  const Counts& counts() const { return counts_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Row {
    RowId id;
    RowDecoder decoder;
    Clock::time_point joined;                      // added to the batch (its prefill starts)
    std::optional<Clock::time_point> first_token;  // its first token was chosen
  };
  // The last-position logits [N, 1, V] of a prefill of `requests` into `cache`, calling on_prompt_logits
  // for the rows that ask for their prompt's logits.
  at::Tensor prefill(const std::vector<const GenerationRequest*>& requests, const std::vector<RowId>& ids,
                     KvCache& cache);
  // Each unfinished row of `rows` samples from its row of logits [N, V]; returns the indices of the rows
  // still generating. Finished rows go to on_finished.
  std::vector<int64_t> sample(std::vector<Row>& rows, const at::Tensor& logits);
  // Keeps the running rows at `kept` (indices into rows_, in order) and their cache rows.
  void keep_rows(const std::vector<int64_t>& kept);

  const Model& model_;
  const Tokenizer& tokenizer_;
  DecodeHooks hooks_;
  PrefixStorage prefix_storage_;
  KvCache cache_;          // row i is rows_[i]
  std::vector<Row> rows_;  // running rows, in cache order
  RowId next_row_id_ = 0;
  Counts counts_;
};

}  // namespace cartridge
