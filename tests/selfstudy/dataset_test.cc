// The self-study dataset file: round trip, crash truncation, resume rules and damaged-file errors.
#include "selfstudy/dataset.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include <gtest/gtest.h>

#include "util/error.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    folder_ = fs::temp_directory_path() / ("cartridge_dataset_test_" + std::to_string(::getpid()) + "_" +
                                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(folder_);
    fs::create_directories(folder_);
    path_ = (folder_ / "dataset.jsonl").string();
  }
  void TearDown() override { fs::remove_all(folder_); }

  fs::path folder_;
  std::string path_;
};

DatasetHeader make_header(int64_t top_k = 3) {
  DatasetHeader header;
  header.model = "models/tiny.gguf";
  header.model_fingerprint = {{"architecture", "llama"}, {"num_layers", 2}};
  header.corpus_sha256 = std::string(64, 'a');
  header.corpus_tokens = 1234;
  header.seed = 18446744073709551615ull;  // the largest seed must survive the round trip
  header.top_k = top_k;
  header.settings = {{"min_chunk_tokens", 512},
                     {"max_chunk_tokens", 4096},
                     {"question_temperature", 0.6},
                     {"description", "A \"quoted\" description, é"}};
  return header;
}

// A conversation with random targets; log-probabilities sorted decreasing and <= 0, including extremes.
Conversation make_conversation(int64_t index, int64_t top_k, std::mt19937& random) {
  Conversation conversation;
  conversation.index = index;
  conversation.seed_type = "question";
  conversation.chunk_start = 17 * index;
  conversation.chunk_tokens = 512 + index;
  conversation.question = "What is \"x\"?\n\tLine two: é 日本 \\ /";
  conversation.answer = "An answer " + std::to_string(index);
  std::uniform_int_distribution<int32_t> token(0, 49151);
  const int64_t prompt = 5 + index, answer = 4 + 2 * index;
  for (int64_t i = 0; i < prompt + answer; ++i) conversation.input_ids.push_back(token(random));
  // The last two prompt tokens have targets too (the question's), then every answer token.
  conversation.answer_start = prompt;
  conversation.target_start = prompt - 2;
  std::uniform_real_distribution<float> uniform(0.0f, 30.0f);
  for (int64_t row = 0; row < answer + 2; ++row) {
    std::vector<float> values;
    for (int64_t k = 0; k < top_k; ++k) values.push_back(-uniform(random));
    if (row == 0) values[0] = 0.0f;
    if (row == 1) values[0] = -1e-30f;  // subnormal-adjacent tiny value
    if (row == 2) values[top_k - 1] = -std::numeric_limits<float>::max();
    std::sort(values.begin(), values.end(), std::greater<float>());
    for (int64_t k = 0; k < top_k; ++k) {
      conversation.target_ids.push_back(token(random));
      conversation.target_logprobs.push_back(values[k]);
    }
  }
  return conversation;
}

std::string read_bytes(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  std::stringstream buffer;
  buffer << stream.rdbuf();
  return buffer.str();
}

void append_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream stream(path, std::ios::binary | std::ios::app);
  stream << bytes;
}

void expect_equal(const Conversation& a, const Conversation& b) {
  EXPECT_EQ(a.index, b.index);
  EXPECT_EQ(a.seed_type, b.seed_type);
  EXPECT_EQ(a.chunk_start, b.chunk_start);
  EXPECT_EQ(a.chunk_tokens, b.chunk_tokens);
  EXPECT_EQ(a.question, b.question);
  EXPECT_EQ(a.answer, b.answer);
  EXPECT_EQ(a.input_ids, b.input_ids);
  EXPECT_EQ(a.target_start, b.target_start);
  EXPECT_EQ(a.answer_start, b.answer_start);
  EXPECT_EQ(a.target_ids, b.target_ids);
  ASSERT_EQ(a.target_logprobs.size(), b.target_logprobs.size());
  for (size_t i = 0; i < a.target_logprobs.size(); ++i) {
    // Bit-exact: the shortest float form must read back to the same float32.
    EXPECT_EQ(std::memcmp(&a.target_logprobs[i], &b.target_logprobs[i], sizeof(float)), 0)
        << i << ": " << a.target_logprobs[i] << " vs " << b.target_logprobs[i];
  }
}

TEST_F(DatasetTest, RoundTripIsExact) {
  std::mt19937 random(7);
  std::vector<Conversation> written;
  {
    DatasetWriter writer(path_, make_header());
    EXPECT_EQ(writer.conversation_count(), 0);
    for (int64_t i = 0; i < 4; ++i) {
      written.push_back(make_conversation(i, 3, random));
      writer.append(written.back());
    }
    EXPECT_EQ(writer.conversation_count(), 4);
  }
  const Dataset dataset = read_dataset(path_);
  EXPECT_TRUE(dataset.header.same_data_as(make_header()));
  EXPECT_EQ(dataset.header.model, "models/tiny.gguf");
  EXPECT_EQ(dataset.header.seed, 18446744073709551615ull);
  ASSERT_EQ(dataset.conversations.size(), 4u);
  for (size_t i = 0; i < written.size(); ++i) expect_equal(dataset.conversations[i], written[i]);

  // The header line starts with the format name (documented order) and every line ends with a newline.
  const std::string bytes = read_bytes(path_);
  EXPECT_EQ(bytes.rfind("{\"format\":\"cartridge-selfstudy-dataset\",\"version\":2,", 0), 0u);
  EXPECT_EQ(bytes.back(), '\n');
  EXPECT_EQ(std::count(bytes.begin(), bytes.end(), '\n'), 5);
  EXPECT_EQ(read_dataset_header(path_).corpus_tokens, 1234);
}

TEST_F(DatasetTest, InvalidUtf8IsReplacedNotFatal) {
  std::mt19937 random(1);
  Conversation conversation = make_conversation(0, 3, random);
  conversation.answer = "cut \xE6\x97";  // a 3-byte character cut after two bytes
  {
    DatasetWriter writer(path_, make_header());
    writer.append(conversation);
  }
  const Dataset dataset = read_dataset(path_);
  EXPECT_EQ(dataset.conversations.at(0).answer, "cut \xEF\xBF\xBD");  // one U+FFFD
}

TEST_F(DatasetTest, InfiniteLogProbabilityIsStoredAsLowestFloat) {
  std::mt19937 random(1);
  Conversation conversation = make_conversation(0, 3, random);
  conversation.target_logprobs[2] = -std::numeric_limits<float>::infinity();
  {
    DatasetWriter writer(path_, make_header());
    writer.append(conversation);
  }
  EXPECT_EQ(read_dataset(path_).conversations.at(0).target_logprobs[2], std::numeric_limits<float>::lowest());
}

TEST_F(DatasetTest, CrashMidLineIsIgnoredThenCutAndContinued) {
  std::mt19937 random(3);
  std::vector<Conversation> conversations;
  for (int64_t i = 0; i < 4; ++i) conversations.push_back(make_conversation(i, 3, random));
  {
    DatasetWriter writer(path_, make_header());
    writer.append(conversations[0]);
    writer.append(conversations[1]);
  }
  // A crash in the middle of writing conversation 2: half its line, no newline.
  const std::string line = conversation_to_json_line(conversations[2]);
  append_bytes(path_, line.substr(0, line.size() / 2));
  EXPECT_EQ(read_dataset(path_).conversations.size(), 2u);

  {
    DatasetWriter writer(path_, make_header());
    EXPECT_EQ(writer.conversation_count(), 2);
    writer.append(conversations[2]);
    writer.append(conversations[3]);
  }
  // Byte-identical to a file written without the crash.
  const std::string resumed = read_bytes(path_);
  fs::remove(path_);
  {
    DatasetWriter writer(path_, make_header());
    for (const Conversation& conversation : conversations) writer.append(conversation);
  }
  EXPECT_EQ(resumed, read_bytes(path_));
}

TEST_F(DatasetTest, CrashInsideTheHeaderStartsOver) {
  append_bytes(path_, "{\"format\":\"cartridge-selfst");
  {
    DatasetWriter writer(path_, make_header());
    EXPECT_EQ(writer.conversation_count(), 0);
  }
  EXPECT_EQ(read_dataset(path_).conversations.size(), 0u);
}

TEST_F(DatasetTest, ResumeWithOtherSettingsIsRefused) {
  { DatasetWriter writer(path_, make_header()); }
  const std::string before = read_bytes(path_);
  DatasetHeader other = make_header();
  other.settings["max_chunk_tokens"] = 2048;
  try {
    DatasetWriter writer(path_, other);
    FAIL() << "a different setting was accepted";
  } catch (const MismatchError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("max_chunk_tokens 4096 in the file vs 2048 now"), std::string::npos) << message;
    EXPECT_NE(message.find("delete the file"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  other = make_header();
  other.seed = 5;
  EXPECT_THROW(DatasetWriter(path_, other), MismatchError);
  // Another name for the same model is fine.
  other = make_header();
  other.model = "./models/../models/tiny.gguf";
  EXPECT_NO_THROW(DatasetWriter(path_, other));
  EXPECT_EQ(read_bytes(path_), before);
}

TEST_F(DatasetTest, SecondWriterOnTheSameFileIsRefused) {
  DatasetWriter writer(path_, make_header());
  EXPECT_THROW(DatasetWriter(path_, make_header()), InvalidArgumentError);
}

TEST_F(DatasetTest, ForeignFileIsNotOverwritten) {
  append_bytes(path_, "my notes without a newline");
  EXPECT_THROW(DatasetWriter(path_, make_header()), FormatError);
  EXPECT_EQ(read_bytes(path_), "my notes without a newline");
  fs::remove(path_);
  append_bytes(path_, "{\"some\": \"json\"}\n");
  EXPECT_THROW(DatasetWriter(path_, make_header()), UnsupportedError);
  EXPECT_EQ(read_bytes(path_), "{\"some\": \"json\"}\n");
}

TEST_F(DatasetTest, UnknownVersionOrFormatIsRefused) {
  nlohmann::json header = make_header().to_json();
  header["version"] = 3;
  append_bytes(path_, header.dump() + "\n");
  try {
    read_dataset(path_);
    FAIL() << "version 3 was accepted";
  } catch (const UnsupportedError& error) {
    EXPECT_NE(std::string(error.what()).find("version 3 is not supported"), std::string::npos)
        << error.what();
  }
  fs::remove(path_);
  header["version"] = 1;
  header["format"] = "something-else";
  append_bytes(path_, header.dump() + "\n");
  EXPECT_THROW(read_dataset(path_), UnsupportedError);
  EXPECT_THROW(read_dataset((folder_ / "missing.jsonl").string()), FileNotFoundError);
}

TEST_F(DatasetTest, VersionOneFilesReadAsAnswerTargetsOnly) {
  // A version 1 file (what builds before question targets wrote): no answer_start, targets are the answer's.
  std::mt19937 random(3);
  Conversation conversation = with_answer_targets_only(make_conversation(0, 3, random));
  nlohmann::json line = nlohmann::json::parse(conversation_to_json_line(conversation));
  line.erase("answer_start");
  nlohmann::json header = make_header().to_json();
  header["version"] = 1;
  append_bytes(path_, header.dump() + "\n" + line.dump() + "\n");
  const Dataset dataset = read_dataset(path_);
  EXPECT_EQ(dataset.header.version, 1);
  ASSERT_EQ(dataset.conversations.size(), 1u);
  expect_equal(dataset.conversations[0], conversation);
  EXPECT_EQ(dataset.conversations[0].num_question_targets(), 0);
  // Continuing it with this build (which writes version 2) is refused, naming the version.
  try {
    DatasetWriter writer(path_, make_header());
    ADD_FAILURE() << "a version 1 file was continued as version 2";
  } catch (const MismatchError& error) {
    EXPECT_NE(std::string(error.what()).find("version 1 in the file vs 2 now"), std::string::npos)
        << error.what();
  }
}

TEST_F(DatasetTest, AnswerTargetsOnlyDropsTheQuestionRows) {
  std::mt19937 random(4);
  const Conversation conversation = make_conversation(1, 3, random);
  ASSERT_EQ(conversation.num_question_targets(), 2);
  const Conversation answer_only = with_answer_targets_only(conversation);
  EXPECT_EQ(answer_only.target_start, conversation.answer_start);
  EXPECT_EQ(answer_only.answer_start, conversation.answer_start);
  EXPECT_EQ(answer_only.input_ids, conversation.input_ids);
  EXPECT_EQ(answer_only.num_targets(), conversation.num_targets() - 2);
  EXPECT_EQ(answer_only.target_ids,
            std::vector<int32_t>(conversation.target_ids.begin() + 2 * 3, conversation.target_ids.end()));
  EXPECT_EQ(answer_only.target_logprobs, std::vector<float>(conversation.target_logprobs.begin() + 2 * 3,
                                                            conversation.target_logprobs.end()));
}

TEST_F(DatasetTest, DamagedLinesAreReportedWithTheirLineNumber) {
  std::mt19937 random(5);
  const Conversation good = make_conversation(0, 3, random);
  struct Case {
    std::string name;
    std::function<void(nlohmann::json&)> damage;
  };
  const std::vector<Case> cases = {
      {"missing field", [](nlohmann::json& line) { line.erase("target_start"); }},
      {"wrong type", [](nlohmann::json& line) { line["input_ids"] = "not a list"; }},
      {"negative token", [](nlohmann::json& line) { line["input_ids"][0] = -1; }},
      {"target_start beyond input", [](nlohmann::json& line) { line["target_start"] = 1000; }},
      {"zero target_start", [](nlohmann::json& line) { line["target_start"] = 0; }},
      {"missing answer_start", [](nlohmann::json& line) { line.erase("answer_start"); }},
      {"answer_start before target_start", [](nlohmann::json& line) { line["answer_start"] = 1; }},
      {"answer_start beyond input", [](nlohmann::json& line) { line["answer_start"] = 1000; }},
      {"row count", [](nlohmann::json& line) { line["target_ids"].erase(0); }},
      {"row width", [](nlohmann::json& line) { line["target_logprobs"][0].erase(0); }},
      {"positive logprob", [](nlohmann::json& line) { line["target_logprobs"][0][0] = 0.5; }},
      {"unsorted logprobs", [](nlohmann::json& line) { line["target_logprobs"][0][2] = 0.0; }},
      {"wrong index", [](nlohmann::json& line) { line["index"] = 3; }},
  };
  for (const Case& test_case : cases) {
    fs::remove(path_);
    nlohmann::json line = nlohmann::json::parse(conversation_to_json_line(good));
    test_case.damage(line);
    append_bytes(path_, make_header().to_json().dump() + "\n" + line.dump() + "\n");
    try {
      read_dataset(path_);
      ADD_FAILURE() << test_case.name << ": accepted";
    } catch (const FormatError& error) {
      EXPECT_NE(std::string(error.what()).find("line 2"), std::string::npos)
          << test_case.name << ": " << error.what();
    }
  }
  fs::remove(path_);
  append_bytes(path_, make_header().to_json().dump() + "\n{not json\n");
  EXPECT_THROW(read_dataset(path_), FormatError);
  // A number no double holds (found by fuzz/dataset_fuzz.cc): nlohmann throws out_of_range, not
  // parse_error; it must still be a FormatError naming the line.
  fs::remove(path_);
  std::string line = conversation_to_json_line(good);
  line.replace(line.find("\"target_logprobs\":[[") + 20, 0, "-4.9e746,");
  append_bytes(path_, make_header().to_json().dump() + "\n" + line + "\n");
  try {
    read_dataset(path_);
    ADD_FAILURE() << "a number past double was accepted";
  } catch (const FormatError& error) {
    EXPECT_NE(std::string(error.what()).find("line 2"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace cartridge
