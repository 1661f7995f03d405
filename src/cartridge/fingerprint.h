// The identity of the base model a cartridge was made for, stored beside the PEFT files in
// `cartridge_fingerprint.json` (PEFT ignores files it does not know). A cartridge only means something on
// the exact model that produced its keys: PEFT happily runs an adapter on another model of the same
// shapes and produces garbage. Shapes that do not fit are refused outright (Cartridge::check_fits); a
// fingerprint that differs only in vocabulary or weights gives a warning.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/model_files.h"
#include "model/model_config.h"

namespace cartridge {

inline constexpr char kFingerprintFileName[] = "cartridge_fingerprint.json";

struct ModelFingerprint {
  static constexpr int64_t kVersion = 1;  // of the file format; a reader ignores (with a warning) newer ones

  std::string architecture;  // "llama", "qwen2", "qwen3"
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocabulary_tokens = 0;  // tokens in the tokenizer's vocabulary (added tokens included)
  // "fnv1a64:<16 hex digits>" over the token strings in id order, each followed by a 0 byte. The strings
  // are the same in tokenizer.json and in GGUF metadata, so a model converted to GGUF keeps its hash.
  std::string vocabulary_hash;
  // "fnv1a64:<16 hex digits>" over the final RMSNorm weight [hidden] rounded to bfloat16 (its bits, little
  // endian). It is trained in every fine-tune, stored unquantised in GGUF, and bf16 rounding makes F32
  // and BF16 copies of one checkpoint agree.
  std::string weight_hash;
  std::string model_name;  // what the user passed as --model (informational, not compared)

  nlohmann::json to_json() const;
  // Throws FormatError naming `source` for missing or mistyped fields. A newer `version` throws
  // UnsupportedError (callers treat the fingerprint as unreadable and warn).
  static ModelFingerprint from_json(const nlohmann::json& json, const std::string& source);

  // What differs from `other`, one human-readable item per field (empty when it is the same model).
  std::vector<std::string> differences(const ModelFingerprint& other) const;
};

// Computes the fingerprint of the model in `files` (reads the vocabulary and the final norm weight from
// the files; `config` is the model's parsed config). Throws FormatError naming the file when the
// vocabulary or the norm weight cannot be found.
ModelFingerprint fingerprint_model(const ModelFiles& files, const ModelConfig& config);

}  // namespace cartridge
