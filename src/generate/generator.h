// Batched generation: every row has its own prompt, sampling settings, stop conditions and optionally its
// own KV prefix (a cartridge, possibly composed). Rows are decoded together, one forward per step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cartridge/kv_prefix.h"
#include "generate/sampler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;          // non-empty
  std::shared_ptr<const KvPrefix> prefix;   // null = no cartridge; real tokens then start at position 0
  SamplingOptions sampling;
  int64_t max_new_tokens = 256;
  bool stop_at_eos = true;                  // stop on the tokenizer's end-of-sequence token(s)
  std::vector<int32_t> stop_token_ids;      // extra stop tokens (not included in the output)
  std::vector<std::string> stop_strings;    // the text ends before the first occurrence (not included)
};

struct GenerationResult {
  std::vector<int32_t> token_ids;  // generated tokens (a stop token is not included)
  std::string text;                // decoded with special tokens skipped, cut before a stop string
  std::string finish_reason;       // "stop" (eos, stop token or stop string) or "length"
  int64_t prompt_tokens = 0;
};

// Called with (row, new text) whenever a row's visible text grows; text that might be the start of a
// stop string is held back until it is known not to be.
using TextCallback = std::function<void(size_t row, const std::string& text)>;

// Generates for all requests in one batch and returns one result per request, in order.
// Throws InvalidArgumentError for an empty prompt or a prompt + prefix + max_new_tokens beyond the
// model's context length.
std::vector<GenerationResult> generate(const Model& model, const Tokenizer& tokenizer,
                                       const std::vector<GenerationRequest>& requests,
                                       const TextCallback& on_text = nullptr);

// Pads per-row prefixes (any may be null) into a KV cache of batch size requests.size(): row b holds
// its prefix's P_b slots, the rest masked out; next positions start at P_b.
KvCache make_prefixed_cache(const Model& model, const std::vector<std::shared_ptr<const KvPrefix>>& prefixes);

}  // namespace cartridge
