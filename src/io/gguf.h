// GGUF (v2 and v3) reader: header, metadata, tensor table and alignment, checked against the file's own
// size before any tensor is touched, plus dequantisation of the ggml tensor types to float32.
// Layout reference: ggml's gguf.md (the `gguf` Python package is the oracle in tests).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "util/mapped_file.h"

namespace cartridge {

// ggml tensor types, numbered as in the file.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

// The name llama.cpp uses ("Q4_1", "F32", ...), or "type<N>" for a number we do not know.
std::string ggml_type_name(GgmlType type);

// One metadata value. Arrays hold values of one element type.
struct GgufValue;
using GgufArray = std::vector<GgufValue>;
struct GgufValue {
  std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string, uint64_t,
               int64_t, double, GgufArray>
      value;

  // Conversions that accept any integer/float alternative (throw FormatError naming `key` otherwise).
  int64_t as_int(const std::string& key) const;
  double as_double(const std::string& key) const;
  bool as_bool(const std::string& key) const;
  const std::string& as_string(const std::string& key) const;
  const GgufArray& as_array(const std::string& key) const;
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type;
  // ggml order: dims[0] is the fastest-varying (row length). A PyTorch-style shape is dims reversed.
  std::vector<int64_t> dims;
  uint64_t offset = 0;     // bytes from the start of the data section
  uint64_t byte_size = 0;  // bytes occupied in the file

  int64_t element_count() const;
};

class GgufFile {
 public:
  // Opens and validates `path`: magic, version (2 or 3), counts, every string and array within bounds,
  // tensor types known, each tensor's data inside the file. Throws FormatError / UnsupportedError with the
  // path and the problem.
  explicit GgufFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // in file order
  uint64_t alignment() const { return alignment_; }  // bytes (general.alignment, default 32)
  uint64_t data_offset() const {
    return data_offset_;
  }  // bytes from the start of the file to the data section

  // Metadata lookups; `find` returns nullptr when absent, `get` throws FormatError naming the key.
  const GgufValue* find(const std::string& key) const;
  const GgufValue& get(const std::string& key) const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;

  // Raw bytes of a tensor in the mapping (byte_size bytes).
  const uint8_t* tensor_data(const GgufTensorInfo& tensor) const;

  // Dequantises a tensor into `out` (element_count() floats, ggml order = row-major over reversed dims),
  // bit-identical to the `gguf` package's dequantize. Throws UnsupportedError (naming the file and tensor)
  // for types without a dequantiser (IQ*, TQ*, MXFP4, Q8_1, Q8_K, ...). Large tensors use several threads.
  void dequantize(const GgufTensorInfo& tensor, float* out) const;

 private:
  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;   // bytes
  uint64_t data_offset_ = 0;  // bytes from the start of the file
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

// Bytes taken by `element_count` elements of `type` (throws UnsupportedError for an unknown type, or
// FormatError if element_count is not a multiple of the type's block size).
uint64_t ggml_byte_size(GgmlType type, int64_t element_count);

// Dequantises `element_count` elements of `type` from `data` into `out` (float32).
void dequantize_ggml(GgmlType type, const uint8_t* data, int64_t element_count, float* out);

}  // namespace cartridge
