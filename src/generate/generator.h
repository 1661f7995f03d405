// Batched generation: every row has its own prompt, sampling settings, stop conditions and optionally its
// own KV prefix (a cartridge, possibly composed). Rows are decoded together in one DecodeBatch
// (generate/decode_batch.h), one forward per step.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "generate/generation_request.h"
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

}  // namespace cartridge
