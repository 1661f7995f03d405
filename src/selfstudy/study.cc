#include "selfstudy/study.h"

#include <algorithm>
#include <filesystem>
#include <optional>

#include <fmt/format.h>

#include "cartridge/adapter_io.h"
#include "cartridge/cartridge_shape.h"
#include "cartridge/fingerprint.h"
#include "cartridge/text_init.h"
#include "selfstudy/document_compaction.h"
#include "selfstudy/trainer_checkpoint.h"
#include "util/error.h"

namespace cartridge {

Cartridge initial_cartridge(const LoadedModel& loaded, const std::string& corpus_text,
                            const CartridgeInit& init) {
  const Model& model = *loaded.model;
  if (init.source == "auto") {
    // Attention matching where it applies (measured better than the first p tokens, before and after
    // self-study: README), the first p tokens otherwise (another framing, no chat template, a document
    // whose repetition does not fit the context).
    CartridgeInit chosen = init;
    const bool matching =
        init.framing == Framing::kSystemTurn &&
        can_compact_document(loaded, corpus_text, init.num_virtual_tokens, init.num_frozen_tokens);
    chosen.source = matching ? "attention-matching" : "text";
    return initial_cartridge(loaded, corpus_text, chosen);
  }
  const bool from_corpus = init.source == "text" || init.source == "attention-matching";
  if (from_corpus || init.source == "random") {
    if (init.num_virtual_tokens < 1) {
      throw InvalidArgumentError(fmt::format("--tokens must be >= 1, got {}", init.num_virtual_tokens));
    }
    if (init.num_frozen_tokens < 0 || init.num_frozen_tokens > init.num_virtual_tokens) {
      throw InvalidArgumentError(fmt::format("--frozen must be in [0, --tokens = {}], got {}",
                                             init.num_virtual_tokens, init.num_frozen_tokens));
    }
  }
  if (init.source == "random") {
    return Cartridge::random(CartridgeShape::of_model(model.config()), init.num_virtual_tokens,
                             init.num_frozen_tokens, init.seed);
  }
  if (init.source == "attention-matching") {
    if (init.framing != Framing::kSystemTurn) {
      throw InvalidArgumentError(
          "--init attention-matching compacts the corpus as a system turn: it needs "
          "--framing system_turn");
    }
    AttentionMatchingOptions options;
    options.num_virtual_tokens = init.num_virtual_tokens;
    options.num_exact_rows = init.num_frozen_tokens;
    return compact_document(loaded, corpus_text, options, /*max_chunk_tokens=*/0, /*show_progress=*/true);
  }
  if (init.source == "text") {
    if (init.framing == Framing::kSystemTurn) {
      return Cartridge::from_token_ids(model, loaded.encode_document_turn(corpus_text),
                                       init.num_virtual_tokens, init.num_frozen_tokens);
    }
    return initialize_from_text(model, *loaded.tokenizer, loaded.chat_template.get(), corpus_text,
                                InitTokenization::kPlain, init.num_virtual_tokens, init.num_frozen_tokens);
  }
  LoadedAdapter adapter = load_adapter(init.source);
  adapter.cartridge.check_fits(model.config(), adapter.folder, loaded.files.name);
  if (init.num_virtual_tokens != 0 && init.num_virtual_tokens != adapter.cartridge.num_virtual_tokens()) {
    throw MismatchError(
        describe_file_problem(adapter.folder,
                              fmt::format("has {} virtual tokens, but --tokens asks for {}",
                                          adapter.cartridge.num_virtual_tokens(), init.num_virtual_tokens),
                              "leave --tokens out to use the adapter's size"));
  }
  return std::move(adapter.cartridge);
}

namespace {

bool is_from_an_older_build(const DatasetHeader& header) {
  return header.version < kDatasetVersion || !header.settings.contains("student_framing");
}

}  // namespace

int64_t default_cartridge_tokens(int64_t corpus_tokens) {
  return std::clamp<int64_t>(corpus_tokens / 8 / 16 * 16, 16, 512);
}

StudyResult run_study(const LoadedModel& loaded, const std::string& corpus_text,
                      const StudyOptions& options) {
  if (options.output_dir.empty())
    throw InvalidArgumentError("`cartridge study` needs an output folder (--out DIR)");
  std::filesystem::create_directories(options.output_dir);
  StudyResult result;
  result.dataset_path = options.output_dir + "/" + kStudyDatasetFileName;
  result.adapter_dir = options.output_dir;

  // Fail on a bad cartridge size before spending minutes on synthesis.
  const Cartridge initial = initial_cartridge(loaded, corpus_text, options.init);
  // Training that has started cannot take in more (or fewer) conversations: the data order and the
  // held-out split depend on the count. Say so now, not after synthesizing the extra ones.
  if (const std::string checkpoint = newest_checkpoint_folder(options.output_dir); !checkpoint.empty()) {
    const nlohmann::json trained_on =
        read_checkpoint_settings(checkpoint).values.value("dataset_conversations", -1);
    if (trained_on != options.synthesis.samples) {
      throw MismatchError(describe_file_problem(
          options.output_dir,
          fmt::format("was trained on {} synthetic conversations, but --samples asks for {}",
                      trained_on.dump(), options.synthesis.samples),
          fmt::format("use a new --out for more conversations, or --samples {} to continue this run",
                      trained_on.dump())));
    }
  }

  // A folder from an older build (before dataset version 2: no question targets; before framings were
  // recorded: student sequences in the new_chat framing): a finished dataset is used as it is, since the
  // trainer reads both and the cartridge records the framing it was trained with; an unfinished one cannot
  // be continued and synthesize() says so.
  std::optional<Dataset> older;
  try {
    if (std::filesystem::exists(result.dataset_path) &&
        is_from_an_older_build(read_dataset_header(result.dataset_path))) {
      older = read_dataset(result.dataset_path);
      if (static_cast<int64_t>(older->conversations.size()) != options.synthesis.samples) older.reset();
    }
  } catch (const Error&) {
    older.reset();  // an empty, damaged or foreign file: synthesize() reports it (or starts it afresh)
  }
  if (older) {
    result.synthesis.existing_conversations = static_cast<int64_t>(older->conversations.size());
  } else {
    LoadedModel synthesis_model = loaded;
    if (options.synthesis_model) synthesis_model.model = options.synthesis_model;
    result.synthesis = synthesize(synthesis_model, corpus_text, options.synthesis, result.dataset_path);
  }
  const Dataset dataset = older ? std::move(*older) : read_dataset(result.dataset_path);

  TrainingOptions training = options.training;
  training.output_dir = options.output_dir;
  training.resume = true;  // a rerun continues; a fresh folder simply starts
  if (training.model_name.empty()) training.model_name = loaded.files.name;
  if (!training.fingerprint) training.fingerprint = fingerprint_model(loaded.files, loaded.model->config());
  if (!options.validation_questions.empty()) {
    training.validation_questions =
        question_answer_rows(loaded, options.validation_questions, dataset_framing(dataset.header));
  }
  result.training = train_cartridge(loaded.model, initial, dataset, training);
  return result;
}

}  // namespace cartridge
