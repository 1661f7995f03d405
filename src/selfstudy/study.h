// The whole method in one call (`cartridge study`): synthesize self-study conversations about a corpus,
// then train a cartridge on them. Output folder:
//   <out>/dataset.jsonl                     the synthetic conversations (docs/dataset_format.md)
//   <out>/adapter_config.json, ...          the trained cartridge as a PEFT adapter (use it with --cartridge
//   <out>) <out>/checkpoint-<step>/, loss.csv, loss.svg   training checkpoints and curves
//   (selfstudy/trainer.h)
// Running it again with the same settings continues where it stopped (synthesis appends to the dataset,
// training resumes from the newest checkpoint); a finished run is left as it is.
#pragma once

#include <cstdint>
#include <string>

#include "cartridge/cartridge.h"
#include "cartridge/framing.h"
#include "generate/loaded_model.h"
#include "selfstudy/evaluation.h"
#include "selfstudy/synthesizer.h"
#include "selfstudy/training_run.h"

namespace cartridge {

inline constexpr char kStudyDatasetFileName[] = "dataset.jsonl";

// How the cartridge starts: the KV of the first p tokens of the corpus (the paper's default), the whole
// corpus compacted by attention matching (selfstudy/document_compaction.h), N(0, 1) rows (PEFT's
// default), or an existing adapter folder.
struct CartridgeInit {
  // "auto" (attention-matching with the system_turn framing and a chat template, else text), "text",
  // "attention-matching", "random", or an adapter folder / Hub id
  std::string source = "text";
  // The framing the cartridge will be used in: with kSystemTurn, "text" prefills the corpus as the open
  // system turn (what the framing continues); "attention-matching" needs kSystemTurn.
  Framing framing = Framing::kSystemTurn;
  int64_t num_virtual_tokens = 0;
  int64_t num_frozen_tokens = 1;
  uint64_t seed = 0;  // for "random"
};

// Builds the initial cartridge. "text": a prefill of the corpus, first p slots kept; the corpus is the open
// system turn of the chat template with the kSystemTurn framing (LoadedModel::encode_document_turn), else
// tokenized as transformers' tokenizer(text) does (PEFT's use_chat_template=False). "attention-matching":
// compact_document. Throws InvalidArgumentError when the corpus is shorter than p tokens. An adapter folder
// must fit the model (MismatchError otherwise); its p and frozen count are used, and `num_virtual_tokens`
// must be 0 or equal to them.
Cartridge initial_cartridge(const LoadedModel& model, const std::string& corpus_text,
                            const CartridgeInit& init);

// p for a corpus of `corpus_tokens` tokens when the user gives none: 1/8 of the corpus, rounded down to a
// multiple of 16, between 16 and 512 tokens.
int64_t default_cartridge_tokens(int64_t corpus_tokens);

struct StudyOptions {
  std::string output_dir;
  CartridgeInit init;
  SynthesisOptions synthesis;
  TrainingOptions training;  // output_dir is set to StudyOptions::output_dir
  // Questions with answers for early stopping (TrainingOptions::validation_questions), turned into rows in
  // the dataset's framing once it is known.
  std::vector<QuestionAnswer> validation_questions;
  // The model that decodes the synthetic conversations, e.g. the same GGUF with its blocks kept as stored
  // (several times faster to decode, fp32's results up to rounding); null = the training model. It must be
  // the training model's weights: the teacher's log-probabilities are what the student is trained towards.
  std::shared_ptr<const Model> synthesis_model;
};

struct StudyResult {
  SynthesisStats synthesis;
  TrainingResult training;
  std::string dataset_path;
  std::string adapter_dir;  // == output_dir
};

// Synthesizes into <out>/dataset.jsonl, then trains into <out> (resuming when a checkpoint exists).
StudyResult run_study(const LoadedModel& model, const std::string& corpus_text, const StudyOptions& options);

}  // namespace cartridge
