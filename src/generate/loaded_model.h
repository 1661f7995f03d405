// A model with its tokenizer and chat template, loaded from what a user passes to --model (a GGUF file,
// a Hugging Face folder, or a Hub id in the local cache). Immutable and shared by every generation.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cartridge/framing.h"
#include "io/model_files.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

struct LoadedModel {
  ModelFiles files;
  std::shared_ptr<const Model> model;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::shared_ptr<const ChatTemplate> chat_template;  // null when the model has none

  // Token ids of a conversation rendered with the model's chat template, tokenized without adding
  // special tokens (as transformers' apply_chat_template(tokenize=True)). Throws UnsupportedError when the
  // model has no chat template.
  std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                   const ChatTemplateOptions& options = {}) const;
  std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                          const ChatTemplateOptions& options = {}) const;

  // Token ids of `messages` as they follow a cartridge made for `framing` (docs/framing.md). kNewChat:
  // encode_chat(messages). kSystemTurn: what the chat template renders after the content of a system
  // message the cartridge stands for (that turn's end), then the messages; a leading system message of
  // `messages` is added to that system turn's content, after a blank line. Throws UnsupportedError when the
  // model has no chat template, or when its template does not show a system message's content as given.
  std::vector<int32_t> encode_chat_after_cartridge(const std::vector<ChatMessage>& messages, Framing framing,
                                                   bool add_generation_prompt) const;

  // Token ids of the system turn holding `document`, up to the end of the document's text (the turn left
  // open: what kSystemTurn's framing continues). Throws as encode_chat_after_cartridge.
  std::vector<int32_t> encode_document_turn(const std::string& document) const;
};

// Resolves `model_spec`, loads weights (with a progress bar when options.show_progress), tokenizer and
// chat template.
LoadedModel load_model(const std::string& model_spec, const LoadOptions& options = {});

// Parses "fp32" / "float32" / "bf16" / "bfloat16" / "fp16"; throws InvalidArgumentError otherwise.
at::ScalarType parse_dtype(const std::string& name);
// The inverse, as the CLI and our files spell it: "fp32", "bf16", "fp16" (other types: torch's name).
std::string dtype_name(at::ScalarType dtype);
// "cpu", "cuda", "cuda:1", or "auto" (CUDA when available); throws InvalidArgumentError otherwise.
at::Device parse_device(const std::string& name);

}  // namespace cartridge
