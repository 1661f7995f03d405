// The `cartridge` CLI: one subcommand per file, each registering itself on the app. Commands are thin:
// they parse options, call the library, and print. Anything a library user would need lives in src/.
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "generate/loaded_model.h"
#include "io/json_number.h"

namespace cartridge {
struct TrainingOptions;
struct TrainingResult;
struct SynthesisOptions;
class ProcessGroup;
}  // namespace cartridge

namespace cartridge::tools {

// Option checks for numbers >= 0 and > 0, in place of CLI::NonNegativeNumber / PositiveNumber, whose message
// prints the largest double in full (309 digits) for a value that is not a number. Messages read
// "must be a number >= 0, got 'abc'"; the help still shows NONNEGATIVE / POSITIVE.
CLI::Validator number_at_least(bool strictly_positive);
inline const CLI::Validator kNonNegative = number_at_least(false);
inline const CLI::Validator kPositive = number_at_least(true);

// One line for a command-line parse error ("error: --out is required (see `cartridge init --help`)") in place
// of CLI11's two; returns the exit code. --help and its kind print the help and return 0.
int report_parse_error(const CLI::App& app, const CLI::ParseError& error, int argc, char** argv);

// Each add_*_command adds a subcommand whose callback may throw cartridge::Error (main prints it in one
// line and exits 1).
void add_generate_command(CLI::App& app);
void add_inspect_model_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_init_command(CLI::App& app);
void add_compose_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_synthesize_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_study_command(CLI::App& app);

// Options shared by every command that loads a model.
struct ModelOptions {
  std::string model = kDefaultModelPath;
  std::string dtype = "auto";
  std::string device = "auto";
  std::string weights =
      "auto";                   // "auto", "dense", "stored" or "stored-int8" (LoadOptions::quantized_weights)
  bool offers_weights = false;  // the command has --weights (inference only); "auto" is dense otherwise
  // The command trains a cartridge: --dtype auto runs the frozen model in bf16 on CPUs with bf16 units
  // (resolved_dtype).
  bool trains = false;
  bool quiet = false;  // no progress bars
};
void add_model_options(CLI::App& command, ModelOptions& options);
// --weights auto|dense|stored|stored-int8: how a GGUF's quantised matrices are held to run the model
// forward (inference, and `study`'s synthesis; training always runs the dense model).
void add_weights_option(CLI::App& command, ModelOptions& options);
LoadedModel load_model_from_options(const ModelOptions& options);
// What --dtype resolves to on `device`. auto: float32, except for a command that trains on a CPU with bf16
// units (AVX512-BF16 or AMX), where the frozen model runs in bf16: its products are several times faster
// there, and the dev run's losses and held-out scores stay within issue 17's 0.02 nats of fp32 (README,
// "Self-study training"). The cartridge and its optimizer state stay float32 either way.
at::ScalarType resolved_dtype(const ModelOptions& options, const at::Device& device);
// What --weights resolves to for these options on `device`: "dense", "stored" or "stored-int8".
std::string resolved_weights(const ModelOptions& options, const at::Device& device);
// For the commands that train (study): the same files as `training` loaded again with the GGUF's blocks
// kept as --weights says, to decode the synthetic conversations with; null when --weights resolves to
// dense or the file has no block the kernels keep (decode with the training model then).
std::shared_ptr<const Model> load_synthesis_model(const ModelOptions& options, const LoadedModel& training);

// --cartridge DIR (repeatable: composed in order) and --framing, shared by `generate` and `chat` (defined
// in generate_command.cc).
struct CartridgeOptions {
  std::vector<std::string> cartridges;  // adapter folders or Hub ids
  std::string framing;                  // "" = the cartridges' own (cartridge_framing.json)
};
void add_cartridge_options(CLI::App& command, CartridgeOptions& options);
// The cartridges composed into one prefix for `loaded` (null without cartridges) and the framing a chat
// prompt follows it with; warnings (another model's fingerprint, ...) go to stderr.
struct CartridgeInUse {
  std::shared_ptr<const KvPrefix> prefix;
  Framing framing = Framing::kNewChat;
};
CartridgeInUse load_cartridge_options(const CartridgeOptions& options, const LoadedModel& loaded);

// The training options shared by `cartridge train` and `cartridge study` (steps, batch, lr, evaluation,
// checkpoints), defined in train_command.cc.
void add_training_options(CLI::App& command, TrainingOptions& training);

// --validation-qa FILE, shared by `cartridge train` and `cartridge study` (defined in train_command.cc).
// Each command reads the file before loading the model (so a bad one fails fast) and, once it is loaded,
// turns it into TrainingOptions::validation_questions (question_answer_rows).
void add_validation_option(CLI::App& command, std::string& path);

// --distributed-timeout SECONDS, shared by train, synthesize and study (defined in train_command.cc): how
// long a rank waits for the others (rendezvous, each collective, silence from a rank) before it stops.
inline constexpr double kDefaultDistributedTimeoutSeconds = 60;
void add_distributed_option(CLI::App& command, double& timeout_seconds);
// The ranks torchrun's environment describes (docs/distributed.md), or this process alone without it.
// Non-writing ranks get `quiet` set (no progress bars, no duplicate messages).
std::shared_ptr<const ProcessGroup> join_ranks(double timeout_seconds, ModelOptions& model_options);
// For --json: {"world_size": W} and each rank's share under `share_name` (one entry per rank).
void add_world_summary(nlohmann::json& output, const ProcessGroup& ranks, const std::string& share_name,
                       const std::vector<int64_t>& shares);

// After training that scored something: adds best_adapter, best_step, best_by, best_heldout_kl, kept
// ("best" or "last": what <out>'s adapter is) and, with validation questions, initial/best/final
// validation_answer_nll to a --json summary, or prints one line saying which step <out> and best/ hold.
// Nothing when nothing was scored. The adapter to use is returned by adapter_to_use.
void add_best_summary(nlohmann::json& output, const TrainingResult& result, const std::string& out);
void print_best_summary(const TrainingResult& result, const std::string& out);
// <out> when it holds the selected adapter (or nothing was selected), <out>/best when it does not.
std::string adapter_to_use(const TrainingResult& result, const std::string& out);

// The synthesis options shared by `cartridge synthesize` and `cartridge study` (chunk sizes, description,
// conversations per chunk, question and answer lengths, seed-prompt types), defined in synthesize_command.cc.
// --samples and --seed are each command's own (their meaning differs a little).
void add_synthesis_options(CLI::App& command, SynthesisOptions& synthesis);

}  // namespace cartridge::tools
