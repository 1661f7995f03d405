#include "tokenizer/chat_template.h"

#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/template.h"
#include "tokenizer/jinja/value.h"
#include "util/error.h"

namespace cartridge {

namespace {

// The names a message's reasoning comes under, the first being the one chat templates read (the order
// transformers' _alias_reasoning_fields looks them up in).
constexpr const char* kReasoningFields[] = {"reasoning_content", "thinking", "reasoning"};

// What apply_chat_template does to each message before rendering: drop null fields, then offer the
// reasoning text as "thinking" (first) and "reasoning_content" too.
nlohmann::ordered_json prepare_message(const nlohmann::ordered_json& message) {
  nlohmann::ordered_json kept = nlohmann::ordered_json::object();
  for (const auto& [key, value] : message.items()) {
    if (!value.is_null()) kept[key] = value;
  }
  const nlohmann::ordered_json* reasoning = nullptr;
  for (const char* field : kReasoningFields) {
    if (kept.contains(field)) {
      reasoning = &kept[field];
      break;
    }
  }
  if (reasoning == nullptr) return kept;
  nlohmann::ordered_json aliased = nlohmann::ordered_json::object();
  aliased["thinking"] = *reasoning;
  for (const auto& [key, value] : kept.items()) aliased[key] = value;
  aliased["reasoning_content"] = *reasoning;
  return aliased;
}

std::tm current_local_time() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  return local;
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source, std::string bos_token, std::string eos_token, std::string name)
    : source_(std::move(source)),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)),
      name_(std::move(name)),
      template_(std::make_shared<const jinja::Template>(source_, name_)) {}

ChatTemplate::~ChatTemplate() = default;

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 const ChatTemplateOptions& options) const {
  nlohmann::ordered_json array = nlohmann::ordered_json::array();
  for (const ChatMessage& message : messages) {
    nlohmann::ordered_json object = nlohmann::ordered_json::object();
    object["role"] = message.role;
    object["content"] = message.content;
    array.push_back(std::move(object));
  }
  return render_json(array, options);
}

std::string ChatTemplate::render_json(const nlohmann::ordered_json& messages,
                                      const ChatTemplateOptions& options) const {
  if (!messages.is_array()) {
    throw InvalidArgumentError(name_ + ": expected the messages as a JSON array of objects, got " +
                               std::string(messages.type_name()) +
                               " (pass [{\"role\": ..., \"content\": ...}, ...])");
  }
  if (messages.empty()) {
    throw InvalidArgumentError(name_ +
                               ": cannot apply a chat template to an empty conversation (provide at least "
                               "one message)");
  }
  nlohmann::ordered_json prepared = nlohmann::ordered_json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!messages[i].is_object()) {
      throw InvalidArgumentError(name_ + ": message " + std::to_string(i) + " is a JSON " +
                                 std::string(messages[i].type_name()) +
                                 ", expected an object such as {\"role\": \"user\", \"content\": \"...\"}");
    }
    prepared.push_back(prepare_message(messages[i]));
  }
  if (!options.extra_variables.is_object()) {
    throw InvalidArgumentError(name_ + ": extra template variables must be a JSON object, got " +
                               std::string(options.extra_variables.type_name()));
  }

  // The variables transformers passes: messages, tools and documents (None unless given),
  // add_generation_prompt, the special tokens, then the caller's extra variables over all of them.
  jinja::Dict variables;
  try {
    variables.set("messages", jinja::value_from_json(prepared));
    variables.set("tools", jinja::Value::none());
    variables.set("documents", jinja::Value::none());
    variables.set("add_generation_prompt", jinja::Value::boolean(options.add_generation_prompt));
    if (!bos_token_.empty()) variables.set("bos_token", jinja::Value::string(bos_token_));
    if (!eos_token_.empty()) variables.set("eos_token", jinja::Value::string(eos_token_));
    for (const auto& [key, value] : options.extra_variables.items()) {
      variables.set(key, jinja::value_from_json(value));
    }
  } catch (const jinja::TemplateFailure& failure) {
    throw UnsupportedError(name_ + ": cannot pass the messages to the template: " + failure.message());
  }
  return template_->render(variables, options.now ? *options.now : current_local_time());
}

}  // namespace cartridge
