// Internal to the model layer: where Model gets its tensors from (a Hugging Face safetensors checkpoint,
// or a GGUF file), always under Hugging Face names.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>

#include "model/model_config.h"

namespace cartridge {

// A matrix as a GGUF file stores it, in a quantised block type.
struct StoredBlocks {
  uint32_t ggml_type = 0;  // the GGUF type number (Q4_1 = 3, Q8_0 = 8, ...)
  at::Tensor rows;         // [out, bytes per row] uint8, a copy (not aliasing the file)
  int64_t columns = 0;     // values per row
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // The tensor named `hf_name` ("model.layers.0.self_attn.q_proj.weight", ...) on the CPU in its stored
  // float dtype, or nullopt when the checkpoint has none. May alias file memory: the caller copies.
  virtual std::optional<at::Tensor> get(const std::string& hf_name) = 0;
  // The matrix `hf_name` in its stored block type when the checkpoint holds it in a type `accepts` takes
  // (a GGUF type number), else nullopt (then get() gives it as floats).
  virtual std::optional<StoredBlocks> get_blocks(const std::string& hf_name,
                                                 const std::function<bool(uint32_t)>& accepts) {
    return std::nullopt;
  }
  // What to name in an error about `hf_name` (the file holding it, or the checkpoint).
  virtual std::string describe(const std::string& hf_name) const = 0;
  // Names the whole checkpoint (for "missing tensor" errors).
  virtual std::string checkpoint() const = 0;
};

}  // namespace cartridge
