// `cartridge tokenize`: token ids and pieces of a text, as transformers' tokenizer(text) gives them.
#include <iostream>

#include <nlohmann/json.hpp>

#include "io/model_files.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"
#include "util/mapped_file.h"

namespace cartridge::tools {

namespace {

struct TokenizeOptions {
  std::string model = kDefaultModelPath;
  std::string text;
  std::string text_file;
  bool no_special_tokens = false;
  bool json = false;
};

void run_tokenize(const TokenizeOptions& options) {
  // Only the tokenizer is loaded: no weights.
  const Tokenizer tokenizer = Tokenizer::load(resolve_model_files(options.model));
  const std::string text = options.text_file.empty() ? options.text : read_text_file(options.text_file);
  const std::vector<int32_t> ids = tokenizer.encode(text, !options.no_special_tokens);
  if (options.json) {
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back(tokenizer.token_piece(id));
    // Pieces are vocabulary strings; invalid UTF-8 (never expected from byte-level BPE) is replaced.
    std::cout << nlohmann::json{{"ids", ids}, {"pieces", pieces}}.dump(
                     -1, ' ', false, nlohmann::json::error_handler_t::replace)
              << std::endl;
    return;
  }
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n" << ids.size() << " tokens" << std::endl;
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* command = app.add_subcommand("tokenize", "Show the token ids of a text");
  command->footer(
      "Ids are exactly transformers' tokenizer(text)[\"input_ids\"] (default special tokens, e.g. a BOS for\n"
      "Llama 3); --no-special-tokens is add_special_tokens=False.\n"
      "Example:\n  cartridge tokenize --model " +
      std::string(kDefaultModelPath) +
      " --text 'Hello world' "
      "--json");
  command->add_option("-m,--model", options->model, "A GGUF file, a Hugging Face folder, or a Hub id")
      ->capture_default_str();
  auto* text = command->add_option("--text", options->text, "The text to tokenize");
  auto* file = command->add_option("--text-file", options->text_file, "Read the text from this file");
  text->excludes(file);
  command->add_flag("--no-special-tokens", options->no_special_tokens, "Do not add BOS/EOS");
  command->add_flag("--json", options->json, "Print {\"ids\": [...], \"pieces\": [...]}");
  command->callback([options, text, file] {
    if (text->count() == 0 && file->count() == 0) throw CLI::RequiredError("--text or --text-file");
    run_tokenize(*options);
  });
}

}  // namespace cartridge::tools
