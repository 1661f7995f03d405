#include "cartridge/text_init.h"

#include "util/error.h"

namespace cartridge {

std::vector<int32_t> tokenize_init_text(const Tokenizer& tokenizer, const ChatTemplate* chat_template,
                                        const std::string& text, InitTokenization tokenization) {
  const bool use_template = tokenization == InitTokenization::kChatTemplate ||
                            (tokenization == InitTokenization::kAuto && chat_template != nullptr);
  if (!use_template) return tokenizer.encode(text, /*add_special_tokens=*/true);
  if (chat_template == nullptr) {
    throw UnsupportedError(
        "the model has no chat template, so the text cannot be wrapped in one (use plain tokenization)");
  }
  // transformers' apply_chat_template(tokenize=True): render, then tokenize without adding special tokens
  // (the template writes them itself).
  ChatTemplateOptions options;
  options.add_generation_prompt = false;
  const std::string rendered = chat_template->render({ChatMessage{"system", text}}, options);
  return tokenizer.encode(rendered, /*add_special_tokens=*/false);
}

Cartridge initialize_from_text(const Model& model, const Tokenizer& tokenizer,
                               const ChatTemplate* chat_template, const std::string& text,
                               InitTokenization tokenization, int64_t num_virtual_tokens,
                               int64_t num_frozen_tokens) {
  const std::vector<int32_t> token_ids = tokenize_init_text(tokenizer, chat_template, text, tokenization);
  return Cartridge::from_token_ids(model, token_ids, num_virtual_tokens, num_frozen_tokens);
}

}  // namespace cartridge
