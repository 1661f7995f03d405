// `cartridge init`: a new cartridge from a text (its first p tokens, or the whole text compacted by
// attention matching) or random, saved as a PEFT adapter.
#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cartridge/adapter_io.h"
#include "cartridge/text_init.h"
#include "io/model_files.h"
#include "selfstudy/document_compaction.h"
#include "tools/commands.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge::tools {

namespace {

struct InitOptions {
  ModelOptions model;
  std::string text;
  std::string text_file;
  bool random = false;
  uint64_t seed = 0;
  int64_t tokens = 0;
  int64_t frozen = 1;
  bool chat_template = false;
  bool no_chat_template = false;
  std::string framing = "system_turn";
  std::string method = "first";
  std::string key_selection = "rms";
  int64_t chunk_tokens = 0;
  std::string out;
  bool force = false;
  bool json = false;
};

void run_init(const InitOptions& options) {
  if (options.tokens <= 0)
    throw InvalidArgumentError("--tokens must be positive, got " + std::to_string(options.tokens));
  if (options.frozen < 0 || options.frozen > options.tokens) {
    throw InvalidArgumentError("--frozen must be in [0, --tokens=" + std::to_string(options.tokens) +
                               "], got " + std::to_string(options.frozen));
  }
  const int sources = (!options.text.empty()) + (!options.text_file.empty()) + options.random;
  if (sources != 1) throw InvalidArgumentError("give exactly one of --text, --text-file or --random");
  // Read the text before loading the model, so a wrong path fails fast.
  const std::string text = options.text_file.empty() ? options.text : read_text_file(options.text_file);
  if (!options.random && text.empty()) throw InvalidArgumentError("the text is empty");
  const Framing framing = parse_framing(options.framing);
  const bool attention_matching = options.method == "attention-matching";
  if (!attention_matching && options.method != "first") {
    throw InvalidArgumentError("unknown --method '" + options.method +
                               "' (expected first or attention-matching)");
  }
  if (attention_matching) {
    if (options.random) throw InvalidArgumentError("--method attention-matching needs a text, not --random");
    if (options.no_chat_template || framing != Framing::kSystemTurn) {
      throw InvalidArgumentError(
          "--method attention-matching compacts the text as the system turn of a conversation: it needs the "
          "chat template and --framing system_turn");
    }
  }

  const LoadedModel loaded = load_model_from_options(options.model);
  const int64_t context = loaded.model->config().max_position_embeddings;
  if (context > 0 && options.tokens >= context) {
    throw InvalidArgumentError(
        "--tokens " + std::to_string(options.tokens) + " does not fit the model's context of " +
        std::to_string(context) +
        " positions (a cartridge's rows take positions 0..p-1 and the prompt follows): use "
        "a smaller --tokens");
  }
  const ModelFingerprint fingerprint = fingerprint_model(loaded.files, loaded.model->config());
  const auto start = std::chrono::steady_clock::now();
  std::optional<Cartridge> cartridge;
  int64_t text_tokens = 0;
  int64_t chunks = 0;  // attention matching: pieces the text was compacted in
  std::string tokenization = "random";
  if (options.random) {
    cartridge = Cartridge::random(CartridgeShape::of_model(loaded.model->config()), options.tokens,
                                  options.frozen, options.seed);
  } else if (attention_matching) {
    AttentionMatchingOptions matching;
    matching.num_virtual_tokens = options.tokens;
    matching.num_exact_rows = options.frozen;
    matching.selection = parse_key_selection(options.key_selection);
    CompactionStats stats;
    cartridge = compact_document(loaded, text, matching, options.chunk_tokens, !options.model.quiet, &stats);
    chunks = stats.chunks;
    text_tokens = stats.document_tokens;
    tokenization = "attention-matching";
  } else {
    InitTokenization mode = InitTokenization::kAuto;
    if (options.chat_template) mode = InitTokenization::kChatTemplate;
    if (options.no_chat_template) mode = InitTokenization::kPlain;
    const std::vector<int32_t> token_ids =
        tokenize_init_text(*loaded.tokenizer, loaded.chat_template.get(), text, mode);
    text_tokens = static_cast<int64_t>(token_ids.size());
    const bool templated = mode == InitTokenization::kChatTemplate ||
                           (mode == InitTokenization::kAuto && loaded.chat_template != nullptr);
    tokenization = templated ? "chat-template" : "plain";
    cartridge = Cartridge::from_token_ids(*loaded.model, token_ids, options.tokens, options.frozen);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const AdapterConfig config =
      AdapterConfig::for_model(loaded.model->config(), options.tokens, options.frozen, loaded.files.name);
  save_adapter(options.out, *cartridge, config, &fingerprint, options.force, framing);

  const CartridgeShape shape = cartridge->shape();
  const int64_t kv_bytes = options.tokens * loaded.model->config().kv_bytes_per_token(loaded.model->dtype());
  if (options.json) {
    nlohmann::json output = {{"out", options.out},
                             {"num_virtual_tokens", options.tokens},
                             {"num_frozen_tokens", options.frozen},
                             {"num_layers", shape.num_layers},
                             {"num_kv_heads", shape.num_kv_heads},
                             {"head_dim", shape.head_dim},
                             {"width", shape.width()},
                             {"parameter_bytes", cartridge->parameter_bytes()},
                             {"kv_bytes_in_model_dtype", kv_bytes},
                             {"initialization", tokenization},
                             {"framing", framing_name(framing)},
                             {"text_tokens", text_tokens},
                             {"chunks", chunks},
                             {"seconds", seconds},
                             {"base_model", loaded.files.name}};
    std::cout << output.dump(2) << std::endl;
    return;
  }
  std::string source =
      fmt::format("the first {} of the text's {} tokens ({})", options.tokens, text_tokens, tokenization);
  if (options.random) source = "N(0, 1) with seed " + std::to_string(options.seed);
  if (attention_matching) {
    source = fmt::format("the text's {} tokens compacted by attention matching (key selection {}, {} {})",
                         text_tokens, options.key_selection, chunks, chunks == 1 ? "chunk" : "chunks");
  }
  std::cout << fmt::format(
      "wrote {}: {} virtual tokens ({} frozen), {} layers x {} KV heads x head_dim {}, {} bytes (float32)\n"
      "initialised from {} in {:.2f} s\n",
      options.out, options.tokens, options.frozen, shape.num_layers, shape.num_kv_heads, shape.head_dim,
      cartridge->parameter_bytes(), source, seconds);
}

}  // namespace

void add_init_command(CLI::App& app) {
  auto options = std::make_shared<InitOptions>();
  CLI::App* command = app.add_subcommand(
      "init",
      "Create a cartridge from a text (its first p tokens, or the whole text compacted by attention "
      "matching) or random, and save it as a PEFT adapter");
  command->footer(
      "The text is prefilled by the base model and the first --tokens cached keys/values become the "
      "cartridge,\n"
      "as PEFT's initialize_kv_prefix_from_text. By default (like PEFT) the text is one system message "
      "through\n"
      "the model's chat template when it has one; --no-chat-template tokenizes it plainly (with the\n"
      "tokenizer's BOS etc.). The folder loads with PeftModel.from_pretrained(base_model, DIR).\n"
      "--method attention-matching compacts the whole text instead: it prefills it as the system turn,\n"
      "runs the model asked to repeat it, and per layer and KV head keeps the p keys the repetition attends\n"
      "to most (the first --frozen exactly), with values fitted so that attention over the p rows\n"
      "reproduces attention over the whole text (docs/attention_matching.md). Still a plain PEFT adapter.\n"
      "A text longer than the model's context (with its repetition and p rows) is compacted chunk by chunk,\n"
      "each chunk after the rows of the ones before and given rows in proportion to its tokens.\n"
      "Example:\n  cartridge init --model " +
      std::string(kDefaultModelPath) +
      " --text-file doc.txt \\\n"
      "    --tokens 256 --method attention-matching --out my_cartridge");
  add_model_options(*command, options->model);
  auto* text = command->add_option("--text", options->text, "The text to initialise from");
  auto* text_file = command->add_option("--text-file", options->text_file, "A UTF-8 file with the text");
  auto* random =
      command->add_flag("--random", options->random, "N(0, 1) values instead (PEFT's default init)");
  text->excludes(text_file)->excludes(random);
  text_file->excludes(random);
  command->add_option("--seed", options->seed, "With --random: the seed (as torch.manual_seed)")
      ->capture_default_str();
  command->add_option("-p,--tokens", options->tokens, "p, the number of virtual tokens")->required();
  command->add_option("--frozen", options->frozen, "Leading tokens never trained (the attention sink)")
      ->capture_default_str();
  auto* with_template = command->add_flag("--chat-template", options->chat_template,
                                          "Wrap the text as a system message (error if none)");
  auto* without_template =
      command->add_flag("--no-chat-template", options->no_chat_template, "Tokenize the text plainly");
  with_template->excludes(without_template);
  command
      ->add_option(
          "--framing", options->framing,
          "How chat prompts will follow the cartridge, recorded in cartridge_framing.json: system_turn "
          "(continue the conversation whose system turn the cartridge holds) or new_chat "
          "(docs/framing.md)")
      ->capture_default_str();
  command
      ->add_option("--method", options->method,
                   "first (the first p tokens' KV, as PEFT) or attention-matching (the whole text compacted)")
      ->capture_default_str();
  command
      ->add_option("--key-selection", options->key_selection,
                   "With attention-matching: keep the keys with the largest rms or max attention received")
      ->capture_default_str();
  command
      ->add_option("--chunk-tokens", options->chunk_tokens,
                   "With attention-matching: compact at most this many tokens at a time (0 = one chunk when "
                   "the text fits the context, else as long as the context allows)")
      ->check(kNonNegative)
      ->capture_default_str();
  command->add_option("-o,--out", options->out, "The adapter folder to write")->required();
  command->add_flag("--force", options->force, "Replace --out if it exists");
  command->add_flag("--json", options->json, "Print the result as JSON");
  command->callback([options] { run_init(*options); });
}

}  // namespace cartridge::tools
