// Training checkpoints and the training outputs beside them (see selfstudy/trainer.h for the folder
// layout). A checkpoint folder `checkpoint-<step>` is a complete PEFT adapter plus two files PEFT ignores:
//   trainer_state.json      {"format": "cartridge-trainer-state", "version": 1, "step", "adam_step",
//                            "settings" (everything that must agree to resume), "history", "evaluations"}
//   optimizer.safetensors   Adam's moments of the trainable rows: "exp_avg", "exp_avg_sq", F32 [p-F, W]
// Folders are written atomically, so a folder that exists is complete.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "cartridge/cartridge.h"
#include "cartridge/fingerprint.h"
#include "cartridge/framing.h"
#include "model/model.h"
#include "selfstudy/dataset.h"

namespace torch::optim {
class Adam;
}

namespace cartridge {

struct TrainingOptions;

struct TrainingHistoryEntry {
  int64_t step = 0;
  double loss = 0;        // mean distillation cross-entropy per target position of the step's batch
  int64_t tokens = 0;     // real tokens the student ran this step
  int64_t positions = 0;  // target positions this step
  double seconds = 0;     // wall time of the step
};

struct EvaluationEntry {
  int64_t step = 0;
  double heldout_kl =
      0;  // mean truncated KL to the teacher per held-out target position (NaN: none held out)
  int64_t positions = 0;
  // Mean answer NLL over the validation questions (TrainingOptions::validation_questions); NaN without them.
  double validation_answer_nll = std::numeric_limits<double>::quiet_NaN();
};

inline constexpr char kTrainerStateFormat[] = "cartridge-trainer-state";
inline constexpr int64_t kTrainerStateVersion = 1;
inline constexpr char kTrainerStateFileName[] = "trainer_state.json";
inline constexpr char kOptimizerFileName[] = "optimizer.safetensors";
inline constexpr char kLossCsvFileName[] = "loss.csv";
inline constexpr char kLossSvgFileName[] = "loss.svg";
// <out>/best/: the adapter with the lowest selection score so far, plus the state file naming its step:
// kBestStateFileName when chosen by validation questions, kBestHeldoutStateFileName by held-out KL.
inline constexpr char kBestFolderName[] = "best";
inline constexpr char kBestStateFileName[] = "best_validation.json";  // {"step", "validation_answer_nll"}
inline constexpr char kBestHeldoutStateFileName[] = "best_heldout_kl.json";  // {"step", "heldout_kl"}

// Everything that must be equal for a resumed run to continue the same computation.
struct TrainerSettings {
  nlohmann::json
      values;  // a flat object: batch size, optimiser, seed, split, dtype, cartridge and dataset identity

  static TrainerSettings from(const TrainingOptions& options, const Cartridge& initial,
                              const Dataset& dataset, at::ScalarType compute_dtype);
  // One "name: X in the checkpoint vs Y now" item per differing key.
  std::vector<std::string> differences(const TrainerSettings& now) const;
};

struct AdamMoments {
  int64_t step = 0;       // Adam's own step count (bias correction)
  at::Tensor exp_avg;     // [p-F, W] float32, CPU
  at::Tensor exp_avg_sq;  // [p-F, W] float32, CPU
};

struct CheckpointState {
  int64_t step = 0;
  Cartridge cartridge;
  AdamMoments moments;
  std::vector<TrainingHistoryEntry> history;
  std::vector<EvaluationEntry> evaluations;
};

// The checkpoint-<step> folder under `output_dir` with the largest step ("" when none).
std::string newest_checkpoint_folder(const std::string& output_dir);

// The settings a checkpoint folder was trained with (its trainer_state.json), without loading the rest.
// Throws as read_checkpoint does for an unknown format/version or a damaged file.
TrainerSettings read_checkpoint_settings(const std::string& folder);

// Reads a checkpoint folder. Throws UnsupportedError for an unknown trainer-state format/version,
// FormatError for damaged files, MismatchError when its settings differ from `expected` (listing them) or
// the cartridge does not fit `model`.
CheckpointState read_checkpoint(const std::string& folder, const Model& model,
                                const TrainerSettings& expected);

// Copies the optimiser's moments for `parameter` out of / into a torch Adam.
AdamMoments adam_moments(const torch::optim::Adam& optimizer, const at::Tensor& parameter);
void restore_adam_moments(torch::optim::Adam& optimizer, const at::Tensor& parameter,
                          const AdamMoments& moments);

// Writes <output_dir>/checkpoint-<step>/ (atomically; its adapter records `framing`), copies its adapter
// files to <output_dir>/ (each file atomically), rewrites loss.csv and loss.svg, and removes all but the
// newest `keep` checkpoint folders.
void write_checkpoint(const std::string& output_dir, int64_t step, const Cartridge& cartridge,
                      const torch::optim::Adam& optimizer, const at::Tensor& trainable,
                      const TrainerSettings& settings, const std::vector<TrainingHistoryEntry>& history,
                      const std::vector<EvaluationEntry>& evaluations, const std::string& model_name,
                      const Model& model, const std::optional<ModelFingerprint>& fingerprint, int64_t keep,
                      Framing framing);

// Writes <output_dir>/best/ (atomically, replacing an older one): `cartridge` as a PEFT adapter and the
// state file naming the step and its score (kBestStateFileName with the validation answer NLL when
// `by_validation`, else kBestHeldoutStateFileName with the held-out KL).
void write_best_adapter(const std::string& output_dir, int64_t step, bool by_validation, double score,
                        const Cartridge& cartridge, const std::string& model_name, const Model& model,
                        const std::optional<ModelFingerprint>& fingerprint, Framing framing);

// Copies the adapter files (weights, config, fingerprint, framing) of `from_folder` into `output_dir`,
// each atomically, weights first: how <out>'s adapter becomes a checkpoint's or best/'s.
void publish_adapter(const std::string& from_folder, const std::string& output_dir);

// The loss curve as CSV (step,loss,tokens,positions,seconds,heldout_kl,validation_answer_nll; one row per
// step and per evaluation; empty cells where a row has no value) and as an SVG chart.
std::string loss_csv(const std::vector<TrainingHistoryEntry>& history,
                     const std::vector<EvaluationEntry>& evaluations);
std::string loss_svg(const std::vector<TrainingHistoryEntry>& history,
                     const std::vector<EvaluationEntry>& evaluations);

}  // namespace cartridge
