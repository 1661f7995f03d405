// Self-study synthesis on a random tiny Llama (tests/fixtures/make_synthesis.py): the dataset's structure,
// recorded top-k equal to a full forward of the conversation, shared prefill equal to per-row prefill, and a
// run interrupted mid-group (plus a torn last line) that resumes to a byte-identical file.
// The comparison with transformers is in tests/oracle/test_synthesize.py.
#include "selfstudy/synthesizer.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "selfstudy/sha256.h"
#include "test_support.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;
using testing::fixture_path;

struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted by the test") {}
};

std::string read_bytes(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  std::stringstream buffer;
  buffer << stream.rdbuf();
  return buffer.str();
}

class SynthesizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    LoadOptions load;
    load.show_progress = false;
    model_ = new LoadedModel(load_model(fixture_path("synthesis/tiny_llama"), load));
    corpus_ = new std::string(read_text_file(fixture_path("synthesis/corpus.txt")));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete corpus_;
  }
  void SetUp() override {
    folder_ = fs::temp_directory_path() / ("cartridge_synthesizer_test_" + std::to_string(::getpid()) + "_" +
                                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(folder_);
    fs::create_directories(folder_);
  }
  void TearDown() override { fs::remove_all(folder_); }

  static SynthesisOptions small_options() {
    SynthesisOptions options;
    options.samples = 7;
    options.seed = 3;
    options.conversations_per_chunk = 3;  // groups {0,1,2} {3,4,5} {6}
    options.chunks.min_tokens = 40;
    options.chunks.max_tokens = 120;
    options.max_question_tokens = 10;
    options.max_answer_tokens = 16;
    options.show_progress = false;
    options.model_name = "tiny_llama";
    return options;
  }
  std::string path(const std::string& name) const { return (folder_ / name).string(); }

  static LoadedModel* model_;
  static std::string* corpus_;
  fs::path folder_;
};

LoadedModel* SynthesizerTest::model_ = nullptr;
std::string* SynthesizerTest::corpus_ = nullptr;

TEST_F(SynthesizerTest, DatasetHasTheDocumentedStructure) {
  const SynthesisOptions options = small_options();
  const SynthesisStats stats = synthesize(*model_, *corpus_, options, path("a.jsonl"));
  EXPECT_EQ(stats.existing_conversations, 0);
  EXPECT_EQ(stats.written_conversations, 7);
  EXPECT_GT(stats.generated_tokens, 0);

  const Dataset dataset = read_dataset(path("a.jsonl"));
  const std::vector<int32_t> corpus_ids = model_->tokenizer->encode(*corpus_, false);
  EXPECT_EQ(dataset.header.model, "tiny_llama");
  EXPECT_EQ(dataset.header.corpus_sha256, sha256_hex(*corpus_));
  EXPECT_EQ(dataset.header.corpus_tokens, static_cast<int64_t>(corpus_ids.size()));
  EXPECT_EQ(dataset.header.seed, 3u);
  EXPECT_EQ(dataset.header.top_k, 20);
  EXPECT_EQ(dataset.header.settings.at("conversations_per_chunk"), 3);
  EXPECT_EQ(dataset.header.settings.at("max_answer_tokens"), 16);
  EXPECT_EQ(dataset.header.settings.at("dtype"), "fp32");
  EXPECT_TRUE(dataset.header.model_fingerprint.is_object());
  ASSERT_EQ(dataset.conversations.size(), 7u);

  const std::vector<int32_t> stop_ids = end_of_turn_ids(*model_->tokenizer);
  int stopped = 0;
  for (const Conversation& conversation : dataset.conversations) {
    SCOPED_TRACE("conversation " + std::to_string(conversation.index));
    // Conversations of one group share its chunk.
    const Conversation& group_first = dataset.conversations[conversation.index / 3 * 3];
    EXPECT_EQ(conversation.chunk_start, group_first.chunk_start);
    EXPECT_EQ(conversation.chunk_tokens, group_first.chunk_tokens);
    EXPECT_GE(conversation.chunk_tokens, 40);
    EXPECT_LE(conversation.chunk_tokens, 120);
    EXPECT_LE(conversation.chunk_start + conversation.chunk_tokens, static_cast<int64_t>(corpus_ids.size()));
    const auto& types = seed_prompt_types();
    EXPECT_NE(std::find(types.begin(), types.end(), conversation.seed_type), types.end());

    // The student sequence: the question as it follows the cartridge (the dataset's framing, system_turn by
    // default: the end of the document's system turn, then the user turn), then the answer tokens.
    EXPECT_EQ(dataset_framing(dataset.header), Framing::kSystemTurn);
    const std::vector<int32_t> student_prompt =
        model_->encode_chat_after_cartridge({{"user", conversation.question}}, Framing::kSystemTurn, true);
    ASSERT_EQ(conversation.answer_start, static_cast<int64_t>(student_prompt.size()));
    EXPECT_TRUE(std::equal(student_prompt.begin(), student_prompt.end(), conversation.input_ids.begin()));
    // The question's tokens have targets too: the user turn, after the student's own system turn.
    EXPECT_GT(conversation.num_question_targets(), 2);
    std::vector<int32_t> answer(conversation.input_ids.begin() + conversation.answer_start,
                                conversation.input_ids.end());
    ASSERT_GE(answer.size(), 1u);
    ASSERT_LE(answer.size(), 16u);
    const bool ended = std::find(stop_ids.begin(), stop_ids.end(), answer.back()) != stop_ids.end();
    stopped += ended;
    if (!ended) {
      EXPECT_EQ(answer.size(), 16u);
    }
    std::vector<int32_t> answer_text_ids = answer;
    if (ended) answer_text_ids.pop_back();
    EXPECT_EQ(conversation.answer, model_->tokenizer->decode(answer_text_ids, true));

    // Greedy answers: each token is the teacher's most likely one (row 0 of its targets, up to exact ties).
    for (int64_t j = 0; j < static_cast<int64_t>(answer.size()); ++j) {
      const int32_t token = answer[j];
      const int64_t target = conversation.num_question_targets() + j;
      const float* row = conversation.target_logprobs.data() + target * 20;
      const int32_t* ids = conversation.target_ids.data() + target * 20;
      const auto found = std::find(ids, ids + 20, token);
      ASSERT_NE(found, ids + 20);
      EXPECT_EQ(row[found - ids], row[0]);
    }
  }
  // The fixture's model ends some answers early (its end-of-turn logit is boosted), not all.
  EXPECT_GT(stopped, 0);
}

TEST_F(SynthesizerTest, RecordedTopKEqualsAFullForwardOfTheTeacherSequence) {
  const SynthesisOptions options = small_options();
  synthesize(*model_, *corpus_, options, path("a.jsonl"));
  const Dataset dataset = read_dataset(path("a.jsonl"));
  const std::vector<int32_t> corpus_ids = model_->tokenizer->encode(*corpus_, false);
  const Model& model = *model_->model;
  c10::InferenceMode inference_mode;
  for (const Conversation& conversation : dataset.conversations) {
    SCOPED_TRACE("conversation " + std::to_string(conversation.index));
    // Rebuild the teacher's sequence from the file alone: chunk -> system message -> [system, user] + answer.
    const std::vector<int32_t> chunk_ids(
        corpus_ids.begin() + conversation.chunk_start,
        corpus_ids.begin() + conversation.chunk_start + conversation.chunk_tokens);
    const std::string system = synthesis_system_message(options, model_->tokenizer->decode(chunk_ids));
    std::vector<int32_t> teacher =
        model_->encode_chat({{"system", system}, {"user", conversation.question}}, true);
    teacher.insert(teacher.end(), conversation.input_ids.begin() + conversation.answer_start,
                   conversation.input_ids.end());
    // The student's tokens from the one before target_start on are the teacher's last ones (the user turn
    // and the answer), so each target's preceding token is the same in both sequences.
    const int64_t offset =
        static_cast<int64_t>(teacher.size()) - static_cast<int64_t>(conversation.input_ids.size());
    ASSERT_GT(conversation.num_question_targets(), 0);
    ASSERT_TRUE(std::equal(conversation.input_ids.begin() + conversation.target_start - 1,
                           conversation.input_ids.end(),
                           teacher.begin() + conversation.target_start - 1 + offset));
    const int64_t length = static_cast<int64_t>(teacher.size());
    std::vector<int64_t> ids(teacher.begin(), teacher.end());
    KvCache cache = model.new_cache(1);
    const at::Tensor logits = model.forward(at::tensor(ids, at::kLong).view({1, length}),
                                            at::ones({1, length}, at::kBool), cache);  // [1, T, V]
    const at::Tensor log_probs = logits[0].log_softmax(-1);                            // [T, V]
    for (int64_t j = 0; j < conversation.num_targets(); ++j) {
      const at::Tensor expected = log_probs[offset + conversation.target_start + j - 1];  // [V]
      const at::Tensor top = std::get<0>(expected.topk(20));                              // [20]
      for (int64_t k = 0; k < 20; ++k) {
        const int32_t id = conversation.target_ids[j * 20 + k];
        const float recorded = conversation.target_logprobs[j * 20 + k];
        EXPECT_NEAR(recorded, expected[id].item<float>(), 1e-4) << "target " << j << " entry " << k;
        EXPECT_NEAR(recorded, top[k].item<float>(), 1e-4) << "target " << j << " entry " << k;
      }
    }
  }
}

TEST_F(SynthesizerTest, SharedPrefillGivesTheSameDataAsPerRowPrefill) {
  SynthesisOptions options = small_options();
  const SynthesisStats shared = synthesize(*model_, *corpus_, options, path("shared.jsonl"));
  options.share_prefill = false;
  // Not a data setting: the same header, so use another file.
  const SynthesisStats per_row = synthesize(*model_, *corpus_, options, path("per_row.jsonl"));
  EXPECT_LT(shared.prefill_tokens, per_row.prefill_tokens);
  const Dataset a = read_dataset(path("shared.jsonl"));
  const Dataset b = read_dataset(path("per_row.jsonl"));
  ASSERT_EQ(a.conversations.size(), b.conversations.size());
  for (size_t i = 0; i < a.conversations.size(); ++i) {
    EXPECT_EQ(a.conversations[i].question, b.conversations[i].question);
    EXPECT_EQ(a.conversations[i].input_ids, b.conversations[i].input_ids);
    ASSERT_EQ(a.conversations[i].target_logprobs.size(), b.conversations[i].target_logprobs.size());
    for (size_t k = 0; k < a.conversations[i].target_logprobs.size(); ++k) {
      EXPECT_NEAR(a.conversations[i].target_logprobs[k], b.conversations[i].target_logprobs[k], 1e-4);
    }
  }
}

TEST_F(SynthesizerTest, InterruptedRunResumesToAByteIdenticalFile) {
  SynthesisOptions options = small_options();
  synthesize(*model_, *corpus_, options, path("uninterrupted.jsonl"));
  const std::string expected = read_bytes(path("uninterrupted.jsonl"));

  // Stop after conversation 3 is on disk: in the middle of group {3,4,5}.
  SynthesisOptions interrupted = options;
  interrupted.on_conversation = [](const Conversation& conversation) {
    if (conversation.index == 3) throw Interrupted();
  };
  EXPECT_THROW(synthesize(*model_, *corpus_, interrupted, path("resumed.jsonl")), Interrupted);
  EXPECT_EQ(read_dataset(path("resumed.jsonl")).conversations.size(), 4u);
  // And a crash in the middle of writing conversation 4: half a line.
  {
    std::ofstream stream(path("resumed.jsonl"), std::ios::binary | std::ios::app);
    stream << "{\"index\":4,\"seed_type\":\"quest";
  }
  const SynthesisStats stats = synthesize(*model_, *corpus_, options, path("resumed.jsonl"));
  EXPECT_EQ(stats.existing_conversations, 4);
  EXPECT_EQ(stats.written_conversations, 3);
  EXPECT_EQ(read_bytes(path("resumed.jsonl")), expected);

  // Done: a rerun adds nothing; more samples extend the file with what a longer run would have written.
  EXPECT_EQ(synthesize(*model_, *corpus_, options, path("resumed.jsonl")).written_conversations, 0);
  SynthesisOptions more = options;
  more.samples = 9;
  synthesize(*model_, *corpus_, more, path("resumed.jsonl"));
  synthesize(*model_, *corpus_, more, path("longer.jsonl"));
  const Dataset extended = read_dataset(path("resumed.jsonl"));
  const Dataset longer = read_dataset(path("longer.jsonl"));
  ASSERT_EQ(extended.conversations.size(), 9u);
  // Every conversation but 6 came from the same batch in both files. Conversation 6 was generated in a
  // group of one in `extended` (samples was 7) and of three in `longer`: same chunk and seed prompt, but
  // batching may change its last bits, so its tokens are not compared.
  for (size_t i = 0; i < 9; ++i) {
    EXPECT_EQ(extended.conversations[i].chunk_start, longer.conversations[i].chunk_start);
    EXPECT_EQ(extended.conversations[i].seed_type, longer.conversations[i].seed_type);
    if (i != 6) {
      EXPECT_EQ(extended.conversations[i].input_ids, longer.conversations[i].input_ids);
    }
  }
}

TEST_F(SynthesizerTest, OtherSettingsOnAnExistingFileAreRefused) {
  SynthesisOptions options = small_options();
  options.samples = 1;
  synthesize(*model_, *corpus_, options, path("a.jsonl"));
  options.max_answer_tokens = 17;
  EXPECT_THROW(synthesize(*model_, *corpus_, options, path("a.jsonl")), MismatchError);
  options = small_options();
  options.samples = 1;
  EXPECT_THROW(synthesize(*model_, *corpus_ + " changed", options, path("a.jsonl")), MismatchError);
}

TEST_F(SynthesizerTest, BadOptionsAreRefusedBeforeAnyFileIsWritten) {
  SynthesisOptions options = small_options();
  options.system_prompt = "no placeholder";
  EXPECT_THROW(synthesize(*model_, *corpus_, options, path("a.jsonl")), InvalidArgumentError);
  options = small_options();
  options.seed_types = {"questions"};
  EXPECT_THROW(synthesize(*model_, *corpus_, options, path("a.jsonl")), InvalidArgumentError);
  options = small_options();
  options.max_answer_tokens = 5000;  // more than the tiny model's context of 1024
  EXPECT_THROW(synthesize(*model_, *corpus_, options, path("a.jsonl")), InvalidArgumentError);
  EXPECT_FALSE(fs::exists(path("a.jsonl")));
}

TEST_F(SynthesizerTest, ChunksAreBoundedByTheContext) {
  SynthesisOptions options = small_options();
  options.chunks.max_tokens = 4096;
  const int64_t allowed = longest_chunk_allowed(*model_, options);
  EXPECT_GT(allowed, 0);
  EXPECT_LT(allowed, 1024 - 10 - 16);
  // The longest allowed chunk, with the longest question, still fits: the answer prompt + answer <= 1024.
  const std::vector<int32_t> corpus_ids = model_->tokenizer->encode(*corpus_, false);
  ASSERT_GT(static_cast<int64_t>(corpus_ids.size()), allowed);
  const std::vector<int32_t> chunk(corpus_ids.begin(), corpus_ids.begin() + allowed);
  const std::string system = synthesis_system_message(options, model_->tokenizer->decode(chunk));
  std::vector<int32_t> question_ids(options.max_question_tokens, corpus_ids[5]);
  const std::string question = model_->tokenizer->decode(question_ids);
  const int64_t answer_prompt =
      static_cast<int64_t>(model_->encode_chat({{"system", system}, {"user", question}}, true).size());
  EXPECT_LE(answer_prompt + options.max_answer_tokens, 1024);
}

TEST_F(SynthesizerTest, DecodingWithASharedPrefixEqualsFullPrompts) {
  const Model& model = *model_->model;
  const std::vector<int32_t> corpus_ids = model_->tokenizer->encode(*corpus_, false);
  std::vector<BatchDecodeRow> rows(3);
  for (int64_t row = 0; row < 3; ++row) {
    rows[row].prompt_ids.assign(corpus_ids.begin(), corpus_ids.begin() + 50 + 7 * row);
    rows[row].max_new_tokens = 12 + row;
  }
  rows[1].temperature = 0.6;
  rows[1].sampling_seed = 99;
  const std::vector<int32_t> stop_ids = end_of_turn_ids(*model_->tokenizer);
  BatchDecodeCounts full_counts, shared_counts;
  const Tokenizer& tokenizer = *model_->tokenizer;
  const std::vector<BatchDecodeOutput> full =
      decode_with_teacher_top_k(model, tokenizer, rows, stop_ids, 20, nullptr, &full_counts);
  std::shared_ptr<const KvPrefix> shared_prefix;
  {
    c10::InferenceMode inference_mode;
    KvCache shared_cache = model.new_cache(1);
    std::vector<int64_t> prefix(corpus_ids.begin(), corpus_ids.begin() + 45);
    model.forward(at::tensor(prefix, at::kLong).view({1, 45}), at::ones({1, 45}, at::kBool), shared_cache);
    shared_prefix = std::make_shared<const KvPrefix>(shared_cache.row_prefix(0, 45));
  }
  const std::vector<BatchDecodeOutput> shared =
      decode_with_teacher_top_k(model, tokenizer, rows, stop_ids, 20, shared_prefix, &shared_counts);
  EXPECT_EQ(full_counts.prefill_tokens, 50 + 57 + 64);
  EXPECT_EQ(shared_counts.prefill_tokens, 5 + 12 + 19);
  for (int64_t row = 0; row < 3; ++row) {
    EXPECT_EQ(full[row].token_ids, shared[row].token_ids) << row;
    EXPECT_EQ(full[row].stopped, shared[row].stopped);
    ASSERT_EQ(full[row].top_logprobs.size(), full[row].token_ids.size() * 20);
    ASSERT_EQ(full[row].top_logprobs.size(), shared[row].top_logprobs.size());
    for (size_t k = 0; k < full[row].top_logprobs.size(); ++k) {
      EXPECT_NEAR(full[row].top_logprobs[k], shared[row].top_logprobs[k], 1e-4);
    }
    if (!full[row].stopped) {
      EXPECT_EQ(static_cast<int64_t>(full[row].token_ids.size()), rows[row].max_new_tokens);
    }
  }
}

TEST_F(SynthesizerTest, DecodingStopsAtTheFirstStopTokenAndKeepsIt) {
  const Model& model = *model_->model;
  const std::vector<int32_t> corpus_ids = model_->tokenizer->encode(*corpus_, false);
  std::vector<BatchDecodeRow> rows(2);
  rows[0].prompt_ids.assign(corpus_ids.begin() + 100, corpus_ids.begin() + 130);
  rows[1].prompt_ids.assign(corpus_ids.begin() + 300, corpus_ids.begin() + 340);
  for (BatchDecodeRow& row : rows) row.max_new_tokens = 12;
  // Without stop tokens every row runs to its limit.
  const Tokenizer& tokenizer = *model_->tokenizer;
  const std::vector<BatchDecodeOutput> free_run =
      decode_with_teacher_top_k(model, tokenizer, rows, {}, 5, nullptr);
  for (const BatchDecodeOutput& output : free_run) {
    ASSERT_EQ(output.token_ids.size(), 12u);
    EXPECT_FALSE(output.stopped);
  }
  // Stop on row 0's 4th token: row 0 ends there with the stop token kept (and its top-k row), row 1 ends at
  // that token's first occurrence if it has one.
  const int32_t stop = free_run[0].token_ids[3];
  const std::vector<BatchDecodeOutput> stopped =
      decode_with_teacher_top_k(model, tokenizer, rows, {stop}, 5, nullptr);
  for (size_t row = 0; row < 2; ++row) {
    const std::vector<int32_t>& all = free_run[row].token_ids;
    const auto first_stop = std::find(all.begin(), all.end(), stop);
    const size_t expected_length = first_stop == all.end() ? all.size() : (first_stop - all.begin()) + 1;
    ASSERT_EQ(stopped[row].token_ids, std::vector<int32_t>(all.begin(), all.begin() + expected_length))
        << row;
    EXPECT_EQ(stopped[row].stopped, first_stop != all.end());
    ASSERT_EQ(stopped[row].top_ids.size(), expected_length * 5);
    EXPECT_TRUE(
        std::equal(stopped[row].top_ids.begin(), stopped[row].top_ids.end(), free_run[row].top_ids.begin()));
  }
  EXPECT_TRUE(stopped[0].stopped);
}

}  // namespace
}  // namespace cartridge
