// Chat templates: turns a conversation into the prompt text a model was trained on, by rendering the
// model's own Jinja template (tokenizer_config.json "chat_template" or GGUF "tokenizer.chat_template")
// exactly as transformers' tokenizer.apply_chat_template(..., tokenize=False) does, byte for byte.
// The Jinja engine is cartridge.cpp's own (tokenizer/jinja/); a template using something it does not
// implement is refused with UnsupportedError when constructed, never rendered approximately.
// docs/chat_templates.md lists which real templates render identically.
#pragma once

#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace cartridge {

namespace jinja {
class Template;
}

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool", ...
  std::string content;
};

struct ChatTemplateOptions {
  // Append the header that starts the assistant's reply (what a prompt for generation needs).
  bool add_generation_prompt = false;
  // More variables for the template, e.g. {"enable_thinking": false} or {"tools": [...]}. They override
  // the defaults (bos_token, eos_token, tools, documents), as apply_chat_template's kwargs do. Key order
  // is kept (it shows when a template prints a dict with tojson).
  nlohmann::ordered_json extra_variables = nlohmann::ordered_json::object();
  // The local date and time that strftime_now(format) formats (Llama 3.x templates print today's date).
  // Unset means the current local time; set it to make a render reproducible.
  std::optional<std::tm> now;
};

class ChatTemplate {
 public:
  // Parses the template once. bos_token / eos_token become the template variables of those names; an
  // empty one is left undefined, as transformers does for a tokenizer without that token. `name` says
  // where the template came from and starts every error message. Throws FormatError for invalid Jinja
  // and UnsupportedError naming the construct when the template uses Jinja this engine lacks.
  ChatTemplate(std::string source, std::string bos_token, std::string eos_token,
               std::string name = "chat template");
  ~ChatTemplate();
  ChatTemplate(const ChatTemplate&) = default;
  ChatTemplate& operator=(const ChatTemplate&) = default;
  ChatTemplate(ChatTemplate&&) noexcept = default;
  ChatTemplate& operator=(ChatTemplate&&) noexcept = default;

  // Renders role/content messages. Safe to call from many threads at once on one ChatTemplate.
  // Throws Error (one line, naming the template and line) when the template refuses the conversation
  // (its raise_exception(), e.g. roles that do not alternate) or fails as jinja2 would, and
  // UnsupportedError when rendering reaches something the engine does not implement.
  std::string render(const std::vector<ChatMessage>& messages, const ChatTemplateOptions& options = {}) const;

  // Renders messages given as JSON: an array of objects with "role", "content" and any other fields
  // (tool_calls, reasoning_content, ...). Prepared as apply_chat_template prepares them: keys whose value
  // is null are dropped, and a reasoning text ("reasoning_content", "thinking" or "reasoning") is also
  // offered under "thinking" and "reasoning_content". A json (not ordered_json) argument converts
  // implicitly, with its keys in sorted order. Throws InvalidArgumentError for an empty conversation or a
  // message that is not an object, otherwise as render().
  std::string render_json(const nlohmann::ordered_json& messages,
                          const ChatTemplateOptions& options = {}) const;

  const std::string& source() const { return source_; }
  const std::string& name() const { return name_; }

 private:
  std::string source_;
  std::string bos_token_;
  std::string eos_token_;
  std::string name_;
  std::shared_ptr<const jinja::Template> template_;  // immutable after parsing, shared by copies
};

}  // namespace cartridge
