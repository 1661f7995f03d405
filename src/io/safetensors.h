// safetensors reader and writer. The reader validates the header against the file's size before any
// tensor is touched; the writer produces bytes identical to the `safetensors` Python library
// (docs/cartridge_format.md): u64 LE header length, compact JSON header with `__metadata__` first and
// tensors sorted by (dtype alignment descending, name), keys `dtype, shape, data_offsets`, padded with
// spaces to a multiple of 8, then the data.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "util/mapped_file.h"

namespace cartridge {

enum class SafetensorsDType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

std::string safetensors_dtype_name(SafetensorsDType dtype);  // "F32", "BF16", ...
size_t safetensors_dtype_size(SafetensorsDType dtype);       // bytes per element

struct SafetensorsTensorInfo {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // bytes from the start of the data section
  uint64_t end = 0;    // one past the last byte

  int64_t element_count() const;
};

class SafetensorsFile {
 public:
  // Opens and validates `path`: header length within the file (and at most 100 MB), JSON well formed, no
  // repeated names, known dtypes, offsets in range, consistent with shape*dtype (overflow-checked), not
  // overlapping. Throws FormatError naming the path and the problem (an unknown dtype such as F8_E4M3 too).
  // Unlike the Rust library it tolerates gaps between tensors and bytes after the last one.
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }  // in header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensorInfo* find(const std::string& name) const;
  const uint8_t* data(const SafetensorsTensorInfo& tensor) const;  // end-begin bytes

 private:
  MappedFile file_;
  uint64_t data_offset_ = 0;  // bytes: 8 + header length
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: raw little-endian bytes, row-major.
struct SafetensorsTensorBytes {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  const void* data;  // element_count * dtype size bytes
};

// The complete file bytes, identical to safetensors.torch.save_file(tensors, metadata=metadata or None).
// With two or more metadata keys the library's key order varies from run to run (a Rust HashMap); we
// write them sorted, so the bytes match one of its orders. Throws InvalidArgumentError for repeated names,
// the reserved name "__metadata__", negative dims, or missing data.
std::string serialize_safetensors(const std::vector<SafetensorsTensorBytes>& tensors,
                                  const std::map<std::string, std::string>& metadata);

}  // namespace cartridge
