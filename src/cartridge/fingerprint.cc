#include "cartridge/fingerprint.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <memory>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/safetensors_dtype.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {

namespace {

constexpr uint64_t kFnvOffset = 14695981039346656037ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

void fnv1a(uint64_t& state, const void* bytes, size_t count) {
  const auto* data = static_cast<const uint8_t*>(bytes);
  for (size_t i = 0; i < count; ++i) {
    state ^= data[i];
    state *= kFnvPrime;
  }
}

std::string format_hash(uint64_t state) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "fnv1a64:%016llx", static_cast<unsigned long long>(state));
  return buffer;
}

std::string hash_tokens(const std::vector<std::string>& tokens) {
  uint64_t state = kFnvOffset;
  const char separator = 0;
  for (const std::string& token : tokens) {
    fnv1a(state, token.data(), token.size());
    fnv1a(state, &separator, 1);
  }
  return format_hash(state);
}

std::string hash_bfloat16(const at::Tensor& values /* [N] any float dtype */) {
  const at::Tensor rounded = values.to(at::kCPU).to(at::kBFloat16).contiguous();  // round to nearest even
  uint64_t state = kFnvOffset;
  fnv1a(state, rounded.data_ptr(), static_cast<size_t>(rounded.numel()) * 2);
  return format_hash(state);
}

// Token strings by id from tokenizer.json: the model's vocab (an object token -> id for BPE/WordPiece,
// a list of [piece, score] for Unigram) plus added_tokens.
std::vector<std::string> tokens_from_tokenizer_json(const std::string& path) {
  nlohmann::json tokenizer;
  try {
    tokenizer = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& error) {
    throw FormatError(describe_file_problem(path, std::string("is not valid JSON (") + error.what() + ")"));
  }
  std::vector<std::string> tokens;
  auto place = [&](int64_t id, const std::string& token) {
    if (id < 0 || id > 100000000)
      throw FormatError(describe_file_problem(path, "has a token id out of range"));
    if (static_cast<size_t>(id) >= tokens.size()) tokens.resize(static_cast<size_t>(id) + 1);
    tokens[static_cast<size_t>(id)] = token;
  };
  try {
    const nlohmann::json& vocab = tokenizer.at("model").at("vocab");
    if (vocab.is_object()) {
      for (const auto& item : vocab.items()) place(item.value().get<int64_t>(), item.key());
    } else if (vocab.is_array()) {
      for (size_t id = 0; id < vocab.size(); ++id)
        place(static_cast<int64_t>(id), vocab[id].at(0).get<std::string>());
    }
    if (tokenizer.contains("added_tokens") && tokenizer.at("added_tokens").is_array()) {
      for (const nlohmann::json& added : tokenizer.at("added_tokens")) {
        place(added.at("id").get<int64_t>(), added.at("content").get<std::string>());
      }
    }
  } catch (const nlohmann::json::exception& error) {
    throw FormatError(
        describe_file_problem(path, std::string("has no readable vocabulary (") + error.what() + ")"));
  }
  return tokens;
}

// The final norm weight [hidden] of a Hugging Face checkpoint, from whichever shard holds it.
at::Tensor hf_final_norm(const ModelFiles& files) {
  const std::string name = "model.norm.weight";
  for (const std::string& path : files.weight_paths) {
    SafetensorsFile file(path);
    const SafetensorsTensorInfo* info = file.find(name);
    if (info == nullptr) continue;
    const at::ScalarType dtype = torch_dtype(info->dtype);
    if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
      throw UnsupportedError(describe_file_problem(path, name + " is " + safetensors_dtype_name(info->dtype),
                                                   "expected F32, F16 or BF16"));
    }
    // from_blob does not own the mapping: copy (always, even when already float32) before `file` unmaps.
    return at::from_blob(const_cast<uint8_t*>(file.data(*info)), {info->element_count()}, dtype)
        .to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
  }
  throw FormatError(describe_file_problem(files.folder, "has no " + name + " in its weights",
                                          "is this a Llama/Qwen checkpoint?"));
}

}  // namespace

nlohmann::json ModelFingerprint::to_json() const {
  return {{"format", "cartridge.cpp model fingerprint"},
          {"version", kVersion},
          {"architecture", architecture},
          {"num_layers", num_layers},
          {"hidden_size", hidden_size},
          {"num_attention_heads", num_attention_heads},
          {"num_key_value_heads", num_key_value_heads},
          {"head_dim", head_dim},
          {"vocabulary_tokens", vocabulary_tokens},
          {"vocabulary_hash", vocabulary_hash},
          {"weight_hash", weight_hash},
          {"model_name", model_name}};
}

ModelFingerprint ModelFingerprint::from_json(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object() || !json.contains("version") || !json.at("version").is_number_integer()) {
    throw FormatError(describe_file_problem(source, "is not a model fingerprint (no integer \"version\")"));
  }
  const int64_t version = json.at("version").get<int64_t>();
  if (version > kVersion || version < 1) {
    throw UnsupportedError(describe_file_problem(source, "is fingerprint version " + std::to_string(version),
                                                 "this build reads version " + std::to_string(kVersion)));
  }
  ModelFingerprint fingerprint;
  try {
    fingerprint.architecture = json.at("architecture").get<std::string>();
    fingerprint.num_layers = json.at("num_layers").get<int64_t>();
    fingerprint.hidden_size = json.at("hidden_size").get<int64_t>();
    fingerprint.num_attention_heads = json.at("num_attention_heads").get<int64_t>();
    fingerprint.num_key_value_heads = json.at("num_key_value_heads").get<int64_t>();
    fingerprint.head_dim = json.at("head_dim").get<int64_t>();
    fingerprint.vocabulary_tokens = json.at("vocabulary_tokens").get<int64_t>();
    fingerprint.vocabulary_hash = json.at("vocabulary_hash").get<std::string>();
    fingerprint.weight_hash = json.at("weight_hash").get<std::string>();
    fingerprint.model_name = json.value("model_name", std::string());
  } catch (const nlohmann::json::exception& error) {
    throw FormatError(
        describe_file_problem(source, std::string("has a missing or mistyped field (") + error.what() + ")"));
  }
  return fingerprint;
}

std::vector<std::string> ModelFingerprint::differences(const ModelFingerprint& other) const {
  std::vector<std::string> found;
  auto compare = [&](const char* what, const auto& mine, const auto& theirs) {
    if (mine == theirs) return;
    std::string text = std::string(what) + " ";
    if constexpr (std::is_same_v<std::decay_t<decltype(mine)>, std::string>) {
      text += mine + " vs " + theirs;
    } else {
      text += std::to_string(mine) + " vs " + std::to_string(theirs);
    }
    found.push_back(text);
  };
  compare("architecture", architecture, other.architecture);
  compare("num_layers", num_layers, other.num_layers);
  compare("hidden_size", hidden_size, other.hidden_size);
  compare("num_attention_heads", num_attention_heads, other.num_attention_heads);
  compare("num_key_value_heads", num_key_value_heads, other.num_key_value_heads);
  compare("head_dim", head_dim, other.head_dim);
  compare("vocabulary_tokens", vocabulary_tokens, other.vocabulary_tokens);
  compare("vocabulary", vocabulary_hash, other.vocabulary_hash);
  compare("weights", weight_hash, other.weight_hash);
  return found;
}

ModelFingerprint fingerprint_model(const ModelFiles& files, const ModelConfig& config) {
  ModelFingerprint fingerprint;
  fingerprint.architecture = architecture_name(config.architecture);
  fingerprint.num_layers = config.num_layers;
  fingerprint.hidden_size = config.hidden_size;
  fingerprint.num_attention_heads = config.num_attention_heads;
  fingerprint.num_key_value_heads = config.num_key_value_heads;
  fingerprint.head_dim = config.head_dim;
  fingerprint.model_name = files.name;

  std::vector<std::string> tokens;
  at::Tensor norm;  // [hidden] float32
  if (files.format == ModelFormat::kGguf) {
    GgufFile gguf(files.gguf_path);
    const std::string key = "tokenizer.ggml.tokens";
    for (const GgufValue& token : gguf.get(key).as_array(key)) tokens.push_back(token.as_string(key));
    const GgufTensorInfo* info = gguf.find_tensor("output_norm.weight");
    if (info == nullptr) {
      throw FormatError(describe_file_problem(files.gguf_path, "has no output_norm.weight tensor",
                                              "is this a Llama/Qwen GGUF?"));
    }
    norm = at::empty({info->element_count()}, at::kFloat);
    gguf.dequantize(*info, norm.data_ptr<float>());
  } else {
    if (files.tokenizer_json_path.empty()) {
      throw FormatError(describe_file_problem(files.folder, "has no tokenizer.json",
                                              "a cartridge needs the model's tokenizer"));
    }
    tokens = tokens_from_tokenizer_json(files.tokenizer_json_path);
    norm = hf_final_norm(files);
  }
  fingerprint.vocabulary_tokens = static_cast<int64_t>(tokens.size());
  fingerprint.vocabulary_hash = hash_tokens(tokens);
  fingerprint.weight_hash = hash_bfloat16(norm);
  return fingerprint;
}

}  // namespace cartridge
