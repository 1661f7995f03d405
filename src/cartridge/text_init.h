// Initialising a cartridge from text, as PEFT's initialize_kv_prefix_from_text does
// (docs/cartridge_format.md, "Making a cartridge from text"): the text is tokenized (plainly, with the
// tokenizer's default special tokens, or as one system message through the chat template), the base model
// prefills it at positions 0..n-1, and the first p cached slots become the cartridge. The paper's best
// initialisation: the first p tokens of the corpus (docs/self_study.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cartridge/cartridge.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

enum class InitTokenization {
  kAuto,  // PEFT's default (use_chat_template=True): the chat template when the model has one, else plain
  kChatTemplate,  // the text as one system message through the chat template (an error without one)
  kPlain,         // tokenizer(text): the tokenizer's default special tokens (e.g. Llama's BOS)
};

// The token ids PEFT would prefill. `chat_template` may be null (the model has none). Throws
// UnsupportedError for kChatTemplate without a template.
std::vector<int32_t> tokenize_init_text(const Tokenizer& tokenizer, const ChatTemplate* chat_template,
                                        const std::string& text, InitTokenization tokenization);

// tokenize_init_text, then Cartridge::from_token_ids. Throws InvalidArgumentError (saying how many tokens
// the text has) when it is shorter than `num_virtual_tokens`.
Cartridge initialize_from_text(const Model& model, const Tokenizer& tokenizer,
                               const ChatTemplate* chat_template, const std::string& text,
                               InitTokenization tokenization, int64_t num_virtual_tokens,
                               int64_t num_frozen_tokens);

}  // namespace cartridge
