#include "cartridge/adapter_config.h"

#include <set>

#include "cartridge/python_json.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {

namespace {

// The keys of peft.CartridgeConfig (dataclasses.asdict order does not matter: PEFT sorts them).
const std::set<std::string>& known_keys() {
  static const std::set<std::string> keys = {"auto_mapping",        "base_model_name_or_path",
                                             "inference_mode",      "modules_to_save",
                                             "num_attention_heads", "num_frozen_tokens",
                                             "num_layers",          "num_transformer_submodules",
                                             "num_virtual_tokens",  "peft_type",
                                             "peft_version",        "revision",
                                             "task_type",           "token_dim"};
  return keys;
}

class FieldReader {
 public:
  FieldReader(const nlohmann::json& object, const std::string& source) : object_(object), source_(source) {}

  bool present(const char* key) const { return object_.contains(key) && !object_.at(key).is_null(); }

  std::optional<std::string> optional_string(const char* key) const {
    if (!present(key)) return std::nullopt;
    const nlohmann::json& value = object_.at(key);
    if (!value.is_string()) fail(key, "a string or null", value);
    return value.get<std::string>();
  }

  int64_t integer(const char* key, std::optional<int64_t> default_value) const {
    if (!present(key)) {
      if (default_value) return *default_value;
      throw FormatError(describe_file_problem(source_, std::string("has no value for \"") + key + "\"",
                                              "PEFT fills it only when attaching the adapter to a model; "
                                              "re-save the adapter with PEFT or `cartridge`"));
    }
    const nlohmann::json& value = object_.at(key);
    if (!value.is_number_integer()) fail(key, "an integer", value);
    return value.get<int64_t>();
  }

  std::optional<int64_t> optional_integer(const char* key) const {
    if (!present(key)) return std::nullopt;
    return integer(key, std::nullopt);
  }

  bool boolean(const char* key, bool default_value) const {
    if (!present(key)) return default_value;
    const nlohmann::json& value = object_.at(key);
    if (!value.is_boolean()) fail(key, "true or false", value);
    return value.get<bool>();
  }

  nlohmann::json raw(const char* key) const {
    return object_.contains(key) ? object_.at(key) : nlohmann::json();
  }

 private:
  [[noreturn]] void fail(const char* key, const char* expected, const nlohmann::json& found) const {
    throw FormatError(describe_file_problem(
        source_, std::string("\"") + key + "\" should be " + expected + ", found " + found.dump(),
        "fix or re-save the adapter"));
  }

  const nlohmann::json& object_;
  const std::string& source_;
};

nlohmann::json optional_to_json(const std::optional<std::string>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json();
}

}  // namespace

AdapterConfig AdapterConfig::for_model(const ModelConfig& config, int64_t num_virtual_tokens,
                                       int64_t num_frozen_tokens,
                                       std::optional<std::string> base_model_name_or_path) {
  const CartridgeShape shape = CartridgeShape::of_model(config);
  AdapterConfig adapter;
  adapter.base_model_name_or_path = std::move(base_model_name_or_path);
  adapter.num_attention_heads = shape.num_kv_heads;
  adapter.num_layers = shape.num_layers;
  adapter.token_dim = shape.token_dim();
  adapter.num_virtual_tokens = num_virtual_tokens;
  adapter.num_frozen_tokens = num_frozen_tokens;
  return adapter;
}

AdapterConfig AdapterConfig::parse(const std::string& json_text, const std::string& source,
                                   std::vector<std::string>* ignored_keys) {
  nlohmann::json object;
  try {
    object = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& error) {
    throw FormatError(describe_file_problem(source, std::string("is not valid JSON (") + error.what() + ")",
                                            "the adapter is damaged; re-create or re-download it"));
  }
  if (!object.is_object()) {
    throw FormatError(
        describe_file_problem(source, "is not a JSON object", "expected a PEFT adapter_config.json"));
  }
  if (!object.contains("peft_type") || !object.at("peft_type").is_string()) {
    throw FormatError(
        describe_file_problem(source, "has no \"peft_type\"", "expected a PEFT adapter_config.json"));
  }
  const std::string peft_type = object.at("peft_type").get<std::string>();
  if (peft_type != "CARTRIDGE") {
    throw UnsupportedError(describe_file_problem(source, "is a PEFT " + peft_type + " adapter",
                                                 "only CARTRIDGE adapters are supported"));
  }
  if (ignored_keys != nullptr) {
    for (const auto& item : object.items()) {
      if (known_keys().count(item.key()) == 0) ignored_keys->push_back(item.key());
    }
  }

  const FieldReader read(object, source);
  AdapterConfig config;
  config.auto_mapping = read.raw("auto_mapping");
  config.base_model_name_or_path = read.optional_string("base_model_name_or_path");
  // A missing key takes CartridgeConfig's dataclass default, as PEFT's from_pretrained gives it.
  config.inference_mode = read.boolean("inference_mode", false);
  config.modules_to_save = read.raw("modules_to_save");
  config.num_attention_heads = read.integer("num_attention_heads", std::nullopt);
  config.num_frozen_tokens = read.integer("num_frozen_tokens", 1);
  config.num_layers = read.integer("num_layers", std::nullopt);
  config.num_transformer_submodules = read.optional_integer("num_transformer_submodules");
  config.num_virtual_tokens = read.integer("num_virtual_tokens", std::nullopt);
  config.peft_type = peft_type;
  // PEFT auto-fills a missing version with its own.
  config.peft_version = read.present("peft_version") ? read.optional_string("peft_version")
                                                     : std::optional<std::string>(kPeftVersion);
  config.revision = read.optional_string("revision");
  config.task_type = read.optional_string("task_type");
  config.token_dim = read.integer("token_dim", std::nullopt);

  if (config.task_type && *config.task_type != "CAUSAL_LM") {
    throw UnsupportedError(describe_file_problem(source, "is for task_type " + *config.task_type,
                                                 "only CAUSAL_LM cartridges are supported"));
  }
  if (config.num_transformer_submodules && *config.num_transformer_submodules != 1) {
    throw UnsupportedError(describe_file_problem(
        source, "has num_transformer_submodules " + std::to_string(*config.num_transformer_submodules),
        "only decoder-only models (1) are supported"));
  }
  auto require_positive = [&](const char* key, int64_t value) {
    if (value <= 0) {
      throw FormatError(describe_file_problem(
          source, std::string("\"") + key + "\" is " + std::to_string(value), "it must be positive"));
    }
  };
  require_positive("num_virtual_tokens", config.num_virtual_tokens);
  require_positive("num_layers", config.num_layers);
  require_positive("num_attention_heads", config.num_attention_heads);
  require_positive("token_dim", config.token_dim);
  if (config.num_frozen_tokens < 0 || config.num_frozen_tokens > config.num_virtual_tokens) {
    throw FormatError(describe_file_problem(
        source,
        "has num_frozen_tokens " + std::to_string(config.num_frozen_tokens) +
            " outside [0, num_virtual_tokens=" + std::to_string(config.num_virtual_tokens) + "]",
        "PEFT refuses it too; fix the config"));
  }
  if (config.token_dim % config.num_attention_heads != 0) {
    throw FormatError(describe_file_problem(source,
                                            "has token_dim " + std::to_string(config.token_dim) +
                                                " not divisible by num_attention_heads " +
                                                std::to_string(config.num_attention_heads),
                                            "token_dim must be KV heads x head_dim"));
  }
  return config;
}

AdapterConfig AdapterConfig::read(const std::string& path, std::vector<std::string>* ignored_keys) {
  return parse(read_text_file(path), path, ignored_keys);
}

nlohmann::json AdapterConfig::to_json() const {
  nlohmann::json object = nlohmann::json::object();
  object["auto_mapping"] = auto_mapping;
  object["base_model_name_or_path"] = optional_to_json(base_model_name_or_path);
  object["inference_mode"] = inference_mode;
  object["modules_to_save"] = modules_to_save;
  object["num_attention_heads"] = num_attention_heads;
  object["num_frozen_tokens"] = num_frozen_tokens;
  object["num_layers"] = num_layers;
  object["num_transformer_submodules"] =
      num_transformer_submodules ? nlohmann::json(*num_transformer_submodules) : nlohmann::json();
  object["num_virtual_tokens"] = num_virtual_tokens;
  object["peft_type"] = peft_type;
  object["peft_version"] = optional_to_json(peft_version);
  object["revision"] = optional_to_json(revision);
  object["task_type"] = optional_to_json(task_type);
  object["token_dim"] = token_dim;
  return object;
}

std::string AdapterConfig::to_json_text() const { return python_json_dumps(to_json(), 2); }

CartridgeShape AdapterConfig::shape() const {
  return {num_layers, num_attention_heads, num_attention_heads > 0 ? token_dim / num_attention_heads : 0};
}

}  // namespace cartridge
