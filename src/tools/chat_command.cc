// `cartridge chat`: an interactive conversation with the model's chat template, streamed.
#include <cstdio>
#include <iostream>

#include "generate/generator.h"
#include "io/model_files.h"
#include "tools/commands.h"

namespace cartridge::tools {

namespace {

struct ChatOptions {
  ModelOptions model;
  CartridgeOptions cartridges;
  std::string system;
  int64_t max_new_tokens = 512;
  SamplingOptions sampling;
};

void run_chat(const ChatOptions& options) {
  const LoadedModel loaded = load_model_from_options(options.model);
  const CartridgeInUse cartridge = load_cartridge_options(options.cartridges, loaded);
  std::vector<ChatMessage> history;
  auto reset = [&] {
    history.clear();
    if (!options.system.empty()) history.push_back({"system", options.system});
  };
  reset();
  std::fprintf(stderr, "Chatting with %s%s. /reset starts over, /quit (or Ctrl-D) leaves.\n",
               loaded.files.name.c_str(), cartridge.prefix ? " and the cartridge" : "");
  std::string line;
  while (true) {
    std::fprintf(stderr, "\n> ");
    std::fflush(stderr);
    if (!std::getline(std::cin, line) || line == "/quit") break;
    if (line == "/reset") {
      reset();
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    if (line.empty()) continue;
    history.push_back({"user", line});
    GenerationRequest request;
    if (cartridge.prefix) request.prefixes = {cartridge.prefix};
    request.prompt_ids =
        loaded.encode_chat_after_cartridge(history, cartridge.framing, /*add_generation_prompt=*/true);
    request.sampling = options.sampling;
    request.max_new_tokens = options.max_new_tokens;
    const GenerationResult result =
        generate(*loaded.model, *loaded.tokenizer, {request}, [](size_t, const std::string& text) {
          std::fwrite(text.data(), 1, text.size(), stdout);
          std::fflush(stdout);
        }).front();
    std::fputc('\n', stdout);
    std::fflush(stdout);
    if (!options.model.quiet) std::fprintf(stderr, "(%s)\n", timings_text(result.timings).c_str());
    history.push_back({"assistant", result.text});
  }
}

}  // namespace

void add_chat_command(CLI::App& app) {
  auto options = std::make_shared<ChatOptions>();
  CLI::App* command = app.add_subcommand("chat", "Chat interactively with the model");
  command->footer(
      "With --cartridge the conversation follows the cartridge (composed in order when repeated), framed as\n"
      "it was made for (--framing, docs/framing.md).\n"
      "Example:\n  cartridge chat --model " +
      std::string(kDefaultModelPath) + " --cartridge doc-cartridge --system 'Be brief.'");
  add_model_options(*command, options->model);
  add_weights_option(*command, options->model);
  add_cartridge_options(*command, options->cartridges);
  command->add_option("--system", options->system, "A system message that starts the conversation");
  command->add_option("-n,--max-new-tokens", options->max_new_tokens, "Most tokens per reply")
      ->capture_default_str();
  command->add_option("-t,--temperature", options->sampling.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  command->add_option("--top-p", options->sampling.top_p, "Nucleus sampling mass in (0, 1]")
      ->capture_default_str();
  command->add_option("--seed", options->sampling.seed, "Random seed")->capture_default_str();
  command->callback([options] { run_chat(*options); });
}

}  // namespace cartridge::tools
