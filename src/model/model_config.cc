#include "model/model_config.h"

#include <c10/core/ScalarType.h>

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {
namespace {

using Json = nlohmann::json;

// A key that is absent or null counts as "not given" (transformers writes `"head_dim": null` etc.).
const Json* find_value(const Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t get_int(const Json& object, const char* key, int64_t fallback, const std::string& path) {
  const Json* value = find_value(object, key);
  if (value == nullptr) return fallback;
  if (!value->is_number_integer() && !value->is_number_unsigned()) {
    throw FormatError(describe_file_problem(
        path, std::string("\"") + key + "\" must be an integer, found " + value->dump()));
  }
  return value->get<int64_t>();
}

int64_t require_int(const Json& object, const char* key, const std::string& path) {
  if (find_value(object, key) == nullptr) {
    throw FormatError(describe_file_problem(path, std::string("missing \"") + key + "\"",
                                            "a transformers config.json for this model family has it"));
  }
  return get_int(object, key, 0, path);
}

double get_double(const Json& object, const char* key, double fallback, const std::string& path) {
  const Json* value = find_value(object, key);
  if (value == nullptr) return fallback;
  if (!value->is_number()) {
    throw FormatError(
        describe_file_problem(path, std::string("\"") + key + "\" must be a number, found " + value->dump()));
  }
  return value->get<double>();
}

bool get_bool(const Json& object, const char* key, bool fallback, const std::string& path) {
  const Json* value = find_value(object, key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) {
    throw FormatError(describe_file_problem(
        path, std::string("\"") + key + "\" must be true or false, found " + value->dump()));
  }
  return value->get<bool>();
}

std::string get_string(const Json& object, const char* key, const std::string& fallback) {
  const Json* value = find_value(object, key);
  if (value == nullptr || !value->is_string()) return fallback;
  return value->get<std::string>();
}

// The model_type of `architectures[0]`, for configs that lack model_type.
std::string model_type_from_architectures(const Json& config) {
  const Json* architectures = find_value(config, "architectures");
  if (architectures == nullptr || !architectures->is_array() || architectures->empty() ||
      !(*architectures)[0].is_string()) {
    return "";
  }
  const std::string name = (*architectures)[0].get<std::string>();
  const std::string model_type = model_type_from_class_name(name);
  return model_type.empty() ? name : model_type;
}

// RoPE type and parameters: transformers 5 writes `rope_parameters` (with rope_theta inside); older files
// have `rope_theta` and `rope_scaling` at the top level. Mirrors `standardize_rope_params`.
void read_rope(const Json& config, const std::string& path, ModelConfig& out) {
  const Json* parameters = find_value(config, "rope_parameters");
  if (parameters == nullptr) parameters = find_value(config, "rope_scaling");
  if (parameters != nullptr && !parameters->is_object()) {
    throw FormatError(describe_file_problem(path, "\"rope_parameters\"/\"rope_scaling\" must be an object"));
  }
  // Parameters nested per layer type (models mixing sliding and full attention): use the full ones.
  if (parameters != nullptr && find_value(*parameters, "full_attention") != nullptr) {
    parameters = find_value(*parameters, "full_attention");
  }
  out.rope_theta = get_double(config, "rope_theta", 10000.0, path);
  if (parameters == nullptr) return;
  out.rope_theta = get_double(*parameters, "rope_theta", out.rope_theta, path);
  std::string type = get_string(*parameters, "rope_type", get_string(*parameters, "type", "default"));
  if (get_double(*parameters, "partial_rotary_factor", 1.0, path) != 1.0) {
    throw UnsupportedError(describe_file_problem(path, "partial_rotary_factor != 1 is not supported",
                                                 "only full-width RoPE is implemented"));
  }
  if (type == "default") {
    out.rope_scaling = RopeScaling{};
    return;
  }
  if (type != "llama3") {
    throw UnsupportedError(describe_file_problem(path, "RoPE type \"" + type + "\" is not supported",
                                                 "supported: default, llama3"));
  }
  out.rope_scaling.type = type;
  for (const char* key : {"factor", "low_freq_factor", "high_freq_factor"}) {
    if (find_value(*parameters, key) == nullptr) {
      throw FormatError(
          describe_file_problem(path, std::string("llama3 RoPE scaling without \"") + key + "\""));
    }
  }
  out.rope_scaling.factor = get_double(*parameters, "factor", 1, path);
  out.rope_scaling.low_freq_factor = get_double(*parameters, "low_freq_factor", 1, path);
  out.rope_scaling.high_freq_factor = get_double(*parameters, "high_freq_factor", 4, path);
  // transformers: a top-level original_max_position_embeddings wins, else the rope dict's, else the
  // model's max_position_embeddings.
  out.rope_scaling.original_max_position_embeddings = get_int(
      config, "original_max_position_embeddings",
      get_int(*parameters, "original_max_position_embeddings", out.max_position_embeddings, path), path);
  if (out.rope_scaling.high_freq_factor == out.rope_scaling.low_freq_factor) {
    throw FormatError(
        describe_file_problem(path, "llama3 RoPE scaling with high_freq_factor == low_freq_factor"));
  }
}

}  // namespace

int64_t ModelConfig::kv_width() const { return 2 * num_layers * num_key_value_heads * head_dim; }

int64_t ModelConfig::kv_bytes_per_token(at::ScalarType dtype) const {
  return kv_width() * static_cast<int64_t>(c10::elementSize(dtype));
}

void ModelConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& problem) { throw FormatError(describe_file_problem(source, problem)); };
  if (vocab_size <= 0 || hidden_size <= 0 || intermediate_size <= 0 || num_layers <= 0 ||
      num_attention_heads <= 0 || num_key_value_heads <= 0 || head_dim <= 0) {
    fail("model sizes must be positive (vocab " + std::to_string(vocab_size) + ", hidden " +
         std::to_string(hidden_size) + ", intermediate " + std::to_string(intermediate_size) + ", layers " +
         std::to_string(num_layers) + ", heads " + std::to_string(num_attention_heads) + ", kv heads " +
         std::to_string(num_key_value_heads) + ", head_dim " + std::to_string(head_dim) + ")");
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    fail(std::to_string(num_attention_heads) + " attention heads are not a multiple of " +
         std::to_string(num_key_value_heads) + " key/value heads");
  }
  if (head_dim % 2 != 0)
    fail("head_dim " + std::to_string(head_dim) + " is odd; RoPE needs an even head_dim");
  if (!(rms_norm_eps > 0) || !(rope_theta > 0)) fail("rms_norm_eps and rope_theta must be positive");
}

ModelConfig ModelConfig::from_hf_config_json(const std::string& config_path) {
  const std::string text = read_text_file(config_path);
  Json config;
  try {
    config = Json::parse(text);
  } catch (const Json::exception& error) {  // parse_error, or out_of_range for a number past double
    throw FormatError(describe_file_problem(config_path, std::string("not valid JSON: ") + error.what()));
  }
  if (!config.is_object()) throw FormatError(describe_file_problem(config_path, "expected a JSON object"));

  ModelConfig out;
  out.model_type = get_string(config, "model_type", "");
  if (out.model_type.empty()) out.model_type = model_type_from_architectures(config);
  if (!architecture_from_model_type(out.model_type, out.architecture)) {
    throw UnsupportedError(describe_file_problem(
        config_path,
        "model architecture \"" + (out.model_type.empty() ? std::string("(none given)") : out.model_type) +
            "\" is not supported",
        supported_architectures()));
  }
  const bool is_qwen = out.architecture != Architecture::kLlama;
  const bool is_mistral = out.model_type == "mistral";

  const std::string activation = get_string(config, "hidden_act", "silu");
  if (activation != "silu") {
    throw UnsupportedError(describe_file_problem(config_path,
                                                 "hidden_act \"" + activation + "\" is not supported",
                                                 "only silu (SwiGLU) is implemented"));
  }

  // Defaults are those of the transformers config classes (LlamaConfig, MistralConfig, Qwen2Config,
  // Qwen3Config).
  out.vocab_size = get_int(config, "vocab_size", is_qwen ? 151936 : 32000, config_path);
  out.hidden_size = require_int(config, "hidden_size", config_path);
  out.intermediate_size = require_int(config, "intermediate_size", config_path);
  out.num_layers = require_int(config, "num_hidden_layers", config_path);
  out.num_attention_heads = require_int(config, "num_attention_heads", config_path);
  out.num_key_value_heads = get_int(config, "num_key_value_heads", out.num_attention_heads, config_path);
  if (out.num_attention_heads <= 0) {
    throw FormatError(describe_file_problem(config_path, "num_attention_heads must be positive"));
  }
  const int64_t default_head_dim =
      out.architecture == Architecture::kQwen3 ? 128 : out.hidden_size / out.num_attention_heads;
  out.head_dim = get_int(config, "head_dim", default_head_dim, config_path);
  out.max_position_embeddings =
      get_int(config, "max_position_embeddings", is_qwen ? 32768 : (is_mistral ? 131072 : 2048), config_path);
  out.rms_norm_eps = get_double(config, "rms_norm_eps", 1e-6, config_path);
  out.tie_word_embeddings = get_bool(config, "tie_word_embeddings", false, config_path);
  read_rope(config, config_path, out);

  switch (out.architecture) {
    case Architecture::kLlama:
      out.attention_bias = get_bool(config, "attention_bias", false, config_path);
      out.attention_output_bias = out.attention_bias;
      out.mlp_bias = get_bool(config, "mlp_bias", false, config_path);
      // Mistral's window defaults to 4096 when the key is absent; null means no window.
      if (is_mistral) {
        auto it = config.find("sliding_window");
        out.sliding_window = it == config.end()
                                 ? 4096
                                 : (it->is_null() ? 0 : get_int(config, "sliding_window", 0, config_path));
      }
      break;
    case Architecture::kQwen2:
    case Architecture::kQwen3:
      out.attention_bias = out.architecture == Architecture::kQwen2
                               ? true
                               : get_bool(config, "attention_bias", false, config_path);
      out.qk_norm = out.architecture == Architecture::kQwen3;
      if (get_bool(config, "use_sliding_window", false, config_path)) {
        out.sliding_window = get_int(config, "sliding_window", 4096, config_path);
      }
      break;
  }
  out.validate(config_path);
  return out;
}

ModelConfig ModelConfig::from_gguf(const GgufFile& gguf) {
  const std::string& path = gguf.path();
  const std::string arch = gguf.get("general.architecture").as_string("general.architecture");
  ModelConfig out;
  out.model_type = arch;
  if (!architecture_from_gguf_name(arch, out.architecture)) {
    throw UnsupportedError(describe_file_problem(path, "GGUF architecture \"" + arch + "\" is not supported",
                                                 supported_architectures()));
  }
  auto int_key = [&](const std::string& suffix) {
    const std::string key = arch + "." + suffix;
    return gguf.get(key).as_int(key);
  };
  auto optional_int = [&](const std::string& suffix, int64_t fallback) {
    const std::string key = arch + "." + suffix;
    const GgufValue* value = gguf.find(key);
    return value == nullptr ? fallback : value->as_int(key);
  };
  auto optional_double = [&](const std::string& suffix, double fallback) {
    const std::string key = arch + "." + suffix;
    const GgufValue* value = gguf.find(key);
    return value == nullptr ? fallback : value->as_double(key);
  };

  out.num_layers = int_key("block_count");
  out.hidden_size = int_key("embedding_length");
  out.intermediate_size = int_key("feed_forward_length");
  out.num_attention_heads = int_key("attention.head_count");
  out.num_key_value_heads = optional_int("attention.head_count_kv", out.num_attention_heads);
  out.max_position_embeddings =
      optional_int("context_length", out.architecture == Architecture::kLlama ? 2048 : 32768);
  out.rms_norm_eps = optional_double("attention.layer_norm_rms_epsilon", 1e-6);
  out.rope_theta = optional_double("rope.freq_base", 10000.0);
  if (out.num_attention_heads <= 0) {
    throw FormatError(describe_file_problem(path, "attention.head_count must be positive"));
  }

  // head_dim: llama.cpp writes attention.key_length when it differs from hidden/heads; transformers reads
  // llama's rope.dimension_count as head_dim; Qwen3's k-norm weight has exactly head_dim elements.
  int64_t head_dim = optional_int("attention.key_length", 0);
  if (head_dim == 0 && out.architecture == Architecture::kLlama)
    head_dim = optional_int("rope.dimension_count", 0);
  if (head_dim == 0 && out.architecture == Architecture::kQwen3) {
    if (const GgufTensorInfo* k_norm = gguf.find_tensor("blk.0.attn_k_norm.weight"))
      head_dim = k_norm->dims.at(0);
  }
  if (head_dim == 0) head_dim = out.hidden_size / out.num_attention_heads;
  out.head_dim = head_dim;
  if (out.architecture == Architecture::kLlama) {
    const int64_t rope_dims = optional_int("rope.dimension_count", head_dim);
    if (rope_dims != head_dim) {
      throw UnsupportedError(
          describe_file_problem(path, "partial RoPE (rope.dimension_count " + std::to_string(rope_dims) +
                                          " < head_dim " + std::to_string(head_dim) + ") is not supported"));
    }
  }

  const std::string scaling_key = arch + ".rope.scaling.type";
  if (const GgufValue* scaling = gguf.find(scaling_key)) {
    const std::string type = scaling->as_string(scaling_key);
    if (type != "none") {
      throw UnsupportedError(
          describe_file_problem(path, "RoPE scaling \"" + type + "\" is not supported",
                                "supported: none, and llama3 frequency factors (rope_freqs)"));
    }
  }

  const std::string vocab_key = arch + ".vocab_size";
  if (const GgufValue* vocab = gguf.find(vocab_key)) {
    out.vocab_size = vocab->as_int(vocab_key);
  } else if (const GgufValue* tokens = gguf.find("tokenizer.ggml.tokens")) {
    out.vocab_size = static_cast<int64_t>(tokens->as_array("tokenizer.ggml.tokens").size());
  } else if (const GgufTensorInfo* embedding = gguf.find_tensor("token_embd.weight")) {
    out.vocab_size = embedding->dims.size() == 2 ? embedding->dims[1] : 0;
  }

  out.tie_word_embeddings = gguf.find_tensor("output.weight") == nullptr;
  out.attention_bias = gguf.find_tensor("blk.0.attn_q.bias") != nullptr;
  out.attention_output_bias = gguf.find_tensor("blk.0.attn_output.bias") != nullptr;
  out.mlp_bias = gguf.find_tensor("blk.0.ffn_gate.bias") != nullptr;
  out.qk_norm = gguf.find_tensor("blk.0.attn_q_norm.weight") != nullptr;
  if (out.architecture == Architecture::kQwen3 && !out.qk_norm) {
    throw FormatError(describe_file_problem(path, "qwen3 GGUF without blk.0.attn_q_norm.weight",
                                            "the file is incomplete or not a Qwen3 model"));
  }
  out.validate(path);
  return out;
}

}  // namespace cartridge
