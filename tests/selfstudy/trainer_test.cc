// Self-study training against the PEFT reference (tests/fixtures/make_selfstudy.py, same test run): one
// step's loss and gradient, 20 Adam steps, the held-out KL; plus exact resume, micro-batching, bf16, the
// data order, and the training outputs.
#include "selfstudy/training_run.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cartridge/adapter_io.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "selfstudy/loss.h"
#include "test_support.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;
using testing::fixture_path;

at::Tensor read_tensor(const std::string& path, const std::string& name) {
  const SafetensorsFile file(path);
  const SafetensorsTensorInfo* info = file.find(name);
  if (info == nullptr) {
    ADD_FAILURE() << "no tensor " << name << " in " << path;
    return {};
  }
  const at::ScalarType dtype = info->dtype == SafetensorsDType::F64 ? at::kDouble : at::kFloat;
  return at::from_blob(const_cast<uint8_t*>(file.data(*info)), info->shape, at::TensorOptions().dtype(dtype))
      .clone();
}

nlohmann::json expected_json() {
  return nlohmann::json::parse(read_text_file(fixture_path("selfstudy/expected.json")));
}

std::shared_ptr<const Model> tiny_model(at::ScalarType dtype = at::kFloat) {
  LoadOptions options;
  options.dtype = dtype;
  options.show_progress = false;
  return Model::load(resolve_model_files(fixture_path("selfstudy/model")), options);
}

Cartridge initial_cartridge_fixture() {
  return load_adapter(fixture_path("selfstudy/init_adapter")).cartridge;
}

std::vector<const Conversation*> all_of(const Dataset& dataset) {
  std::vector<const Conversation*> pointers;
  for (const Conversation& conversation : dataset.conversations) pointers.push_back(&conversation);
  return pointers;
}

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    folder_ = fs::temp_directory_path() / ("cartridge_trainer_test_" + std::to_string(::getpid()) + "_" +
                                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(folder_);
    fs::create_directories(folder_);
  }
  void TearDown() override { fs::remove_all(folder_); }

  TrainingOptions options(const std::string& name) const {
    TrainingOptions options;
    options.output_dir = (folder_ / name).string();
    options.show_progress = false;
    options.handle_interrupt = false;
    options.model_name = "tiny";
    return options;
  }

  fs::path folder_;
};

TEST_F(TrainerTest, StepOneLossAndGradientEqualPeft) {
  const auto model = tiny_model();
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  const Cartridge cartridge = initial_cartridge_fixture();
  const at::Tensor frozen = cartridge.frozen_embedding().clone();
  const at::Tensor trainable = cartridge.trainable_embedding().clone().set_requires_grad(true);
  const KvPrefix prefix = kv_prefix_from_prompt_embeddings(at::cat({frozen, trainable}, 0), model->config(),
                                                           at::kFloat, at::kCPU);
  const StudentBatch batch = make_student_batch(all_of(dataset), dataset.header.top_k, at::kCPU);
  const BatchScores scores = score_student_batch(*model, &prefix, batch, /*with_kl=*/false);
  const at::Tensor loss = scores.cross_entropy_sum / static_cast<double>(scores.positions);
  loss.backward();

  const nlohmann::json expected = expected_json();
  EXPECT_NEAR(loss.item<double>(), expected["step1_loss"].get<double>(), 1e-5);
  const at::Tensor reference = read_tensor(fixture_path("selfstudy/expected.safetensors"), "grad_trainable");
  ASSERT_TRUE(trainable.grad().defined());
  ASSERT_EQ(trainable.grad().sizes(), reference.sizes());
  EXPECT_LE((trainable.grad() - reference).abs().max().item<double>(), 1e-5);
  // The model itself never gets a gradient (its weights do not require one), and the frozen rows neither.
  EXPECT_FALSE(frozen.grad().defined());
  // A real gradient, not zeros.
  EXPECT_GT(reference.abs().max().item<double>(), 1e-4);
}

TEST_F(TrainerTest, TwentyAdamStepsTrackPeft) {
  const auto model = tiny_model();
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  const nlohmann::json expected = expected_json();
  TrainingOptions training = options("adam");
  training.steps = expected["adam_steps"].get<int64_t>();
  training.batch_size =
      static_cast<int64_t>(dataset.conversations.size());  // every step sees the whole dataset
  training.eval_fraction = 0;
  training.learning_rate = expected["learning_rate"].get<double>();
  const TrainingResult result = train_cartridge(model, initial_cartridge_fixture(), dataset, training);

  const at::Tensor reference = read_tensor(fixture_path("selfstudy/expected.safetensors"), "adam_losses");
  ASSERT_EQ(static_cast<int64_t>(result.history.size()), reference.size(0));
  for (int64_t step = 0; step < reference.size(0); ++step) {
    EXPECT_NEAR(result.history[step].loss, reference[step].item<double>(), 1e-4) << "step " << step + 1;
  }
  // Training did something: the loss went down.
  EXPECT_LT(result.history.back().loss, result.history.front().loss - 0.1);

  // The written adapter (the output folder itself) holds the final parameters, close to PEFT's.
  const LoadedAdapter written = load_adapter(training.output_dir);
  const at::Tensor final_reference =
      read_tensor(fixture_path("selfstudy/expected.safetensors"), "final_prompt_embeddings");
  EXPECT_LE((written.cartridge.prompt_embeddings() - final_reference).abs().max().item<double>(), 1e-3);
  // The frozen row never moved.
  EXPECT_TRUE(
      at::equal(written.cartridge.frozen_embedding(), initial_cartridge_fixture().frozen_embedding()));
  EXPECT_TRUE(fs::exists(fs::path(training.output_dir) / "checkpoint-20" / "trainer_state.json"));
  EXPECT_TRUE(fs::exists(fs::path(training.output_dir) / "loss.csv"));
  EXPECT_TRUE(fs::exists(fs::path(training.output_dir) / "loss.svg"));
}

TEST_F(TrainerTest, HeldoutKlEqualsPeft) {
  const auto model = tiny_model();
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  const Cartridge cartridge = initial_cartridge_fixture();
  const KvPrefix prefix = cartridge.kv_prefix(model->config(), at::kFloat, at::kCPU);
  // Small micro-batches: the result must not depend on how the conversations are grouped.
  const auto [kl, positions] = mean_heldout_kl(*model, &prefix, all_of(dataset), dataset.header.top_k, 40);
  EXPECT_NEAR(kl, expected_json()["kl_initial"].get<double>(), 1e-5);
  int64_t targets = 0;
  for (const Conversation& conversation : dataset.conversations) targets += conversation.num_targets();
  EXPECT_EQ(positions, targets);
}

TEST_F(TrainerTest, ResumeContinuesExactly) {
  const auto model = tiny_model();
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  TrainingOptions straight = options("straight");
  straight.steps = 7;
  straight.batch_size = 3;
  straight.eval_fraction = 0.25;
  straight.eval_every = 2;
  straight.checkpoint_every = 2;
  const TrainingResult uninterrupted = train_cartridge(model, initial_cartridge_fixture(), dataset, straight);

  TrainingOptions stopped = straight;
  stopped.output_dir = (folder_ / "resumed").string();
  stopped.steps = 3;  // as if stopped after step 3 (a checkpoint is written at the last step)
  train_cartridge(model, initial_cartridge_fixture(), dataset, stopped);
  TrainingOptions resumed = stopped;
  resumed.steps = 7;
  resumed.resume = true;
  // A different initial cartridge must not matter: the checkpoint wins.
  const Cartridge other = Cartridge::random(initial_cartridge_fixture().shape(), 6, 1, 99);
  const TrainingResult continued = train_cartridge(model, other, dataset, resumed);

  ASSERT_EQ(continued.history.size(), uninterrupted.history.size());
  for (size_t index = 0; index < continued.history.size(); ++index) {
    EXPECT_EQ(continued.history[index].loss, uninterrupted.history[index].loss) << "step " << index + 1;
  }
  // Every evaluation of the uninterrupted run is in the resumed one with the same value (the shorter run
  // also evaluated at its own last step, 3).
  for (const EvaluationEntry& evaluation : uninterrupted.evaluations) {
    const auto same_step =
        std::find_if(continued.evaluations.begin(), continued.evaluations.end(),
                     [&](const EvaluationEntry& other) { return other.step == evaluation.step; });
    ASSERT_NE(same_step, continued.evaluations.end()) << "no evaluation at step " << evaluation.step;
    EXPECT_EQ(same_step->heldout_kl, evaluation.heldout_kl) << "step " << evaluation.step;
  }
  EXPECT_EQ(read_text_file(straight.output_dir + "/adapter_model.safetensors"),
            read_text_file(resumed.output_dir + "/adapter_model.safetensors"));
  EXPECT_EQ(continued.heldout_indices, uninterrupted.heldout_indices);
  // Only the newest checkpoints are kept.
  EXPECT_FALSE(fs::exists(straight.output_dir + "/checkpoint-2"));
  EXPECT_TRUE(fs::exists(straight.output_dir + "/checkpoint-6"));
  EXPECT_TRUE(fs::exists(straight.output_dir + "/checkpoint-7"));
}

TEST_F(TrainerTest, RefusesToMixRuns) {
  const auto model = tiny_model();
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  TrainingOptions first = options("run");
  first.steps = 1;
  first.batch_size = 2;
  train_cartridge(model, initial_cartridge_fixture(), dataset, first);
  // Same folder without --resume: refused, nothing overwritten.
  EXPECT_THROW(train_cartridge(model, initial_cartridge_fixture(), dataset, first), InvalidArgumentError);
  // Resume with another batch size: refused with the difference named.
  TrainingOptions other = first;
  other.resume = true;
  other.steps = 2;
  other.batch_size = 3;
  try {
    train_cartridge(model, initial_cartridge_fixture(), dataset, other);
    ADD_FAILURE() << "resuming with other settings was accepted";
  } catch (const MismatchError& error) {
    EXPECT_NE(std::string(error.what()).find("batch_size"), std::string::npos) << error.what();
  }
  TrainingOptions bad = options("bad");
  bad.steps = 0;
  EXPECT_THROW(train_cartridge(model, initial_cartridge_fixture(), dataset, bad), InvalidArgumentError);
  EXPECT_FALSE(fs::exists(bad.output_dir + "/adapter_model.safetensors"));
}

TEST_F(TrainerTest, MicroBatchingGivesTheSameLoss) {
  const auto model = tiny_model();
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  TrainingOptions whole = options("whole");
  whole.steps = 3;
  whole.batch_size = 4;
  whole.eval_fraction = 0;
  whole.max_batch_tokens = 0;
  TrainingOptions pieces = whole;
  pieces.output_dir = (folder_ / "pieces").string();
  pieces.max_batch_tokens = 30;  // one or two conversations per pass
  const TrainingResult a = train_cartridge(model, initial_cartridge_fixture(), dataset, whole);
  const TrainingResult b = train_cartridge(model, initial_cartridge_fixture(), dataset, pieces);
  for (size_t index = 0; index < a.history.size(); ++index) {
    EXPECT_NEAR(a.history[index].loss, b.history[index].loss, 1e-5);
  }
}

TEST_F(TrainerTest, Bf16ComputeWithFp32ParametersIsClose) {
  const Dataset dataset = read_dataset(fixture_path("selfstudy/dataset.jsonl"));
  TrainingOptions fp32 = options("fp32");
  fp32.steps = 3;
  fp32.batch_size = 8;
  fp32.eval_fraction = 0;
  TrainingOptions bf16 = fp32;
  bf16.output_dir = (folder_ / "bf16").string();
  const TrainingResult a =
      train_cartridge(tiny_model(at::kFloat), initial_cartridge_fixture(), dataset, fp32);
  const TrainingResult b =
      train_cartridge(tiny_model(at::kBFloat16), initial_cartridge_fixture(), dataset, bf16);
  for (size_t index = 0; index < a.history.size(); ++index) {
    EXPECT_NEAR(a.history[index].loss, b.history[index].loss, 0.05 * std::abs(a.history[index].loss));
  }
  // Parameters stay float32 on disk.
  EXPECT_EQ(load_adapter(bf16.output_dir).stored_dtype, SafetensorsDType::F32);
}

TEST(TrainerDataOrder, EveryConversationOncePerEpochAndReproducible) {
  const int64_t count = 10, batch = 4;
  std::multiset<int64_t> first_epochs;
  for (int64_t step = 1; step <= 5; ++step) {  // 20 slots = two epochs
    const std::vector<int64_t> indices = batch_for_step(count, batch, 7, step);
    EXPECT_EQ(indices, batch_for_step(count, batch, 7, step));
    first_epochs.insert(indices.begin(), indices.end());
  }
  for (int64_t index = 0; index < count; ++index) EXPECT_EQ(first_epochs.count(index), 2u) << index;
  EXPECT_NE(batch_for_step(count, batch, 7, 1), batch_for_step(count, batch, 8, 1));
}

TEST(TrainerDataOrder, HeldoutSplit) {
  EXPECT_TRUE(heldout_indices(1, 0.5, 10, 0).empty());
  EXPECT_TRUE(heldout_indices(100, 0, 10, 0).empty());
  const std::vector<int64_t> split = heldout_indices(100, 0.05, 64, 3);
  EXPECT_EQ(split.size(), 5u);
  EXPECT_TRUE(std::is_sorted(split.begin(), split.end()));
  EXPECT_EQ(split, heldout_indices(100, 0.05, 64, 3));
  EXPECT_EQ(heldout_indices(100, 0.5, 8, 3).size(), 8u);  // capped
  EXPECT_EQ(heldout_indices(2, 0.9, 64, 3).size(), 1u);   // at least one left to train on
}

TEST(TrainerLoss, KlIsCrossEntropyMinusTeacherEntropyAndZeroAtTheTeacher) {
  // The student equal to the teacher (one-hot over 2 of 4 tokens summing to 1): KL = 0.
  const at::Tensor logits = at::log(at::tensor({0.75f, 0.25f, 1e-30f, 1e-30f})).view({1, 4});
  const at::Tensor ids = at::tensor({0, 1}, at::kLong).view({1, 2});
  const at::Tensor log_probs = at::log(at::tensor({0.75f, 0.25f})).view({1, 2});
  EXPECT_NEAR(truncated_kl(distillation_cross_entropy(logits, ids, log_probs), log_probs).item<double>(), 0.0,
              1e-6);
  // A padding entry (log-probability -inf) contributes nothing.
  const at::Tensor padded_ids = at::tensor({0, 1, 3}, at::kLong).view({1, 3});
  const at::Tensor padded = at::tensor({std::log(0.75f), std::log(0.25f), -INFINITY}).view({1, 3});
  EXPECT_NEAR(truncated_kl(distillation_cross_entropy(logits, padded_ids, padded), padded).item<double>(),
              0.0, 1e-6);
  EXPECT_TRUE(std::isfinite(distillation_cross_entropy(logits, padded_ids, padded).item<double>()));
}

TEST(TrainerOutputs, CsvAndSvg) {
  const std::vector<TrainingHistoryEntry> history = {{1, 2.5, 100, 50, 0.5}, {2, 2.0, 100, 50, 0.5}};
  const std::vector<EvaluationEntry> evaluations = {{0, 1.5, 20}, {2, 1.25, 20}};
  EXPECT_EQ(loss_csv(history, evaluations),
            "step,loss,tokens,positions,seconds,heldout_kl,validation_answer_nll\n0,,,,,1.5,\n1,2.5,100,50,0."
            "5000,,\n"
            "2,2,100,50,0.5000,1.25,\n");
  const std::string svg = loss_svg(history, evaluations);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("held-out KL"), std::string::npos);
  EXPECT_EQ(svg.find("validation answer NLL"), std::string::npos);  // no panel without validation questions
  // With validation questions and nothing held out: the KL cell is empty, the NLL cell filled.
  const std::vector<EvaluationEntry> validated = {{0, std::nan(""), 0, 3.5}, {2, std::nan(""), 0, 3.25}};
  EXPECT_EQ(loss_csv(history, validated),
            "step,loss,tokens,positions,seconds,heldout_kl,validation_answer_nll\n0,,,,,,3.5\n1,2.5,100,50,0."
            "5000,,\n"
            "2,2,100,50,0.5000,,3.25\n");
  EXPECT_NE(loss_svg(history, validated).find("validation answer NLL"), std::string::npos);
}

}  // namespace
}  // namespace cartridge
