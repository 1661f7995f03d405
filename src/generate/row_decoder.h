// The per-row state of one generation in flight: sampler, streaming detokenizer, stop strings, token
// budget. DecodeBatch (generate/decode_batch.h) holds one per running row.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

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
  std::string advance(const at::Tensor& logits) { return accept(static_cast<int32_t>(choose(logits))); }
  // The two halves of advance(): the token the sampler picks from `logits` [V], and taking `token` as the
  // row's next (a batch of greedy rows picks all its tokens with one argmax instead of choose()).
  int64_t choose(const at::Tensor& logits) { return sampler_.sample(logits); }
  std::string accept(int32_t token);
  bool is_greedy() const { return request_->sampling.temperature == 0.0; }
  // Tokens the row may still generate before max_new_tokens.
  int64_t tokens_left() const;

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

}  // namespace cartridge
