#include "selfstudy/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>
#include <unordered_map>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/adam.h>

#include "selfstudy/loss.h"
#include "util/error.h"

namespace cartridge {

namespace {

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
  KvCache cache = model.new_cache(rows, prefix);
  // Only the positions that predict a target matter: select their hidden states and run the output head
  // on those alone. The head is applied row by row, so the logits are the same, and neither its forward
  // nor its backward (a [hidden, V] matrix product per position) runs for the prompt's positions.
  ForwardOptions hidden_only;
  hidden_only.final_hidden_states = true;
  const at::Tensor hidden =
      model.forward(batch.input_ids, batch.token_mask, cache, hidden_only);  // [B, T, d]
  const at::Tensor selected =
      hidden.reshape({-1, hidden.size(2)}).index_select(0, batch.logit_rows);             // [N, d]
  const at::Tensor logits = model.logits_from_hidden(selected);                           // [N, V]
  return distillation_cross_entropy(logits, batch.teacher_ids, batch.teacher_log_probs);  // [N]
}

BatchScores score_student_batch(const Model& model, const KvPrefix* prefix, const StudentBatch& batch,
                                bool with_kl) {
  const at::Tensor cross_entropy = student_cross_entropy(model, prefix, batch);  // [N]
  BatchScores scores;
  scores.cross_entropy_sum = cross_entropy.sum();
  if (with_kl) {
    scores.kl_sum = truncated_kl(cross_entropy.detach(), batch.teacher_log_probs).sum();
  }
  scores.positions = batch.logit_rows.size(0);
  scores.real_tokens = batch.real_tokens;
  return scores;
}

std::pair<double, int64_t> mean_heldout_kl(const Model& model, const KvPrefix* prefix,
                                           const std::vector<const Conversation*>& conversations,
                                           int64_t top_k, int64_t max_batch_tokens) {
  if (conversations.empty()) return {std::numeric_limits<double>::quiet_NaN(), 0};
  const auto [kl_sum, positions] = heldout_kl_sum(model, prefix, conversations, top_k, max_batch_tokens);
  return {kl_sum / static_cast<double>(positions), positions};
}

std::pair<double, int64_t> heldout_kl_sum(const Model& model, const KvPrefix* prefix,
                                          const std::vector<const Conversation*>& conversations,
                                          int64_t top_k, int64_t max_batch_tokens) {
  at::NoGradGuard no_grad;
  double kl_sum = 0;
  int64_t positions = 0;
  for (const auto& group : micro_batches(conversations, max_batch_tokens)) {
    const StudentBatch batch = make_student_batch(group, top_k, model.device());
    const BatchScores scores = score_student_batch(model, prefix, batch, /*with_kl=*/true);
    kl_sum += scores.kl_sum.item<double>();
    positions += scores.positions;
  }
  return {kl_sum, positions};
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

namespace {

// The rows at the positions ProcessGroup::share gives this rank (all of them for one process).
std::vector<const Conversation*> rows_of_rank(const std::vector<const Conversation*>& rows,
                                              const ProcessGroup& group) {
  if (!group.distributed()) return rows;
  std::vector<const Conversation*> share;
  for (const int64_t position : group.share(static_cast<int64_t>(rows.size())))
    share.push_back(rows[position]);
  return share;
}

}  // namespace

std::vector<const Conversation*> rank_share_of_batch(std::vector<const Conversation*> batch,
                                                     const ProcessGroup& group) {
  std::stable_sort(batch.begin(), batch.end(), [](const Conversation* a, const Conversation* b) {
    return a->input_ids.size() < b->input_ids.size();
  });
  return rows_of_rank(batch, group);
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

namespace {

void check_training_options(const TrainingOptions& options) {
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
}

}  // namespace

DistillationTrainer::DistillationTrainer(std::shared_ptr<const Model> model, const Cartridge& initial,
                                         const Dataset& dataset, const TrainingOptions& options)
    : model_(std::move(model)),
      options_(options),
      group_(options.process_group ? options.process_group : std::make_shared<const ProcessGroup>()),
      shape_(initial.shape()),
      top_k_(dataset.header.top_k) {
  check_training_options(options);
  initial.check_fits(model_->config(), "the initial cartridge", options.model_name);
  // An id past the vocabulary would be clamped or index out of range in the loss: refuse it here.
  check_token_ids(dataset, model_->config().vocab_size);
  const int64_t count = static_cast<int64_t>(dataset.conversations.size());
  heldout_indices_ =
      cartridge::heldout_indices(count, options.eval_fraction, options.max_eval_conversations, options.seed);
  size_t next_heldout = 0;
  for (int64_t index = 0; index < count; ++index) {
    const bool held_out = next_heldout < heldout_indices_.size() && heldout_indices_[next_heldout] == index;
    (held_out ? heldout_ : training_).push_back(&dataset.conversations[index]);
    if (held_out) ++next_heldout;
  }
  if (training_.empty()) {
    throw InvalidArgumentError(
        fmt::format("the dataset has {} conversation(s) and none is left for training after "
                    "holding out {}: synthesize more (--samples) or lower --eval-fraction",
                    count, heldout_.size()));
  }
  for (const Conversation& row : options.validation_questions) validation_.push_back(&row);

  frozen_ = initial.frozen_embedding().to(model_->device(), at::kFloat).clone();        // [F, W]
  trainable_ = initial.trainable_embedding().to(model_->device(), at::kFloat).clone();  // [p-F, W]
  trainable_.set_requires_grad(true);
  optimizer_ = std::make_unique<torch::optim::Adam>(std::vector<at::Tensor>{trainable_},
                                                    torch::optim::AdamOptions(options.learning_rate)
                                                        .betas({options.beta1, options.beta2})
                                                        .eps(options.epsilon));
}

DistillationTrainer::~DistillationTrainer() = default;

void DistillationTrainer::restore(const CheckpointState& state) {
  // In place, so the optimizer keeps pointing at the same parameter.
  at::NoGradGuard no_grad;
  frozen_ = state.cartridge.frozen_embedding().to(model_->device(), at::kFloat).clone();
  trainable_.copy_(state.cartridge.trainable_embedding().to(model_->device(), at::kFloat));
  restore_adam_moments(*optimizer_, trainable_, state.moments);
}

void DistillationTrainer::adopt_writer_state(int64_t& start_step) {
  if (!group_->distributed()) return;
  at::NoGradGuard no_grad;
  at::Tensor step = at::full({1}, start_step, at::kLong);
  group_->broadcast(step, "sharing the start step");
  start_step = step.item<int64_t>();
  group_->broadcast(frozen_, "sharing the cartridge");
  group_->broadcast(trainable_, "sharing the cartridge");
  if (start_step == 0) return;  // a fresh run: Adam has no moments yet
  AdamMoments moments = group_->writes() ? adam_moments(*optimizer_, trainable_)
                                         : AdamMoments{0, at::zeros(trainable_.sizes(), at::kFloat),
                                                       at::zeros(trainable_.sizes(), at::kFloat)};
  at::Tensor adam_step = at::full({1}, moments.step, at::kLong);
  group_->broadcast(adam_step, "sharing Adam's state");
  group_->broadcast(moments.exp_avg, "sharing Adam's state");
  group_->broadcast(moments.exp_avg_sq, "sharing Adam's state");
  moments.step = adam_step.item<int64_t>();
  if (!group_->writes()) restore_adam_moments(*optimizer_, trainable_, moments);
}

KvPrefix DistillationTrainer::prefix(bool with_grad) const {
  // [p, W] fp32 -> per-layer [H_kv, p, D] in the compute dtype; the cast is differentiable.
  const at::Tensor rows = at::cat({frozen_, with_grad ? trainable_ : trainable_.detach()}, 0);
  return kv_prefix_from_prompt_embeddings(rows, model_->config(), model_->dtype(), model_->device());
}

Cartridge DistillationTrainer::cartridge() const {
  return Cartridge(shape_, frozen_.detach().to(at::kCPU).clone(), trainable_.detach().to(at::kCPU).clone());
}

TrainingHistoryEntry DistillationTrainer::step(int64_t step) {
  const auto started = std::chrono::steady_clock::now();
  std::vector<const Conversation*> batch;
  for (const int64_t index :
       batch_for_step(static_cast<int64_t>(training_.size()), options_.batch_size, options_.seed, step)) {
    batch.push_back(training_[index]);
  }
  // The whole batch's target count divides every rank's share, so the summed gradient is the batch mean's.
  int64_t step_positions = 0;
  for (const Conversation* conversation : batch) step_positions += conversation->num_targets();
  optimizer_->zero_grad();
  double cross_entropy_sum = 0;
  int64_t step_tokens = 0;
  for (const auto& group : micro_batches(rank_share_of_batch(batch, *group_), options_.max_batch_tokens)) {
    const KvPrefix student_prefix = prefix(/*with_grad=*/true);
    const StudentBatch student = make_student_batch(group, top_k_, model_->device());
    const BatchScores scores = score_student_batch(*model_, &student_prefix, student, /*with_kl=*/false);
    // Dividing every piece by the step's total makes the accumulated gradient that of the mean.
    (scores.cross_entropy_sum / static_cast<double>(step_positions)).backward();
    cross_entropy_sum += scores.cross_entropy_sum.item<double>();
    step_tokens += scores.real_tokens;
  }
  if (group_->distributed()) {
    const std::string what = fmt::format("the gradient sum of step {}", step);
    // A rank whose share was empty (batch smaller than the world) adds zeros.
    if (!trainable_.grad().defined()) trainable_.mutable_grad() = at::zeros_like(trainable_);
    group_->all_reduce_sum(trainable_.mutable_grad(), what);
    at::Tensor sums = at::tensor({cross_entropy_sum, static_cast<double>(step_tokens)}, at::kDouble);
    group_->all_reduce_sum(sums, what);
    cross_entropy_sum = sums[0].item<double>();
    step_tokens = static_cast<int64_t>(sums[1].item<double>());
  }
  optimizer_->step();
  const double loss = cross_entropy_sum / static_cast<double>(step_positions);
  if (!std::isfinite(loss)) {
    throw InvalidArgumentError(
        fmt::format("the training loss became {} at step {}: lower --lr (now {}) or check the dataset", loss,
                    step, options_.learning_rate));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return {step, loss, step_tokens, step_positions, seconds};
}

EvaluationEntry DistillationTrainer::evaluate(int64_t step) const {
  const KvPrefix current = prefix(/*with_grad=*/false);
  auto [kl_sum, positions] =
      heldout_kl_sum(*model_, &current, rows_of_rank(heldout_, *group_), top_k_, options_.max_batch_tokens);
  const std::vector<double> means =
      mean_target_nlls(*model_, &current, rows_of_rank(validation_, *group_), options_.max_batch_tokens);
  double nll_sum = std::accumulate(means.begin(), means.end(), 0.0);
  if (group_->distributed()) {
    at::Tensor sums = at::tensor({kl_sum, static_cast<double>(positions), nll_sum}, at::kDouble);
    group_->all_reduce_sum(sums, fmt::format("the evaluation at step {}", step));
    kl_sum = sums[0].item<double>();
    positions = static_cast<int64_t>(sums[1].item<double>());
    nll_sum = sums[2].item<double>();
  }
  EvaluationEntry entry;
  entry.step = step;
  entry.positions = positions;
  entry.heldout_kl =
      positions > 0 ? kl_sum / static_cast<double>(positions) : std::numeric_limits<double>::quiet_NaN();
  if (!validation_.empty()) entry.validation_answer_nll = nll_sum / static_cast<double>(validation_.size());
  return entry;
}

}  // namespace cartridge
