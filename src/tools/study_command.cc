// `cartridge study`: the whole method in one command: self-study synthesis, then training, then how to use
// the cartridge.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "io/model_files.h"
#include "selfstudy/evaluation.h"
#include "selfstudy/process_group.h"
#include "selfstudy/study.h"
#include "tools/commands.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge::tools {

namespace {

struct StudyCommandOptions {
  ModelOptions model;
  std::string corpus;
  std::string out;
  std::string init = "auto";
  int64_t tokens = 0;
  int64_t frozen = 1;
  StudyOptions study;
  std::string validation_qa;
  double distributed_timeout = kDefaultDistributedTimeoutSeconds;
  bool json = false;
};

// The default recipe, chosen on the dev questions of examples/data/quality/ (README, "How much of the
// document does a cartridge carry?") and sized to finish in about ten minutes on 2 CPU cores with the
// default 135M model: quote conversations (the question quotes a passage's first words, the answer is the
// passage, so the targets are the document's own words as the model with the document in context predicts
// them; the model's own questions and answers about a document mostly are not about it), chunks of up to
// 4096 tokens (the whole document when it fits), 64 conversations, 80 steps of 4.
StudyOptions quick_defaults() {
  StudyOptions study;
  SynthesisOptions& synthesis = study.synthesis;
  synthesis.samples = 64;
  synthesis.seed_types = {"quote"};
  synthesis.chunks.min_tokens = 4096;
  synthesis.chunks.max_tokens = 4096;
  synthesis.conversations_per_chunk = 8;
  synthesis.max_question_tokens = 64;
  synthesis.max_answer_tokens = 128;
  TrainingOptions& training = study.training;
  training.steps = 80;
  training.batch_size = 4;
  training.eval_fraction = 0.1;
  training.checkpoint_every = 20;
  training.eval_every = 10;
  return study;
}

void run_study_command(StudyCommandOptions& options) {
  const std::string corpus_text = read_text_file(options.corpus);  // fails fast, before the model loads
  if (corpus_text.empty()) throw InvalidArgumentError(describe_file_problem(options.corpus, "is empty"));
  const std::vector<QuestionAnswer> validation = options.validation_qa.empty()
                                                     ? std::vector<QuestionAnswer>()
                                                     : read_question_answers(options.validation_qa);
  const auto started = std::chrono::steady_clock::now();
  const std::shared_ptr<const ProcessGroup> ranks = join_ranks(options.distributed_timeout, options.model);
  ModelOptions training_model = options.model;
  training_model.weights = "dense";  // training runs a backward pass through the frozen model
  training_model.trains = true;
  const LoadedModel loaded = load_model_from_options(training_model);
  options.study.synthesis_model = load_synthesis_model(options.model, loaded);
  options.study.validation_questions = validation;

  StudyOptions& study = options.study;
  study.output_dir = options.out;
  study.init.source = options.init;
  study.init.num_frozen_tokens = options.frozen;
  study.init.seed = study.synthesis.seed;
  study.init.num_virtual_tokens = options.tokens;
  study.init.framing = study.synthesis.student_framing;
  if ((options.init == "auto" || options.init == "text" || options.init == "attention-matching" ||
       options.init == "random") &&
      options.tokens == 0) {
    const int64_t corpus_tokens =
        static_cast<int64_t>(loaded.tokenizer->encode(corpus_text, /*add_special_tokens=*/false).size());
    study.init.num_virtual_tokens = default_cartridge_tokens(corpus_tokens);
    if (!options.model.quiet) {
      std::fprintf(
          stderr, "cartridge size: %lld tokens (1/8 of the %lld-token corpus; set it with --tokens)\n",
          static_cast<long long>(study.init.num_virtual_tokens), static_cast<long long>(corpus_tokens));
    }
  }
  study.synthesis.model_name = options.model.model;
  study.synthesis.show_progress = !options.model.quiet;
  study.training.seed = study.synthesis.seed;
  study.training.show_progress = !options.model.quiet;
  study.training.model_name = options.model.model;
  study.synthesis.process_group = ranks;
  study.training.process_group = ranks;
  if (!options.model.quiet) {
    std::fprintf(stderr,
                 "== synthesizing %lld conversations into %s/dataset.jsonl, then training the cartridge\n",
                 static_cast<long long>(study.synthesis.samples), options.out.c_str());
  }
  const StudyResult result = run_study(loaded, corpus_text, study);
  if (!ranks->writes()) return;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const TrainingResult& training = result.training;
  const double final_loss = training.history.empty() ? NAN : training.history.back().loss;
  const double first_kl = training.evaluations.empty() ? NAN : training.evaluations.front().heldout_kl;
  const double last_kl = training.evaluations.empty() ? NAN : training.evaluations.back().heldout_kl;
  if (options.json) {
    nlohmann::json output = {
        {"adapter", result.adapter_dir},
        {"dataset", result.dataset_path},
        {"conversations", result.synthesis.existing_conversations + result.synthesis.written_conversations},
        {"steps", training.steps_done},
        {"interrupted", training.interrupted},
        {"final_loss", json_number(final_loss)},
        {"initial_heldout_kl", json_number(first_kl)},
        {"final_heldout_kl", json_number(last_kl)},
        {"seconds", seconds}};
    add_best_summary(output, training, result.adapter_dir);
    add_world_summary(output, *ranks, "rank_conversations", result.synthesis.rank_conversations);
    std::cout << output.dump() << std::endl;
    return;
  }
  std::printf("done in %.0f s: %lld conversations, %lld steps, loss %.4f", seconds,
              static_cast<long long>(result.synthesis.existing_conversations +
                                     result.synthesis.written_conversations),
              static_cast<long long>(training.steps_done), final_loss);
  if (std::isfinite(last_kl)) std::printf(", held-out KL %.4f -> %.4f", first_kl, last_kl);
  if (ranks->distributed()) {
    std::printf(" (%lld processes; conversations generated %s)", static_cast<long long>(ranks->world_size()),
                fmt::format("{}", fmt::join(result.synthesis.rank_conversations, " + ")).c_str());
  }
  std::printf("\ncartridge: %s (a PEFT adapter; loss curve: %s/loss.svg)\n", result.adapter_dir.c_str(),
              result.adapter_dir.c_str());
  print_best_summary(training, result.adapter_dir);
  if (training.interrupted) {
    std::printf("interrupted: run the same command again to continue\n");
    return;
  }
  const std::string use = adapter_to_use(training, result.adapter_dir);
  std::printf(
      "use it:\n"
      "  cartridge chat --model %s --cartridge %s\n"
      "  cartridge generate --model %s --cartridge %s --chat --prompt 'Your question about the document'\n"
      "  cartridge eval --model %s --corpus %s --qa QUESTIONS.jsonl --cartridge %s\n",
      options.model.model.c_str(), use.c_str(), options.model.model.c_str(), use.c_str(),
      options.model.model.c_str(), options.corpus.c_str(), use.c_str());
}

}  // namespace

void add_study_command(CLI::App& app) {
  auto options = std::make_shared<StudyCommandOptions>();
  options->study = quick_defaults();
  CLI::App* command = app.add_subcommand(
      "study", "Make a cartridge for a document: self-study synthesis, then training (the whole method)");
  command->footer(
      "Writes <out>/dataset.jsonl (self-study conversations about the corpus, by default passages quoted\n"
      "and recited, with the teacher's top-20 log-probabilities), then trains the cartridge, initialised by\n"
      "attention matching of the whole corpus where it applies (--init auto), into <out> (a PEFT adapter,\n"
      "checkpoints, loss.csv, loss.svg). The defaults finish in minutes on 2 CPU cores with the default\n"
      "model. Rerunning the same command continues an interrupted run (both phases resume); a larger\n"
      "--steps continues a finished one. At the end <out> holds the evaluated step with the lowest KL to\n"
      "the teacher on held-out conversations (the initialisation counts; --keep last: the last step) or,\n"
      "with --validation-qa QA.jsonl (questions you wrote, with answers), the lowest answer NLL on them;\n"
      "<out>/best/ is the same adapter with a file naming its step. --weights applies to synthesis (the\n"
      "conversations are decoded with the GGUF's blocks kept as stored by default); training always uses\n"
      "the dense model.\n"
      "Example:\n  cartridge study --model " +
      std::string(kDefaultModelPath) +
      " --corpus doc.txt --tokens "
      "128 \\\n"
      "    --out doc-cartridge\n  cartridge chat --model " +
      std::string(kDefaultModelPath) +
      " --cartridge "
      "doc-cartridge");
  add_model_options(*command, options->model);
  add_weights_option(*command, options->model);
  command->add_option("--corpus", options->corpus, "The document, a UTF-8 text file")->required();
  command->add_option("-o,--out", options->out, "Output folder (the cartridge, its dataset and checkpoints)")
      ->required();
  command->add_option("-p,--tokens", options->tokens,
                      "Cartridge size p in tokens (default: 1/8 of the corpus, 16..512)");
  command->add_option("--frozen", options->frozen, "Leading rows never trained (the attention sink)")
      ->capture_default_str()
      ->check(kNonNegative);
  command
      ->add_option("--init", options->init,
                   "Start from: auto (attention-matching with the system_turn framing and a chat template, "
                   "else text), text (the corpus's first p tokens), attention-matching (the whole corpus "
                   "compacted, docs/attention_matching.md), random, or an adapter")
      ->capture_default_str();
  SynthesisOptions& synthesis = options->study.synthesis;
  command->add_option("-n,--samples", synthesis.samples, "Synthetic conversations")
      ->capture_default_str()
      ->check(kPositive);
  command->add_option("--seed", synthesis.seed, "Random seed (synthesis, data order, held-out split)")
      ->capture_default_str();
  add_synthesis_options(*command, synthesis);
  add_training_options(*command, options->study.training);
  add_validation_option(*command, options->validation_qa);
  add_distributed_option(*command, options->distributed_timeout);
  command->add_flag("--json", options->json, "Print one JSON object with the results");
  command->callback([options] { run_study_command(*options); });
}

}  // namespace cartridge::tools
