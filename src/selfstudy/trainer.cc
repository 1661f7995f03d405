// libtorch's include folder ships its own fmt (v12) ahead of the system one; use it header-only so
// nothing needs linking against a matching libfmt.
#define FMT_HEADER_ONLY
#include "selfstudy/trainer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>
#include <unordered_map>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/adam.h>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "selfstudy/loss.h"
#include "selfstudy/loss_plot.h"
#include "selfstudy/trainer_checkpoint.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"

namespace cartridge {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// Set by the SIGINT handler. A signal handler can only talk to the program through a global of this kind;
// it is the one piece of global state in the library and is only installed while train_cartridge runs.
volatile std::sig_atomic_t g_interrupt_requested = 0;

extern "C" void request_interrupt(int) {
  g_interrupt_requested = 1;
  // A second Ctrl-C ends the program at once.
  std::signal(SIGINT, SIG_DFL);
}

// Installs the handler for the lifetime of a training run and restores the previous one afterwards.
class InterruptScope {
 public:
  explicit InterruptScope(bool enabled) : enabled_(enabled) {
    if (!enabled_) return;
    g_interrupt_requested = 0;
    previous_ = std::signal(SIGINT, request_interrupt);
  }
  ~InterruptScope() {
    if (enabled_) std::signal(SIGINT, previous_ == SIG_ERR ? SIG_DFL : previous_);
  }
  bool requested() const { return enabled_ && g_interrupt_requested != 0; }

 private:
  bool enabled_;
  void (*previous_)(int) = SIG_DFL;
};

// A uniform integer in [0, bound) from a 64-bit engine, by rejection, so the data order does not depend
// on the standard library's distribution implementation.
uint64_t uniform_below(std::mt19937_64& engine, uint64_t bound) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % bound;
  uint64_t value;
  do {
    value = engine();
  } while (value >= limit);
  return value % bound;
}

// Fisher-Yates shuffle of 0..count-1 with an engine seeded from (seed, stream).
std::vector<int64_t> seeded_permutation(int64_t count, uint64_t seed, uint64_t stream) {
  std::seed_seq sequence{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                         static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)};
  std::mt19937_64 engine(sequence);
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t index = count - 1; index > 0; --index) {
    std::swap(order[index], order[uniform_below(engine, static_cast<uint64_t>(index) + 1)]);
  }
  return order;
}

constexpr uint64_t kHeldoutStream = 0x68656c646f7574ULL;  // "heldout": keeps the split apart from epochs

int64_t padded_tokens(const std::vector<const Conversation*>& conversations) {
  int64_t longest = 0;
  for (const Conversation* conversation : conversations) {
    longest = std::max<int64_t>(longest, static_cast<int64_t>(conversation->input_ids.size()) - 1);
  }
  return longest * static_cast<int64_t>(conversations.size());
}

KvCache student_cache(const Model& model, const KvPrefix* prefix, int64_t batch_size) {
  if (prefix == nullptr || prefix->length() == 0) {
    return KvCache::empty(model.config(), batch_size, model.dtype(), model.device());
  }
  std::vector<at::Tensor> keys, values;  // per layer [1, H_kv, P, D], broadcast to the batch
  keys.reserve(prefix->keys.size());
  values.reserve(prefix->values.size());
  for (size_t layer = 0; layer < prefix->keys.size(); ++layer) {
    keys.push_back(prefix->keys[layer].unsqueeze(0));
    values.push_back(prefix->values[layer].unsqueeze(0));
  }
  const at::Tensor lengths = at::full({batch_size}, prefix->length(), at::TensorOptions().dtype(at::kLong));
  return KvCache::with_prefix(std::move(keys), std::move(values), lengths, batch_size);
}

}  // namespace

std::vector<std::vector<const Conversation*>> micro_batches(std::vector<const Conversation*> conversations,
                                                            int64_t max_batch_tokens) {
  std::stable_sort(
      conversations.begin(), conversations.end(),
      [](const Conversation* a, const Conversation* b) { return a->input_ids.size() < b->input_ids.size(); });
  std::vector<std::vector<const Conversation*>> groups;
  std::vector<const Conversation*> current;
  for (const Conversation* conversation : conversations) {
    current.push_back(conversation);
    if (max_batch_tokens > 0 && current.size() > 1 && padded_tokens(current) > max_batch_tokens) {
      current.pop_back();
      groups.push_back(current);
      current = {conversation};
    }
  }
  if (!current.empty()) groups.push_back(current);
  return groups;
}

StudentBatch make_student_batch(const std::vector<const Conversation*>& conversations, int64_t top_k,
                                at::Device device) {
  TORCH_CHECK(!conversations.empty(), "empty batch");
  const int64_t rows = static_cast<int64_t>(conversations.size());
  int64_t width = 0;  // T
  int64_t targets = 0;
  for (const Conversation* conversation : conversations) {
    const int64_t length = static_cast<int64_t>(conversation->input_ids.size());
    if (conversation->target_start < 1 || conversation->num_targets() < 1 ||
        static_cast<int64_t>(conversation->target_ids.size()) != conversation->num_targets() * top_k ||
        conversation->target_logprobs.size() != conversation->target_ids.size()) {
      throw FormatError(fmt::format(
          "conversation {} has no usable targets (target_start {}, {} tokens, {} target entries for top_k "
          "{}); "
          "the dataset is damaged: synthesize it again",
          conversation->index, conversation->target_start, length, conversation->target_ids.size(), top_k));
    }
    width = std::max(width, length - 1);
    targets += conversation->num_targets();
  }
  std::vector<int64_t> ids(rows * width, 0);
  std::vector<uint8_t> mask(rows * width, 0);
  std::vector<int64_t> logit_rows;
  std::vector<int64_t> teacher_ids;
  std::vector<float> teacher_log_probs;
  logit_rows.reserve(targets);
  teacher_ids.reserve(targets * top_k);
  teacher_log_probs.reserve(targets * top_k);
  int64_t real_tokens = 0;
  for (int64_t row = 0; row < rows; ++row) {
    const Conversation& conversation = *conversations[row];
    const int64_t length = static_cast<int64_t>(conversation.input_ids.size()) - 1;  // the last is not fed
    for (int64_t column = 0; column < length; ++column) {
      ids[row * width + column] = conversation.input_ids[column];
      mask[row * width + column] = 1;
    }
    real_tokens += length;
    for (int64_t target = 0; target < conversation.num_targets(); ++target) {
      // Target j is token target_start + j, predicted by the logits one position earlier.
      logit_rows.push_back(row * width + conversation.target_start + target - 1);
    }
    teacher_ids.insert(teacher_ids.end(), conversation.target_ids.begin(), conversation.target_ids.end());
    teacher_log_probs.insert(teacher_log_probs.end(), conversation.target_logprobs.begin(),
                             conversation.target_logprobs.end());
  }
  const auto as_long = at::TensorOptions().dtype(at::kLong);
  StudentBatch batch;
  batch.input_ids = at::tensor(ids, as_long).view({rows, width}).to(device);
  batch.token_mask = at::tensor(std::vector<int64_t>(mask.begin(), mask.end()), as_long)
                         .view({rows, width})
                         .to(at::kBool)
                         .to(device);
  batch.logit_rows = at::tensor(logit_rows, as_long).to(device);
  batch.teacher_ids = at::tensor(teacher_ids, as_long).view({targets, top_k}).to(device);
  batch.teacher_log_probs =
      at::tensor(teacher_log_probs, at::TensorOptions().dtype(at::kFloat)).view({targets, top_k}).to(device);
  batch.real_tokens = real_tokens;
  return batch;
}

at::Tensor student_cross_entropy(const Model& model, const KvPrefix* prefix, const StudentBatch& batch) {
  const int64_t rows = batch.input_ids.size(0);
  KvCache cache = student_cache(model, prefix, rows);
  at::Tensor logits = model.forward(batch.input_ids, batch.token_mask, cache);  // [B, T, V] float32
  const int64_t vocabulary = logits.size(2);
  // Only the positions that predict a target matter; select them before the log-softmax.
  const at::Tensor selected = logits.reshape({-1, vocabulary}).index_select(0, batch.logit_rows);  // [N, V]
  logits = at::Tensor();  // release [B, T, V]; the backward of index_select does not need it
  return distillation_cross_entropy(selected, batch.teacher_ids, batch.teacher_log_probs);  // [N]
}

BatchScores score_student_batch(const Model& model, const KvPrefix* prefix, const StudentBatch& batch,
                                bool with_kl) {
  const at::Tensor cross_entropy = student_cross_entropy(model, prefix, batch);  // [N]
  BatchScores scores;
  scores.cross_entropy_sum = cross_entropy.sum();
  if (with_kl) {
    scores.kl_sum = (cross_entropy.detach() + teacher_negative_entropy(batch.teacher_log_probs)).sum();
  }
  scores.positions = batch.logit_rows.size(0);
  scores.real_tokens = batch.real_tokens;
  return scores;
}

std::pair<double, int64_t> mean_heldout_kl(const Model& model, const KvPrefix* prefix,
                                           const std::vector<const Conversation*>& conversations,
                                           int64_t top_k, int64_t max_batch_tokens) {
  if (conversations.empty()) return {std::numeric_limits<double>::quiet_NaN(), 0};
  at::NoGradGuard no_grad;
  double kl_sum = 0;
  int64_t positions = 0;
  for (const auto& group : micro_batches(conversations, max_batch_tokens)) {
    const StudentBatch batch = make_student_batch(group, top_k, model.device());
    const BatchScores scores = score_student_batch(model, prefix, batch, /*with_kl=*/true);
    kl_sum += scores.kl_sum.item<double>();
    positions += scores.positions;
  }
  return {kl_sum / static_cast<double>(positions), positions};
}

std::vector<double> mean_target_nlls(const Model& model, const KvPrefix* prefix,
                                     const std::vector<const Conversation*>& rows, int64_t max_batch_tokens,
                                     const std::function<void(int64_t)>& on_rows_done) {
  at::NoGradGuard no_grad;
  // micro_batches sorts by length; each row's place in `rows` says where its mean goes.
  std::unordered_map<const Conversation*, size_t> place;
  for (size_t index = 0; index < rows.size(); ++index) place.emplace(rows[index], index);
  std::vector<double> means(rows.size(), std::numeric_limits<double>::quiet_NaN());
  for (const auto& group : micro_batches(rows, max_batch_tokens)) {
    const StudentBatch batch = make_student_batch(group, /*top_k=*/1, model.device());
    // With a one-hot teacher (log-probability 0 on the reference token) the cross-entropy is the NLL.
    const at::Tensor nll = student_cross_entropy(model, prefix, batch).to(at::kCPU, at::kDouble);  // [N]
    const double* values = nll.data_ptr<double>();
    int64_t offset = 0;
    for (const Conversation* row : group) {
      const int64_t count = row->num_targets();
      double sum = 0;
      for (int64_t index = 0; index < count; ++index) sum += values[offset + index];
      means[place.at(row)] = sum / static_cast<double>(count);
      offset += count;
    }
    if (on_rows_done) on_rows_done(static_cast<int64_t>(group.size()));
  }
  return means;
}

std::vector<int64_t> heldout_indices(int64_t count, double fraction, int64_t max_count, uint64_t seed) {
  if (count < 2 || !(fraction > 0)) return {};
  int64_t wanted = static_cast<int64_t>(std::llround(fraction * static_cast<double>(count)));
  wanted = std::clamp<int64_t>(wanted, 1, std::min<int64_t>(count - 1, std::max<int64_t>(max_count, 1)));
  std::vector<int64_t> order = seeded_permutation(count, seed, kHeldoutStream);
  order.resize(wanted);
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<int64_t> batch_for_step(int64_t training_count, int64_t batch_size, uint64_t seed, int64_t step) {
  TORCH_CHECK(training_count > 0 && batch_size > 0 && step >= 1, "bad batch_for_step arguments");
  std::vector<int64_t> batch;
  batch.reserve(batch_size);
  int64_t cached_epoch = -1;
  std::vector<int64_t> order;
  for (int64_t slot = (step - 1) * batch_size; slot < step * batch_size; ++slot) {
    const int64_t epoch = slot / training_count;
    if (epoch != cached_epoch) {
      order = seeded_permutation(training_count, seed, static_cast<uint64_t>(epoch));
      cached_epoch = epoch;
    }
    batch.push_back(order[slot % training_count]);
  }
  return batch;
}

const char* distill_tokens_name(DistillTokens tokens) {
  return tokens == DistillTokens::kAnswer ? "answer" : "conversation";
}

DistillTokens parse_distill_tokens(const std::string& name) {
  if (name == "conversation") return DistillTokens::kConversation;
  if (name == "answer") return DistillTokens::kAnswer;
  throw InvalidArgumentError(
      "--distill must be answer (answer tokens) or conversation (question and answer tokens), "
      "got '" +
      name + "'");
}

std::string latest_checkpoint(const std::string& output_dir) { return newest_checkpoint_folder(output_dir); }

TrainingResult train_cartridge(std::shared_ptr<const Model> model_pointer, const Cartridge& initial,
                               const Dataset& full_dataset, const TrainingOptions& options) {
  const Model& model = *model_pointer;
  // Answer-only distillation drops the question rows once here; everything below uses `dataset`.
  std::optional<Dataset> answer_only;
  if (options.distill == DistillTokens::kAnswer) {
    answer_only.emplace();
    answer_only->header = full_dataset.header;
    for (const Conversation& conversation : full_dataset.conversations) {
      answer_only->conversations.push_back(with_answer_targets_only(conversation));
    }
  }
  const Dataset& dataset = answer_only ? *answer_only : full_dataset;
  if (options.output_dir.empty()) throw InvalidArgumentError("training needs an output folder (--out DIR)");
  if (options.steps < 1)
    throw InvalidArgumentError(fmt::format("--steps must be >= 1, got {}", options.steps));
  if (options.batch_size < 1) {
    throw InvalidArgumentError(fmt::format("--batch-size must be >= 1, got {}", options.batch_size));
  }
  if (!(options.learning_rate > 0)) {
    throw InvalidArgumentError(fmt::format("--lr must be > 0, got {}", options.learning_rate));
  }
  if (options.keep_checkpoints < 1) {
    throw InvalidArgumentError(
        fmt::format("--keep-checkpoints must be >= 1, got {}", options.keep_checkpoints));
  }
  if (!(options.eval_fraction >= 0 && options.eval_fraction < 1)) {
    throw InvalidArgumentError(
        fmt::format("--eval-fraction must be in [0, 1), got {}", options.eval_fraction));
  }
  initial.check_fits(model.config(), "the initial cartridge", options.model_name);
  const int64_t top_k = dataset.header.top_k;
  const int64_t count = static_cast<int64_t>(dataset.conversations.size());

  TrainingResult result;
  result.heldout_indices =
      heldout_indices(count, options.eval_fraction, options.max_eval_conversations, options.seed);
  std::vector<const Conversation*> heldout, training;
  {
    size_t next_heldout = 0;
    for (int64_t index = 0; index < count; ++index) {
      if (next_heldout < result.heldout_indices.size() && result.heldout_indices[next_heldout] == index) {
        heldout.push_back(&dataset.conversations[index]);
        ++next_heldout;
      } else {
        training.push_back(&dataset.conversations[index]);
      }
    }
  }
  if (training.empty()) {
    throw InvalidArgumentError(
        fmt::format("the dataset has {} conversation(s) and none is left for training after "
                    "holding out {}: synthesize more (--samples) or lower --eval-fraction",
                    count, heldout.size()));
  }

  const TrainerSettings settings = TrainerSettings::from(options, initial, dataset, model.dtype());
  fs::create_directories(options.output_dir);

  // The parameters: fp32 on the model's device; only the trainable rows get gradients.
  at::Tensor frozen = initial.frozen_embedding().to(model.device(), at::kFloat).clone();        // [F, W]
  at::Tensor trainable = initial.trainable_embedding().to(model.device(), at::kFloat).clone();  // [p-F, W]
  int64_t start_step = 0;
  std::optional<AdamMoments> restored_moments;

  const std::string checkpoint = latest_checkpoint(options.output_dir);
  if (options.resume && !checkpoint.empty()) {
    CheckpointState state = read_checkpoint(checkpoint, model, settings);
    frozen = state.cartridge.frozen_embedding().to(model.device(), at::kFloat).clone();
    trainable = state.cartridge.trainable_embedding().to(model.device(), at::kFloat).clone();
    start_step = state.step;
    result.history = std::move(state.history);
    result.evaluations = std::move(state.evaluations);
    restored_moments = std::move(state.moments);
    if (options.show_progress) {
      std::fprintf(stderr, "resuming from %s (step %lld of %lld)\n", checkpoint.c_str(),
                   static_cast<long long>(start_step), static_cast<long long>(options.steps));
    }
  } else if (!checkpoint.empty()) {
    throw InvalidArgumentError(describe_file_problem(
        options.output_dir,
        "already holds training checkpoints (" + fs::path(checkpoint).filename().string() + ")",
        "pass --resume to continue that run, or choose another --out folder"));
  }
  trainable.set_requires_grad(true);

  torch::optim::Adam optimizer(std::vector<at::Tensor>{trainable},
                               torch::optim::AdamOptions(options.learning_rate)
                                   .betas({options.beta1, options.beta2})
                                   .eps(options.epsilon));
  if (restored_moments) restore_adam_moments(optimizer, trainable, *restored_moments);

  const auto current_cartridge = [&] {
    return Cartridge(initial.shape(), frozen.detach().to(at::kCPU).clone(),
                     trainable.detach().to(at::kCPU).clone());
  };
  const auto prefix_of = [&](bool with_grad) {
    // [p, W] fp32 -> per-layer [H_kv, p, D] in the compute dtype; the cast is differentiable.
    const at::Tensor rows = at::cat({frozen, with_grad ? trainable : trainable.detach()}, 0);
    return kv_prefix_from_prompt_embeddings(rows, model.config(), model.dtype(), model.device());
  };
  std::vector<const Conversation*> validation;
  for (const Conversation& row : options.validation_questions) validation.push_back(&row);
  // The best validation score so far (a resumed run's comes from its restored evaluations; the
  // earliest of equal scores wins).
  for (const EvaluationEntry& entry : result.evaluations) {
    if (!std::isfinite(entry.validation_answer_nll)) continue;
    if (result.best_step < 0 || entry.validation_answer_nll < result.best_validation_answer_nll) {
      result.best_step = entry.step;
      result.best_validation_answer_nll = entry.validation_answer_nll;
    }
  }
  const auto evaluate = [&](int64_t step) {
    if (heldout.empty() && validation.empty()) return;
    const KvPrefix prefix = prefix_of(false);
    EvaluationEntry entry;
    entry.step = step;
    std::tie(entry.heldout_kl, entry.positions) =
        mean_heldout_kl(model, &prefix, heldout, top_k, options.max_batch_tokens);
    if (!validation.empty()) {
      const std::vector<double> means =
          mean_target_nlls(model, &prefix, validation, options.max_batch_tokens);
      entry.validation_answer_nll =
          std::accumulate(means.begin(), means.end(), 0.0) / static_cast<double>(means.size());
      // Early stopping: keep the adapter of the lowest score (strictly lower, so the earliest of equals).
      if (result.best_step < 0 || entry.validation_answer_nll < result.best_validation_answer_nll) {
        result.best_step = step;
        result.best_validation_answer_nll = entry.validation_answer_nll;
        write_best_adapter(options.output_dir, step, entry.validation_answer_nll, current_cartridge(),
                           options.model_name, model, options.fingerprint);
      }
    }
    result.evaluations.push_back(entry);
  };
  const auto save = [&](int64_t step) {
    write_checkpoint(options.output_dir, step, current_cartridge(), optimizer, trainable, settings,
                     result.history, result.evaluations, options.model_name, model, options.fingerprint,
                     options.keep_checkpoints);
  };

  if (start_step == 0 && result.evaluations.empty()) evaluate(0);

  InterruptScope interrupt(options.handle_interrupt);
  ProgressBar progress("training", options.steps, "steps", options.show_progress);
  progress.skip(start_step);
  int64_t step = start_step;
  while (step < options.steps) {
    ++step;
    const auto started = std::chrono::steady_clock::now();
    std::vector<const Conversation*> batch;
    for (const int64_t index :
         batch_for_step(static_cast<int64_t>(training.size()), options.batch_size, options.seed, step)) {
      batch.push_back(training[index]);
    }
    int64_t step_positions = 0;
    for (const Conversation* conversation : batch) step_positions += conversation->num_targets();
    optimizer.zero_grad();
    double cross_entropy_sum = 0;
    int64_t step_tokens = 0;
    for (const auto& group : micro_batches(batch, options.max_batch_tokens)) {
      const KvPrefix prefix = prefix_of(true);
      const StudentBatch student = make_student_batch(group, top_k, model.device());
      const BatchScores scores = score_student_batch(model, &prefix, student, /*with_kl=*/false);
      // Dividing every piece by the step's total makes the accumulated gradient that of the mean.
      const at::Tensor piece_loss = scores.cross_entropy_sum / static_cast<double>(step_positions);
      piece_loss.backward();
      cross_entropy_sum += scores.cross_entropy_sum.item<double>();
      step_tokens += scores.real_tokens;
    }
    optimizer.step();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double loss = cross_entropy_sum / static_cast<double>(step_positions);
    result.history.push_back({step, loss, step_tokens, step_positions, seconds});
    if (!std::isfinite(loss)) {
      throw InvalidArgumentError(
          fmt::format("the training loss became {} at step {}: lower --lr (now {}) or check the dataset",
                      loss, step, options.learning_rate));
    }
    const bool last = step == options.steps;
    const bool interrupted = interrupt.requested();
    if (last || (options.eval_every > 0 && step % options.eval_every == 0)) evaluate(step);
    std::string extra =
        fmt::format("loss {:.4f} | {:.0f} tok/s", loss, step_tokens / std::max(seconds, 1e-9));
    if (!result.evaluations.empty() && std::isfinite(result.evaluations.back().heldout_kl)) {
      extra += fmt::format(" | held-out KL {:.4f}", result.evaluations.back().heldout_kl);
    }
    if (result.best_step >= 0) {
      extra += fmt::format(" | best validation NLL {:.4f} (step {})", result.best_validation_answer_nll,
                           result.best_step);
    }
    progress.advance(1, extra);
    if (last || interrupted || (options.checkpoint_every > 0 && step % options.checkpoint_every == 0))
      save(step);
    if (interrupted) {
      result.interrupted = true;
      break;
    }
  }
  progress.finish();
  result.steps_done = step;
  if (start_step == options.steps) save(step);  // nothing left to do: make sure the outputs exist
  if (result.interrupted && options.show_progress) {
    std::fprintf(stderr, "interrupted: checkpoint at step %lld saved in %s (continue with --resume)\n",
                 static_cast<long long>(step), options.output_dir.c_str());
  }
  return result;
}

}  // namespace cartridge
