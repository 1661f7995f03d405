// The per-row state of one generation in flight (sampler, streaming detokenizer, stop strings, token
// budget) and the batched steps around it. Shared by generate() (a fixed batch) and the server's
// continuous-batching scheduler (rows join and leave between steps), so both decode a request the same way.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "cartridge/kv_prefix.h"
#include "generate/generation_request.h"
#include "generate/sampler.h"
#include "generate/stop_matcher.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

// Throws InvalidArgumentError when `request` cannot run on `config`: an empty prompt, a negative token
// budget, or prefix + prompt + max_new_tokens beyond the model's context length.
void check_generation_request(const ModelConfig& config, const GenerationRequest& request);

// Decodes one row: feed it the logits of its last position, it samples the next token, applies the stop
// rules and returns the text that became visible. The request must outlive the decoder.
class RowDecoder {
 public:
  // A request with max_new_tokens == 0 starts finished ("length").
  RowDecoder(const GenerationRequest& request, const Tokenizer& tokenizer);

  // Samples a token from `logits` [V] (float, any device) and returns the newly visible text (including
  // the held-back tail when this token finishes the row). Must not be called once finished().
  std::string advance(const at::Tensor& logits);

  bool finished() const { return finished_; }
  // The token to feed at the next step (the last one sampled); valid while !finished() after an advance.
  int32_t next_input_token() const { return result_.token_ids.back(); }
  const GenerationResult& result() const { return result_; }
  GenerationResult take_result() { return std::move(result_); }

 private:
  // Ends the row with `reason` ("stop" or "length"); returns the text still held back.
  std::string finish(const std::string& reason);
  bool is_stop_token(int32_t token) const;

  const GenerationRequest* request_;
  const Tokenizer* tokenizer_;
  Sampler sampler_;
  StreamingDecoder decoder_;
  StopMatcher stop_matcher_;
  GenerationResult result_;
  bool finished_ = false;
};

// Pads per-row prefixes (any may be null) into a KV cache of batch size prefixes.size(): row b holds
// its prefix's P_b slots, the rest masked out; next positions start at P_b.
KvCache make_prefixed_cache(const Model& model, const std::vector<std::shared_ptr<const KvPrefix>>& prefixes);

// Prefills a batch: each request's prefix, then its prompt (right-padded into [B, T_max]; padding is masked
// and takes no position). Returns the cache and the logits of each row's last prompt token [B, 1, V].
// Requests must have passed check_generation_request.
std::pair<KvCache, at::Tensor> prefill_batch(const Model& model,
                                             const std::vector<const GenerationRequest*>& requests);

// One decode step: feeds `tokens` (one per cache row, in row order) and returns logits [B, 1, V].
at::Tensor decode_step(const Model& model, KvCache& cache, const std::vector<int64_t>& tokens);

}  // namespace cartridge
