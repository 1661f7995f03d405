// safetensors reader and writer against files written by the real `safetensors` package
// (tests/fixtures/make_safetensors.py), plus damaged-file handling.
#include "io/safetensors.h"

#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "io_test_util.h"
#include "test_support.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::read_bytes;
using testing::TemporaryFolder;
using testing::write_bytes;

std::string decode_hex(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return bytes;
}

SafetensorsDType dtype_from_name(const std::string& name) {
  for (auto dtype :
       {SafetensorsDType::BOOL, SafetensorsDType::U8, SafetensorsDType::I8, SafetensorsDType::I16,
        SafetensorsDType::U16, SafetensorsDType::F16, SafetensorsDType::BF16, SafetensorsDType::I32,
        SafetensorsDType::U32, SafetensorsDType::F32, SafetensorsDType::F64, SafetensorsDType::I64,
        SafetensorsDType::U64}) {
    if (safetensors_dtype_name(dtype) == name) return dtype;
  }
  ADD_FAILURE() << "unknown dtype in manifest: " << name;
  return SafetensorsDType::U8;
}

struct ManifestCase {
  std::map<std::string, std::string> metadata;
  std::vector<std::string> names;               // manifest order (the Python dict order)
  std::map<std::string, std::string> bytes;     // raw bytes per tensor
  std::vector<SafetensorsTensorBytes> tensors;  // pointing into `bytes`
};

nlohmann::json load_manifest() {
  return nlohmann::json::parse(read_bytes(fixture_path("safetensors/manifest.json")));
}

void fill_case(const nlohmann::json& entry, ManifestCase* out) {
  if (!entry["metadata"].is_null()) {
    for (const auto& [key, value] : entry["metadata"].items()) out->metadata[key] = value.get<std::string>();
  }
  for (const auto& [name, tensor] : entry["tensors"].items()) {
    out->names.push_back(name);
    out->bytes[name] = decode_hex(tensor["hex"].get<std::string>());
  }
  for (const auto& [name, tensor] : entry["tensors"].items()) {
    out->tensors.push_back({name, dtype_from_name(tensor["dtype"].get<std::string>()),
                            tensor["shape"].get<std::vector<int64_t>>(), out->bytes[name].data()});
  }
}

// Reads the oracle file, checks every tensor and the metadata against the manifest.
void expect_file_matches_manifest(const std::string& path, const ManifestCase& expected) {
  SafetensorsFile file(path);
  EXPECT_EQ(file.metadata(), expected.metadata) << path;
  ASSERT_EQ(file.tensors().size(), expected.tensors.size()) << path;
  uint64_t previous_end = 0;
  for (const SafetensorsTensorInfo& info : file.tensors()) {
    // The library writes tensors in the same order in the header and in the data.
    EXPECT_EQ(info.begin, previous_end) << path << " " << info.name;
    previous_end = info.end;
  }
  for (const SafetensorsTensorBytes& tensor : expected.tensors) {
    const SafetensorsTensorInfo* info = file.find(tensor.name);
    ASSERT_NE(info, nullptr) << path << " lacks " << tensor.name;
    EXPECT_EQ(info->dtype, tensor.dtype) << tensor.name;
    EXPECT_EQ(info->shape, tensor.shape) << tensor.name;
    const std::string& bytes = expected.bytes.at(tensor.name);
    ASSERT_EQ(info->end - info->begin, bytes.size()) << tensor.name;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(file.data(*info)), bytes.size()), bytes)
        << tensor.name;
    int64_t elements = 1;
    for (int64_t dim : tensor.shape) elements *= dim;
    EXPECT_EQ(info->element_count(), elements);
  }
  EXPECT_EQ(file.find("no such tensor"), nullptr);
}

TEST(Safetensors, ReadsAndWritesBytesIdenticalToTheSafetensorsPackage) {
  const nlohmann::json manifest = load_manifest();
  int compared = 0;
  for (const auto& [case_name, entry] : manifest.items()) {
    if (case_name == "multi_metadata") continue;  // metadata order is random in the library; below
    SCOPED_TRACE(case_name);
    ManifestCase expected;
    fill_case(entry, &expected);
    const std::string path = fixture_path("safetensors/" + case_name + ".safetensors");
    expect_file_matches_manifest(path, expected);
    const std::string ours = serialize_safetensors(expected.tensors, expected.metadata);
    const std::string theirs = read_bytes(path);
    EXPECT_EQ(ours.size(), theirs.size());
    EXPECT_TRUE(ours == theirs) << "ours:   " << ours.substr(0, 300) << "\ntheirs: " << theirs.substr(0, 300);
    ++compared;
  }
  EXPECT_GE(compared, 7);
}

TEST(Safetensors, SeveralMetadataKeysMatchUpToKeyOrder) {
  const nlohmann::json manifest = load_manifest();
  ManifestCase expected;
  fill_case(manifest.at("multi_metadata"), &expected);
  ASSERT_GE(expected.metadata.size(), 2u);
  const std::string path = fixture_path("safetensors/multi_metadata.safetensors");
  expect_file_matches_manifest(path, expected);
  const std::string ours = serialize_safetensors(expected.tensors, expected.metadata);
  const std::string theirs = read_bytes(path);
  ASSERT_EQ(ours.size(), theirs.size());
  EXPECT_EQ(ours.substr(0, 8), theirs.substr(0, 8));  // same header length
  uint64_t header_length = 0;
  for (int i = 0; i < 8; ++i)
    header_length |= static_cast<uint64_t>(static_cast<uint8_t>(ours[i])) << (8 * i);
  // Parsed into unordered maps, the two headers are equal; the data sections are byte-identical.
  EXPECT_EQ(nlohmann::json::parse(ours.substr(8, header_length)),
            nlohmann::json::parse(theirs.substr(8, header_length)));
  EXPECT_TRUE(ours.substr(8 + header_length) == theirs.substr(8 + header_length));
}

TEST(Safetensors, WriterRejectsDuplicateAndReservedNames) {
  const float value = 1.0f;
  EXPECT_THROW(
      serialize_safetensors(
          {{"a", SafetensorsDType::F32, {1}, &value}, {"a", SafetensorsDType::F32, {1}, &value}}, {}),
      InvalidArgumentError);
  EXPECT_THROW(serialize_safetensors({{"__metadata__", SafetensorsDType::F32, {1}, &value}}, {}),
               InvalidArgumentError);
  EXPECT_THROW(serialize_safetensors({{"a", SafetensorsDType::F32, {-1}, &value}}, {}), InvalidArgumentError);
}

TEST(Safetensors, RoundTripsThroughOurOwnReader) {
  const std::vector<double> values = {1.5, -2.25, 3.0};
  const std::vector<uint16_t> halves = {0x3C00, 0xC000};
  TemporaryFolder folder;
  const std::string path = folder.file("round_trip.safetensors");
  write_bytes(path, serialize_safetensors({{"values", SafetensorsDType::F64, {3}, values.data()},
                                           {"halves", SafetensorsDType::F16, {2, 1}, halves.data()}},
                                          {{"format", "pt"}}));
  SafetensorsFile file(path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "values");  // F64 sorts before F16
  EXPECT_EQ(std::memcmp(file.data(*file.find("values")), values.data(), 24), 0);
  EXPECT_EQ(std::memcmp(file.data(*file.find("halves")), halves.data(), 4), 0);
  EXPECT_EQ(file.find("halves")->shape, (std::vector<int64_t>{2, 1}));
}

// A file whose header text is `header` (padded to 8 bytes) followed by `data_bytes` zero bytes.
std::string file_with_header(std::string header, size_t data_bytes) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((uint64_t{header.size()} >> (8 * i)) & 0xFF));
  return bytes + header + std::string(data_bytes, '\0');
}

// Opening `bytes` throws FormatError whose one-line message names the file and contains `problem`.
void expect_format_error(const std::string& bytes, const std::string& problem) {
  TemporaryFolder folder;
  const std::string path = folder.file("bad.safetensors");
  write_bytes(path, bytes);
  try {
    SafetensorsFile file(path);
    ADD_FAILURE() << "no error for a file that should fail with: " << problem;
  } catch (const FormatError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(problem), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(Safetensors, DamagedFilesGiveOneLineErrorsNamingTheFile) {
  const std::string good = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_NO_THROW({
    TemporaryFolder folder;
    write_bytes(folder.file("good.safetensors"), file_with_header(good, 8));
    SafetensorsFile file(folder.file("good.safetensors"));
  });
  expect_format_error("", "shorter than its 8-byte header length");
  expect_format_error("abc", "shorter than its 8-byte header length");
  std::string length_beyond = file_with_header(good, 8);
  length_beyond[1] = 0x10;  // header length 4096 + ...
  expect_format_error(length_beyond, "runs past the end of the file");
  std::string huge = file_with_header(good, 8);
  huge[7] = 0x7F;
  expect_format_error(huge, "exceeds the 100000000-byte limit");
  expect_format_error(file_with_header("{\"a\": nonsense", 8), "not valid JSON");
  expect_format_error(file_with_header("[1,2]", 8), "not an object");
  expect_format_error(file_with_header(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
                      "dtype \"F8_E4M3\", which is not supported");
  expect_format_error(file_with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 7),
                      "beyond the 7-byte data section");
  expect_format_error(file_with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
                      "end before they begin");
  expect_format_error(file_with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 12),
                      "need 12 bytes");
  expect_format_error(file_with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                       12),
                      "overlapping data_offsets");
  expect_format_error(
      file_with_header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
      "overflows 64 bits");
  expect_format_error(file_with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                      "not a non-negative integer");
  expect_format_error(file_with_header(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "lacks one of");
  expect_format_error(file_with_header(R"({"__metadata__":{"format":1}})", 0), "is not a string");
  expect_format_error(file_with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                       R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                       8),
                      "appears twice");
  // A real file cut short: its last tensor's offsets now run past the data.
  const std::string real = read_bytes(fixture_path("safetensors/mixed.safetensors"));
  expect_format_error(real.substr(0, real.size() - 1), "file truncated?");
}

TEST(Safetensors, MissingFileIsFileNotFound) {
  EXPECT_THROW(SafetensorsFile("/nonexistent/folder/model.safetensors"), FileNotFoundError);
}

// Random truncations and byte flips of a real file either open or throw a cartridge::Error; never crash.
TEST(Safetensors, FuzzedFilesNeverCrash) {
  const std::string real = read_bytes(fixture_path("safetensors/mixed_escaped_metadata.safetensors"));
  ASSERT_FALSE(real.empty());
  TemporaryFolder folder;
  std::mt19937 random(42);
  int errors = 0;
  for (int iteration = 0; iteration < 1000; ++iteration) {
    std::string bytes = real;
    if (iteration % 3 == 0) {
      bytes.resize(random() % bytes.size());
    } else {
      const int flips = 1 + static_cast<int>(random() % 4);
      for (int i = 0; i < flips; ++i) {
        // Mostly the length prefix and the header, where the structure is.
        const size_t position = random() % std::min<size_t>(bytes.size(), iteration % 2 ? 40 : bytes.size());
        bytes[position] = static_cast<char>(random());
      }
    }
    const std::string path = folder.file("fuzz.safetensors");
    write_bytes(path, bytes);
    try {
      SafetensorsFile file(path);
      for (const SafetensorsTensorInfo& info : file.tensors()) {
        ASSERT_LE(info.end, bytes.size());
        volatile uint8_t sink = 0;
        for (uint64_t i = info.begin; i < info.end; ++i) sink = sink + file.data(info)[i - info.begin];
      }
    } catch (const Error& error) {
      EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos);
      ++errors;
    }
  }
  EXPECT_GT(errors, 100);
}

}  // namespace
}  // namespace cartridge
