// Self-study training (spec §B1.4): the student is the frozen model with the cartridge as its KV prefix and
// no document in context; it is trained towards the teacher's recorded top-k distributions (selfstudy/
// loss.h) with Adam on the cartridge's trainable rows only. The model never gets weight gradients.
//
// Output folder layout (documented in docs/training.md):
//   <out>/adapter_config.json, adapter_model.safetensors, cartridge_fingerprint.json
//                                the latest cartridge as a PEFT adapter (final one after a finished run)
//   <out>/checkpoint-<step>/      a complete PEFT adapter plus trainer_state.json (step, settings, loss
//                                history, evaluations) and optimizer.safetensors (Adam moments), each
//                                folder written atomically; the newest `keep_checkpoints` are kept
//   <out>/loss.csv, loss.svg     the loss curve and held-out KL, rewritten at every checkpoint
//   <out>/best/                  with validation questions only: the adapter of the evaluation with the
//                                lowest validation answer NLL (the initialisation counts), and
//                                best_validation.json {"step", "validation_answer_nll"}
// `resume` continues from the newest checkpoint exactly: the data order is a pure function of the seed and
// the step, and parameters and Adam moments are restored bit for bit, so the losses equal those of an
// uninterrupted run.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "cartridge/cartridge.h"
#include "cartridge/kv_prefix.h"
#include "model/model.h"
#include "selfstudy/dataset.h"
#include "selfstudy/trainer_checkpoint.h"

namespace cartridge {

// Which of a conversation's recorded targets the loss covers.
enum class DistillTokens {
  kAnswer,        // the answer's tokens only (the official v2, spec §B1.3; the default)
  kConversation,  // every token with a target: the question's and the answer's (the paper's equation, §B1.1)
};
const char* distill_tokens_name(DistillTokens tokens);  // "conversation", "answer"
// Parses a name of distill_tokens_name; throws InvalidArgumentError naming the choices.
DistillTokens parse_distill_tokens(const std::string& name);

struct TrainingOptions {
  std::string output_dir;
  int64_t steps = 100;     // optimizer steps in total (a resumed run continues up to this)
  int64_t batch_size = 4;  // conversations per step
  // Micro-batching: a step's conversations are run in pieces of at most this many padded tokens
  // (rows x longest row), gradients accumulated; the loss is the same. 0 = the whole step at once.
  int64_t max_batch_tokens = 4096;
  // The positions distilled (a version 1 dataset has answer targets only, so both train on the answers).
  // Answers only by default: on the default model it gave lower answer NLL and held-out KL than the whole
  // conversation (docs/training.md, measured on the dev question set).
  DistillTokens distill = DistillTokens::kAnswer;
  double learning_rate = 2e-2;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  uint64_t seed = 0;  // data order and held-out split
  // Held-out conversations: this fraction of the dataset (at most max_eval_conversations, at least one
  // when the fraction is > 0 and the dataset has two or more), never trained on, scored every
  // `eval_every` steps (and before the first and after the last step): mean truncated KL per position.
  double eval_fraction = 0.05;
  int64_t max_eval_conversations = 64;
  int64_t eval_every = 50;        // steps; 0 = only before the first and after the last step
  int64_t checkpoint_every = 50;  // steps; 0 = only after the last step (and on Ctrl-C)
  int64_t keep_checkpoints = 2;   // newest checkpoint folders kept (>= 1)
  // Validation questions (evaluation.h, question_answer_rows: the chat-template prompt and the reference
  // answer as one-hot targets): when given, their mean answer NLL is scored at every evaluation and the
  // best adapter so far is kept in <out>/best/ (early stopping on questions the user wrote, never trained
  // on).
  std::vector<Conversation> validation_questions;
  bool resume = false;  // continue from the newest <out>/checkpoint-*
  bool show_progress = true;
  bool handle_interrupt = true;                 // SIGINT: finish the current step, checkpoint, return
  std::string model_name;                       // for adapter_config.json's base_model_name_or_path
  std::optional<ModelFingerprint> fingerprint;  // written beside each adapter when given
};

struct TrainingResult {
  int64_t steps_done = 0;                     // the step reached (== options.steps unless interrupted)
  bool interrupted = false;                   // stopped by SIGINT (a checkpoint was written)
  std::vector<TrainingHistoryEntry> history;  // every step from 1, including steps before a resume
  std::vector<EvaluationEntry> evaluations;
  std::vector<int64_t> heldout_indices;  // dataset indices never trained on
  // With validation questions: the evaluation step whose adapter is in <out>/best/ (-1 without them).
  int64_t best_step = -1;
  double best_validation_answer_nll = std::numeric_limits<double>::quiet_NaN();
};

// The conversations of one forward pass as tensors (right-padded).
struct StudentBatch {
  at::Tensor input_ids;          // [B, T] int64: each conversation's input_ids without its last token
  at::Tensor token_mask;         // [B, T] bool, false for padding
  at::Tensor logit_rows;         // [N] int64: flat index b*T + t of the logits predicting each target
  at::Tensor teacher_ids;        // [N, K] int64
  at::Tensor teacher_log_probs;  // [N, K] float32
  int64_t real_tokens = 0;       // sum of the rows' lengths
};

// Splits `conversations` (sorted by length, so rows of similar length share a pass) into groups of at most
// `max_batch_tokens` padded tokens (rows x longest row, last token excluded); a single longer conversation
// forms its own group. 0 = one group.
std::vector<std::vector<const Conversation*>> micro_batches(std::vector<const Conversation*> conversations,
                                                            int64_t max_batch_tokens);

// Builds the batch tensors on `device`. The last token of every conversation is not fed (its logits would
// predict nothing). Throws FormatError when a conversation has no target or target_start == 0.
StudentBatch make_student_batch(const std::vector<const Conversation*>& conversations, int64_t top_k,
                                at::Device device);

// Runs the student on `batch` with `prefix` (null = no prefix; otherwise keys/values [H_kv, P, D] in the
// model's dtype, possibly requiring grad) and returns the distillation cross-entropy of every target,
// [N] float32, in batch order (differentiable w.r.t. the prefix).
at::Tensor student_cross_entropy(const Model& model, const KvPrefix* prefix, const StudentBatch& batch);

struct BatchScores {
  at::Tensor cross_entropy_sum;  // scalar float32: sum over target positions (differentiable)
  at::Tensor kl_sum;             // scalar float32: sum of truncated KL (undefined unless with_kl)
  int64_t positions = 0;
  int64_t real_tokens = 0;
};

// student_cross_entropy summed over the targets (and the truncated KL when `with_kl`).
BatchScores score_student_batch(const Model& model, const KvPrefix* prefix, const StudentBatch& batch,
                                bool with_kl);

// Mean truncated KL per target position of `conversations` with `prefix` (no gradient), in batches of at
// most `max_batch_tokens` padded tokens. Returns {mean KL, positions}.
std::pair<double, int64_t> mean_heldout_kl(const Model& model, const KvPrefix* prefix,
                                           const std::vector<const Conversation*>& conversations,
                                           int64_t top_k, int64_t max_batch_tokens);

// The mean NLL of each row's targets, in the order given: rows whose targets are one-hot (top-k 1,
// log-probability 0), as question_answer_rows (evaluation.h) makes them, with `prefix` (no gradient), in
// batches of at most `max_batch_tokens` padded tokens. `on_rows_done(n)` is called after each batch.
std::vector<double> mean_target_nlls(const Model& model, const KvPrefix* prefix,
                                     const std::vector<const Conversation*>& rows, int64_t max_batch_tokens,
                                     const std::function<void(int64_t)>& on_rows_done = {});

// The held-out split: dataset indices (sorted) chosen by a seeded shuffle of 0..count-1; the same for
// `cartridge train` and `cartridge eval` given the same seed, fraction and cap.
std::vector<int64_t> heldout_indices(int64_t count, double fraction, int64_t max_count, uint64_t seed);

// The conversations (indices into the training list) of step `step` (1-based): epochs of a seeded
// permutation laid end to end, cut into consecutive batches of `batch_size`.
std::vector<int64_t> batch_for_step(int64_t training_count, int64_t batch_size, uint64_t seed, int64_t step);

// Trains `initial` (ignored when options.resume finds a checkpoint) on `dataset` and writes the outputs
// described at the top of this file. Throws InvalidArgumentError for bad options or an empty training
// split, MismatchError when resuming with other settings or another dataset, and the file errors of the
// layers below.
TrainingResult train_cartridge(std::shared_ptr<const Model> model, const Cartridge& initial,
                               const Dataset& dataset, const TrainingOptions& options);

// The newest complete checkpoint folder under `output_dir` ("" when there is none).
std::string latest_checkpoint(const std::string& output_dir);

}  // namespace cartridge
