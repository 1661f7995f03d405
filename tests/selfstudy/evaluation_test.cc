// `cartridge eval`'s library against transformers + PEFT (tests/fixtures/make_selfstudy.py, same test
// run): answer NLL with no context, with the corpus in context, and with a PEFT-saved cartridge; held-out
// KL equals the trainer's; QA file errors.
#include "selfstudy/evaluation.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cartridge/adapter_io.h"
#include "selfstudy/trainer.h"
#include "test_support.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;
using testing::fixture_path;

LoadedModel tiny_loaded_model() {
  LoadOptions options;
  options.show_progress = false;
  return load_model(fixture_path("selfstudy/model"), options);
}

TEST(Evaluation, AnswerNllEqualsTransformersForEveryCondition) {
  const LoadedModel model = tiny_loaded_model();
  const std::vector<QuestionAnswer> questions = read_question_answers(fixture_path("selfstudy/qa.jsonl"));
  ASSERT_EQ(questions.size(), 3u);
  const std::string corpus = read_text_file(fixture_path("selfstudy/corpus.txt"));
  const Cartridge cartridge = load_adapter(fixture_path("selfstudy/init_adapter")).cartridge;
  std::vector<EvaluationCondition> conditions = {
      {"no context", ContextKind::kNone, nullptr, ""},
      {"ICL", ContextKind::kInContext, nullptr, corpus},
      {"init", ContextKind::kCartridge, cartridge.kv_prefix_for(*model.model), ""},
  };
  EvaluationOptions options;
  options.show_progress = false;
  options.max_batch_tokens = 50;  // several passes
  const std::vector<ConditionScore> scores = evaluate_conditions(model, questions, {}, 20, conditions, options);
  ASSERT_EQ(scores.size(), 3u);
  const nlohmann::json expected =
      nlohmann::json::parse(read_text_file(fixture_path("selfstudy/expected.json")))["eval"];
  const char* keys[] = {"no_context", "icl", "cartridge"};
  for (size_t condition = 0; condition < 3; ++condition) {
    const std::vector<double> reference = expected[keys[condition]].get<std::vector<double>>();
    ASSERT_EQ(scores[condition].question_nlls.size(), reference.size()) << keys[condition];
    double mean = 0;
    for (size_t question = 0; question < reference.size(); ++question) {
      EXPECT_NEAR(scores[condition].question_nlls[question], reference[question], 1e-4)
          << keys[condition] << " question " << question;
      mean += reference[question] / static_cast<double>(reference.size());
    }
    EXPECT_NEAR(scores[condition].answer_nll, mean, 1e-4) << keys[condition];
  }
  for (const ConditionScore& score : scores) {
    EXPECT_TRUE(score.skipped.empty()) << score.skipped;
    EXPECT_TRUE(std::isnan(score.heldout_kl));
    EXPECT_GT(score.answer_tokens, 0);
  }
  const int64_t per_token = model.model->config().kv_bytes_per_token(at::kFloat);
  EXPECT_EQ(scores[0].context_tokens, 0);
  EXPECT_EQ(scores[2].context_tokens, 6);
  EXPECT_EQ(scores[2].context_kv_bytes, 6 * per_token);
  // The corpus turn: at least the corpus's own tokens.
  EXPECT_GE(scores[1].context_tokens,
            static_cast<int64_t>(model.tokenizer->encode(corpus, /*add_special_tokens=*/false).size()));
  EXPECT_EQ(scores[1].context_kv_bytes, scores[1].context_tokens * per_token);

  const std::string table = format_evaluation_table(scores);
  EXPECT_NE(table.find("ICL"), std::string::npos);
  const nlohmann::json json = evaluation_to_json(scores);
  EXPECT_EQ(json["conditions"].size(), 3u);
  EXPECT_TRUE(json["conditions"][0]["heldout_kl"].is_null());
}

TEST(Evaluation, HeldoutKlEqualsTheTrainersAndPeft) {
  const LoadedModel model = tiny_loaded_model();
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  std::vector<const Conversation*> heldout;
  for (const Conversation& conversation : dataset.conversations) heldout.push_back(&conversation);
  const Cartridge cartridge = load_adapter(fixture_path("selfstudy/init_adapter")).cartridge;
  EvaluationOptions options;
  options.show_progress = false;
  const std::vector<ConditionScore> scores = evaluate_conditions(
      model, {}, heldout, dataset.header.top_k,
      {{"init", ContextKind::kCartridge, cartridge.kv_prefix_for(*model.model), ""}}, options);
  ASSERT_EQ(scores.size(), 1u);
  const nlohmann::json expected = nlohmann::json::parse(read_text_file(fixture_path("selfstudy/expected.json")));
  EXPECT_NEAR(scores[0].heldout_kl, expected["kl_initial"].get<double>(), 1e-5);
  EXPECT_TRUE(std::isnan(scores[0].answer_nll));
}

TEST(Evaluation, SkipsAContextBeyondTheModel) {
  const LoadedModel model = tiny_loaded_model();
  std::string long_corpus;
  for (int i = 0; i < 400; ++i) long_corpus += "The lighthouse of Varnholm stands on a granite spit. ";
  EvaluationOptions options;
  options.show_progress = false;
  const std::vector<ConditionScore> scores =
      evaluate_conditions(model, {{"q?", "a."}}, {}, 20, {{"ICL", ContextKind::kInContext, nullptr, long_corpus}},
                          options);
  ASSERT_EQ(scores.size(), 1u);
  EXPECT_NE(scores[0].skipped.find("context"), std::string::npos) << scores[0].skipped;
}

TEST(Evaluation, QuestionFileErrorsNameFileAndLine) {
  const fs::path folder = fs::temp_directory_path() / ("cartridge_eval_test_" + std::to_string(::getpid()));
  fs::create_directories(folder);
  const std::string path = (folder / "qa.jsonl").string();
  std::ofstream(path) << "{\"question\": \"q\", \"answer\": \"a\"}\n\n{\"question\": \"q\"}\n";
  try {
    read_question_answers(path);
    ADD_FAILURE() << "a line without an answer was accepted";
  } catch (const FormatError& error) {
    EXPECT_NE(std::string(error.what()).find("line 3"), std::string::npos) << error.what();
  }
  std::ofstream(path) << "not json\n";
  EXPECT_THROW(read_question_answers(path), FormatError);
  EXPECT_THROW(read_question_answers((folder / "missing.jsonl").string()), FileNotFoundError);
  fs::remove_all(folder);
}

}  // namespace
}  // namespace cartridge
