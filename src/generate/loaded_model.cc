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
