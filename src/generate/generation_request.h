// What one generation asks for and what it returns; used by generate(), the row decoder and the server.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "generate/generation_timings.h"
#include "generate/sampler.h"
#include "model/kv_prefix.h"

namespace cartridge {

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;  // non-empty
  // The cartridges read before the prompt, in order (several = a composition: their slots one after
  // another, docs/cartridge_format.md), each shared with every other request that uses the same object.
  // Empty = none; real tokens start at position prefix_length().
  std::vector<std::shared_ptr<const KvPrefix>> prefixes;
  SamplingOptions sampling;
  int64_t max_new_tokens = 256;
  bool stop_at_eos = true;                // stop on the tokenizer's end-of-sequence token(s)
  std::vector<int32_t> stop_token_ids;    // extra stop tokens (not included in the output)
  std::vector<std::string> stop_strings;  // the text ends before the first occurrence (not included)
  // >= 1: also report, at prefill, the distributions that predicted the prompt's own tokens from this
  // index on (DecodeHooks::on_prompt_logits); 0 = none. Token 0 has no such distribution in the prompt.
  int64_t prompt_logits_from = 0;

  // Slots of all prefixes together.
  int64_t prefix_length() const {
    int64_t slots = 0;
    for (const auto& prefix : prefixes) slots += prefix ? prefix->length() : 0;
    return slots;
  }
};

struct GenerationResult {
  std::vector<int32_t> token_ids;  // generated tokens (a stop token is not included)
  std::string text;                // decoded with special tokens skipped, cut before a stop string
  std::string finish_reason;       // "stop" (eos, stop token or stop string) or "length"
  int64_t prompt_tokens = 0;
  int32_t stop_token_id = -1;  // the stop token that ended the row ("stop" by token), else -1
  GenerationTimings timings;   // filled by DecodeBatch when the row finishes
};

}  // namespace cartridge
