#include "generate/loaded_model.h"

#include <ATen/Context.h>

#include "util/error.h"

namespace cartridge {

LoadedModel load_model(const std::string& model_spec, const LoadOptions& options) {
  LoadedModel loaded;
  loaded.files = resolve_model_files(model_spec);
  loaded.tokenizer = std::make_shared<const Tokenizer>(Tokenizer::load(loaded.files));
  if (!loaded.tokenizer->chat_template().empty()) {
    loaded.chat_template = std::make_shared<const ChatTemplate>(
        loaded.tokenizer->chat_template(), loaded.tokenizer->bos_token(), loaded.tokenizer->eos_token());
  }
  loaded.model = Model::load(loaded.files, options);
  return loaded;
}

std::string LoadedModel::render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                     const ChatTemplateOptions& options) const {
  if (!chat_template) {
    throw UnsupportedError(files.name +
                           ": the model has no chat template (use a raw prompt instead of --chat)");
  }
  ChatTemplateOptions with_prompt = options;
  with_prompt.add_generation_prompt = add_generation_prompt;
  return chat_template->render(messages, with_prompt);
}

std::vector<int32_t> LoadedModel::encode_chat(const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt,
                                              const ChatTemplateOptions& options) const {
  return tokenizer->encode(render_chat(messages, add_generation_prompt, options),
                           /*add_special_tokens=*/false);
}

namespace {

// Stands for the document in a rendered conversation, so the template's text around a system message's
// content can be found: text no chat template contains, without whitespace (templates trim content) or
// control characters (Python's strip() removes some of those too).
constexpr char kDocumentSentinel[] = "@@cartridge-document-7f3a91@@";

// The chat template's rendering of `messages` after a system message whose content starts with the
// sentinel, split there: {text before the content, text after the sentinel}.
std::pair<std::string, std::string> split_at_document(const LoadedModel& model,
                                                      std::vector<ChatMessage> messages,
                                                      bool add_generation_prompt) {
  std::string system = kDocumentSentinel;
  if (!messages.empty() && messages.front().role == "system") {
    system += "\n\n" + messages.front().content;
    messages.erase(messages.begin());
  }
  messages.insert(messages.begin(), {"system", system});
  const std::string rendered = model.render_chat(messages, add_generation_prompt);
  const size_t at = rendered.find(kDocumentSentinel);
  if (at == std::string::npos || rendered.find(kDocumentSentinel, at + 1) != std::string::npos) {
    throw UnsupportedError(
        model.files.name +
        ": the chat template does not show a system message's content as given, so the "
        "system_turn framing cannot find where the document ends (use --framing new_chat)");
  }
  return {rendered.substr(0, at), rendered.substr(at + std::char_traits<char>::length(kDocumentSentinel))};
}

}  // namespace

std::vector<int32_t> LoadedModel::encode_chat_after_cartridge(const std::vector<ChatMessage>& messages,
                                                              Framing framing,
                                                              bool add_generation_prompt) const {
  if (framing == Framing::kNewChat) return encode_chat(messages, add_generation_prompt);
  return tokenizer->encode(split_at_document(*this, messages, add_generation_prompt).second,
                           /*add_special_tokens=*/false);
}

std::vector<int32_t> LoadedModel::encode_document_turn(const std::string& document) const {
  return tokenizer->encode(split_at_document(*this, {}, /*add_generation_prompt=*/false).first + document,
                           /*add_special_tokens=*/false);
}

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32") return at::kFloat;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  if (name == "fp16" || name == "float16") return at::kHalf;
  throw InvalidArgumentError("unknown dtype '" + name + "' (expected fp32 or bf16)");
}

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "fp32";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "fp16";
    default: return c10::toString(dtype);
  }
}

at::Device parse_device(const std::string& name) {
  if (name == "auto") return at::hasCUDA() ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  try {
    at::Device device(name);
    if (device.is_cuda() && !at::hasCUDA()) {
      throw InvalidArgumentError("device '" + name +
                                 "' asked for, but this build/machine has no CUDA (use --device cpu)");
    }
    return device;
  } catch (const c10::Error&) {
    throw InvalidArgumentError("unknown device '" + name + "' (expected cpu, cuda, cuda:N or auto)");
  }
}

}  // namespace cartridge
