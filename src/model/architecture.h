// The model families this library runs, and the one table that maps the names files use for them
// (config.json's model_type and architectures[0], GGUF's general.architecture) to a family. Adding a
// family starts here (docs/adding_a_model.md).
#pragma once

#include <string>

namespace cartridge {

// Families differ only in what their per-layer config says (model/transformer_layer.h): biases, q/k norms.
enum class Architecture { kLlama, kQwen2, kQwen3 };

// "llama", "qwen2", "qwen3": the family's own model_type.
std::string architecture_name(Architecture architecture);

// The family of a config.json model_type ("mistral" runs as Llama); false when unknown.
bool architecture_from_model_type(const std::string& model_type, Architecture& architecture);

// The model_type of a transformers class name in config.json's "architectures" ("Qwen2ForCausalLM" ->
// "qwen2"); "" when unknown.
std::string model_type_from_class_name(const std::string& class_name);

// The family of a GGUF general.architecture; false when unknown.
bool architecture_from_gguf_name(const std::string& gguf_name, Architecture& architecture);

// "supported model types: llama, mistral (as llama), qwen2, qwen3", for error messages.
std::string supported_architectures();

}  // namespace cartridge
