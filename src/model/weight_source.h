// Internal to the model layer: where Model gets its tensors from (a Hugging Face safetensors checkpoint,
// or a GGUF file), always under Hugging Face names.
#pragma once

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

}  // namespace cartridge
