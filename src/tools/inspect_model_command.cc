// `cartridge inspect-model`: what a model is, read from its config and tensor table (no weights loaded).
#include <iostream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "model/model_config.h"
#include "tools/commands.h"

namespace cartridge::tools {

namespace {

struct InspectModelOptions {
  std::string model = kDefaultModelPath;
  bool json = false;
};

void run_inspect_model(const InspectModelOptions& options) {
  const ModelFiles files = resolve_model_files(options.model);
  ModelConfig config;
  std::map<std::string, int64_t> tensor_types;  // type name -> tensor count
  int64_t parameter_count = 0;
  if (files.format == ModelFormat::kGguf) {
    const GgufFile gguf(files.gguf_path);
    config = ModelConfig::from_gguf(gguf);
    for (const GgufTensorInfo& tensor : gguf.tensors()) {
      ++tensor_types[ggml_type_name(tensor.type)];
      parameter_count += tensor.element_count();
    }
  } else {
    config = ModelConfig::from_hf_config_json(files.config_path);
    for (const std::string& path : files.weight_paths) {
      const SafetensorsFile weights(path);
      for (const SafetensorsTensorInfo& tensor : weights.tensors()) {
        ++tensor_types[safetensors_dtype_name(tensor.dtype)];
        parameter_count += tensor.element_count();
      }
    }
  }
  const int64_t kv_bytes_fp32 = config.kv_bytes_per_token(at::kFloat);
  const int64_t kv_bytes_bf16 = config.kv_bytes_per_token(at::kBFloat16);
  if (options.json) {
    nlohmann::json output = {
        {"model", files.name},
        {"format", files.format == ModelFormat::kGguf ? "gguf" : "huggingface"},
        {"architecture", architecture_name(config.architecture)},
        {"model_type", config.model_type},
        {"layers", config.num_layers},
        {"hidden_size", config.hidden_size},
        {"intermediate_size", config.intermediate_size},
        {"attention_heads", config.num_attention_heads},
        {"kv_heads", config.num_key_value_heads},
        {"head_dim", config.head_dim},
        {"vocab_size", config.vocab_size},
        {"context_length", config.max_position_embeddings},
        {"rope_theta", config.rope_theta},
        {"tie_word_embeddings", config.tie_word_embeddings},
        {"parameters", parameter_count},
        {"tensor_types", tensor_types},
        {"kv_bytes_per_token", {{"fp32", kv_bytes_fp32}, {"bf16", kv_bytes_bf16}}},
    };
    std::cout << output.dump(2) << std::endl;
    return;
  }
  std::string types;
  for (const auto& [name, count] : tensor_types)
    types += fmt::format("{}{} x{}", types.empty() ? "" : ", ", name, count);
  std::cout << fmt::format(
      "model              {}\narchitecture       {} ({})\nlayers             {}\nhidden size        {}\n"
      "intermediate size  {}\nattention heads    {}\nKV heads           {}\nhead dim           {}\n"
      "vocabulary         {}\ncontext length     {}\nparameters         {:.1f} M\ntensor types       {}\n"
      "KV bytes per token {} (fp32), {} (bf16)\n",
      files.name, architecture_name(config.architecture), config.model_type, config.num_layers,
      config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads,
      config.head_dim, config.vocab_size, config.max_position_embeddings, parameter_count / 1e6, types,
      kv_bytes_fp32, kv_bytes_bf16);
}

}  // namespace

void add_inspect_model_command(CLI::App& app) {
  auto options = std::make_shared<InspectModelOptions>();
  CLI::App* command = app.add_subcommand("inspect-model", "Show a model's architecture and sizes");
  command->footer("Example:\n  cartridge inspect-model " + std::string(kDefaultModelPath) + " --json");
  command->add_option("model", options->model, "A GGUF file, a Hugging Face folder, or a Hub id")
      ->capture_default_str();
  command->add_flag("--json", options->json, "Print JSON");
  command->callback([options] { run_inspect_model(*options); });
}

}  // namespace cartridge::tools
