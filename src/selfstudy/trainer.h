// Self-study training (docs/self_study.md): the student is the frozen model with the cartridge as its KV
// prefix and no document in context; it is trained towards the teacher's recorded top-k distributions
// (selfstudy/loss.h) with Adam on the cartridge's trainable rows only. The model never gets weight
// gradients. This file is the computation; selfstudy/training_run.h drives it and writes the outputs.
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
#include "model/kv_prefix.h"
#include "model/model.h"
#include "selfstudy/dataset.h"
#include "selfstudy/process_group.h"
#include "selfstudy/trainer_checkpoint.h"

namespace cartridge {

// Which of a conversation's recorded targets the loss covers.
enum class DistillTokens {
  kAnswer,        // the answer's tokens only (the authors' later code; the default)
  kConversation,  // every token with a target: the question's and the answer's (the paper's equation;
                  // docs/self_study.md)
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
  // What <out>'s adapter is at the end of a finished run: true = best/'s (the evaluation with the lowest
  // selection score, the initialisation included, so a run never hands back a cartridge that scored worse
  // than where it started), false = the last step's. The selection score is the validation answer NLL with
  // validation questions, else the held-out KL (needs no labels: with `study`'s quote conversations it is
  // how well the cartridge alone predicts held-out passages of the document). Checkpoints hold the last.
  bool keep_best = true;
  bool resume = false;  // continue from the newest <out>/checkpoint-*
  bool show_progress = true;
  bool handle_interrupt = true;  // SIGINT: finish the current step, checkpoint, return
  std::string model_name;        // for adapter_config.json's base_model_name_or_path
  // The ranks of a run across processes (docs/distributed.md); null = this process alone. Every rank takes
  // its share of each step's batch and of each evaluation; rank 0 writes.
  std::shared_ptr<const ProcessGroup> process_group;
  std::optional<ModelFingerprint> fingerprint;  // written beside each adapter when given
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

// The sum of the truncated KL over the target positions of `conversations` (no gradient) and the number of
// positions: mean_heldout_kl before the division, so ranks can add their shares. {0, 0} for none.
std::pair<double, int64_t> heldout_kl_sum(const Model& model, const KvPrefix* prefix,
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

// The conversations of `batch` that `group`'s rank trains on: the batch sorted by length (stably), then
// every world_size-th from the rank's place, so the ranks run similar numbers of tokens. One process takes
// them all (in the order micro_batches would sort them anyway).
std::vector<const Conversation*> rank_share_of_batch(std::vector<const Conversation*> batch,
                                                     const ProcessGroup& group);

// The optimisation of one cartridge with nothing written (no files, logs or progress bars): the parameters
// (float32; only the trainable rows get gradients), Adam, the held-out split and the scores. train_cartridge
// (selfstudy/training_run.h) drives it and writes the outputs; under torch.distributed every rank steps on
// its share of each batch, the gradients are summed across the ranks before Adam (so every rank holds the
// same parameters and moments), and rank 0 writes (after llm.c's rank-0 writer).
class DistillationTrainer {
 public:
  // `dataset` and `options` must outlive the trainer. Throws InvalidArgumentError for bad options or an
  // empty training split, and what Cartridge::check_fits throws when `initial` does not fit the model.
  DistillationTrainer(std::shared_ptr<const Model> model, const Cartridge& initial, const Dataset& dataset,
                      const TrainingOptions& options);
  ~DistillationTrainer();

  // Continues from a checkpoint: its parameters and Adam moments.
  void restore(const CheckpointState& state);
  // Across processes: every rank takes rank 0's parameters, Adam moments and `start_step` (rank 0 alone
  // reads a checkpoint, so a run resumes with any world size). Nothing for a single process.
  void adopt_writer_state(int64_t& start_step);
  // Optimizer step `step` (1-based) on the conversations batch_for_step gives, in micro-batches: forward,
  // backward, Adam. Across processes this rank runs its share (rank_share_of_batch) and the gradient of the
  // whole batch's mean loss is summed over the ranks before Adam. Throws InvalidArgumentError when the loss
  // is not finite.
  TrainingHistoryEntry step(int64_t step);
  // The held-out KL and the validation answer NLL of the current cartridge (no gradient); across processes
  // each rank scores a share and the sums are added.
  EvaluationEntry evaluate(int64_t step) const;

  Cartridge cartridge() const;  // the current cartridge, on the CPU (a copy)
  const torch::optim::Adam& optimizer() const { return *optimizer_; }
  const at::Tensor& trainable() const { return trainable_; }  // [p-F, W] float32, requires grad
  const std::vector<int64_t>& heldout_indices() const { return heldout_indices_; }  // dataset indices
  // True when evaluate() has something to score (held-out conversations or validation questions).
  bool evaluates() const { return !heldout_.empty() || !validation_.empty(); }

 private:
  // The cartridge as the model's KV prefix (per layer [H_kv, p, D] in the compute dtype); differentiable
  // with respect to the trainable rows when `with_grad`.
  KvPrefix prefix(bool with_grad) const;

  std::shared_ptr<const Model> model_;
  const TrainingOptions& options_;
  std::shared_ptr<const ProcessGroup> group_;  // options_.process_group, or a single process
  CartridgeShape shape_;
  int64_t top_k_;
  std::vector<int64_t> heldout_indices_;
  std::vector<const Conversation*> heldout_, training_, validation_;
  at::Tensor frozen_;     // [F, W] float32 on the model's device
  at::Tensor trainable_;  // [p-F, W] float32 on the model's device
  std::unique_ptr<torch::optim::Adam> optimizer_;
};

}  // namespace cartridge
