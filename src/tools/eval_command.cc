// `cartridge eval`: how well the model answers questions about a corpus with no context, with the whole
// corpus in context, and with each cartridge; optionally the held-out KL on a self-study dataset.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cartridge/adapter_io.h"
#include "io/model_files.h"
#include "selfstudy/evaluation.h"
#include "selfstudy/study.h"
#include "tools/commands.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge::tools {

namespace {

struct EvalCommandOptions {
  ModelOptions model;
  std::string corpus;
  std::string qa;
  std::vector<std::string> cartridges;
  std::vector<std::string> names;
  std::string dataset;
  double eval_fraction = 0.05;
  int64_t max_eval = 64;
  uint64_t seed = 0;
  bool no_icl = false;
  int64_t max_batch_tokens = 4096;
  bool json = false;
  bool markdown = false;
};

void run_eval(const EvalCommandOptions& options) {
  if (options.qa.empty() && options.dataset.empty()) {
    throw InvalidArgumentError("nothing to score: give --qa QA.jsonl and/or --dataset DATASET");
  }
  if (!options.names.empty() && options.names.size() != options.cartridges.size()) {
    throw InvalidArgumentError("give one --name per --cartridge (or none)");
  }
  // Read every input before loading the model, so a wrong path fails fast.
  const std::string corpus = options.corpus.empty() ? std::string() : read_text_file(options.corpus);
  const std::vector<QuestionAnswer> questions =
      options.qa.empty() ? std::vector<QuestionAnswer>() : read_question_answers(options.qa);
  Dataset dataset;
  std::vector<const Conversation*> heldout;
  if (!options.dataset.empty()) {
    const std::string path = std::filesystem::is_directory(options.dataset)
                                 ? (std::filesystem::path(options.dataset) / kStudyDatasetFileName).string()
                                 : options.dataset;
    dataset = read_dataset(path);
    // The same split `cartridge train` holds out with the same --seed / --eval-fraction / --max-eval.
    for (const int64_t index : heldout_indices(static_cast<int64_t>(dataset.conversations.size()),
                                               options.eval_fraction, options.max_eval, options.seed)) {
      heldout.push_back(&dataset.conversations[index]);
    }
    if (heldout.empty()) {
      throw InvalidArgumentError(describe_file_problem(
          path,
          "leaves no held-out conversation with --eval-fraction " + std::to_string(options.eval_fraction),
          "use a dataset with two or more conversations"));
    }
  }
  std::vector<LoadedAdapter> adapters;
  for (const std::string& spec : options.cartridges) adapters.push_back(load_adapter(spec));

  const LoadedModel loaded = load_model_from_options(options.model);
  if (!options.dataset.empty()) check_token_ids(dataset, loaded.model->config().vocab_size);
  const ModelFingerprint fingerprint = fingerprint_model(loaded.files, loaded.model->config());
  std::vector<EvaluationCondition> conditions;
  conditions.push_back({"no context", ContextKind::kNone, nullptr, ""});
  if (!corpus.empty() && !options.no_icl)
    conditions.push_back({"ICL (corpus in context)", ContextKind::kInContext, nullptr, corpus});
  for (size_t index = 0; index < adapters.size(); ++index) {
    for (const std::string& warning : check_adapter_for_model(adapters[index], loaded.model->config(),
                                                              &fingerprint, options.model.model)) {
      std::fprintf(stderr, "warning: %s\n", warning.c_str());
    }
    const std::string name =
        options.names.empty() ? "cartridge " + options.cartridges[index] : options.names[index];
    // Each cartridge's questions follow it as it was made for (its cartridge_framing.json).
    conditions.push_back({name, ContextKind::kCartridge,
                          adapters[index].cartridge.kv_prefix_for(*loaded.model), "",
                          adapters[index].framing});
  }
  EvaluationOptions evaluation;
  evaluation.max_batch_tokens = options.max_batch_tokens;
  evaluation.heldout_framing = dataset_framing(dataset.header);
  evaluation.show_progress = !options.model.quiet;
  const std::vector<ConditionScore> scores =
      evaluate_conditions(loaded, questions, heldout, dataset.header.top_k, conditions, evaluation);
  if (options.json) {
    nlohmann::json output = evaluation_to_json(scores);
    output["questions"] = questions.size();
    output["heldout_conversations"] = heldout.size();
    output["model"] = options.model.model;
    output["dtype"] = options.model.dtype;
    output["weights"] = resolved_weights(options.model, parse_device(options.model.device));
    std::cout << output.dump(2) << std::endl;
  } else if (options.markdown) {
    std::cout << format_evaluation_markdown(scores);
  } else {
    std::cout << format_evaluation_table(scores);
    std::printf("%zu questions, %zu held-out conversations; NLL and KL in nats per token (lower is better)\n",
                questions.size(), heldout.size());
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto options = std::make_shared<EvalCommandOptions>();
  CLI::App* command = app.add_subcommand(
      "eval", "Score answers to questions about a corpus: no context vs corpus in context vs cartridges");
  command->footer(
      "--qa is JSON Lines, one {\"question\": ..., \"answer\": ...} per line. For each condition the "
      "answer's\n"
      "tokens (tokenized without special tokens) follow the question rendered with the chat template, and\n"
      "the mean negative log-likelihood per answer token is averaged over the questions. Conditions: no\n"
      "context; the whole --corpus as a system message (ICL); each --cartridge. With --dataset, the "
      "held-out\n"
      "conversations of training (same --seed/--eval-fraction/--max-eval as `cartridge train`) are scored\n"
      "too: mean KL to the teacher's top-k per answer token. KV bytes: the context each condition keeps.\n"
      "Example:\n  cartridge eval --model " +
      std::string(kDefaultModelPath) +
      " --corpus doc.txt --qa "
      "qa.jsonl \\\n"
      "    --cartridge study --dataset study/dataset.jsonl");
  add_model_options(*command, options->model);
  add_weights_option(*command, options->model);
  command->add_option("--corpus", options->corpus, "The corpus, for the in-context (ICL) condition");
  command->add_option("--qa", options->qa, "Questions and reference answers (JSON Lines)");
  command->add_option("-c,--cartridge", options->cartridges,
                      "A cartridge (PEFT adapter folder) to score; repeatable");
  command->add_option("--name", options->names, "Table name of each --cartridge, in order");
  command->add_option("-d,--dataset", options->dataset,
                      "A self-study dataset: also score its held-out conversations");
  command
      ->add_option("--eval-fraction", options->eval_fraction,
                   "Held-out fraction, as given to `cartridge train`")
      ->capture_default_str();
  command->add_option("--max-eval", options->max_eval, "Held-out cap, as given to `cartridge train`")
      ->capture_default_str();
  command->add_option("--seed", options->seed, "Training seed, as given to `cartridge train`")
      ->capture_default_str();
  command->add_flag("--no-icl", options->no_icl, "Skip the corpus-in-context condition");
  command->add_option("--max-batch-tokens", options->max_batch_tokens, "Padded tokens per forward pass")
      ->capture_default_str()
      ->check(kPositive);
  command->add_flag("--json", options->json, "Print the numbers as JSON instead of a table");
  command->add_flag("--markdown", options->markdown, "Print the table as Markdown");
  command->callback([options] { run_eval(*options); });
}

}  // namespace cartridge::tools
