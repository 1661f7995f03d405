// Batched generation: every row has its own prompt, sampling settings, stop conditions and optionally its
// own KV prefix (a cartridge, possibly composed). Rows are decoded together, one forward per step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cartridge/kv_prefix.h"
#include "generate/generation_request.h"
#include "generate/row_decoder.h"
#include "generate/sampler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

// Called with (row, new text) whenever a row's visible text grows; text that might be the start of a
// stop string is held back until it is known not to be.
using TextCallback = std::function<void(size_t row, const std::string& text)>;

// Generates for all requests in one batch and returns one result per request, in order.
// Throws InvalidArgumentError for an empty prompt or a prompt + prefix + max_new_tokens beyond the
// model's context length.
std::vector<GenerationResult> generate(const Model& model, const Tokenizer& tokenizer,
                                       const std::vector<GenerationRequest>& requests,
                                       const TextCallback& on_text = nullptr);

// (make_prefixed_cache, the per-row RowDecoder and the prefill/decode steps are in generate/row_decoder.h.)

}  // namespace cartridge
