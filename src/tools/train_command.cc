// `cartridge train`: trains a cartridge on a self-study dataset (context distillation), writing PEFT
// adapters, checkpoints and loss curves; resumable.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cartridge/fingerprint.h"
#include "io/model_files.h"
#include "selfstudy/evaluation.h"
#include "selfstudy/process_group.h"
#include "selfstudy/sha256.h"
#include "selfstudy/study.h"
#include "tools/commands.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge::tools {

namespace {

struct TrainCommandOptions {
  ModelOptions model;
  std::string dataset;
  std::string corpus;
  std::string out;
  std::string init = "text";
  int64_t tokens = 0;
  int64_t frozen = 1;
  TrainingOptions training;
  std::string validation_qa;
  double distributed_timeout = kDefaultDistributedTimeoutSeconds;
  bool json = false;
};

std::string dataset_file(const std::string& spec) {
  if (std::filesystem::is_directory(spec))
    return (std::filesystem::path(spec) / kStudyDatasetFileName).string();
  return spec;
}

// Warnings for a dataset made from another corpus or by another model (training still runs).
void warn_about_dataset(const DatasetHeader& header, const std::string& corpus_text,
                        const LoadedModel& loaded, const std::string& dataset_path) {
  if (!corpus_text.empty() && sha256_hex(corpus_text) != header.corpus_sha256) {
    std::fprintf(stderr, "warning: %s was synthesized from another corpus than --corpus (SHA-256 differs)\n",
                 dataset_path.c_str());
  }
  ModelFingerprint fingerprint = fingerprint_model(loaded.files, loaded.model->config());
  nlohmann::json ours = fingerprint.to_json();
  ours.erase("model_name");
  nlohmann::json theirs = header.model_fingerprint;
  if (theirs.is_object()) theirs.erase("model_name");
  if (ours != theirs) {
    std::fprintf(
        stderr,
        "warning: %s was synthesized by another model (%s); a cartridge only works with the model whose "
        "teacher made its data\n",
        dataset_path.c_str(), header.model.c_str());
  }
}

// How many of each step's `batch_size` conversations every rank trains on (rank_share_of_batch).
std::vector<int64_t> batch_shares(int64_t batch_size, const ProcessGroup& ranks) {
  std::vector<int64_t> shares(ranks.world_size(), 0);
  for (int64_t position = 0; position < batch_size; ++position) ++shares[position % ranks.world_size()];
  return shares;
}

void print_summary(const TrainingResult& result, const std::string& out, const std::string& model,
                   const ProcessGroup& ranks, int64_t batch_size, bool json) {
  const double final_loss = result.history.empty() ? NAN : result.history.back().loss;
  const double first_kl = result.evaluations.empty() ? NAN : result.evaluations.front().heldout_kl;
  const double last_kl = result.evaluations.empty() ? NAN : result.evaluations.back().heldout_kl;
  if (json) {
    nlohmann::json output = {{"adapter", out},
                             {"steps", result.steps_done},
                             {"interrupted", result.interrupted},
                             {"final_loss", json_number(final_loss)},
                             {"initial_heldout_kl", json_number(first_kl)},
                             {"final_heldout_kl", json_number(last_kl)},
                             {"heldout_conversations", result.heldout_indices.size()}};
    add_best_summary(output, result, out);
    add_world_summary(output, ranks, "rank_batch_conversations", batch_shares(batch_size, ranks));
    std::cout << output.dump() << std::endl;
    return;
  }
  std::printf("step %lld: loss %.4f", static_cast<long long>(result.steps_done), final_loss);
  if (std::isfinite(last_kl)) {
    std::printf(", held-out KL %.4f (step %lld: %.4f)", last_kl,
                static_cast<long long>(result.evaluations.front().step), first_kl);
  }
  std::printf("\ncartridge: %s (PEFT adapter; loss curve in %s/loss.svg)\n", out.c_str(), out.c_str());
  print_best_summary(result, out);
  if (!result.interrupted) {
    const std::string use = adapter_to_use(result, out);
    std::printf("chat with it:  cartridge chat --model %s --cartridge %s\n", model.c_str(), use.c_str());
  }
}

void run_train(TrainCommandOptions& options) {
  const std::string dataset_path = dataset_file(options.dataset);
  const Dataset dataset = read_dataset(dataset_path);  // fails fast, before the model loads
  const bool needs_corpus = options.init == "text" || options.init == "attention-matching";
  if (needs_corpus && options.corpus.empty()) {
    throw InvalidArgumentError(
        "--init " + options.init +
        " starts from the corpus: give --corpus FILE, or use --init random / --init ADAPTER_DIR");
  }
  const std::string corpus_text = options.corpus.empty() ? std::string() : read_text_file(options.corpus);
  const std::string previous_run = latest_checkpoint(options.out);
  if (!options.training.resume && !previous_run.empty()) {
    throw InvalidArgumentError(
        describe_file_problem(options.out,
                              "already holds training checkpoints (" +
                                  std::filesystem::path(previous_run).filename().string() + ")",
                              "pass --resume to continue that run, or choose another --out folder"));
  }
  const std::vector<QuestionAnswer> validation = options.validation_qa.empty()
                                                     ? std::vector<QuestionAnswer>()
                                                     : read_question_answers(options.validation_qa);
  const std::shared_ptr<const ProcessGroup> ranks = join_ranks(options.distributed_timeout, options.model);
  const LoadedModel loaded = load_model_from_options(options.model);
  if (ranks->writes()) warn_about_dataset(dataset.header, corpus_text, loaded, dataset_path);
  // Scored as the cartridge will be used: in the framing its student sequences have.
  options.training.validation_questions =
      question_answer_rows(loaded, validation, dataset_framing(dataset.header));

  CartridgeInit init;
  init.source = options.init;
  init.num_virtual_tokens = options.tokens;
  init.num_frozen_tokens = options.frozen;
  init.seed = options.training.seed;
  init.framing = dataset_framing(dataset.header);  // the framing the cartridge is trained (and used) in
  if ((needs_corpus || init.source == "random") && init.num_virtual_tokens == 0) {
    init.num_virtual_tokens = default_cartridge_tokens(dataset.header.corpus_tokens);
    if (!options.model.quiet) {
      std::fprintf(stderr,
                   "cartridge size: %lld tokens (1/8 of the %lld-token corpus; set it with --tokens)\n",
                   static_cast<long long>(init.num_virtual_tokens),
                   static_cast<long long>(dataset.header.corpus_tokens));
    }
  }
  const Cartridge initial = initial_cartridge(loaded, corpus_text, init);

  TrainingOptions& training = options.training;
  training.output_dir = options.out;
  training.show_progress = !options.model.quiet;
  training.model_name = options.model.model;
  training.fingerprint = fingerprint_model(loaded.files, loaded.model->config());
  training.process_group = ranks;
  if (ranks->distributed() && !options.model.quiet) {
    const std::vector<int64_t> shares = batch_shares(training.batch_size, *ranks);
    std::fprintf(stderr, "training across %lld processes: each step's %lld conversations split %s\n",
                 static_cast<long long>(ranks->world_size()), static_cast<long long>(training.batch_size),
                 fmt::format("{}", fmt::join(shares, " + ")).c_str());
  }
  const TrainingResult result = train_cartridge(loaded.model, initial, dataset, training);
  if (ranks->writes())
    print_summary(result, options.out, options.model.model, *ranks, training.batch_size, options.json);
}

}  // namespace

void add_training_options(CLI::App& command, TrainingOptions& training) {
  command
      .add_option("--steps", training.steps, "Optimizer steps in total (a resumed run continues up to this)")
      ->capture_default_str()
      ->check(kPositive);
  command.add_option("--batch-size", training.batch_size, "Conversations per step")
      ->capture_default_str()
      ->check(kPositive);
  command.add_option("--lr", training.learning_rate, "Adam learning rate")->capture_default_str();
  command
      .add_option_function<std::string>(
          "--distill",
          [&training](const std::string& name) { training.distill = parse_distill_tokens(name); },
          "Tokens the loss covers: answer (the answer's, as the official v2) or conversation (the question's "
          "too, the paper's equation). A version 1 dataset has answer targets only")
      ->default_str(distill_tokens_name(training.distill));
  command
      .add_option(
          "--max-batch-tokens", training.max_batch_tokens,
          "Padded tokens per forward pass; a larger step is split and its gradients summed (0 = no limit)")
      ->capture_default_str()
      ->check(kNonNegative);
  command
      .add_option("--eval-fraction", training.eval_fraction,
                  "Fraction of the conversations held out and scored (KL to the teacher), never trained on")
      ->capture_default_str();
  command
      .add_option("--max-eval", training.max_eval_conversations, "At most this many held-out conversations")
      ->capture_default_str()
      ->check(kNonNegative);
  command
      .add_option("--eval-every", training.eval_every,
                  "Score the held-out conversations every N steps (0 = only at the start and the end)")
      ->capture_default_str()
      ->check(kNonNegative);
  command
      .add_option("--checkpoint-every", training.checkpoint_every,
                  "Write a checkpoint every N steps (0 = only at the end and on Ctrl-C)")
      ->capture_default_str()
      ->check(kNonNegative);
  command.add_option("--keep-checkpoints", training.keep_checkpoints, "Newest checkpoint folders kept")
      ->capture_default_str()
      ->check(kPositive);
  command
      .add_option_function<std::string>(
          "--keep",
          [&training](const std::string& name) {
            if (name != "best" && name != "last") {
              throw InvalidArgumentError("--keep must be best or last, got '" + name + "'");
            }
            training.keep_best = name == "best";
          },
          "The adapter --out holds after a finished run: best (the evaluated step with the lowest validation "
          "NLL, or without --validation-qa the lowest held-out KL; the initialisation counts) or last")
      ->default_str(training.keep_best ? "best" : "last");
}

void add_distributed_option(CLI::App& command, double& timeout_seconds) {
  command
      .add_option(
          "--distributed-timeout", timeout_seconds,
          "Under torchrun (docs/distributed.md): seconds a rank waits for the others (rendezvous, each "
          "collective, silence from a rank) before it stops with an error")
      ->capture_default_str()
      ->check(kPositive);
}

std::shared_ptr<const ProcessGroup> join_ranks(double timeout_seconds, ModelOptions& model_options) {
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000));
  std::shared_ptr<const ProcessGroup> ranks = ProcessGroup::from_environment(timeout);
  if (ranks->distributed()) {
    if (!model_options.quiet) {
      std::fprintf(stderr, "%s joined (torchrun; rank 0 writes the outputs)\n", ranks->describe().c_str());
    }
    if (!ranks->writes()) model_options.quiet = true;
  }
  return ranks;
}

void add_world_summary(nlohmann::json& output, const ProcessGroup& ranks, const std::string& share_name,
                       const std::vector<int64_t>& shares) {
  output["world_size"] = ranks.world_size();
  output[share_name] = shares;
}

nlohmann::json json_number(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json();
}

namespace {
// The evaluations' validation NLL at the first and the last evaluation (NaN without validation questions).
std::pair<double, double> first_and_last_validation(const TrainingResult& result) {
  if (!result.best_by_validation || result.evaluations.empty()) return {NAN, NAN};
  return {result.evaluations.front().validation_answer_nll, result.evaluations.back().validation_answer_nll};
}
}  // namespace

void add_best_summary(nlohmann::json& output, const TrainingResult& result, const std::string& out) {
  if (result.best_step < 0) return;
  output["best_adapter"] = out + "/" + kBestFolderName;
  output["best_step"] = result.best_step;
  output["best_by"] = result.best_by_validation ? "validation_answer_nll" : "heldout_kl";
  output["best_heldout_kl"] = json_number(result.best_heldout_kl);
  output["kept"] = result.kept_best ? "best" : "last";
  if (!result.best_by_validation) return;
  const auto [first, last] = first_and_last_validation(result);
  output["initial_validation_answer_nll"] = json_number(first);
  output["best_validation_answer_nll"] = json_number(result.best_validation_answer_nll);
  output["final_validation_answer_nll"] = json_number(last);
}

void print_best_summary(const TrainingResult& result, const std::string& out) {
  if (result.best_step < 0) return;
  const std::string kept = result.kept_best ? fmt::format("{} holds it (--keep last: the last step's)", out)
                                            : fmt::format("{}/{} holds it", out, kBestFolderName);
  if (result.best_by_validation) {
    const auto [first, last] = first_and_last_validation(result);
    std::printf("validation answer NLL: %.4f at step %lld, %.4f at the end; best %.4f at step %lld: %s\n",
                first, static_cast<long long>(result.evaluations.front().step), last,
                result.best_validation_answer_nll, static_cast<long long>(result.best_step), kept.c_str());
    return;
  }
  std::printf("lowest held-out KL: %.4f at step %lld: %s\n", result.best_heldout_kl,
              static_cast<long long>(result.best_step), kept.c_str());
}

std::string adapter_to_use(const TrainingResult& result, const std::string& out) {
  return result.best_step >= 0 && !result.kept_best && result.best_by_validation ? out + "/" + kBestFolderName
                                                                                 : out;
}

void add_validation_option(CLI::App& command, std::string& path) {
  command.add_option(
      "--validation-qa", path,
      "Questions about the document with reference answers (JSON Lines, as `cartridge eval --qa`): "
      "their answer NLL is scored at every evaluation and the best adapter kept in <out>/best/");
}

void add_train_command(CLI::App& app) {
  auto options = std::make_shared<TrainCommandOptions>();
  CLI::App* command = app.add_subcommand(
      "train",
      "Train a cartridge on a self-study dataset (distillation from the teacher's top-k log-probabilities)");
  command->footer(
      "The student is the model with the cartridge as its KV prefix and no document in context; the loss at\n"
      "each answer token (--distill conversation: question tokens too) is -sum_k p_teacher(k) log "
      "p_student(k)\n"
      "over the recorded top-k, averaged over those tokens of the batch. Only the cartridge's trainable "
      "rows\n"
      "change (Adam); the model is frozen.\n"
      "Output: --out holds the cartridge as a PEFT adapter, checkpoint-<step>/ folders (adapter +\n"
      "optimizer state), loss.csv and loss.svg. Ctrl-C saves a checkpoint after the current step; --resume\n"
      "continues exactly where a run stopped (also after a crash or kill, from the newest checkpoint).\n"
      "Which step: every evaluation scores the held-out conversations' KL to the teacher and, with\n"
      "--validation-qa QA.jsonl (questions you wrote, never trained on), their answer NLL (loss.csv). best/\n"
      "holds the adapter with the lowest so far (validation NLL if given, else held-out KL; the\n"
      "initialisation counts) with best_validation.json or best_heldout_kl.json naming its step, and after\n"
      "a finished run --out holds that adapter too (--keep last: the last step's).\n"
      "Example:\n  cartridge train --model " +
      std::string(kDefaultModelPath) +
      " --dataset "
      "study/dataset.jsonl \\\n"
      "    --corpus doc.txt --tokens 128 --steps 200 --out study/cartridge");
  options->model.trains = true;
  add_model_options(*command, options->model);
  command
      ->add_option("-d,--dataset", options->dataset,
                   "dataset.jsonl from `cartridge synthesize` (or its folder)")
      ->required();
  command
      ->add_option("-o,--out", options->out, "Output folder for the cartridge, checkpoints and loss curves")
      ->required();
  command->add_option("--corpus", options->corpus,
                      "The corpus the dataset was made from (needed by --init text)");
  command
      ->add_option(
          "--init", options->init,
          "Start from: text (KV of the corpus's first --tokens tokens; as the open system turn with the "
          "system_turn framing), attention-matching (the whole corpus compacted), random (N(0,1) rows as "
          "PEFT), or an adapter folder")
      ->capture_default_str();
  command->add_option(
      "-p,--tokens", options->tokens,
      "Cartridge size p in tokens (default: 1/8 of the corpus, 16..512; from the adapter for --init DIR)");
  command->add_option("--frozen", options->frozen, "Leading rows never trained (the attention sink)")
      ->capture_default_str()
      ->check(kNonNegative);
  add_training_options(*command, options->training);
  add_validation_option(*command, options->validation_qa);
  command
      ->add_option("--seed", options->training.seed,
                   "Seed of the data order, the held-out split and --init random")
      ->capture_default_str();
  command->add_flag(
      "--resume", options->training.resume,
      "Continue from the newest checkpoint in --out (with the same or another number of processes)");
  add_distributed_option(*command, options->distributed_timeout);
  command->add_flag(
      "--json", options->json,
      "Print one JSON object {adapter, steps, final_loss, initial_heldout_kl, final_heldout_kl, ...}");
  command->callback([options] { run_train(*options); });
}

}  // namespace cartridge::tools
