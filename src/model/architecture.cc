#include "model/architecture.h"

namespace cartridge {
namespace {

// One row per name a file may use for a family.
struct ArchitectureName {
  const char* model_type;  // config.json "model_type"
  const char* class_name;  // config.json "architectures"[0]
  const char* gguf_name;   // GGUF "general.architecture", or nullptr when llama.cpp writes another name
  Architecture architecture;
};

constexpr ArchitectureName kArchitectureNames[] = {
    {"llama", "LlamaForCausalLM", "llama", Architecture::kLlama},
    // Mistral without a sliding window is a Llama; with one, Model::forward refuses sequences past it.
    {"mistral", "MistralForCausalLM", nullptr, Architecture::kLlama},
    {"qwen2", "Qwen2ForCausalLM", "qwen2", Architecture::kQwen2},
    {"qwen3", "Qwen3ForCausalLM", "qwen3", Architecture::kQwen3},
};

}  // namespace

std::string architecture_name(Architecture architecture) {
  for (const ArchitectureName& row : kArchitectureNames) {
    if (row.architecture == architecture) return row.model_type;  // the first row of a family is its own name
  }
  return "unknown";
}

bool architecture_from_model_type(const std::string& model_type, Architecture& architecture) {
  for (const ArchitectureName& row : kArchitectureNames) {
    if (model_type == row.model_type) {
      architecture = row.architecture;
      return true;
    }
  }
  return false;
}

std::string model_type_from_class_name(const std::string& class_name) {
  for (const ArchitectureName& row : kArchitectureNames) {
    if (class_name == row.class_name) return row.model_type;
  }
  return "";
}

bool architecture_from_gguf_name(const std::string& gguf_name, Architecture& architecture) {
  for (const ArchitectureName& row : kArchitectureNames) {
    if (row.gguf_name != nullptr && gguf_name == row.gguf_name) {
      architecture = row.architecture;
      return true;
    }
  }
  return false;
}

std::string supported_architectures() {
  std::string text = "supported model types:";
  for (const ArchitectureName& row : kArchitectureNames) {
    text += std::string(&row == kArchitectureNames ? " " : ", ") + row.model_type;
    if (row.model_type != architecture_name(row.architecture))
      text += " (as " + architecture_name(row.architecture) + ")";
  }
  return text;
}

}  // namespace cartridge
