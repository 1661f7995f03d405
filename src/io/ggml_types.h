// Internal to io/: the table of ggml tensor types (block sizes, bytes per block) that the GGUF reader
// uses to check each tensor's extent, including types we can read past but not dequantise.
#pragma once

#include <cstdint>

namespace cartridge {

struct GgmlTypeTraits {
  uint32_t number;          // the type's number in GGUF files
  const char* name;         // llama.cpp's name: "Q4_1", "F32", ...
  uint32_t block_elements;  // elements per block (1 for plain types)
  uint32_t block_bytes;     // bytes per block
  bool can_dequantize;      // dequantize_ggml supports it
};

// The traits of type `number`, or nullptr if ggml has no such type (as far as this program knows).
const GgmlTypeTraits* find_ggml_type(uint32_t number);

}  // namespace cartridge
