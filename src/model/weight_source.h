// Internal to the model layer: where Model gets its tensors from (a Hugging Face safetensors checkpoint,
// a GGUF file, or tensors already in memory), always under Hugging Face names.
#pragma once

#include <map>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>

#include "model/model_config.h"

namespace cartridge {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // The tensor named `hf_name` ("model.layers.0.self_attn.q_proj.weight", ...) on the CPU in its stored
  // float dtype, or nullopt when the checkpoint has none. May alias file memory: the caller copies.
  virtual std::optional<at::Tensor> get(const std::string& hf_name) = 0;
  // What to name in an error about `hf_name` (the file holding it, or the checkpoint).
  virtual std::string describe(const std::string& hf_name) const = 0;
  // Names the whole checkpoint (for "missing tensor" errors).
  virtual std::string checkpoint() const = 0;
};

// Tensors given in memory under HF names.
class MapWeightSource : public WeightSource {
 public:
  MapWeightSource(const std::map<std::string, at::Tensor>& weights, std::string source)
      : weights_(weights), source_(std::move(source)) {}
  std::optional<at::Tensor> get(const std::string& hf_name) override {
    auto it = weights_.find(hf_name);
    if (it == weights_.end()) return std::nullopt;
    return it->second;
  }
  std::string describe(const std::string&) const override { return source_; }
  std::string checkpoint() const override { return source_; }

 private:
  const std::map<std::string, at::Tensor>& weights_;
  std::string source_;
};

}  // namespace cartridge
