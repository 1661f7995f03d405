// Fuzz target: the safetensors reader (io/safetensors.h) on arbitrary file bytes: the length prefix, the
// JSON header, the tensor table and the data offsets. A file the reader accepts must keep its promises:
// every tensor inside the data section, its byte range matching shape * dtype size, names findable.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <set>
#include <string>

#include "fuzz_util.h"
#include "io/safetensors.h"

namespace {
constexpr const char* kTarget = "safetensors_fuzz";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemoryFile file("safetensors_fuzz");
  const std::string& path = file.write(data, size);
  try {
    cartridge::SafetensorsFile safetensors(path);
    fuzz::check(size >= 8, kTarget, "accepted file has the 8-byte length prefix");
    uint64_t header_length = 0;
    for (int i = 0; i < 8; ++i) header_length |= static_cast<uint64_t>(data[i]) << (8 * i);
    fuzz::check(header_length <= size - 8, kTarget, "header inside the file");
    const uint64_t data_offset = 8 + header_length;
    const uint64_t data_size = size - data_offset;
    const uint8_t* base = nullptr;
    std::set<std::string> names;
    for (const cartridge::SafetensorsTensorInfo& tensor : safetensors.tensors()) {
      fuzz::check(tensor.begin <= tensor.end, kTarget, "begin <= end");
      fuzz::check(tensor.end <= data_size, kTarget, "tensor inside the data section");
      const int64_t elements = tensor.element_count();
      fuzz::check(elements >= 0, kTarget, "element count not negative");
      fuzz::check(tensor.end - tensor.begin ==
                      static_cast<uint64_t>(elements) * cartridge::safetensors_dtype_size(tensor.dtype),
                  kTarget, "byte range matches shape * dtype size");
      fuzz::check(!cartridge::safetensors_dtype_name(tensor.dtype).empty(), kTarget, "dtype has a name");
      fuzz::check(names.insert(tensor.name).second, kTarget, "tensor names unique");
      fuzz::check(safetensors.find(tensor.name) == &tensor, kTarget, "find() returns the tensor");
      const uint8_t* bytes = safetensors.data(tensor);
      const uint8_t* tensor_base = bytes - data_offset - tensor.begin;
      if (base == nullptr) base = tensor_base;
      fuzz::check(tensor_base == base, kTarget, "data() consistent with the offsets");
      for (uint64_t i = 0; i < tensor.end - tensor.begin; ++i)
        fuzz::check(bytes[i] == data[data_offset + tensor.begin + i], kTarget, "data() bytes are the file's");
    }
    for (const auto& [key, value] : safetensors.metadata()) (void)key.size(), (void)value.size();
  } catch (const std::exception&) {
    // FormatError and friends (util/error.h): the expected outcome for a bad file.
  }
  return 0;
}
