// A training run: DistillationTrainer (selfstudy/trainer.h) stepped from the initial cartridge or the
// newest checkpoint to the last step, with everything it writes: checkpoints, the adapter, the loss curve,
// best/, the progress bar, and a checkpoint on Ctrl-C.
//
// Output folder layout (documented in docs/training.md):
//   <out>/adapter_config.json, adapter_model.safetensors, cartridge_fingerprint.json
//                                a PEFT adapter: the latest cartridge while training; after a finished run
//                                best/'s (TrainingOptions::keep_best, the default) or the last step's
//   <out>/checkpoint-<step>/      a complete PEFT adapter plus trainer_state.json (step, settings, loss
//                                history, evaluations) and optimizer.safetensors (Adam moments), each
//                                folder written atomically; the newest `keep_checkpoints` are kept
//   <out>/loss.csv, loss.svg     the loss curve and held-out KL, rewritten at every checkpoint
//   <out>/best/                  the adapter of the evaluation with the lowest selection score (the
//                                initialisation counts): validation answer NLL with validation questions
//                                (best_validation.json {"step", "validation_answer_nll"}), else held-out
//                                KL (best_heldout_kl.json {"step", "heldout_kl"}); absent when nothing is
//                                scored
// `resume` continues from the newest checkpoint exactly: the data order is a pure function of the seed and
// the step, and parameters and Adam moments are restored bit for bit, so the losses equal those of an
// uninterrupted run.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "selfstudy/trainer.h"

namespace cartridge {

struct TrainingResult {
  int64_t steps_done = 0;                     // the step reached (== options.steps unless interrupted)
  bool interrupted = false;                   // stopped by SIGINT (a checkpoint was written)
  std::vector<TrainingHistoryEntry> history;  // every step from 1, including steps before a resume
  std::vector<EvaluationEntry> evaluations;
  std::vector<int64_t> heldout_indices;  // dataset indices never trained on
  // The evaluation step whose adapter is in <out>/best/ (-1 when nothing was scored), chosen by the
  // validation answer NLL when there are validation questions, else by the held-out KL.
  int64_t best_step = -1;
  bool best_by_validation = false;
  double best_validation_answer_nll = std::numeric_limits<double>::quiet_NaN();  // NaN without questions
  double best_heldout_kl = std::numeric_limits<double>::quiet_NaN();  // the chosen step's (NaN: none)
  // <out>'s adapter is best/'s (a finished run with keep_best and a best step); otherwise the last step's.
  bool kept_best = false;
};

// Trains `initial` (ignored when options.resume finds a checkpoint) on `dataset` and writes the outputs
// described above. Throws InvalidArgumentError for bad options or an empty training
// split, MismatchError when resuming with other settings or another dataset, and the file errors of the
// layers below.
TrainingResult train_cartridge(std::shared_ptr<const Model> model, const Cartridge& initial,
                               const Dataset& dataset, const TrainingOptions& options);

// The newest complete checkpoint folder under `output_dir` ("" when there is none).
std::string latest_checkpoint(const std::string& output_dir);

}  // namespace cartridge
