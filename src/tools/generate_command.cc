// `cartridge generate`: one completion for a prompt, streamed to stdout.
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cartridge/adapter_io.h"
#include "generate/generator.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "tools/commands.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace cartridge::tools {

namespace {

struct GenerateOptions {
  ModelOptions model;
  std::string prompt;
  std::string system;
  bool chat = false;
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;  // keep going past end-of-sequence (exactly --max-new-tokens tokens)
  bool json = false;
  CartridgeOptions cartridges;
  std::string logits_out;  // write the prompt's logits here (safetensors)
};

// Writes `logits` [T, V] float32 as a safetensors file with one tensor "logits".
void write_logits(const std::string& path, const at::Tensor& logits) {
  const at::Tensor contiguous = logits.contiguous();
  const std::vector<int64_t> shape = {contiguous.size(0), contiguous.size(1)};
  const std::string bytes =
      serialize_safetensors({{"logits", SafetensorsDType::F32, shape, contiguous.data_ptr()}}, {});
  write_file_atomic(path, bytes);
}

void run_generate(const GenerateOptions& options) {
  const LoadedModel loaded = load_model_from_options(options.model);
  const CartridgeInUse cartridge = load_cartridge_options(options.cartridges, loaded);
  GenerationRequest request;
  if (cartridge.prefix) request.prefixes = {cartridge.prefix};
  if (options.chat) {
    std::vector<ChatMessage> messages;
    if (!options.system.empty()) messages.push_back({"system", options.system});
    messages.push_back({"user", options.prompt});
    request.prompt_ids =
        loaded.encode_chat_after_cartridge(messages, cartridge.framing, /*add_generation_prompt=*/true);
  } else {
    // Exactly `tokenizer(prompt)` in transformers: the tokenizer's default special tokens.
    request.prompt_ids = loaded.tokenizer->encode(options.prompt, /*add_special_tokens=*/true);
  }
  if (!options.logits_out.empty()) {
    write_logits(options.logits_out,
                 prompt_logits(*loaded.model, cartridge.prefix.get(), request.prompt_ids));
  }
  request.sampling = options.sampling;
  request.max_new_tokens = options.max_new_tokens;
  request.stop_strings = options.stop;
  request.stop_at_eos = !options.ignore_eos;

  TextCallback stream = nullptr;
  if (!options.json) {
    stream = [](size_t, const std::string& text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    };
  }
  const GenerationResult result = generate(*loaded.model, *loaded.tokenizer, {request}, stream).front();
  if (options.json) {
    nlohmann::json output = {{"text", result.text},
                             {"token_ids", result.token_ids},
                             {"finish_reason", result.finish_reason},
                             {"prompt_tokens", result.prompt_tokens},
                             {"completion_tokens", result.token_ids.size()},
                             {"cartridge_tokens", request.prefix_length()},
                             {"timings", timings_json(result.timings)}};
    std::cout << output.dump() << std::endl;
  } else {
    std::cout << std::endl;
    if (!options.model.quiet) std::fprintf(stderr, "%s\n", timings_text(result.timings).c_str());
  }
}

}  // namespace

void add_cartridge_options(CLI::App& command, CartridgeOptions& options) {
  command.add_option(
      "--cartridge", options.cartridges,
      "A cartridge (PEFT adapter folder or Hub id in the HF cache) before the prompt; repeat to "
      "compose several in order");
  command.add_option(
      "--framing", options.framing,
      "With --chat and a cartridge: system_turn (the question continues the conversation whose "
      "system turn the cartridge holds) or new_chat (a new conversation after it). Default: what "
      "the cartridge's cartridge_framing.json says (new_chat without one); docs/framing.md");
}

CartridgeInUse load_cartridge_options(const CartridgeOptions& options, const LoadedModel& loaded) {
  CartridgeInUse in_use;
  if (options.cartridges.empty()) {
    if (!options.framing.empty()) throw InvalidArgumentError("--framing needs a --cartridge");
    return in_use;
  }
  std::vector<std::string> warnings;
  Framing recorded = Framing::kNewChat;
  // With --framing the cartridges' own framings need not agree.
  const Cartridge cartridge =
      load_cartridges_for_model(options.cartridges, loaded.model->config(), &loaded.files, &warnings,
                                options.framing.empty() ? &recorded : nullptr);
  for (const std::string& warning : warnings) std::cerr << "warning: " << warning << "\n";
  in_use.prefix = cartridge.kv_prefix_for(*loaded.model);
  in_use.framing = options.framing.empty() ? recorded : parse_framing(options.framing);
  return in_use;
}

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  CLI::App* command = app.add_subcommand("generate", "Complete a prompt with the model");
  command->footer(
      "The prompt is tokenized exactly as `tokenizer(prompt)` in transformers (with the tokenizer's default\n"
      "special tokens); --chat wraps it in the model's chat template as one user turn instead.\n"
      "With --cartridge the prompt follows the cartridge's p virtual tokens (positions p+i); several are\n"
      "composed in the order given. With --chat too, the prompt is framed as the cartridge was made for\n"
      "(its cartridge_framing.json, or --framing; docs/framing.md): cartridges made by `init`, `train` and\n"
      "`study` continue the conversation whose system turn they hold, as if the document had been the\n"
      "system message.\n"
      "Example:\n  cartridge generate --model " +
      std::string(kDefaultModelPath) +
      " --chat \\\n"
      "    --prompt 'What is the capital of France?' --max-new-tokens 32 [--cartridge my_cartridge]");
  add_model_options(*command, options->model);
  add_weights_option(*command, options->model);
  command->add_option("-p,--prompt", options->prompt, "The prompt text")->required();
  command->add_flag("--chat", options->chat, "Wrap the prompt in the model's chat template (one user turn)");
  command->add_option("--system", options->system, "With --chat: a system message before the prompt");
  command->add_option("-n,--max-new-tokens", options->max_new_tokens, "Most tokens to generate")
      ->capture_default_str()
      ->check(kNonNegative);
  command->add_option("-t,--temperature", options->sampling.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  command->add_option("--top-p", options->sampling.top_p, "Nucleus sampling mass in (0, 1]; 1 = off")
      ->capture_default_str();
  command->add_option("--top-k", options->sampling.top_k, "Sample among the k most likely tokens; 0 = off")
      ->capture_default_str();
  command->add_option("--seed", options->sampling.seed, "Random seed for sampling")->capture_default_str();
  command->add_option("--stop", options->stop, "Stop before this string (repeatable)");
  command->add_flag("--ignore-eos", options->ignore_eos,
                    "Do not stop at end-of-sequence: always generate --max-new-tokens tokens (comparisons, "
                    "benchmarks)");
  add_cartridge_options(*command, options->cartridges);
  command->add_option("--logits-out", options->logits_out,
                      "Also write the prompt's logits [T, V] float32 (tensor \"logits\", safetensors) to "
                      "this file");
  command->add_flag("--json", options->json,
                    "Print one JSON object {text, token_ids, finish_reason, prompt_tokens, "
                    "completion_tokens, cartridge_tokens}");
  command->callback([options] { run_generate(*options); });
}

}  // namespace cartridge::tools
