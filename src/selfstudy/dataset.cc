#include "selfstudy/dataset.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

#include "util/error.h"

namespace cartridge {

namespace {

using Json = nlohmann::json;

std::string dump_string(const std::string& text) {
  // Invalid UTF-8 (a generation cut inside a multi-byte character) becomes U+FFFD instead of throwing.
  return Json(text).dump(-1, ' ', false, Json::error_handler_t::replace);
}

const Json& require(const Json& object, const char* key, const std::string& where) {
  auto found = object.find(key);
  if (found == object.end()) {
    throw FormatError(
        describe_file_problem(where, std::string("missing field \"") + key + "\"",
                              "the file is damaged or was not written by `cartridge synthesize`"));
  }
  return *found;
}

[[noreturn]] void wrong_type(const char* key, const char* expected, const std::string& where) {
  throw FormatError(
      describe_file_problem(where, std::string("field \"") + key + "\" is not " + expected,
                            "the file is damaged or was not written by `cartridge synthesize`"));
}

int64_t require_integer(const Json& object, const char* key, const std::string& where, int64_t minimum = 0) {
  const Json& value = require(object, key, where);
  if (!value.is_number_integer()) wrong_type(key, "an integer", where);
  const int64_t number = value.get<int64_t>();
  if (number < minimum || (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(INT64_MAX))) {
    wrong_type(key, ("an integer >= " + std::to_string(minimum)).c_str(), where);
  }
  return number;
}

std::string require_string(const Json& object, const char* key, const std::string& where) {
  const Json& value = require(object, key, where);
  if (!value.is_string()) wrong_type(key, "a string", where);
  return value.get<std::string>();
}

// A token id: an integer in [0, 2^31).
int32_t token_id(const Json& value, const char* key, const std::string& where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > INT32_MAX) {
    wrong_type(key, "a list of token ids (integers >= 0)", where);
  }
  return static_cast<int32_t>(value.get<int64_t>());
}

// A caller's bug, not bad input (those are util/error.h's errors). Not TORCH_CHECK: this file is free of
// libtorch so that the dataset reader builds into its fuzz target (fuzz/dataset_fuzz.cc).
void check_invariant(bool condition, const std::string& what) {
  if (!condition) throw std::logic_error("internal error in the dataset writer: " + what);
}

// Appends a number in its shortest form that reads back exactly (std::to_chars; no locale involved).
template <typename Number>
void append_number(std::string& out, Number value) {
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, result.ptr);
}

void append_float(std::string& out, float value) {
  check_invariant(!std::isnan(value), "a teacher log-probability is NaN");
  // JSON has no infinity; a log-probability of -inf (probability 0) is stored as the lowest float, whose
  // exp() is 0 as well.
  if (std::isinf(value))
    value = value < 0 ? std::numeric_limits<float>::lowest() : std::numeric_limits<float>::max();
  append_number(out, value);
}

// Field-by-field description of how two headers differ, for the resume error.
std::string header_differences(const DatasetHeader& existing, const DatasetHeader& wanted) {
  std::vector<std::string> parts;
  auto compare = [&](const std::string& name, const Json& old_value, const Json& new_value) {
    if (old_value != new_value)
      parts.push_back(name + " " + old_value.dump() + " in the file vs " + new_value.dump() + " now");
  };
  compare("version", existing.version, wanted.version);
  compare("model_fingerprint", existing.model_fingerprint, wanted.model_fingerprint);
  compare("corpus_sha256", existing.corpus_sha256, wanted.corpus_sha256);
  compare("corpus_tokens", existing.corpus_tokens, wanted.corpus_tokens);
  compare("seed", existing.seed, wanted.seed);
  compare("top_k", existing.top_k, wanted.top_k);
  for (const auto& [key, value] : existing.settings.items()) {
    compare(key, value, wanted.settings.contains(key) ? wanted.settings[key] : Json());
  }
  for (const auto& [key, value] : wanted.settings.items()) {
    if (!existing.settings.contains(key)) compare(key, Json(), value);
  }
  std::string joined;
  for (size_t i = 0; i < parts.size() && i < 4; ++i) joined += (i ? "; " : "") + parts[i];
  if (parts.size() > 4) joined += "; ...";
  return joined;
}

}  // namespace

std::string dataset_header_line(const DatasetHeader& header) {
  // Keys in the documented order (nlohmann::json would sort them).
  nlohmann::ordered_json object;
  object["format"] = kDatasetFormat;
  object["version"] = header.version;
  object["model"] = header.model;
  object["model_fingerprint"] = nlohmann::ordered_json::parse(header.model_fingerprint.dump());
  object["corpus_sha256"] = header.corpus_sha256;
  object["corpus_tokens"] = header.corpus_tokens;
  object["seed"] = header.seed;
  object["top_k"] = header.top_k;
  object["settings"] = nlohmann::ordered_json::parse(header.settings.dump());
  return object.dump(-1, ' ', false, Json::error_handler_t::replace);
}

namespace {

void write_all(int descriptor, const std::string& bytes, const std::string& path) {
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t count = ::write(descriptor, bytes.data() + written, bytes.size() - written);
    if (count < 0) {
      if (errno == EINTR) continue;
      throw FileNotFoundError(describe_file_problem(
          path, std::string("write failed: ") + std::strerror(errno), "is the disk full?"));
    }
    written += static_cast<size_t>(count);
  }
  if (::fsync(descriptor) != 0) {
    throw FileNotFoundError(describe_file_problem(
        path, std::string("could not flush to disk: ") + std::strerror(errno), "is the disk full?"));
  }
}

// Calls visit(line_number, line) (1-based) for every complete (newline-terminated) line of `stream`,
// streaming; a last line without its newline is skipped. Returns the bytes of the complete part and of
// the whole stream.
struct LineScan {
  uint64_t complete_bytes = 0;
  uint64_t total_bytes = 0;
  size_t complete_lines = 0;
};
template <typename Visit>
LineScan scan_complete_lines(std::istream& stream, Visit visit) {
  LineScan scan;
  std::string line;
  while (std::getline(stream, line)) {
    if (stream.eof()) {  // no newline after this one: a write cut short
      scan.total_bytes += line.size();
      break;
    }
    scan.complete_bytes += line.size() + 1;
    scan.total_bytes = scan.complete_bytes;
    visit(++scan.complete_lines, line);
  }
  return scan;
}

std::string line_place(const std::string& path, size_t line_number) {
  return path + " line " + std::to_string(line_number);
}

}  // namespace

Json DatasetHeader::to_json() const { return Json::parse(dataset_header_line(*this)); }

DatasetHeader DatasetHeader::from_json(const Json& object, const std::string& where) {
  if (!object.is_object()) {
    throw FormatError(
        describe_file_problem(where, "line 1 is not a JSON object", "this is not a self-study dataset"));
  }
  const auto format = object.find("format");
  if (format == object.end() || !format->is_string() || format->get<std::string>() != kDatasetFormat) {
    throw UnsupportedError(describe_file_problem(
        where, std::string("not a self-study dataset (line 1 has no \"format\": \"") + kDatasetFormat + "\")",
        "pass a dataset.jsonl written by `cartridge synthesize`"));
  }
  const auto version = object.find("version");
  if (version == object.end() || !version->is_number_integer() || version->get<int64_t>() > kDatasetVersion ||
      version->get<int64_t>() < kOldestReadableDatasetVersion) {
    throw UnsupportedError(describe_file_problem(
        where,
        "dataset version " + (version == object.end() ? std::string("(missing)") : version->dump()) +
            " is not supported (this build reads versions " + std::to_string(kOldestReadableDatasetVersion) +
            " to " + std::to_string(kDatasetVersion) + ")",
        "synthesize the data again with this build"));
  }
  DatasetHeader header;
  header.version = version->get<int64_t>();
  header.model = require_string(object, "model", where);
  header.model_fingerprint = require(object, "model_fingerprint", where);
  if (!header.model_fingerprint.is_string() && !header.model_fingerprint.is_object()) {
    wrong_type("model_fingerprint", "a string or an object", where);
  }
  header.corpus_sha256 = require_string(object, "corpus_sha256", where);
  header.corpus_tokens = require_integer(object, "corpus_tokens", where);
  const Json& seed = require(object, "seed", where);
  if (!seed.is_number_integer() ||
      (seed.is_number_integer() && !seed.is_number_unsigned() && seed.get<int64_t>() < 0)) {
    wrong_type("seed", "an integer >= 0", where);
  }
  header.seed = seed.get<uint64_t>();
  header.top_k = require_integer(object, "top_k", where, 1);
  header.settings = require(object, "settings", where);
  if (!header.settings.is_object()) wrong_type("settings", "an object", where);
  return header;
}

bool DatasetHeader::same_data_as(const DatasetHeader& other) const {
  return version == other.version && model_fingerprint == other.model_fingerprint &&
         corpus_sha256 == other.corpus_sha256 && corpus_tokens == other.corpus_tokens && seed == other.seed &&
         top_k == other.top_k && settings == other.settings;
}

void check_token_ids(const Dataset& dataset, int64_t vocab_size) {
  const auto outside = [vocab_size](int32_t id) { return id < 0 || id >= vocab_size; };
  for (const Conversation& conversation : dataset.conversations) {
    for (const auto* ids : {&conversation.input_ids, &conversation.target_ids}) {
      const auto found = std::find_if(ids->begin(), ids->end(), outside);
      if (found == ids->end()) continue;
      throw FormatError(fmt::format(
          "dataset line {} (conversation {}): token id {} in {} is outside the model's vocabulary of {} ids: "
          "the dataset was made with another model or is damaged (synthesize it again with this model)",
          conversation.index + 2, conversation.index, *found,
          ids == &conversation.input_ids ? "input_ids" : "the teacher's top-k ids", vocab_size));
    }
  }
}

Conversation with_answer_targets_only(const Conversation& conversation) {
  Conversation answer_only = conversation;
  const int64_t question_rows = conversation.num_question_targets();
  if (question_rows == 0 || conversation.num_targets() == 0) return answer_only;
  const size_t top_k = conversation.target_ids.size() / static_cast<size_t>(conversation.num_targets());  // K
  answer_only.target_start = conversation.answer_start;
  answer_only.target_ids.erase(answer_only.target_ids.begin(),
                               answer_only.target_ids.begin() + question_rows * top_k);
  answer_only.target_logprobs.erase(answer_only.target_logprobs.begin(),
                                    answer_only.target_logprobs.begin() + question_rows * top_k);
  return answer_only;
}

std::string conversation_to_json_line(const Conversation& conversation) {
  const int64_t targets = conversation.num_targets();  // N
  check_invariant(conversation.target_start >= 1 && targets >= 0, "target_start out of range");
  check_invariant(conversation.answer_start >= conversation.target_start &&
                      conversation.answer_start <= static_cast<int64_t>(conversation.input_ids.size()),
                  "answer_start out of range");
  check_invariant(targets == 0 || conversation.target_ids.size() % static_cast<size_t>(targets) == 0,
                  "target_ids is not [N, K]");
  check_invariant(conversation.target_ids.size() == conversation.target_logprobs.size(),
                  "target_ids and target_logprobs differ in size");
  const size_t top_k = targets == 0 ? 0 : conversation.target_ids.size() / static_cast<size_t>(targets);  // K

  std::string out;
  out.reserve(64 + conversation.question.size() + conversation.answer.size() +
              conversation.input_ids.size() * 6 + conversation.target_ids.size() * 18);
  out += "{\"index\":";
  append_number(out, conversation.index);
  out += ",\"seed_type\":" + dump_string(conversation.seed_type) + ",\"chunk_start\":";
  append_number(out, conversation.chunk_start);
  out += ",\"chunk_tokens\":";
  append_number(out, conversation.chunk_tokens);
  out += ',';
  out += "\"question\":" + dump_string(conversation.question) +
         ",\"answer\":" + dump_string(conversation.answer);
  out += ",\"input_ids\":[";
  for (size_t i = 0; i < conversation.input_ids.size(); ++i) {
    if (i) out += ',';
    append_number(out, conversation.input_ids[i]);
  }
  out += "],\"target_start\":";
  append_number(out, conversation.target_start);
  out += ",\"answer_start\":";
  append_number(out, conversation.answer_start);
  out += ",\"target_ids\":[";
  for (int64_t row = 0; row < targets; ++row) {
    out += row ? ",[" : "[";
    for (size_t k = 0; k < top_k; ++k) {
      if (k) out += ',';
      append_number(out, conversation.target_ids[row * top_k + k]);
    }
    out += ']';
  }
  out += "],\"target_logprobs\":[";
  for (int64_t row = 0; row < targets; ++row) {
    out += row ? ",[" : "[";
    for (size_t k = 0; k < top_k; ++k) {
      if (k) out += ',';
      append_float(out, conversation.target_logprobs[row * top_k + k]);
    }
    out += ']';
  }
  out += "]}";
  return out;
}

Conversation conversation_from_json_line(const std::string& line, int64_t top_k, int64_t version,
                                         const std::string& where) {
  Json object;
  try {
    object = Json::parse(line);
  } catch (const Json::exception& error) {  // parse_error, or out_of_range for a number past double
    throw FormatError(
        describe_file_problem(where, std::string("not valid JSON (") + error.what() + ")",
                              "the file is damaged; delete this line and the ones after it, then rerun "
                              "`cartridge synthesize` to regenerate them"));
  }
  if (!object.is_object()) {
    throw FormatError(describe_file_problem(where, "not a JSON object", "the file is damaged"));
  }
  Conversation conversation;
  conversation.index = require_integer(object, "index", where);
  conversation.seed_type = require_string(object, "seed_type", where);
  conversation.chunk_start = require_integer(object, "chunk_start", where);
  conversation.chunk_tokens = require_integer(object, "chunk_tokens", where);
  conversation.question = require_string(object, "question", where);
  conversation.answer = require_string(object, "answer", where);
  const Json& input_ids = require(object, "input_ids", where);
  if (!input_ids.is_array() || input_ids.empty())
    wrong_type("input_ids", "a non-empty list of token ids", where);
  conversation.input_ids.reserve(input_ids.size());
  for (const Json& id : input_ids) conversation.input_ids.push_back(token_id(id, "input_ids", where));
  conversation.target_start = require_integer(object, "target_start", where, 1);
  if (conversation.target_start > static_cast<int64_t>(conversation.input_ids.size())) {
    throw FormatError(describe_file_problem(
        where, "target_start " + std::to_string(conversation.target_start) + " is beyond input_ids (" +
                   std::to_string(conversation.input_ids.size()) + " tokens)"));
  }
  if (version >= 2) {
    conversation.answer_start = require_integer(object, "answer_start", where, 1);
    if (conversation.answer_start < conversation.target_start ||
        conversation.answer_start > static_cast<int64_t>(conversation.input_ids.size())) {
      throw FormatError(describe_file_problem(
          where, "answer_start " + std::to_string(conversation.answer_start) + " is outside [target_start " +
                     std::to_string(conversation.target_start) + ", " +
                     std::to_string(conversation.input_ids.size()) + "]"));
    }
  } else {
    conversation.answer_start = conversation.target_start;  // version 1: answer targets only
  }
  const int64_t targets = conversation.num_targets();
  const Json& target_ids = require(object, "target_ids", where);
  const Json& target_logprobs = require(object, "target_logprobs", where);
  if (!target_ids.is_array() || static_cast<int64_t>(target_ids.size()) != targets ||
      !target_logprobs.is_array() || static_cast<int64_t>(target_logprobs.size()) != targets) {
    throw FormatError(describe_file_problem(
        where,
        "target_ids and target_logprobs must have one row per target (len(input_ids) - target_start = " +
            std::to_string(targets) + ")"));
  }
  conversation.target_ids.reserve(targets * top_k);
  conversation.target_logprobs.reserve(targets * top_k);
  for (int64_t row = 0; row < targets; ++row) {
    const Json& ids = target_ids[row];
    const Json& logprobs = target_logprobs[row];
    if (!ids.is_array() || static_cast<int64_t>(ids.size()) != top_k || !logprobs.is_array() ||
        static_cast<int64_t>(logprobs.size()) != top_k) {
      throw FormatError(describe_file_problem(where, "target row " + std::to_string(row) +
                                                         " does not have top_k = " + std::to_string(top_k) +
                                                         " entries"));
    }
    float previous = std::numeric_limits<float>::infinity();
    for (int64_t k = 0; k < top_k; ++k) {
      conversation.target_ids.push_back(token_id(ids[k], "target_ids", where));
      if (!logprobs[k].is_number()) wrong_type("target_logprobs", "a list of lists of numbers", where);
      const float value = logprobs[k].get<float>();
      // Log-probabilities are <= 0 (a little slack for rounding) and sorted by decreasing probability.
      if (!std::isfinite(value) || value > 1e-4f || value > previous) {
        throw FormatError(describe_file_problem(
            where,
            "target row " + std::to_string(row) + " has log-probabilities that are not <= 0 and decreasing",
            "the file is damaged"));
      }
      previous = value;
      conversation.target_logprobs.push_back(value);
    }
  }
  return conversation;
}

DatasetWriter::DatasetWriter(const std::string& path, const DatasetHeader& header)
    : path_(path), header_(header) {
  descriptor_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (descriptor_ < 0) {
    throw FileNotFoundError(
        describe_file_problem(path, std::string("cannot open for writing: ") + std::strerror(errno),
                              "check that the folder exists and is writable"));
  }
  try {
    if (::flock(descriptor_, LOCK_EX | LOCK_NB) != 0) {
      throw InvalidArgumentError(describe_file_problem(path, "another process is writing this dataset",
                                                       "wait for it to finish or choose another --out"));
    }
    std::ifstream stream(path, std::ios::binary);
    std::string first_line, last_line;
    const LineScan existing = scan_complete_lines(stream, [&](size_t number, std::string& line) {
      if (number == 1) first_line = line;
      last_line.swap(line);
    });
    if (existing.complete_lines == 0) {
      // New file, or a crash before the header was complete: start over. Anything else without a single
      // newline is not ours to overwrite.
      if (existing.total_bytes > 0) {
        const std::string marker = std::string("{\"format\":\"") + kDatasetFormat + "\"";
        std::string start(std::min<uint64_t>(existing.total_bytes, marker.size()), '\0');
        std::ifstream again(path, std::ios::binary);
        again.read(start.data(), static_cast<std::streamsize>(start.size()));
        if (marker.compare(0, start.size(), start) != 0) {
          throw FormatError(describe_file_problem(path, "exists and is not a self-study dataset",
                                                  "choose another --out or delete the file"));
        }
      }
      if (::ftruncate(descriptor_, 0) != 0) {
        throw FileNotFoundError(
            describe_file_problem(path, std::string("cannot truncate: ") + std::strerror(errno)));
      }
      ::lseek(descriptor_, 0, SEEK_SET);
      write_all(descriptor_, dataset_header_line(header_) + "\n", path);
      // Make the new file's name durable too.
      const std::string folder = std::filesystem::absolute(path).parent_path().string();
      const int folder_descriptor = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (folder_descriptor >= 0) {
        ::fsync(folder_descriptor);
        ::close(folder_descriptor);
      }
      count_ = 0;
      return;
    }
    Json first;
    try {
      first = Json::parse(first_line);
    } catch (const Json::exception&) {
      throw FormatError(describe_file_problem(path, "line 1 is not JSON, so this is not a self-study dataset",
                                              "choose another --out or delete the file"));
    }
    const DatasetHeader stored = DatasetHeader::from_json(first, path);
    if (!stored.same_data_as(header)) {
      throw MismatchError(describe_file_problem(
          path, "was synthesized with different settings (" + header_differences(stored, header) + ")",
          "to continue it, rerun with the same settings; otherwise choose another --out or delete the file"));
    }
    header_ = stored;
    count_ = static_cast<int64_t>(existing.complete_lines) - 1;
    if (count_ > 0) {
      const Conversation last = conversation_from_json_line(last_line, stored.top_k, stored.version,
                                                            line_place(path, existing.complete_lines));
      if (last.index != count_ - 1) {
        throw FormatError(
            describe_file_problem(path,
                                  "the last conversation has index " + std::to_string(last.index) +
                                      " but is number " + std::to_string(count_ - 1) + " in the file",
                                  "the file was edited or damaged; choose another --out or delete the file"));
      }
    }
    if (existing.total_bytes != existing.complete_bytes) {
      if (::ftruncate(descriptor_, static_cast<off_t>(existing.complete_bytes)) != 0 ||
          ::fsync(descriptor_) != 0) {
        throw FileNotFoundError(describe_file_problem(
            path, std::string("cannot cut the unfinished last line: ") + std::strerror(errno)));
      }
    }
    ::lseek(descriptor_, static_cast<off_t>(existing.complete_bytes), SEEK_SET);
  } catch (...) {
    ::close(descriptor_);
    descriptor_ = -1;
    throw;
  }
}

DatasetWriter::~DatasetWriter() {
  if (descriptor_ >= 0) ::close(descriptor_);
}

void DatasetWriter::append(const Conversation& conversation) {
  check_invariant(conversation.index == count_,
                  fmt::format("appending conversation {} after {}", conversation.index, count_));
  check_invariant(
      conversation.target_ids.size() == static_cast<size_t>(conversation.num_targets() * header_.top_k),
      "conversation targets are not [N, top_k]");
  write_all(descriptor_, conversation_to_json_line(conversation) + "\n", path_);
  ++count_;
}

DatasetHeader read_dataset_header(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) {
    throw FileNotFoundError(describe_file_problem(path, "cannot open the dataset",
                                                  "check the path (run `cartridge synthesize` to make one)"));
  }
  std::string line;
  if (!std::getline(stream, line) || stream.eof()) {
    throw FormatError(describe_file_problem(path, "empty, or its header line is unfinished",
                                            "rerun `cartridge synthesize` to write it"));
  }
  Json object;
  try {
    object = Json::parse(line);
  } catch (const Json::exception&) {
    throw FormatError(describe_file_problem(path, "line 1 is not JSON, so this is not a self-study dataset",
                                            "pass a dataset.jsonl written by `cartridge synthesize`"));
  }
  return DatasetHeader::from_json(object, path);
}

Dataset read_dataset(const std::string& path) {
  Dataset dataset;
  dataset.header = read_dataset_header(path);
  std::ifstream stream(path, std::ios::binary);
  scan_complete_lines(stream, [&](size_t number, const std::string& line) {
    if (number == 1) return;  // the header
    const std::string where = line_place(path, number);
    Conversation conversation =
        conversation_from_json_line(line, dataset.header.top_k, dataset.header.version, where);
    const int64_t expected = static_cast<int64_t>(number) - 2;
    if (conversation.index != expected) {
      throw FormatError(describe_file_problem(where,
                                              "conversation index " + std::to_string(conversation.index) +
                                                  " where " + std::to_string(expected) + " was expected",
                                              "the file was edited or damaged"));
    }
    dataset.conversations.push_back(std::move(conversation));
  });
  return dataset;
}

Framing dataset_framing(const DatasetHeader& header) {
  if (!header.settings.is_object() || !header.settings.contains("student_framing")) return Framing::kNewChat;
  const nlohmann::json& framing = header.settings["student_framing"];
  if (!framing.is_string())
    throw FormatError("the dataset header's settings.student_framing is not a string (the file is damaged)");
  return parse_framing(framing.get<std::string>());
}

}  // namespace cartridge
