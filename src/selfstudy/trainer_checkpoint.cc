#include "selfstudy/trainer_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <regex>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/optim/adam.h>

#include "cartridge/adapter_config.h"
#include "cartridge/adapter_io.h"
#include "generate/loaded_model.h"
#include "io/json_number.h"
#include "io/safetensors.h"
#include "selfstudy/loss_plot.h"
#include "selfstudy/sha256.h"
#include "selfstudy/trainer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

const std::regex kCheckpointName("checkpoint-([0-9]{1,12})");

// (step, folder) of every complete checkpoint under `output_dir`, oldest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code error;
  if (!fs::is_directory(output_dir, error)) return found;
  for (const auto& entry : fs::directory_iterator(output_dir, error)) {
    std::smatch match;
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !std::regex_match(name, match, kCheckpointName)) continue;
    if (!fs::exists(entry.path() / kTrainerStateFileName)) continue;
    found.emplace_back(std::stoll(match[1].str()), entry.path().string());
  }
  std::sort(found.begin(), found.end());
  return found;
}

Json history_to_json(const std::vector<TrainingHistoryEntry>& history) {
  Json rows = Json::array();
  for (const TrainingHistoryEntry& entry : history) {
    rows.push_back({{"step", entry.step},
                    {"loss", entry.loss},
                    {"tokens", entry.tokens},
                    {"positions", entry.positions},
                    {"seconds", entry.seconds}});
  }
  return rows;
}

// JSON has no NaN: a value not computed is null.
double number_or_nan(const Json& value) { return value.is_null() ? std::nan("") : value.get<double>(); }

Json evaluations_to_json(const std::vector<EvaluationEntry>& evaluations) {
  Json rows = Json::array();
  for (const EvaluationEntry& entry : evaluations) {
    rows.push_back({{"step", entry.step},
                    {"heldout_kl", json_number(entry.heldout_kl)},
                    {"positions", entry.positions},
                    {"validation_answer_nll", json_number(entry.validation_answer_nll)}});
  }
  return rows;
}

AdapterConfig adapter_config_for(const Cartridge& cartridge, const std::string& model_name,
                                 const Model& model) {
  return AdapterConfig::for_model(model.config(), cartridge.num_virtual_tokens(),
                                  cartridge.num_frozen_tokens(),
                                  model_name.empty() ? std::nullopt : std::optional<std::string>(model_name));
}

[[noreturn]] void damaged(const std::string& path, const std::string& problem) {
  throw FormatError(describe_file_problem(path, problem,
                                          "the checkpoint is damaged: delete that folder to resume "
                                          "from an older one"));
}

at::Tensor read_f32_tensor(const SafetensorsFile& file, const std::string& name, int64_t rows,
                           int64_t columns) {
  const SafetensorsTensorInfo* info = file.find(name);
  if (info == nullptr || info->dtype != SafetensorsDType::F32 ||
      info->shape != std::vector<int64_t>{rows, columns}) {
    damaged(file.path(), fmt::format("no F32 tensor \"{}\" of shape [{}, {}]", name, rows, columns));
  }
  // Copy out of the mapping: the file closes when `file` goes away.
  return at::from_blob(const_cast<uint8_t*>(file.data(*info)), {rows, columns},
                       at::TensorOptions().dtype(at::kFloat))
      .clone();
}

// The trainer_state.json of a checkpoint folder, its format and version checked.
Json read_trainer_state(const std::string& folder) {
  const std::string state_path = folder + "/" + kTrainerStateFileName;
  Json state;
  try {
    state = Json::parse(read_text_file(state_path));
  } catch (const Json::exception& error) {
    damaged(state_path, std::string("not valid JSON (") + error.what() + ")");
  }
  if (!state.is_object() || state.value("format", "") != kTrainerStateFormat) {
    throw UnsupportedError(describe_file_problem(state_path,
                                                 std::string("is not a \"") + kTrainerStateFormat + "\" file",
                                                 "resume only from folders written by `cartridge train`"));
  }
  if (state.value("version", Json()).dump() != std::to_string(kTrainerStateVersion)) {
    throw UnsupportedError(
        describe_file_problem(state_path,
                              "has trainer-state version " + state.value("version", Json()).dump() +
                                  ", this build reads version " + std::to_string(kTrainerStateVersion),
                              "use the cartridge build that wrote it, or start a new run in another folder"));
  }
  return state;
}

}  // namespace

TrainerSettings TrainerSettings::from(const TrainingOptions& options, const Cartridge& initial,
                                      const Dataset& dataset, at::ScalarType compute_dtype) {
  TrainerSettings settings;
  settings.values = {
      {"batch_size", options.batch_size},
      {"max_batch_tokens", options.max_batch_tokens},
      {"distill", distill_tokens_name(options.distill)},
      {"learning_rate", options.learning_rate},
      {"beta1", options.beta1},
      {"beta2", options.beta2},
      {"epsilon", options.epsilon},
      {"seed", options.seed},
      {"eval_fraction", options.eval_fraction},
      {"max_eval_conversations", options.max_eval_conversations},
      {"compute_dtype", dtype_name(compute_dtype)},
      {"num_virtual_tokens", initial.num_virtual_tokens()},
      {"num_frozen_tokens", initial.num_frozen_tokens()},
      {"dataset_conversations", static_cast<int64_t>(dataset.conversations.size())},
      {"dataset_corpus_sha256", dataset.header.corpus_sha256},
      {"dataset_seed", dataset.header.seed},
      {"dataset_top_k", dataset.header.top_k},
      // Chunk sizes, lengths, seed types, temperatures: the same count of conversations made otherwise is
      // another dataset.
      {"dataset_settings", dataset.header.settings},
  };
  // Best-adapter choices made on one question set cannot continue on another. Absent without questions,
  // so runs without them (and their checkpoints from before the option) compare equal.
  if (!options.validation_questions.empty()) {
    std::string tokens;
    for (const Conversation& row : options.validation_questions) {
      tokens += fmt::format("{}:{}|", row.target_start, fmt::join(row.input_ids, ","));
    }
    settings.values["validation_questions_sha256"] = sha256_hex(tokens);
  }
  return settings;
}

std::vector<std::string> TrainerSettings::differences(const TrainerSettings& now) const {
  std::vector<std::string> items;
  for (const auto& [key, value] : values.items()) {
    const Json other = now.values.contains(key) ? now.values.at(key) : Json();
    if (value != other)
      items.push_back(fmt::format("{}: {} in the checkpoint vs {} now", key, value.dump(), other.dump()));
  }
  for (const auto& [key, value] : now.values.items()) {
    if (!values.contains(key))
      items.push_back(fmt::format("{}: absent in the checkpoint vs {} now", key, value.dump()));
  }
  return items;
}

std::string newest_checkpoint_folder(const std::string& output_dir) {
  const auto checkpoints = list_checkpoints(output_dir);
  return checkpoints.empty() ? std::string() : checkpoints.back().second;
}

AdamMoments adam_moments(const torch::optim::Adam& optimizer, const at::Tensor& parameter) {
  const auto& states = optimizer.state();
  const auto found = states.find(parameter.unsafeGetTensorImpl());
  TORCH_CHECK(found != states.end(), "the optimiser has no state for the parameter (no step taken yet)");
  const auto& state = static_cast<const torch::optim::AdamParamState&>(*found->second);
  return {state.step(), state.exp_avg().detach().to(at::kCPU).contiguous(),
          state.exp_avg_sq().detach().to(at::kCPU).contiguous()};
}

void restore_adam_moments(torch::optim::Adam& optimizer, const at::Tensor& parameter,
                          const AdamMoments& moments) {
  TORCH_CHECK(moments.exp_avg.sizes() == parameter.sizes() && moments.exp_avg_sq.sizes() == parameter.sizes(),
              "Adam moments do not match the parameter");
  auto state = std::make_unique<torch::optim::AdamParamState>();
  state->step(moments.step);
  state->exp_avg(moments.exp_avg.to(parameter.device(), at::kFloat).clone());
  state->exp_avg_sq(moments.exp_avg_sq.to(parameter.device(), at::kFloat).clone());
  optimizer.state()[parameter.unsafeGetTensorImpl()] = std::move(state);
}

TrainerSettings read_checkpoint_settings(const std::string& folder) {
  const Json state = read_trainer_state(folder);
  if (!state.contains("settings") || !state.at("settings").is_object()) {
    damaged(folder + "/" + kTrainerStateFileName, "has no \"settings\" object");
  }
  return TrainerSettings{state.at("settings")};
}

CheckpointState read_checkpoint(const std::string& folder, const Model& model,
                                const TrainerSettings& expected) {
  const std::string state_path = folder + "/" + kTrainerStateFileName;
  const Json state = read_trainer_state(folder);
  TrainerSettings saved;
  int64_t step = 0, adam_step = 0;
  std::vector<TrainingHistoryEntry> history;
  std::vector<EvaluationEntry> evaluations;
  try {
    saved.values = state.at("settings");
    step = state.at("step").get<int64_t>();
    adam_step = state.at("adam_step").get<int64_t>();
    for (const Json& row : state.at("history")) {
      history.push_back({row.at("step").get<int64_t>(), row.at("loss").get<double>(),
                         row.at("tokens").get<int64_t>(), row.at("positions").get<int64_t>(),
                         row.at("seconds").get<double>()});
    }
    for (const Json& row : state.at("evaluations")) {
      // Checkpoints from before validation questions existed have no "validation_answer_nll".
      evaluations.push_back({row.at("step").get<int64_t>(), number_or_nan(row.at("heldout_kl")),
                             row.at("positions").get<int64_t>(),
                             number_or_nan(row.value("validation_answer_nll", Json(nullptr)))});
    }
  } catch (const Json::exception& error) {
    damaged(state_path, std::string("missing or mistyped field (") + error.what() + ")");
  }
  // Checkpoints from before --distill existed trained on the answers only.
  if (saved.values.is_object() && !saved.values.contains("distill")) saved.values["distill"] = "answer";
  const std::vector<std::string> differences = saved.differences(expected);
  if (!differences.empty()) {
    std::string joined;
    for (size_t index = 0; index < differences.size() && index < 4; ++index)
      joined += (index ? "; " : "") + differences[index];
    throw MismatchError(
        describe_file_problem(folder, "was trained with other settings (" + joined + ")",
                              "resume with the same options and dataset, or train into another --out"));
  }
  LoadedAdapter adapter = load_adapter(folder);
  adapter.cartridge.check_fits(model.config(), folder, "the model");
  const int64_t trainable_rows = adapter.cartridge.num_trainable_tokens();
  const int64_t width = adapter.cartridge.shape().width();
  const SafetensorsFile optimizer_file(folder + "/" + kOptimizerFileName);
  AdamMoments moments{adam_step, read_f32_tensor(optimizer_file, "exp_avg", trainable_rows, width),
                      read_f32_tensor(optimizer_file, "exp_avg_sq", trainable_rows, width)};
  return CheckpointState{step, std::move(adapter.cartridge), std::move(moments), std::move(history),
                         std::move(evaluations)};
}

std::string loss_csv(const std::vector<TrainingHistoryEntry>& history,
                     const std::vector<EvaluationEntry>& evaluations) {
  std::map<int64_t, std::pair<const TrainingHistoryEntry*, const EvaluationEntry*>> rows;
  for (const TrainingHistoryEntry& entry : history) rows[entry.step].first = &entry;
  for (const EvaluationEntry& entry : evaluations) rows[entry.step].second = &entry;
  std::string csv = "step,loss,tokens,positions,seconds,heldout_kl,validation_answer_nll\n";
  const auto cell = [](double value) {
    return std::isfinite(value) ? fmt::format(",{:.9g}", value) : std::string(",");
  };
  for (const auto& [step, row] : rows) {
    csv += std::to_string(step);
    if (row.first != nullptr) {
      csv += fmt::format(",{:.9g},{},{},{:.4f}", row.first->loss, row.first->tokens, row.first->positions,
                         row.first->seconds);
    } else {
      csv += ",,,,";
    }
    csv += row.second != nullptr
               ? cell(row.second->heldout_kl) + cell(row.second->validation_answer_nll) + "\n"
               : std::string(",,\n");
  }
  return csv;
}

std::string loss_svg(const std::vector<TrainingHistoryEntry>& history,
                     const std::vector<EvaluationEntry>& evaluations) {
  PlotSeries loss{"training loss", {}, "#1f77b4"};
  for (const TrainingHistoryEntry& entry : history) loss.points.emplace_back(entry.step, entry.loss);
  PlotSeries kl{"held-out KL", {}, "#d62728"};
  PlotSeries validation{"validation answer NLL", {}, "#2ca02c"};
  for (const EvaluationEntry& entry : evaluations) {
    if (std::isfinite(entry.heldout_kl)) kl.points.emplace_back(entry.step, entry.heldout_kl);
    if (std::isfinite(entry.validation_answer_nll))
      validation.points.emplace_back(entry.step, entry.validation_answer_nll);
  }
  std::vector<PlotPanel> panels = {
      {"Training loss (cross-entropy to the teacher's top-k, per target token)", "nats / token", {loss}},
      {"Held-out KL to the teacher's top-k (per target token)", "nats / token", {kl}}};
  if (!validation.points.empty()) {
    panels.push_back(
        {"Answer NLL of the validation questions (mean over questions)", "nats / token", {validation}});
  }
  return render_line_chart_svg(panels, "step");
}

void write_checkpoint(const std::string& output_dir, int64_t step, const Cartridge& cartridge,
                      const torch::optim::Adam& optimizer, const at::Tensor& trainable,
                      const TrainerSettings& settings, const std::vector<TrainingHistoryEntry>& history,
                      const std::vector<EvaluationEntry>& evaluations, const std::string& model_name,
                      const Model& model, const std::optional<ModelFingerprint>& fingerprint, int64_t keep,
                      Framing framing) {
  const AdapterConfig config = adapter_config_for(cartridge, model_name, model);
  const AdamMoments moments = adam_moments(optimizer, trainable);
  const Json evaluations_json = evaluations_to_json(evaluations);
  const Json state = {{"format", kTrainerStateFormat},
                      {"version", kTrainerStateVersion},
                      {"step", step},
                      {"adam_step", moments.step},
                      {"settings", settings.values},
                      {"history", history_to_json(history)},
                      {"evaluations", evaluations_json}};
  const std::string folder = output_dir + "/checkpoint-" + std::to_string(step);
  write_directory_atomic(folder, /*overwrite=*/true, [&](const std::string& temporary) {
    // save_adapter replaces the (empty) temporary folder with the adapter files; ours go in after.
    save_adapter(temporary, cartridge, config, fingerprint ? &*fingerprint : nullptr, /*overwrite=*/true,
                 framing);
    write_file_atomic(temporary + "/" + kTrainerStateFileName, state.dump(2));
    const std::vector<SafetensorsTensorBytes> tensors = {
        {"exp_avg",
         SafetensorsDType::F32,
         {moments.exp_avg.size(0), moments.exp_avg.size(1)},
         moments.exp_avg.data_ptr()},
        {"exp_avg_sq",
         SafetensorsDType::F32,
         {moments.exp_avg_sq.size(0), moments.exp_avg_sq.size(1)},
         moments.exp_avg_sq.data_ptr()}};
    write_file_atomic(temporary + "/" + kOptimizerFileName,
                      serialize_safetensors(tensors, {{"format", "pt"}}));
  });
  // The latest adapter also lives in the output folder itself (as a Hugging Face Trainer's final
  // save_pretrained), so `--cartridge <out>` always works.
  publish_adapter(folder, output_dir);
  write_file_atomic(output_dir + "/" + kLossCsvFileName, loss_csv(history, evaluations));
  write_file_atomic(output_dir + "/" + kLossSvgFileName, loss_svg(history, evaluations));
  // Prune old checkpoints, never the one just written.
  auto checkpoints = list_checkpoints(output_dir);
  std::error_code ignored;
  while (static_cast<int64_t>(checkpoints.size()) > keep) {
    if (checkpoints.front().first != step) fs::remove_all(checkpoints.front().second, ignored);
    checkpoints.erase(checkpoints.begin());
  }
}

void write_best_adapter(const std::string& output_dir, int64_t step, bool by_validation, double score,
                        const Cartridge& cartridge, const std::string& model_name, const Model& model,
                        const std::optional<ModelFingerprint>& fingerprint, Framing framing) {
  const AdapterConfig config = adapter_config_for(cartridge, model_name, model);
  const Json state = {{"step", step}, {by_validation ? "validation_answer_nll" : "heldout_kl", score}};
  write_directory_atomic(
      output_dir + "/" + kBestFolderName, /*overwrite=*/true, [&](const std::string& temporary) {
        save_adapter(temporary, cartridge, config, fingerprint ? &*fingerprint : nullptr,
                     /*overwrite=*/true, framing);
        write_file_atomic(temporary + "/" + (by_validation ? kBestStateFileName : kBestHeldoutStateFileName),
                          state.dump(2));
      });
}

void publish_adapter(const std::string& from_folder, const std::string& output_dir) {
  // Weights first: a reader that sees the new config sees the new weights (the config rarely changes).
  for (const char* name :
       {kAdapterWeightsFileName, kAdapterConfigFileName, kFingerprintFileName, kFramingFileName}) {
    const std::string source = from_folder + "/" + name;
    if (fs::exists(source)) write_file_atomic(output_dir + "/" + name, read_text_file(source));
  }
}

}  // namespace cartridge
