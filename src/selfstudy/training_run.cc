#include "selfstudy/training_run.h"

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>

#include <fmt/format.h>

#include "cartridge/adapter_config.h"
#include "util/error.h"
#include "util/progress.h"

namespace cartridge {

namespace fs = std::filesystem;

namespace {

// Set by the SIGINT handler. A signal handler can only talk to the program through a global of this kind;
// it is the one piece of global state in the library and is only installed while train_cartridge runs.
volatile std::sig_atomic_t g_interrupt_requested = 0;

extern "C" void request_interrupt(int signal_number) {
  g_interrupt_requested = 1;
  // A second signal ends the program at once.
  std::signal(signal_number, SIG_DFL);
}

// Installs the handler for the lifetime of a training run and restores the previous one afterwards. Across
// processes SIGTERM is handled the same way: torchrun and Slurm stop workers with it, and a checkpoint after
// the current step is worth the wait.
class InterruptScope {
 public:
  InterruptScope(bool enabled, bool also_sigterm)
      : enabled_(enabled), also_sigterm_(enabled && also_sigterm) {
    if (!enabled_) return;
    g_interrupt_requested = 0;
    previous_ = std::signal(SIGINT, request_interrupt);
    if (also_sigterm_) previous_terminate_ = std::signal(SIGTERM, request_interrupt);
  }
  ~InterruptScope() {
    if (enabled_) std::signal(SIGINT, previous_ == SIG_ERR ? SIG_DFL : previous_);
    if (also_sigterm_) std::signal(SIGTERM, previous_terminate_ == SIG_ERR ? SIG_DFL : previous_terminate_);
  }
  bool requested() const { return enabled_ && g_interrupt_requested != 0; }

 private:
  bool enabled_;
  bool also_sigterm_;
  void (*previous_)(int) = SIG_DFL;
  void (*previous_terminate_)(int) = SIG_DFL;
};

// Answer-only distillation trains on a copy of the dataset without the question rows' targets; the
// whole-conversation choice uses the dataset as it is (nullopt).
std::optional<Dataset> answer_only_dataset(const Dataset& dataset, DistillTokens distill) {
  if (distill != DistillTokens::kAnswer) return std::nullopt;
  Dataset answers;
  answers.header = dataset.header;
  for (const Conversation& conversation : dataset.conversations) {
    answers.conversations.push_back(with_answer_targets_only(conversation));
  }
  return answers;
}

// Everything a run writes: checkpoints, the adapter and loss curve beside them, and best/ (the adapter of
// the lowest selection score so far). Keeps `result` up to date. Across processes only rank 0's writes
// (`writes`); the others keep the same result.
class TrainingOutputs {
 public:
  TrainingOutputs(const TrainingOptions& options, const Model& model, const TrainerSettings& settings,
                  Framing framing, bool writes, TrainingResult& result)
      : options_(options),
        model_(model),
        settings_(settings),
        framing_(framing),
        writes_(writes),
        result_(result) {
    result_.best_by_validation = !options_.validation_questions.empty();
    // A resumed run's best so far comes from its restored evaluations (the earliest of equal scores).
    for (const EvaluationEntry& entry : result_.evaluations) is_new_best(entry);
  }

  // Records an evaluation of the trainer's current cartridge; writes best/ when it scores lowest so far.
  void record_evaluation(const EvaluationEntry& entry, const DistillationTrainer& trainer) {
    if (is_new_best(entry) && writes_) {
      write_best_adapter(options_.output_dir, entry.step, result_.best_by_validation, selection_score(entry),
                         trainer.cartridge(), options_.model_name, model_, options_.fingerprint, framing_);
    }
    result_.evaluations.push_back(entry);
  }

  // At the end of a finished run: <out>'s adapter becomes best/'s when keep_best asks for it.
  void keep_best_adapter() {
    if (!options_.keep_best || result_.best_step < 0) return;
    if (writes_) publish_adapter(options_.output_dir + "/" + kBestFolderName, options_.output_dir);
    result_.kept_best = true;
  }

  // Writes checkpoint-<step>, the adapter beside it and the loss curve.
  void save(int64_t step, const DistillationTrainer& trainer) {
    if (!writes_) return;
    write_checkpoint(options_.output_dir, step, trainer.cartridge(), trainer.optimizer(), trainer.trainable(),
                     settings_, result_.history, result_.evaluations, options_.model_name, model_,
                     options_.fingerprint, options_.keep_checkpoints, framing_);
  }

  // What the progress bar shows after a step.
  std::string progress_text(const TrainingHistoryEntry& entry) const {
    std::string text =
        fmt::format("loss {:.4f} | {:.0f} tok/s", entry.loss, entry.tokens / std::max(entry.seconds, 1e-9));
    if (!result_.evaluations.empty() && std::isfinite(result_.evaluations.back().heldout_kl)) {
      text += fmt::format(" | held-out KL {:.4f}", result_.evaluations.back().heldout_kl);
    }
    if (result_.best_step >= 0 && result_.best_by_validation) {
      text += fmt::format(" | best validation NLL {:.4f} (step {})", result_.best_validation_answer_nll,
                          result_.best_step);
    }
    return text;
  }

 private:
  // The score best/ minimises: the validation answer NLL with validation questions, else the held-out KL.
  double selection_score(const EvaluationEntry& entry) const {
    return result_.best_by_validation ? entry.validation_answer_nll : entry.heldout_kl;
  }

  // Early stopping's rule: a strictly lower selection score than the best so far (so the earliest of
  // equals).
  bool is_new_best(const EvaluationEntry& entry) {
    const double score = selection_score(entry);
    if (!std::isfinite(score)) return false;
    if (result_.best_step >= 0 && !(score < best_score_)) return false;
    best_score_ = score;
    result_.best_step = entry.step;
    result_.best_heldout_kl = entry.heldout_kl;
    if (result_.best_by_validation) result_.best_validation_answer_nll = entry.validation_answer_nll;
    return true;
  }

  double best_score_ = std::numeric_limits<double>::quiet_NaN();

  const TrainingOptions& options_;
  const Model& model_;
  const TrainerSettings& settings_;
  Framing framing_;  // the dataset's student framing, recorded with every adapter written
  bool writes_;
  TrainingResult& result_;
};

// With --resume and a checkpoint: restores the trainer and the history, and returns the checkpoint's step.
// Without --resume, a folder that already holds checkpoints is refused. Otherwise 0.
int64_t restore_checkpoint(DistillationTrainer& trainer, TrainingResult& result,
                           const TrainingOptions& options, const Model& model,
                           const TrainerSettings& settings) {
  const std::string checkpoint = latest_checkpoint(options.output_dir);
  if (checkpoint.empty()) {
    // An adapter with no checkpoint beside it is not a run of ours to continue (init's or compose's output,
    // or another tool's): training would replace it.
    if (fs::exists(fs::path(options.output_dir) / kAdapterConfigFileName)) {
      throw InvalidArgumentError(describe_file_problem(
          options.output_dir, "already holds a cartridge and no training checkpoint",
          "choose another --out (training would replace that adapter), or start from it with --init " +
              options.output_dir + " and another --out"));
    }
    return 0;
  }
  if (!options.resume) {
    throw InvalidArgumentError(describe_file_problem(
        options.output_dir,
        "already holds training checkpoints (" + fs::path(checkpoint).filename().string() + ")",
        "pass --resume to continue that run, or choose another --out folder"));
  }
  CheckpointState state = read_checkpoint(checkpoint, model, settings);
  trainer.restore(state);
  result.history = std::move(state.history);
  result.evaluations = std::move(state.evaluations);
  if (options.show_progress) {
    std::fprintf(stderr, "resuming from %s (step %lld of %lld)\n", checkpoint.c_str(),
                 static_cast<long long>(state.step), static_cast<long long>(options.steps));
  }
  return state.step;
}

}  // namespace

std::string latest_checkpoint(const std::string& output_dir) { return newest_checkpoint_folder(output_dir); }

TrainingResult train_cartridge(std::shared_ptr<const Model> model, const Cartridge& initial,
                               const Dataset& full_dataset, const TrainingOptions& options) {
  const std::optional<Dataset> answer_only = answer_only_dataset(full_dataset, options.distill);
  const Dataset& dataset = answer_only ? *answer_only : full_dataset;
  DistillationTrainer trainer(model, initial, dataset, options);
  const ProcessGroup single_process;
  const ProcessGroup& group = options.process_group ? *options.process_group : single_process;
  TrainingResult result;
  result.heldout_indices = trainer.heldout_indices();
  const TrainerSettings settings = TrainerSettings::from(options, initial, dataset, model->dtype());
  // Different files or options on one rank would train a different problem: refuse it before any step.
  group.check_same_as_writer(settings.values.dump(),
                             "the training settings (dataset, initial cartridge, options)");
  int64_t start_step = 0;
  if (group.writes()) {
    fs::create_directories(options.output_dir);
    start_step = restore_checkpoint(trainer, result, options, *model, settings);
  }
  trainer.adopt_writer_state(start_step);
  TrainingOutputs outputs(options, *model, settings, dataset_framing(dataset.header), group.writes(), result);
  if (start_step == 0 && trainer.evaluates()) {  // a fresh run: score the initialisation
    outputs.record_evaluation(trainer.evaluate(0), trainer);
  }

  InterruptScope interrupt(options.handle_interrupt, /*also_sigterm=*/group.distributed());
  ProgressBar progress("training", options.steps, "steps", options.show_progress && group.writes());
  progress.skip(start_step);
  int64_t step = start_step;
  while (step < options.steps) {
    result.history.push_back(trainer.step(++step));
    const bool last = step == options.steps;
    // The ranks stop after the same step, whichever of them got the signal.
    const bool interrupted =
        group.any(interrupt.requested(), fmt::format("the interrupt check after step {}", step));
    if (trainer.evaluates() && (last || (options.eval_every > 0 && step % options.eval_every == 0))) {
      outputs.record_evaluation(trainer.evaluate(step), trainer);
    }
    progress.advance(1, outputs.progress_text(result.history.back()));
    if (last || interrupted || (options.checkpoint_every > 0 && step % options.checkpoint_every == 0)) {
      outputs.save(step, trainer);
    }
    if (interrupted) {
      result.interrupted = true;
      break;
    }
  }
  progress.finish();
  result.steps_done = step;
  if (start_step == options.steps)
    outputs.save(step, trainer);  // nothing left to do: make sure the outputs exist
  if (!result.interrupted) outputs.keep_best_adapter();
  if (result.interrupted && options.show_progress && group.writes()) {
    std::fprintf(stderr, "interrupted: checkpoint at step %lld saved in %s (continue with --resume)\n",
                 static_cast<long long>(step), options.output_dir.c_str());
  }
  return result;
}

}  // namespace cartridge
