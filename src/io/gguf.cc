#include "io/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "io/checked_math.h"
#include "io/ggml_types.h"
#include "io/quoted.h"
#include "util/error.h"

namespace cartridge {

namespace {

constexpr uint32_t kMaxDims = 4;            // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 4;         // arrays of arrays deeper than this are refused (stack safety)
constexpr uint64_t kDefaultAlignment = 32;  // bytes, when general.alignment is absent

enum GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8,
  kUint16,
  kInt16,
  kUint32,
  kInt32,
  kFloat32,
  kBool,
  kString,
  kArray,
  kUint64,
  kInt64,
  kFloat64,
};

// Names of the GgufValue alternatives, in variant order (which is also the file's type numbering).
const char* const kValueTypeNames[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                       "bool",  "string", "array",  "uint64", "int64",  "float64"};

const char* alternative_name(const GgufValue& value) {
  // Variant order: uint8, int8, uint16, int16, uint32, int32, float, bool, string, uint64, int64, double,
  // array.
  static const char* const kNames[] = {"uint8", "int8",   "uint16", "int16", "uint32",  "int32", "float32",
                                       "bool",  "string", "uint64", "int64", "float64", "array"};
  return kNames[value.value.index()];
}

[[noreturn]] void throw_wrong_type(const std::string& key, const GgufValue& value, const char* expected) {
  throw FormatError("GGUF metadata key " + quote_name(key) + " holds a " + alternative_name(value) +
                    ", expected " + expected +
                    " (the file does not follow the layout this model type needs)");
}

const char* const kDamagedHint = "the file is incomplete or damaged; download or convert it again";

// Reads little-endian values from the mapping, checking every length against the bytes that remain.
class Cursor {
 public:
  explicit Cursor(const MappedFile& file) : file_(file) {}

  uint64_t position() const { return position_; }
  uint64_t remaining() const { return file_.size() - position_; }

  void need(uint64_t bytes, const std::string& what) const {
    if (bytes > remaining()) {
      throw FormatError(describe_file_problem(
          file_.path(),
          "GGUF file ends inside " + what + " (byte " + std::to_string(position_) + " needs " +
              std::to_string(bytes) + " bytes, the file has " + std::to_string(file_.size()) + ")",
          kDamagedHint));
    }
  }

  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, file_.data() + position_, sizeof(T));  // hosts are little-endian, like the format
    position_ += sizeof(T);
    return value;
  }

  std::string read_string(const std::string& what) {
    const uint64_t length = read<uint64_t>(what + " (string length)");
    if (length > remaining()) {
      throw FormatError(describe_file_problem(file_.path(),
                                              "GGUF string length " + std::to_string(length) + " for " +
                                                  what + " at byte " + std::to_string(position_ - 8) +
                                                  " runs past the end of the file (" +
                                                  std::to_string(file_.size()) + " bytes)",
                                              kDamagedHint));
    }
    std::string text(reinterpret_cast<const char*>(file_.data() + position_), length);
    position_ += length;
    return text;
  }

 private:
  const MappedFile& file_;
  uint64_t position_ = 0;
};

// Smallest encoding of one value of `type`, so that a count can be checked against the file before
// anything is allocated for it.
uint64_t minimum_value_bytes(uint32_t type) {
  switch (type) {
    case kUint8:
    case kInt8:
    case kBool: return 1;
    case kUint16:
    case kInt16: return 2;
    case kUint32:
    case kInt32:
    case kFloat32: return 4;
    case kUint64:
    case kInt64:
    case kFloat64:
    case kString: return 8;
    case kArray: return 12;
    default: return 1;
  }
}

GgufValue read_value(Cursor& cursor, uint32_t type, const std::string& key, int depth,
                     const std::string& path) {
  const std::string what = "the value of metadata key " + quote_name(key);
  GgufValue result;
  switch (type) {
    case kUint8: result.value = cursor.read<uint8_t>(what); break;
    case kInt8: result.value = cursor.read<int8_t>(what); break;
    case kUint16: result.value = cursor.read<uint16_t>(what); break;
    case kInt16: result.value = cursor.read<int16_t>(what); break;
    case kUint32: result.value = cursor.read<uint32_t>(what); break;
    case kInt32: result.value = cursor.read<int32_t>(what); break;
    case kFloat32: result.value = cursor.read<float>(what); break;
    case kBool: result.value = cursor.read<uint8_t>(what) != 0; break;
    case kString: result.value = cursor.read_string(what); break;
    case kUint64: result.value = cursor.read<uint64_t>(what); break;
    case kInt64: result.value = cursor.read<int64_t>(what); break;
    case kFloat64: result.value = cursor.read<double>(what); break;
    case kArray: {
      if (depth >= kMaxArrayNesting) {
        throw FormatError(describe_file_problem(path,
                                                "GGUF metadata key " + quote_name(key) +
                                                    " nests arrays more than " +
                                                    std::to_string(kMaxArrayNesting) + " deep",
                                                kDamagedHint));
      }
      const uint32_t element_type = cursor.read<uint32_t>(what + " (array element type)");
      if (element_type > kFloat64) {
        throw FormatError(describe_file_problem(path,
                                                "GGUF metadata key " + quote_name(key) +
                                                    " is an array of unknown type " +
                                                    std::to_string(element_type),
                                                kDamagedHint));
      }
      const uint64_t count = cursor.read<uint64_t>(what + " (array length)");
      uint64_t minimum_bytes = 0;
      if (!checked_multiply(count, minimum_value_bytes(element_type), &minimum_bytes) ||
          minimum_bytes > cursor.remaining()) {
        throw FormatError(describe_file_problem(
            path,
            "GGUF metadata key " + quote_name(key) + " declares " + std::to_string(count) + " " +
                kValueTypeNames[element_type] + " elements, more than the rest of the file can hold",
            kDamagedHint));
      }
      GgufArray elements;
      elements.reserve(count);
      for (uint64_t i = 0; i < count; ++i)
        elements.push_back(read_value(cursor, element_type, key, depth + 1, path));
      result.value = std::move(elements);
      break;
    }
    default:
      throw FormatError(describe_file_problem(
          path, "GGUF metadata key " + quote_name(key) + " has unknown value type " + std::to_string(type),
          kDamagedHint));
  }
  return result;
}

}  // namespace

int64_t GgufValue::as_int(const std::string& key) const {
  return std::visit(
      [&](const auto& held) -> int64_t {
        using T = std::decay_t<decltype(held)>;
        if constexpr (std::is_same_v<T, uint64_t>) {
          if (held > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            throw FormatError("GGUF metadata key " + quote_name(key) + " holds " + std::to_string(held) +
                              ", too large for a signed 64-bit integer");
          }
          return static_cast<int64_t>(held);
        } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<int64_t>(held);
        } else if constexpr (std::is_floating_point_v<T>) {
          // An integral float (some converters write counts as floats) is accepted; a fraction is not.
          if (std::isfinite(held) && std::trunc(held) == held && std::fabs(held) < 9.2e18) {
            return static_cast<int64_t>(held);
          }
          throw FormatError("GGUF metadata key " + quote_name(key) + " holds " + std::to_string(held) +
                            ", expected an integer");
        } else {
          throw_wrong_type(key, *this, "an integer");
        }
      },
      value);
}

double GgufValue::as_double(const std::string& key) const {
  return std::visit(
      [&](const auto& held) -> double {
        using T = std::decay_t<decltype(held)>;
        if constexpr ((std::is_integral_v<T> && !std::is_same_v<T, bool>) || std::is_floating_point_v<T>) {
          return static_cast<double>(held);
        } else {
          throw_wrong_type(key, *this, "a number");
        }
      },
      value);
}

bool GgufValue::as_bool(const std::string& key) const {
  if (const bool* flag = std::get_if<bool>(&value)) return *flag;
  if (std::holds_alternative<std::string>(value) || std::holds_alternative<GgufArray>(value) ||
      std::holds_alternative<float>(value) || std::holds_alternative<double>(value)) {
    throw_wrong_type(key, *this, "a bool");
  }
  const int64_t number = as_int(key);
  if (number != 0 && number != 1) {
    throw FormatError("GGUF metadata key " + quote_name(key) + " holds " + std::to_string(number) +
                      ", expected a bool");
  }
  return number == 1;
}

const std::string& GgufValue::as_string(const std::string& key) const {
  if (const std::string* text = std::get_if<std::string>(&value)) return *text;
  throw_wrong_type(key, *this, "a string");
}

const GgufArray& GgufValue::as_array(const std::string& key) const {
  if (const GgufArray* array = std::get_if<GgufArray>(&value)) return *array;
  throw_wrong_type(key, *this, "an array");
}

int64_t GgufTensorInfo::element_count() const {
  int64_t count = 1;
  for (int64_t dim : dims) count *= dim;  // checked against overflow when the file was opened
  return count;
}

GgufFile::GgufFile(const std::string& path) : file_(path) {
  const auto fail = [&](const std::string& problem) {
    throw FormatError(describe_file_problem(path, problem, kDamagedHint));
  };
  Cursor cursor(file_);
  cursor.need(4, "the GGUF magic");
  if (std::memcmp(file_.data(), "GGUF", 4) != 0) {
    const std::string found(reinterpret_cast<const char*>(file_.data()), 4);
    throw FormatError(describe_file_problem(
        path, "not a GGUF file (starts with " + quote_name(found) + ", expected \"GGUF\")",
        "pass a .gguf model file"));
  }
  cursor.read<uint32_t>("the GGUF magic");
  version_ = cursor.read<uint32_t>("the GGUF version");
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped == 2 || swapped == 3) {
      throw UnsupportedError(describe_file_problem(path, "big-endian GGUF files are not supported",
                                                   "convert the model with a little-endian llama.cpp"));
    }
    throw UnsupportedError(describe_file_problem(
        path, "GGUF version " + std::to_string(version_) + " is not supported (only versions 2 and 3)",
        "convert the model again with a current llama.cpp"));
  }
  const uint64_t tensor_count = cursor.read<uint64_t>("the tensor count");
  const uint64_t metadata_count = cursor.read<uint64_t>("the metadata count");
  // Each metadata entry takes at least 13 bytes (key length, value type, one byte); each tensor entry 24
  // (name length, dimension count, type, offset). Refuse counts the file cannot hold before looping.
  if (metadata_count > cursor.remaining() / 13) {
    fail("GGUF header declares " + std::to_string(metadata_count) +
         " metadata entries, more than the file can hold");
  }
  if (tensor_count > cursor.remaining() / 24) {
    fail("GGUF header declares " + std::to_string(tensor_count) + " tensors, more than the file can hold");
  }

  for (uint64_t i = 0; i < metadata_count; ++i) {
    const std::string entry = "metadata entry " + std::to_string(i);
    std::string key = cursor.read_string(entry + " (key)");
    const uint32_t type = cursor.read<uint32_t>("the value type of metadata key " + quote_name(key));
    GgufValue value = read_value(cursor, type, key, 0, path);
    if (!metadata_.emplace(key, std::move(value)).second)
      fail("GGUF metadata key " + quote_name(key) + " appears twice");
  }

  if (const GgufValue* alignment = find("general.alignment")) {
    int64_t bytes = 0;
    try {
      bytes = alignment->as_int("general.alignment");
    } catch (const FormatError& error) {
      fail(error.what());  // the same problem, with the file named
    }
    if (bytes <= 0 || (bytes & (bytes - 1)) != 0) {
      fail("general.alignment is " + std::to_string(bytes) + ", expected a power of two");
    }
    alignment_ = static_cast<uint64_t>(bytes);
  } else {
    alignment_ = kDefaultAlignment;
  }

  std::set<std::string> names;
  tensors_.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo tensor;
    tensor.name = cursor.read_string("tensor entry " + std::to_string(i) + " (name)");
    const std::string what = "the entry of tensor " + quote_name(tensor.name);
    const uint32_t dim_count = cursor.read<uint32_t>(what);
    if (dim_count > kMaxDims) {
      fail("tensor " + quote_name(tensor.name) + " has " + std::to_string(dim_count) +
           " dimensions, at most 4 allowed");
    }
    uint64_t element_count = 1;
    for (uint32_t d = 0; d < dim_count; ++d) {
      const uint64_t dim = cursor.read<uint64_t>(what);
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          !checked_multiply(element_count, dim, &element_count) ||
          element_count > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail("tensor " + quote_name(tensor.name) + " has a shape whose element count overflows 64 bits");
      }
      tensor.dims.push_back(static_cast<int64_t>(dim));
    }
    const uint32_t type_number = cursor.read<uint32_t>(what);
    tensor.type = static_cast<GgmlType>(type_number);
    tensor.offset = cursor.read<uint64_t>(what);
    const GgmlTypeTraits* traits = find_ggml_type(type_number);
    if (traits == nullptr) {
      throw UnsupportedError(describe_file_problem(
          path, "tensor " + quote_name(tensor.name) + " has unknown ggml type " + std::to_string(type_number),
          "the file is damaged or from a newer llama.cpp than this program knows"));
    }
    if ((!tensor.dims.empty() && tensor.dims[0] % traits->block_elements != 0) ||
        element_count % traits->block_elements != 0) {
      const uint64_t row = tensor.dims.empty() ? element_count : static_cast<uint64_t>(tensor.dims[0]);
      fail("tensor " + quote_name(tensor.name) + " of type " + traits->name + " has rows of " +
           std::to_string(row) + " elements, not a multiple of its " +
           std::to_string(traits->block_elements) + "-element blocks");
    }
    if (!checked_multiply(element_count / traits->block_elements, traits->block_bytes, &tensor.byte_size)) {
      fail("tensor " + quote_name(tensor.name) + " is too large to address");
    }
    if (!names.insert(tensor.name).second) fail("tensor " + quote_name(tensor.name) + " appears twice");
    tensors_.push_back(std::move(tensor));
  }

  // The data section starts at the next multiple of the alignment after the tensor table.
  const uint64_t table_end = cursor.position();
  data_offset_ = (table_end + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t file_size = file_.size();
  for (const GgufTensorInfo& tensor : tensors_) {
    if (tensor.offset % alignment_ != 0) {
      fail("tensor " + quote_name(tensor.name) + " has data offset " + std::to_string(tensor.offset) +
           ", not a multiple of the " + std::to_string(alignment_) + "-byte alignment");
    }
    uint64_t begin = 0, end = 0;
    if (!checked_add(data_offset_, tensor.offset, &begin) || !checked_add(begin, tensor.byte_size, &end) ||
        end > file_size) {
      fail("tensor " + quote_name(tensor.name) + " data (" + std::to_string(tensor.byte_size) +
           " bytes at data offset " + std::to_string(tensor.offset) + ") runs past the end of the file (" +
           std::to_string(file_size) + " bytes; truncated?)");
    }
  }
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& tensor : tensors_) {
    if (tensor.byte_size > 0) by_offset.push_back(&tensor);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* left, const auto* right) { return left->offset < right->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->offset < by_offset[i - 1]->offset + by_offset[i - 1]->byte_size) {
      fail("tensors " + quote_name(by_offset[i - 1]->name) + " and " + quote_name(by_offset[i]->name) +
           " overlap in the data section");
    }
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  const auto found = metadata_.find(key);
  return found == metadata_.end() ? nullptr : &found->second;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) {
    throw FormatError(describe_file_problem(path(), "GGUF metadata key " + quote_name(key) + " is missing",
                                            "the file was not converted for this model type"));
  }
  return *value;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const GgufTensorInfo& tensor : tensors_) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

const uint8_t* GgufFile::tensor_data(const GgufTensorInfo& tensor) const {
  return file_.data() + data_offset_ + tensor.offset;
}

void GgufFile::dequantize(const GgufTensorInfo& tensor, float* out) const {
  const GgmlTypeTraits* traits = find_ggml_type(static_cast<uint32_t>(tensor.type));
  if (traits == nullptr || !traits->can_dequantize) {
    throw UnsupportedError(describe_file_problem(path(),
                                                 "tensor " + quote_name(tensor.name) + " has type " +
                                                     ggml_type_name(tensor.type) +
                                                     ", which cannot be dequantised here",
                                                 "supported: F32, F16, BF16, F64, I8, I16, I32, I64, Q4_0, "
                                                 "Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, "
                                                 "Q6_K; convert the model to one of those"));
  }
  dequantize_ggml(tensor.type, tensor_data(tensor), tensor.element_count(), out);
}

}  // namespace cartridge
