// `cartridge inspect`: what a cartridge adapter holds, and (with --model) whether it fits a model.
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cartridge/adapter_io.h"
#include "io/gguf.h"
#include "io/model_files.h"
#include "tools/commands.h"

namespace cartridge::tools {

namespace {

struct InspectOptions {
  std::string adapter;
  std::string model;  // empty: no model check
  bool json = false;
};

void run_inspect(const InspectOptions& options) {
  const LoadedAdapter adapter = load_adapter(options.adapter);
  const AdapterConfig& config = adapter.config;
  const CartridgeShape shape = config.shape();
  std::vector<std::string> warnings = adapter.warnings;

  // With --model: config and fingerprint only (no weights are loaded). A shape that does not fit throws.
  nlohmann::json model_check = nullptr;
  if (!options.model.empty()) {
    const ModelFiles files = resolve_model_files(options.model);
    const ModelConfig model_config = files.format == ModelFormat::kGguf
                                         ? ModelConfig::from_gguf(GgufFile(files.gguf_path))
                                         : ModelConfig::from_hf_config_json(files.config_path);
    const ModelFingerprint model_fingerprint = fingerprint_model(files, model_config);
    const std::vector<std::string> found =
        check_adapter_for_model(adapter, model_config, &model_fingerprint, files.name);
    warnings.insert(warnings.end(), found.begin(), found.end());
    model_check = {
        {"model", files.name},
        {"fits", true},
        {"fingerprint", !adapter.fingerprint ? "absent"
                        : found.empty()      ? "same model"
                                             : "different model"},
        {"kv_bytes_fp32", config.num_virtual_tokens * model_config.kv_bytes_per_token(at::kFloat)},
        {"kv_bytes_bf16", config.num_virtual_tokens * model_config.kv_bytes_per_token(at::kBFloat16)}};
  }
  const auto optional_text = [](const std::optional<std::string>& value) {
    return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
  };
  if (options.json) {
    nlohmann::json output = {
        {"folder", adapter.folder},
        {"peft_type", config.peft_type},
        {"peft_version", optional_text(config.peft_version)},
        {"task_type", optional_text(config.task_type)},
        {"num_virtual_tokens", config.num_virtual_tokens},
        {"num_frozen_tokens", config.num_frozen_tokens},
        {"num_layers", shape.num_layers},
        {"num_kv_heads", shape.num_kv_heads},
        {"head_dim", shape.head_dim},
        {"token_dim", config.token_dim},
        {"width", shape.width()},
        {"shape", {config.num_virtual_tokens, shape.width()}},
        {"stored_dtype", safetensors_dtype_name(adapter.stored_dtype)},
        {"weights_file_bytes", adapter.weights_file_bytes},
        {"parameter_bytes", adapter.cartridge.parameter_bytes()},
        {"base_model_name_or_path", optional_text(config.base_model_name_or_path)},
        {"fingerprint", adapter.fingerprint ? adapter.fingerprint->to_json() : nlohmann::json()},
        {"model_check", model_check},
        {"warnings", warnings}};
    std::cout << output.dump(2) << std::endl;
    return;
  }
  for (const std::string& warning : warnings) std::cerr << "warning: " << warning << "\n";
  std::cout << fmt::format(
      "adapter            {}\ntype               {} (PEFT {})\nvirtual tokens     {} ({} frozen, {} "
      "trainable)\n"
      "layout             {} layers x {} KV heads x head_dim {}\nprompt_embeddings  [{}, {}] {}\n"
      "file bytes         {}\nbase model         {}\nfingerprint        {}\n",
      adapter.folder, config.peft_type, config.peft_version.value_or("?"), config.num_virtual_tokens,
      config.num_frozen_tokens, config.num_virtual_tokens - config.num_frozen_tokens, shape.num_layers,
      shape.num_kv_heads, shape.head_dim, config.num_virtual_tokens, shape.width(),
      safetensors_dtype_name(adapter.stored_dtype), adapter.weights_file_bytes,
      config.base_model_name_or_path.value_or("(none)"),
      adapter.fingerprint
          ? adapter.fingerprint->architecture + ", weights " + adapter.fingerprint->weight_hash
          : std::string("(none: not written by cartridge.cpp)"));
  if (!model_check.is_null()) {
    std::cout << fmt::format(
        "model check        fits {} ({}); KV {} bytes (fp32), {} bytes (bf16)\n",
        model_check["model"].get<std::string>(), model_check["fingerprint"].get<std::string>(),
        model_check["kv_bytes_fp32"].get<int64_t>(), model_check["kv_bytes_bf16"].get<int64_t>());
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  CLI::App* command =
      app.add_subcommand("inspect", "Show what a cartridge adapter holds (and whether it fits a model)");
  command->footer(
      "Reads adapter_config.json, adapter_model.safetensors and cartridge_fingerprint.json. With --model it\n"
      "also checks the adapter against that model's config (an error if the shapes do not fit) and\n"
      "fingerprint (a warning if it was made for another model).\n"
      "Example:\n  cartridge inspect my_cartridge --model " +
      std::string(kDefaultModelPath) + " --json");
  command->add_option("adapter", options->adapter, "An adapter folder (or a Hub id in the HF cache)")
      ->required();
  command->add_option("-m,--model", options->model, "Check against this model (GGUF, HF folder or Hub id)");
  command->add_flag("--json", options->json, "Print JSON");
  command->callback([options] { run_inspect(*options); });
}

}  // namespace cartridge::tools
