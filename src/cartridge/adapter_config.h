// PEFT's `adapter_config.json` for a CARTRIDGE adapter (docs/cartridge_format.md): the 14 keys of
// CartridgeConfig, read as PEFT reads them (defaults for missing keys, unknown keys ignored) and written byte
// for byte as PEFT's `PeftConfigMixin.save_pretrained` writes them.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cartridge/cartridge_shape.h"
#include "model/model_config.h"

namespace cartridge {

inline constexpr char kAdapterConfigFileName[] = "adapter_config.json";
inline constexpr char kAdapterWeightsFileName[] = "adapter_model.safetensors";
inline constexpr char kAdapterPickleWeightsFileName[] = "adapter_model.bin";
// The PEFT release whose on-disk format we match; written as `peft_version`.
inline constexpr char kPeftVersion[] = "0.21.2";

struct AdapterConfig {
  // The 14 fields of peft.CartridgeConfig, with PEFT's defaults for a saved adapter.
  nlohmann::json auto_mapping;                            // null, or {base_model_class, parent_library}
  std::optional<std::string> base_model_name_or_path;     // what the adapter was made for (informational)
  bool inference_mode = true;                             // PEFT always saves `true`
  nlohmann::json modules_to_save;                         // null or a list (not used by CAUSAL_LM)
  int64_t num_attention_heads = 0;                        // H_kv (PEFT's GQA rule, docs/cartridge_format.md)
  int64_t num_frozen_tokens = 1;                          // F: rows [0, F) are never trained
  int64_t num_layers = 0;                                 // L
  std::optional<int64_t> num_transformer_submodules = 1;  // 1 for decoder-only models
  int64_t num_virtual_tokens = 0;                         // p, the cartridge length in tokens
  std::string peft_type = "CARTRIDGE";
  std::optional<std::string> peft_version = std::string(kPeftVersion);
  std::optional<std::string> revision;
  std::optional<std::string> task_type = std::string("CAUSAL_LM");
  int64_t token_dim = 0;  // H_kv * D: one layer's K (or V) width per token

  // The config PEFT's get_peft_model + save_pretrained would write for a cartridge of
  // `num_virtual_tokens` rows on a model with `config` (num_layers, H_kv, H_kv * head_dim).
  static AdapterConfig for_model(const ModelConfig& config, int64_t num_virtual_tokens,
                                 int64_t num_frozen_tokens,
                                 std::optional<std::string> base_model_name_or_path);

  // Parses adapter_config.json text. `source` names the file in errors. Throws FormatError (not JSON,
  // wrong value types, missing sizes), UnsupportedError (another PEFT method, a task other than
  // CAUSAL_LM, seq2seq) or FormatError for inconsistent values (F > p, token_dim not a multiple of the
  // heads). Keys PEFT does not know are ignored as PEFT does; their names go to `ignored_keys`.
  static AdapterConfig parse(const std::string& json_text, const std::string& source,
                             std::vector<std::string>* ignored_keys = nullptr);
  // Reads and parses `path`.
  static AdapterConfig read(const std::string& path, std::vector<std::string>* ignored_keys = nullptr);

  // The 14 keys as a JSON object, and the exact bytes PEFT writes (json.dumps(indent=2, sort_keys=True)).
  nlohmann::json to_json() const;
  std::string to_json_text() const;

  // The per-token layout this config describes: L layers, H_kv heads, D = token_dim / H_kv.
  CartridgeShape shape() const;
};

}  // namespace cartridge
