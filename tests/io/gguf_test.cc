// GGUF reader and dequantisation against the `gguf` Python package (tests/fixtures/make_gguf.py): the
// package's reader for metadata and tensor tables, its dequantisation for values; plus damaged files.
#include "io/gguf.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "io_test_util.h"
#include "test_support.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::default_model_path;
using testing::fixture_path;
using testing::read_bytes;
using testing::TemporaryFolder;
using testing::write_bytes;

// GGUF value type number -> index of the GgufValue alternative.
size_t variant_index_of(int file_type) {
  static const size_t kIndex[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 9, 10, 11};
  return kIndex[file_type];
}

// Compares one value with the package reader's view of it (`types`: the value type, then for arrays the
// element type).
void expect_value_equal(const std::string& key, const GgufValue& ours, const std::vector<int>& types,
                        const nlohmann::json& expected) {
  ASSERT_FALSE(types.empty());
  EXPECT_EQ(ours.value.index(), variant_index_of(types[0])) << key;
  if (types[0] == 9) {  // array
    const GgufArray& array = ours.as_array(key);
    ASSERT_EQ(array.size(), expected.size()) << key;
    const std::vector<int> element_types(types.begin() + 1, types.end());
    for (size_t i = 0; i < array.size(); ++i) expect_value_equal(key, array[i], element_types, expected[i]);
  } else if (types[0] == 8) {
    EXPECT_EQ(ours.as_string(key), expected.get<std::string>()) << key;
  } else if (types[0] == 7) {
    EXPECT_EQ(ours.as_bool(key), expected.get<bool>()) << key;
  } else if (types[0] == 6 || types[0] == 12) {
    EXPECT_EQ(ours.as_double(key), expected.get<double>()) << key;  // float32 -> double is exact
  } else if (types[0] == 10) {
    EXPECT_EQ(std::get<uint64_t>(ours.value), expected.get<uint64_t>()) << key;
  } else {
    EXPECT_EQ(ours.as_int(key), expected.get<int64_t>()) << key;
  }
}

// Our reader sees the same version, alignment, metadata and tensor table as the package's reader.
void expect_matches_package_reader(const GgufFile& file, const std::string& stem) {
  const auto description = nlohmann::json::parse(read_bytes(fixture_path("gguf/" + stem + ".metadata.json")));
  EXPECT_EQ(file.version(), description["header"]["version"].get<uint32_t>());
  EXPECT_EQ(file.alignment(), description["header"]["alignment"].get<uint64_t>());
  EXPECT_EQ(file.data_offset(), description["header"]["data_offset"].get<uint64_t>());
  const auto& metadata = description["metadata"];
  EXPECT_EQ(file.metadata().size(), metadata.size());
  for (const auto& [key, entry] : metadata.items()) {
    const GgufValue* ours = file.find(key);
    ASSERT_NE(ours, nullptr) << "missing key " << key;
    expect_value_equal(key, *ours, entry["types"].get<std::vector<int>>(), entry["value"]);
  }
  const auto tensors = nlohmann::json::parse(read_bytes(fixture_path("gguf/" + stem + ".tensors.json")));
  ASSERT_EQ(file.tensors().size(), tensors.size());
  const uint64_t data_offset = description["header"]["data_offset"].get<uint64_t>();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const GgufTensorInfo& ours = file.tensors()[i];
    const auto& expected = tensors[i];
    EXPECT_EQ(ours.name, expected["name"].get<std::string>());
    EXPECT_EQ(static_cast<int>(ours.type), expected["type"].get<int>()) << ours.name;
    EXPECT_EQ(ours.dims, expected["dims"].get<std::vector<int64_t>>()) << ours.name;
    EXPECT_EQ(ours.offset, expected["offset"].get<uint64_t>()) << ours.name;
    EXPECT_EQ(ours.byte_size, expected["byte_size"].get<uint64_t>()) << ours.name;
    EXPECT_EQ(ours.element_count(), expected["element_count"].get<int64_t>()) << ours.name;
    EXPECT_EQ(ggml_byte_size(ours.type, ours.element_count()), ours.byte_size) << ours.name;
    EXPECT_EQ(file.find_tensor(ours.name), &ours);
    // The data starts where the package's reader says it does.
    const MappedFile raw(file.path());
    EXPECT_EQ(std::memcmp(file.tensor_data(ours), raw.data() + data_offset + ours.offset, ours.byte_size), 0)
        << ours.name;
  }
  EXPECT_EQ(file.find_tensor("no such tensor"), nullptr);
  EXPECT_EQ(file.find("no.such.key"), nullptr);
  EXPECT_THROW(file.get("no.such.key"), FormatError);
}

bool bitwise_equal(const float* left, const float* right, size_t count, size_t* first_difference) {
  for (size_t i = 0; i < count; ++i) {
    if (std::memcmp(left + i, right + i, sizeof(float)) != 0) {
      *first_difference = i;
      return false;
    }
  }
  return true;
}

TEST(Gguf, EveryTypeDequantisesBitIdenticallyToTheGgufPackage) {
  for (const std::string stem : {"types", "types_v2", "aligned64"}) {
    SCOPED_TRACE(stem);
    GgufFile file(fixture_path("gguf/" + stem + ".gguf"));
    expect_matches_package_reader(file, stem);
  }
  GgufFile file(fixture_path("gguf/types.gguf"));
  SafetensorsFile expected(fixture_path("gguf/types_expected.safetensors"));
  ASSERT_EQ(file.tensors().size(), expected.tensors().size());
  std::set<std::string> types_seen;
  for (const GgufTensorInfo& tensor : file.tensors()) {
    SCOPED_TRACE(tensor.name);
    const SafetensorsTensorInfo* want = expected.find(tensor.name);
    ASSERT_NE(want, nullptr);
    ASSERT_EQ(want->dtype, SafetensorsDType::F32);
    ASSERT_EQ(static_cast<int64_t>(want->end - want->begin), tensor.element_count() * 4);
    std::vector<float> ours(tensor.element_count());
    file.dequantize(tensor, ours.data());
    std::vector<float> theirs(tensor.element_count());
    std::memcpy(theirs.data(), expected.data(*want), theirs.size() * sizeof(float));
    size_t at = 0;
    EXPECT_TRUE(bitwise_equal(ours.data(), theirs.data(), ours.size(), &at))
        << ggml_type_name(tensor.type) << " differs at " << at << ": ours " << ours[at] << ", gguf "
        << theirs[at];
    types_seen.insert(ggml_type_name(tensor.type));
  }
  for (const char* type : {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                           "Q4_K", "Q5_K", "Q6_K", "F64", "I8", "I16", "I32", "I64"}) {
    EXPECT_EQ(types_seen.count(type), 1u) << "fixture lacks a " << type << " tensor";
  }
}

TEST(Gguf, TypeNamesAndSizesMatchTheGgufPackage) {
  const auto types = nlohmann::json::parse(read_bytes(fixture_path("gguf/ggml_types.json")));
  int checked = 0;
  for (const auto& [number, entry] : types.items()) {
    const auto type = static_cast<GgmlType>(std::stoul(number));
    const std::string name = entry["name"].get<std::string>();
    if (name == "Q8_1") continue;  // the package's size for it predates ggml's 36-byte block
    EXPECT_EQ(ggml_type_name(type), name);
    const int64_t block = entry["block"].get<int64_t>();
    EXPECT_EQ(ggml_byte_size(type, 3 * block), 3 * entry["bytes"].get<uint64_t>()) << name;
    if (block > 1) {
      EXPECT_THROW(ggml_byte_size(type, block + 1), FormatError) << name;
    }
    ++checked;
  }
  EXPECT_GE(checked, 30);
  EXPECT_EQ(ggml_type_name(static_cast<GgmlType>(999)), "type999");
  EXPECT_THROW(ggml_byte_size(static_cast<GgmlType>(999), 1), UnsupportedError);
  std::vector<float> out(256);
  const std::vector<uint8_t> block(256, 0);
  EXPECT_THROW(dequantize_ggml(static_cast<GgmlType>(16), block.data(), 256, out.data()),
               UnsupportedError);  // IQ2_XXS
}

// The same checksum as make_gguf.py: sum of float32 bits * (i * K1 + K2), modulo 2^64.
uint64_t weighted_checksum(const std::vector<float>& values) {
  uint64_t total = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], sizeof(bits));
    total += static_cast<uint64_t>(bits) *
             (static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull);
  }
  return total;
}

TEST(Gguf, DefaultModelMatchesTheGgufPackageTensorByTensor) {
  GgufFile file(default_model_path());
  expect_matches_package_reader(file, "SmolLM2-135M-Instruct.Q4_1");
  const auto summary = nlohmann::json::parse(read_bytes(fixture_path("gguf/model_dequant.json")));
  SafetensorsFile samples(fixture_path("gguf/model_dequant.safetensors"));
  ASSERT_EQ(summary.size(), file.tensors().size());
  double seconds = 0;
  for (const GgufTensorInfo& tensor : file.tensors()) {
    SCOPED_TRACE(tensor.name);
    const auto& expected = summary.at(tensor.name);
    ASSERT_EQ(tensor.element_count(), expected["element_count"].get<int64_t>());
    std::vector<float> values(tensor.element_count());
    const auto start = std::chrono::steady_clock::now();
    file.dequantize(tensor, values.data());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    // Exact: every float's bits, position-weighted.
    EXPECT_EQ(std::to_string(weighted_checksum(values)), expected["checksum"].get<std::string>());
    // Readable diagnostics when the checksum differs: the first values and seeded random samples.
    const SafetensorsTensorInfo* head = samples.find(tensor.name + ".head");
    const SafetensorsTensorInfo* index = samples.find(tensor.name + ".sample_index");
    const SafetensorsTensorInfo* sample = samples.find(tensor.name + ".sample");
    ASSERT_TRUE(head && index && sample);
    const size_t head_count = (head->end - head->begin) / 4;
    std::vector<float> head_values(head_count);
    std::memcpy(head_values.data(), samples.data(*head), head_count * 4);
    size_t at = 0;
    EXPECT_TRUE(bitwise_equal(values.data(), head_values.data(), head_count, &at))
        << "first values differ at " << at << ": ours " << values[at] << ", gguf " << head_values[at];
    const size_t sample_count = (index->end - index->begin) / 8;
    for (size_t i = 0; i < sample_count; ++i) {
      int64_t position;
      float value;
      std::memcpy(&position, samples.data(*index) + 8 * i, 8);
      std::memcpy(&value, samples.data(*sample) + 4 * i, 4);
      ASSERT_LT(position, tensor.element_count());
      if (std::memcmp(&values[position], &value, 4) != 0) {
        ADD_FAILURE() << "value " << position << ": ours " << values[position] << ", gguf " << value;
        break;
      }
    }
    double sum = 0, sum_of_squares = 0;
    for (float value : values) {
      sum += value;
      sum_of_squares += static_cast<double>(value) * value;
    }
    // Summation order differs from numpy's pairwise sum, hence a tolerance; the checksum is the exact test.
    EXPECT_NEAR(sum, expected["sum"].get<double>(), 1e-9 * sum_of_squares + 1e-6);
    EXPECT_NEAR(sum_of_squares, expected["sum_of_squares"].get<double>(), 1e-9 * sum_of_squares);
  }
  std::printf("dequantised the default model (%zu tensors) in %.3f s\n", file.tensors().size(), seconds);
}

// --- damaged and hand-made files -------------------------------------------------------------------

// Little-endian pieces of a GGUF file, for files the package would refuse to write.
struct Bytes {
  std::string data;
  Bytes& u32(uint32_t value) { return raw(&value, 4); }
  Bytes& u64(uint64_t value) { return raw(&value, 8); }
  Bytes& text(const std::string& value) {
    u64(value.size());
    data += value;
    return *this;
  }
  Bytes& raw(const void* bytes, size_t count) {
    data.append(static_cast<const char*>(bytes), count);
    return *this;
  }
  Bytes& pad_to(size_t alignment) {
    data.append((alignment - data.size() % alignment) % alignment, '\0');
    return *this;
  }
};

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  uint64_t offset;
};

// A GGUF file: header, one string metadata entry plus `extra_metadata` (already encoded, counted by
// `extra_count`), the tensor table, padding to `alignment`, then `data_bytes` bytes of data.
std::string make_gguf(const std::vector<TensorSpec>& tensors, size_t data_bytes, uint32_t version = 3,
                      const std::string& extra_metadata = "", uint64_t extra_count = 0,
                      size_t alignment = 32) {
  Bytes bytes;
  bytes.raw("GGUF", 4).u32(version).u64(tensors.size()).u64(1 + extra_count);
  bytes.text("general.architecture").u32(8).text("llama");
  bytes.data += extra_metadata;
  for (const TensorSpec& tensor : tensors) {
    bytes.text(tensor.name).u32(static_cast<uint32_t>(tensor.dims.size()));
    for (uint64_t dim : tensor.dims) bytes.u64(dim);
    bytes.u32(tensor.type).u64(tensor.offset);
  }
  bytes.pad_to(alignment);
  bytes.data.append(data_bytes, '\x01');
  return bytes.data;
}

// Opening `bytes` throws an Error of type E whose one-line message names the file and contains `problem`.
template <typename E = FormatError>
void expect_error(const std::string& bytes, const std::string& problem) {
  TemporaryFolder folder;
  const std::string path = folder.file("bad.gguf");
  write_bytes(path, bytes);
  try {
    GgufFile file(path);
    ADD_FAILURE() << "no error for a file that should fail with: " << problem;
  } catch (const E& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(problem), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  } catch (const Error& error) {
    ADD_FAILURE() << "wrong error type for \"" << problem << "\": " << error.what();
  }
}

TEST(Gguf, HandMadeBaselineOpens) {
  TemporaryFolder folder;
  write_bytes(folder.file("ok.gguf"), make_gguf({{"w", {32, 2}, 0, 0}, {"v", {32}, 8, 256}}, 256 + 34));
  GgufFile file(folder.file("ok.gguf"));
  EXPECT_EQ(file.get("general.architecture").as_string("general.architecture"), "llama");
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[1].byte_size, 34u);
  EXPECT_THROW(file.get("general.architecture").as_int("general.architecture"), FormatError);
}

TEST(Gguf, DamagedHeadersAndTablesGiveOneLineErrorsNamingTheFile) {
  const std::string good = make_gguf({{"w", {32}, 0, 0}}, 128);
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  expect_error(bad_magic, "not a GGUF file");
  expect_error("GG", "GGUF file ends inside the GGUF magic");
  expect_error<UnsupportedError>(make_gguf({{"w", {32}, 0, 0}}, 128, 1), "GGUF version 1 is not supported");
  expect_error<UnsupportedError>(make_gguf({{"w", {32}, 0, 0}}, 128, 4), "GGUF version 4 is not supported");
  expect_error<UnsupportedError>(make_gguf({{"w", {32}, 0, 0}}, 128, 0x03000000), "big-endian");
  expect_error<UnsupportedError>(make_gguf({{"w", {32}, 99, 0}}, 128), "unknown ggml type 99");
  expect_error(make_gguf({{"w", {32}, 0, 0}}, 127), "runs past the end of the file");
  expect_error(make_gguf({{"w", {32}, 0, 1ull << 40}}, 128), "runs past the end of the file");
  expect_error(make_gguf({{"w", {32}, 0, UINT64_MAX - 31}}, 128), "runs past the end of the file");
  expect_error(make_gguf({{"w", {32}, 0, 4}}, 132), "not a multiple of the 32-byte alignment");
  expect_error(make_gguf({{"w", {32}, 0, 0}, {"v", {32}, 0, 64}}, 192), "overlap");
  expect_error(make_gguf({{"w", {32}, 0, 0}, {"w", {32}, 0, 128}}, 256), "appears twice");
  expect_error(make_gguf({{"w", {1, 1, 1, 1, 32}, 0, 0}}, 128), "at most 4 allowed");
  expect_error(make_gguf({{"w", {1ull << 32, 1ull << 32}, 0, 0}}, 128), "overflows 64 bits");
  expect_error(make_gguf({{"w", {31}, 2, 0}}, 128), "not a multiple of its 32-element blocks");
  // Metadata problems.
  Bytes long_string;
  long_string.text("key").u32(8).u64(1ull << 50);
  expect_error(make_gguf({}, 0, 3, long_string.data, 1), "runs past the end of the file");
  Bytes unknown_value_type;
  unknown_value_type.text("key").u32(13).u32(0);
  expect_error(make_gguf({}, 0, 3, unknown_value_type.data, 1), "unknown value type 13");
  Bytes huge_array;
  huge_array.text("key").u32(9).u32(4).u64(1ull << 60);
  expect_error(make_gguf({}, 0, 3, huge_array.data, 1), "more than the rest of the file can hold");
  Bytes bad_element_type;
  bad_element_type.text("key").u32(9).u32(77).u64(1);
  expect_error(make_gguf({}, 0, 3, bad_element_type.data, 1), "array of unknown type 77");
  // Arrays nested eight deep: type 9 of element type 9 with one element each.
  Bytes nested;
  nested.text("key").u32(9);
  for (int i = 0; i < 8; ++i) nested.u32(9).u64(1);
  nested.u32(4).u64(1).u32(7);
  expect_error(make_gguf({}, 0, 3, nested.data, 1), "nests arrays more than");
  Bytes duplicate;
  duplicate.text("general.architecture").u32(8).text("qwen2");
  expect_error(make_gguf({}, 0, 3, duplicate.data, 1), "appears twice");
  Bytes bad_alignment;
  bad_alignment.text("general.alignment").u32(4).u32(48);
  expect_error(make_gguf({}, 0, 3, bad_alignment.data, 1), "expected a power of two");
  Bytes wrong_alignment_type;
  wrong_alignment_type.text("general.alignment").u32(8).text("32");
  expect_error(make_gguf({}, 0, 3, wrong_alignment_type.data, 1), "holds a string, expected an integer");
  // Counts larger than the file could ever hold are refused before anything is allocated.
  Bytes many;
  many.raw("GGUF", 4).u32(3).u64(1ull << 62).u64(0);
  expect_error(many.data, "tensors, more than the file can hold");
  Bytes many_keys;
  many_keys.raw("GGUF", 4).u32(3).u64(0).u64(1ull << 62);
  expect_error(many_keys.data, "metadata entries, more than the file can hold");
}

TEST(Gguf, TruncatedRealFileFailsCleanlyAtEveryStage) {
  const std::string real = read_bytes(fixture_path("gguf/types.gguf"));
  const auto description = nlohmann::json::parse(read_bytes(fixture_path("gguf/types.metadata.json")));
  const size_t data_offset = description["header"]["data_offset"].get<size_t>();
  ASSERT_GT(real.size(), data_offset + 200);
  expect_error(real.substr(0, 6), "ends inside the GGUF version");
  expect_error(real.substr(0, 20), "ends inside the metadata count");
  expect_error(real.substr(0, 40), "metadata");  // inside the first key or value
  // Somewhere in the tensor table: after the metadata, before the data.
  expect_error(real.substr(0, data_offset - 700), "ends inside");
  expect_error(real.substr(0, data_offset + 100), "runs past the end of the file");
  expect_error(real.substr(0, real.size() - 1), "truncated?");
}

TEST(Gguf, MissingFileIsFileNotFound) {
  EXPECT_THROW(GgufFile("/nonexistent/model.gguf"), FileNotFoundError);
}

// Random truncations and byte flips of a real file either open (and then dequantise without crashing) or
// throw a cartridge::Error with a one-line message.
TEST(Gguf, FuzzedFilesNeverCrash) {
  const std::string real = read_bytes(fixture_path("gguf/types.gguf"));
  const auto description = nlohmann::json::parse(read_bytes(fixture_path("gguf/types.metadata.json")));
  const size_t data_offset = description["header"]["data_offset"].get<size_t>();
  ASSERT_FALSE(real.empty());
  TemporaryFolder folder;
  std::mt19937 random(7);
  int errors = 0, opened = 0;
  for (int iteration = 0; iteration < 1500; ++iteration) {
    std::string bytes = real;
    if (iteration % 4 == 0) {
      bytes.resize(random() % bytes.size());
    } else {
      const int flips = 1 + static_cast<int>(random() % 3);
      for (int i = 0; i < flips; ++i) {
        // Mostly the header, metadata and tensor table, where the structure is.
        const size_t position = random() % (iteration % 3 ? data_offset : bytes.size());
        bytes[position] =
            static_cast<char>(iteration % 2 ? random() : bytes[position] ^ (1 << (random() % 8)));
      }
    }
    const std::string path = folder.file("fuzz.gguf");
    write_bytes(path, bytes);
    try {
      GgufFile file(path);
      ++opened;
      for (const GgufTensorInfo& tensor : file.tensors()) {
        if (tensor.element_count() > (1 << 20)) continue;
        std::vector<float> out(tensor.element_count());
        try {
          file.dequantize(tensor, out.data());
        } catch (const UnsupportedError&) {
        }
      }
    } catch (const Error& error) {
      EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos);
      ++errors;
    }
  }
  EXPECT_GT(errors, 150);
  EXPECT_GT(opened, 50);
}

}  // namespace
}  // namespace cartridge
