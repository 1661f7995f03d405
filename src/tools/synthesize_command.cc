// `cartridge synthesize`: self-study data for a corpus (questions and teacher answers with top-k
// log-probabilities) written to <out>/dataset.jsonl, resumable.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "io/model_files.h"
#include "selfstudy/process_group.h"
#include "selfstudy/synthesizer.h"
#include "tools/commands.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge::tools {

namespace {

struct SynthesizeCommandOptions {
  ModelOptions model;
  std::string corpus;
  std::string out;
  SynthesisOptions synthesis;
  double distributed_timeout = kDefaultDistributedTimeoutSeconds;
  bool json = false;
};

void run_synthesize(SynthesizeCommandOptions& options) {
  const std::string corpus_text = read_text_file(options.corpus);
  std::error_code error;
  std::filesystem::create_directories(options.out, error);
  if (error || !std::filesystem::is_directory(options.out)) {
    throw FileNotFoundError(describe_file_problem(options.out, "cannot create the output folder",
                                                  "check the path and its permissions"));
  }
  const std::string dataset_path = (std::filesystem::path(options.out) / "dataset.jsonl").string();
  const std::shared_ptr<const ProcessGroup> ranks = join_ranks(options.distributed_timeout, options.model);
  const LoadedModel loaded = load_model_from_options(options.model);
  options.synthesis.process_group = ranks;
  options.synthesis.model_name = options.model.model;
  options.synthesis.show_progress = !options.model.quiet;
  if (!options.model.quiet) {
    std::fprintf(stderr, "writing %s (interrupt any time: rerunning the same command continues it)\n",
                 dataset_path.c_str());
  }
  const SynthesisStats stats = synthesize(loaded, corpus_text, options.synthesis, dataset_path);
  if (!ranks->writes()) return;
  const int64_t total = stats.existing_conversations + stats.written_conversations;
  const double tokens_per_second = stats.seconds > 0 ? stats.generated_tokens / stats.seconds : 0.0;
  if (options.json) {
    nlohmann::json output = {{"dataset", dataset_path},
                             {"conversations", total},
                             {"existing_conversations", stats.existing_conversations},
                             {"written_conversations", stats.written_conversations},
                             {"generated_tokens", stats.generated_tokens},
                             {"prefill_tokens", stats.prefill_tokens},
                             {"seconds", stats.seconds},
                             {"generated_tokens_per_second", tokens_per_second}};
    add_world_summary(output, *ranks, "rank_conversations", stats.rank_conversations);
    std::cout << output.dump() << std::endl;
    return;
  }
  if (stats.written_conversations == 0) {
    std::printf("%s already holds %lld conversations (asked for %lld): nothing to do\n", dataset_path.c_str(),
                static_cast<long long>(total), static_cast<long long>(options.synthesis.samples));
  } else {
    std::printf("%s: %lld conversations (%lld new) in %.1f s, %.1f generated tokens/s\n",
                dataset_path.c_str(), static_cast<long long>(total),
                static_cast<long long>(stats.written_conversations), stats.seconds, tokens_per_second);
  }
  if (ranks->distributed()) {
    std::printf("%lld processes generated %s conversations\n", static_cast<long long>(ranks->world_size()),
                fmt::format("{}", fmt::join(stats.rank_conversations, " + ")).c_str());
  }
  std::printf("next: train a cartridge on it with `cartridge train` (see `cartridge train --help`)\n");
}

}  // namespace

void add_synthesis_options(CLI::App& command, SynthesisOptions& synthesis) {
  command.add_option("--min-chunk", synthesis.chunks.min_tokens, "Shortest corpus chunk, tokens")
      ->capture_default_str()
      ->check(kPositive);
  command
      .add_option("--max-chunk", synthesis.chunks.max_tokens,
                  "Longest corpus chunk, tokens (also bounded by the corpus and the model's context)")
      ->capture_default_str()
      ->check(kPositive);
  command
      .add_option_function<std::string>(
          "--chunk-placement",
          [&synthesis](const std::string& name) { synthesis.chunks.placement = parse_chunk_placement(name); },
          "Where chunks go: uniform_start (start uniform where the chunk fits, as in the paper; the corpus's "
          "ends are seen less) or even_coverage (every token about equally often; chunks at the ends are "
          "shorter)")
      ->default_str(chunk_placement_name(synthesis.chunks.placement));
  command.add_option("--description", synthesis.chunks.description,
                     "One line saying what the corpus is, put before every chunk");
  command
      .add_option("-b,--batch", synthesis.conversations_per_chunk,
                  "Conversations per chunk, generated together as one batch")
      ->capture_default_str()
      ->check(kPositive);
  command.add_option("--max-question-tokens", synthesis.max_question_tokens, "Longest question, tokens")
      ->capture_default_str()
      ->check(kPositive);
  command.add_option("--max-answer-tokens", synthesis.max_answer_tokens, "Longest answer, tokens")
      ->capture_default_str()
      ->check(kPositive);
  command
      .add_option(
          "--seed-types", synthesis.seed_types,
          "Seed-prompt types to draw from: structuring summarization question use_cases creative (the "
          "paper's), and quote (the question quotes a passage's first words, the answer is the passage "
          "itself, up to --max-answer-tokens)")
      ->capture_default_str();
  command
      .add_option_function<std::string>(
          "--framing",
          [&synthesis](const std::string& name) { synthesis.student_framing = parse_framing(name); },
          "How the student sequence puts the question after the cartridge, and so how the trained cartridge "
          "is "
          "used: system_turn (continue the conversation whose system turn the cartridge holds) or new_chat "
          "(docs/framing.md)")
      ->default_str(framing_name(synthesis.student_framing));
}

void add_synthesize_command(CLI::App& app) {
  auto options = std::make_shared<SynthesizeCommandOptions>();
  CLI::App* command = app.add_subcommand(
      "synthesize", "Self-study data: the model asks and answers questions about random chunks of a corpus");
  command->footer(
      "For each group of --batch conversations a random chunk of the corpus (--min-chunk..--max-chunk "
      "tokens)\n"
      "goes into the system prompt; the model writes a question from one of five seed prompts (temperature\n"
      "0.6), then answers it greedily while its top-20 log-probabilities are recorded. The result,\n"
      "<out>/dataset.jsonl, is described in docs/dataset_format.md. Rerunning the same command after an\n"
      "interruption continues the file; a larger --samples extends it.\n"
      "Example:\n  cartridge synthesize --model " +
      std::string(kDefaultModelPath) +
      " --corpus doc.txt \\\n"
      "    --out study --samples 64 --max-chunk 1024 --description 'A chapter of a history book.'");
  add_model_options(*command, options->model);
  add_weights_option(*command, options->model);
  command->add_option("--corpus", options->corpus, "The corpus, a UTF-8 text file")->required();
  command
      ->add_option("-o,--out", options->out,
                   "Output folder (created if missing); the data goes to dataset.jsonl")
      ->required();
  SynthesisOptions& synthesis = options->synthesis;
  command->add_option("-n,--samples", synthesis.samples, "Conversations the dataset should hold")
      ->capture_default_str()
      ->check(kNonNegative);
  command->add_option("--seed", synthesis.seed, "Random seed (chunks, seed prompts, question sampling)")
      ->capture_default_str();
  add_synthesis_options(*command, synthesis);
  command->add_flag(
      "!--no-shared-prefill", synthesis.share_prefill,
      "Prefill every row's whole prompt instead of each chunk's prompt once per group (for benchmarks; "
      "the data is the same up to rounding)");
  add_distributed_option(*command, options->distributed_timeout);
  command->add_flag(
      "--json", options->json,
      "Print one JSON object {dataset, conversations, written_conversations, generated_tokens, ...}");
  command->callback([options] { run_synthesize(*options); });
}

}  // namespace cartridge::tools
