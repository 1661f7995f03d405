// `cartridge generate`: one completion for a prompt, streamed to stdout.
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "generate/generator.h"
#include "tools/commands.h"

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
  bool json = false;
};

void run_generate(const GenerateOptions& options) {
  const LoadedModel loaded = load_model_from_options(options.model);
  GenerationRequest request;
  if (options.chat) {
    std::vector<ChatMessage> messages;
    if (!options.system.empty()) messages.push_back({"system", options.system});
    messages.push_back({"user", options.prompt});
    request.prompt_ids = loaded.encode_chat(messages, /*add_generation_prompt=*/true);
  } else {
    // Exactly `tokenizer(prompt)` in transformers: the tokenizer's default special tokens.
    request.prompt_ids = loaded.tokenizer->encode(options.prompt, /*add_special_tokens=*/true);
  }
  request.sampling = options.sampling;
  request.max_new_tokens = options.max_new_tokens;
  request.stop_strings = options.stop;

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
                             {"completion_tokens", result.token_ids.size()}};
    std::cout << output.dump() << std::endl;
  } else {
    std::cout << std::endl;
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  CLI::App* command = app.add_subcommand("generate", "Complete a prompt with the model");
  command->footer(
      "The prompt is tokenized exactly as `tokenizer(prompt)` in transformers (with the tokenizer's default\n"
      "special tokens); --chat wraps it in the model's chat template as one user turn instead.\n"
      "Example:\n  cartridge generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf --chat \\\n"
      "    --prompt 'What is the capital of France?' --max-new-tokens 32");
  add_model_options(*command, options->model);
  command->add_option("-p,--prompt", options->prompt, "The prompt text")->required();
  command->add_flag("--chat", options->chat, "Wrap the prompt in the model's chat template (one user turn)");
  command->add_option("--system", options->system, "With --chat: a system message before the prompt");
  command->add_option("-n,--max-new-tokens", options->max_new_tokens, "Most tokens to generate")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  command->add_option("-t,--temperature", options->sampling.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  command->add_option("--top-p", options->sampling.top_p, "Nucleus sampling mass in (0, 1]; 1 = off")
      ->capture_default_str();
  command->add_option("--top-k", options->sampling.top_k, "Sample among the k most likely tokens; 0 = off")
      ->capture_default_str();
  command->add_option("--seed", options->sampling.seed, "Random seed for sampling")->capture_default_str();
  command->add_option("--stop", options->stop, "Stop before this string (repeatable)");
  command->add_flag("--json", options->json,
                    "Print one JSON object {text, token_ids, finish_reason, prompt_tokens, completion_tokens}");
  command->callback([options] { run_generate(*options); });
}

}  // namespace cartridge::tools
