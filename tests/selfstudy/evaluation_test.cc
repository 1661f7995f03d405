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
#include "selfstudy/training_run.h"
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
  const std::vector<ConditionScore> scores =
      evaluate_conditions(model, questions, {}, 20, conditions, options);
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
  const nlohmann::json expected =
      nlohmann::json::parse(read_text_file(fixture_path("selfstudy/expected.json")));
  EXPECT_NEAR(scores[0].heldout_kl, expected["kl_initial"].get<double>(), 1e-5);
  EXPECT_TRUE(std::isnan(scores[0].answer_nll));
}

// Early stopping on validation questions: the trainer's score of the initial cartridge is transformers'
// answer NLL with the PEFT cartridge (the fixture's eval/cartridge), every later score is what
// `cartridge eval` gives that step's checkpoint, and <out>/best/ is the checkpoint with the lowest one.
TEST(Evaluation, ValidationQuestionsDuringTrainingKeepTheBestAdapter) {
  const LoadedModel model = tiny_loaded_model();
  const std::vector<QuestionAnswer> questions = read_question_answers(fixture_path("selfstudy/qa.jsonl"));
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  const Cartridge initial = load_adapter(fixture_path("selfstudy/init_adapter")).cartridge;
  const fs::path out =
      fs::temp_directory_path() / ("cartridge_validation_test_" + std::to_string(::getpid()));
  fs::remove_all(out);
  TrainingOptions options;
  options.output_dir = out.string();
  options.steps = 16;
  options.batch_size = 2;
  options.learning_rate = 0.2;  // large enough that the score first falls, then rises on this tiny model
  options.eval_fraction = 0.25;
  options.eval_every = 1;
  options.checkpoint_every = 1;
  options.keep_checkpoints = 100;
  options.show_progress = false;
  options.handle_interrupt = false;
  options.validation_questions = question_answer_rows(model, questions, Framing::kNewChat);
  ASSERT_EQ(options.validation_questions.size(), questions.size());
  const TrainingResult result = train_cartridge(model.model, initial, dataset, options);

  ASSERT_EQ(result.evaluations.size(), 17u);  // steps 0..16
  const std::vector<double> reference =
      nlohmann::json::parse(read_text_file(fixture_path("selfstudy/expected.json")))["eval"]["cartridge"]
          .get<std::vector<double>>();
  double reference_mean = 0;
  for (const double value : reference) reference_mean += value / static_cast<double>(reference.size());
  EXPECT_NEAR(result.evaluations[0].validation_answer_nll, reference_mean, 1e-4);

  EvaluationOptions evaluation;
  evaluation.show_progress = false;
  int64_t lowest_step = -1;
  double lowest = 0;
  for (const EvaluationEntry& entry : result.evaluations) {
    ASSERT_TRUE(std::isfinite(entry.validation_answer_nll)) << "step " << entry.step;
    EXPECT_TRUE(std::isfinite(entry.heldout_kl)) << "step " << entry.step;
    if (lowest_step < 0 || entry.validation_answer_nll < lowest) {
      lowest_step = entry.step;
      lowest = entry.validation_answer_nll;
    }
    if (entry.step == 0) continue;
    const std::string checkpoint = out.string() + "/checkpoint-" + std::to_string(entry.step);
    const Cartridge trained = load_adapter(checkpoint).cartridge;
    const std::vector<ConditionScore> scores = evaluate_conditions(
        model, questions, {}, 1, {{"step", ContextKind::kCartridge, trained.kv_prefix_for(*model.model), ""}},
        evaluation);
    EXPECT_NEAR(entry.validation_answer_nll, scores[0].answer_nll, 1e-5) << "step " << entry.step;
  }
  EXPECT_GT(lowest_step, 0)
      << "training never beat the initialisation: the test does not exercise early stopping";
  EXPECT_LT(lowest_step, 16) << "the last step was the best: the test does not exercise early stopping";
  EXPECT_EQ(result.best_step, lowest_step);
  EXPECT_EQ(result.best_validation_answer_nll, lowest);
  const nlohmann::json best =
      nlohmann::json::parse(read_text_file(out.string() + "/best/best_validation.json"));
  EXPECT_EQ(best["step"].get<int64_t>(), lowest_step);
  EXPECT_EQ(best["validation_answer_nll"].get<double>(), lowest);
  EXPECT_EQ(read_text_file(out.string() + "/best/adapter_model.safetensors"),
            read_text_file(out.string() + "/checkpoint-" + std::to_string(lowest_step) +
                           "/adapter_model.safetensors"));
  // The folder's adapter is best/'s (keep_best, the default); the last checkpoint stays the last step's.
  EXPECT_TRUE(result.kept_best);
  EXPECT_TRUE(read_text_file(out.string() + "/adapter_model.safetensors") ==
              read_text_file(out.string() + "/best/adapter_model.safetensors"));
  EXPECT_TRUE(read_text_file(out.string() + "/checkpoint-16/adapter_model.safetensors") !=
              read_text_file(out.string() + "/best/adapter_model.safetensors"));
  EXPECT_NE(read_text_file(out.string() + "/loss.csv").find("validation_answer_nll"), std::string::npos);
  EXPECT_NE(read_text_file(out.string() + "/loss.svg").find("validation answer NLL"), std::string::npos);

  // Resuming with other validation questions is refused: the best so far was chosen on these.
  TrainingOptions other = options;
  other.steps = 17;
  other.resume = true;
  other.validation_questions.pop_back();
  EXPECT_THROW(train_cartridge(model.model, initial, dataset, other), MismatchError);
  fs::remove_all(out);
}

TEST(Evaluation, SkipsAContextBeyondTheModel) {
  const LoadedModel model = tiny_loaded_model();
  std::string long_corpus;
  for (int i = 0; i < 400; ++i) long_corpus += "The lighthouse of Varnholm stands on a granite spit. ";
  EvaluationOptions options;
  options.show_progress = false;
  const std::vector<ConditionScore> scores = evaluate_conditions(
      model, {{"q?", "a."}}, {}, 20, {{"ICL", ContextKind::kInContext, nullptr, long_corpus}}, options);
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
