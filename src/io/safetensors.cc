#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "io/checked_math.h"
#include "io/quoted.h"
#include "util/error.h"

namespace cartridge {

namespace {

// The `safetensors` library refuses headers above 100 MB; so do we, before allocating anything for one.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kLengthPrefixBytes = 8;  // u64 little-endian header length

struct DTypeEntry {
  SafetensorsDType dtype;
  const char* name;
  size_t size;  // bytes per element
};

// In the order of the Rust `Dtype` enum, whose derived ordering decides the tensor order in a written file.
constexpr DTypeEntry kDTypes[] = {
    {SafetensorsDType::BOOL, "BOOL", 1}, {SafetensorsDType::U8, "U8", 1},   {SafetensorsDType::I8, "I8", 1},
    {SafetensorsDType::I16, "I16", 2},   {SafetensorsDType::U16, "U16", 2}, {SafetensorsDType::F16, "F16", 2},
    {SafetensorsDType::BF16, "BF16", 2}, {SafetensorsDType::I32, "I32", 4}, {SafetensorsDType::U32, "U32", 4},
    {SafetensorsDType::F32, "F32", 4},   {SafetensorsDType::F64, "F64", 8}, {SafetensorsDType::I64, "I64", 8},
    {SafetensorsDType::U64, "U64", 8},
};

const DTypeEntry& dtype_entry(SafetensorsDType dtype) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.dtype == dtype) return entry;
  }
  throw InvalidArgumentError("safetensors: dtype value " + std::to_string(static_cast<int>(dtype)) +
                             " is not a SafetensorsDType");
}

// Appends `text` as a JSON string the way serde_json writes it: only `"`, `\` and control characters are
// escaped (short forms for \b \t \n \f \r, \u00xx in lowercase hex otherwise); other bytes, UTF-8
// included, are copied as they are.
void append_json_string(std::string& out, const std::string& text) {
  static const char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (char character : text) {
    const auto byte = static_cast<unsigned char>(character);
    switch (byte) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (byte < 0x20) {
          out += "\\u00";
          out.push_back(kHex[byte >> 4]);
          out.push_back(kHex[byte & 0xF]);
        } else {
          out.push_back(character);
        }
    }
  }
  out.push_back('"');
}

[[noreturn]] void throw_damaged(const std::string& path, const std::string& problem) {
  throw FormatError(describe_file_problem(
      path, problem, "the file is damaged or not a safetensors file; re-download or re-export it"));
}

}  // namespace

std::string safetensors_dtype_name(SafetensorsDType dtype) { return dtype_entry(dtype).name; }

size_t safetensors_dtype_size(SafetensorsDType dtype) { return dtype_entry(dtype).size; }

int64_t SafetensorsTensorInfo::element_count() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;  // checked against overflow when the file was opened
  return count;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  const auto fail = [&](const std::string& problem) { throw_damaged(path, problem); };
  const uint64_t file_size = file_.size();
  if (file_size < kLengthPrefixBytes) {
    fail("safetensors file is " + std::to_string(file_size) +
         " bytes, shorter than its 8-byte header length");
  }
  uint64_t header_length = 0;
  for (size_t i = 0; i < kLengthPrefixBytes; ++i) {
    header_length |= static_cast<uint64_t>(file_.data()[i]) << (8 * i);
  }
  if (header_length > kMaxHeaderBytes) {
    fail("safetensors header length " + std::to_string(header_length) +
         " bytes exceeds the 100000000-byte limit");
  }
  if (header_length > file_size - kLengthPrefixBytes) {
    fail("safetensors header length " + std::to_string(header_length) +
         " bytes runs past the end of the file (" + std::to_string(file_size) + " bytes)");
  }
  data_offset_ = kLengthPrefixBytes + header_length;
  const uint64_t data_size = file_size - data_offset_;

  const char* header_begin = reinterpret_cast<const char*>(file_.data()) + kLengthPrefixBytes;
  nlohmann::ordered_json header;
  // JSON allows repeated keys and the parser would silently keep one; a repeated tensor name is an error.
  std::set<std::string> top_level_keys;
  std::string repeated_key;
  const auto note_keys = [&](int depth, nlohmann::ordered_json::parse_event_t event,
                             nlohmann::ordered_json& parsed) {
    if (depth == 1 && event == nlohmann::ordered_json::parse_event_t::key && parsed.is_string()) {
      if (!top_level_keys.insert(parsed.get<std::string>()).second && repeated_key.empty()) {
        repeated_key = parsed.get<std::string>();
      }
    }
    return true;
  };
  try {
    header = nlohmann::ordered_json::parse(header_begin, header_begin + header_length, note_keys);
  } catch (const nlohmann::json::exception& error) {
    std::string detail = error.what();
    std::replace(detail.begin(), detail.end(), '\n', ' ');
    fail("safetensors header is not valid JSON: " + detail);
  }
  if (!header.is_object()) fail("safetensors header is JSON but not an object");
  if (!repeated_key.empty()) fail("tensor " + quote_name(repeated_key) + " appears twice in the header");

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("safetensors __metadata__ is not an object of strings");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          fail("safetensors __metadata__ value for " + quote_name(key) + " is not a string");
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor " + quote_name(name);
    if (!entry.is_object()) fail(where + " is not a JSON object");
    const auto dtype_field = entry.find("dtype");
    const auto shape_field = entry.find("shape");
    const auto offsets_field = entry.find("data_offsets");
    if (dtype_field == entry.end() || shape_field == entry.end() || offsets_field == entry.end()) {
      fail(where + " lacks one of dtype, shape, data_offsets");
    }
    if (!dtype_field->is_string()) fail(where + " has a dtype that is not a string");
    const std::string dtype_name = dtype_field->get<std::string>();
    const DTypeEntry* dtype = nullptr;
    for (const DTypeEntry& candidate : kDTypes) {
      if (dtype_name == candidate.name) dtype = &candidate;
    }
    if (dtype == nullptr) {
      // A FormatError (not UnsupportedError) because the header promises FormatError for every file we
      // cannot read; the message says it is a dtype we do not support.
      throw FormatError(describe_file_problem(
          path, where + " has dtype " + quote_name(dtype_name) + ", which is not supported",
          "supported: BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64"));
    }

    SafetensorsTensorInfo info;
    info.name = name;
    info.dtype = dtype->dtype;
    if (!shape_field->is_array()) fail(where + " has a shape that is not an array");
    uint64_t element_count = 1;
    for (const auto& dim : *shape_field) {
      if (!dim.is_number_unsigned()) fail(where + " has a shape entry that is not a non-negative integer");
      const uint64_t value = dim.get<uint64_t>();
      if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          !checked_multiply(element_count, value, &element_count) ||
          element_count > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(where + " has a shape whose element count overflows 64 bits");
      }
      info.shape.push_back(static_cast<int64_t>(value));
    }
    uint64_t byte_count = 0;
    if (!checked_multiply(element_count, dtype->size, &byte_count)) {
      fail(where + " has a shape whose byte size overflows 64 bits");
    }
    if (!offsets_field->is_array() || offsets_field->size() != 2 ||
        !(*offsets_field)[0].is_number_unsigned() || !(*offsets_field)[1].is_number_unsigned()) {
      fail(where + " has data_offsets that are not two non-negative integers");
    }
    info.begin = (*offsets_field)[0].get<uint64_t>();
    info.end = (*offsets_field)[1].get<uint64_t>();
    const std::string offsets_text = "[" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "]";
    if (info.end < info.begin)
      fail(where + " has data_offsets " + offsets_text + " that end before they begin");
    if (info.end > data_size) {
      fail(where + " has data_offsets " + offsets_text + " beyond the " + std::to_string(data_size) +
           "-byte data section (file truncated?)");
    }
    if (info.end - info.begin != byte_count) {
      fail(where + " has data_offsets " + offsets_text + " spanning " +
           std::to_string(info.end - info.begin) + " bytes, but its shape and dtype " + dtype_name +
           " need " + std::to_string(byte_count) + " bytes");
    }
    tensors_.push_back(std::move(info));
  }

  // No two tensors share bytes.
  std::vector<const SafetensorsTensorInfo*> by_offset;
  for (const SafetensorsTensorInfo& tensor : tensors_) by_offset.push_back(&tensor);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* left, const auto* right) {
    return std::make_pair(left->begin, left->end) < std::make_pair(right->begin, right->end);
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const SafetensorsTensorInfo& previous = *by_offset[i - 1];
    const SafetensorsTensorInfo& current = *by_offset[i];
    if (current.begin < previous.end) {
      fail("tensors " + quote_name(previous.name) + " and " + quote_name(current.name) +
           " have overlapping data_offsets");
    }
  }
}

const SafetensorsTensorInfo* SafetensorsFile::find(const std::string& name) const {
  for (const SafetensorsTensorInfo& tensor : tensors_) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

const uint8_t* SafetensorsFile::data(const SafetensorsTensorInfo& tensor) const {
  return file_.data() + data_offset_ + tensor.begin;
}

std::string serialize_safetensors(const std::vector<SafetensorsTensorBytes>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  // The Rust writer orders tensors by dtype descending (enum order), then by name (bytewise).
  std::vector<const SafetensorsTensorBytes*> ordered;
  std::set<std::string> names;
  for (const SafetensorsTensorBytes& tensor : tensors) {
    if (tensor.name == "__metadata__") {
      throw InvalidArgumentError(
          "safetensors: a tensor cannot be named \"__metadata__\" (reserved for metadata)");
    }
    if (!names.insert(tensor.name).second) {
      throw InvalidArgumentError("safetensors: tensor " + quote_name(tensor.name) +
                                 " is given twice; names must be unique");
    }
    ordered.push_back(&tensor);
  }
  std::stable_sort(ordered.begin(), ordered.end(), [](const auto* left, const auto* right) {
    if (left->dtype != right->dtype) return left->dtype > right->dtype;
    return left->name < right->name;
  });

  std::string header = "{";
  if (!metadata.empty()) {
    // The Rust writer keeps metadata in a HashMap, so with two or more keys its order differs from run to
    // run; we write keys sorted, which is one of the orders it may produce.
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      first = false;
      append_json_string(header, key);
      header += ':';
      append_json_string(header, value);
    }
    header += "}";
  }
  std::vector<uint64_t> byte_counts;
  uint64_t offset = 0;  // bytes into the data section
  for (const SafetensorsTensorBytes* tensor : ordered) {
    uint64_t element_count = 1;
    for (int64_t dim : tensor->shape) {
      if (dim < 0 || !checked_multiply(element_count, static_cast<uint64_t>(dim), &element_count)) {
        throw InvalidArgumentError("safetensors: tensor " + quote_name(tensor->name) +
                                   " has a negative or overflowing shape");
      }
    }
    uint64_t byte_count = 0;
    if (!checked_multiply(element_count, safetensors_dtype_size(tensor->dtype), &byte_count)) {
      throw InvalidArgumentError("safetensors: tensor " + quote_name(tensor->name) + " is too large");
    }
    if (byte_count > 0 && tensor->data == nullptr) {
      throw InvalidArgumentError("safetensors: tensor " + quote_name(tensor->name) + " has no data");
    }
    if (header.size() > 1) header += ',';
    append_json_string(header, tensor->name);
    header += ":{\"dtype\":\"" + safetensors_dtype_name(tensor->dtype) + "\",\"shape\":[";
    for (size_t i = 0; i < tensor->shape.size(); ++i) {
      if (i > 0) header += ',';
      header += std::to_string(tensor->shape[i]);
    }
    header +=
        "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + byte_count) + "]}";
    offset += byte_count;
    byte_counts.push_back(byte_count);
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');

  std::string bytes;
  bytes.reserve(kLengthPrefixBytes + header.size() + offset);
  const uint64_t header_length = header.size();
  for (size_t i = 0; i < kLengthPrefixBytes; ++i)
    bytes.push_back(static_cast<char>((header_length >> (8 * i)) & 0xFF));
  bytes += header;
  for (size_t i = 0; i < ordered.size(); ++i) {
    if (byte_counts[i] > 0) bytes.append(static_cast<const char*>(ordered[i]->data), byte_counts[i]);
  }
  return bytes;
}

}  // namespace cartridge
