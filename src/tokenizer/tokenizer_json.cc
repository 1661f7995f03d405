// Loading a Hugging Face tokenizer.json (+ tokenizer_config.json) into a TokenizerState, following what
// transformers 5 does with these files: the post-processor of tokenizer.json is kept as written (the
// config's add_bos_token / add_eos_token are ignored when tokenizer.json exists), named special tokens of
// the config that the file lacks are added as special tokens, chat_template.jinja beats the config's
// template.
#include <limits>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer_state.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {

namespace {

using nlohmann::json;

constexpr const char* kResaveHint =
    "download the file again, or re-save the tokenizer with transformers' save_pretrained";

// Field access that reports a malformed file in one line naming the file and the field.
class JsonFile {
 public:
  explicit JsonFile(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }

  json parse() const {
    const std::string text = read_text_file(path_);
    try {
      return json::parse(text);
    } catch (const json::exception& error) {
      fail(std::string("is not valid JSON (") + error.what() + ")");
    }
  }

  [[noreturn]] void fail(const std::string& problem) const {
    throw FormatError(describe_file_problem(path_, problem, kResaveHint));
  }
  [[noreturn]] void unsupported(const std::string& problem, const std::string& hint) const {
    throw UnsupportedError(describe_file_problem(path_, problem, hint));
  }

  // A field that must be an object / array (when present).
  const json* find(const json& object, const std::string& key) const {
    const auto found = object.find(key);
    return found == object.end() || found->is_null() ? nullptr : &*found;
  }
  const json& require(const json& object, const std::string& key, const std::string& where) const {
    const json* value = find(object, key);
    if (value == nullptr) fail(where + " has no \"" + key + "\"");
    return *value;
  }
  bool boolean(const json& object, const std::string& key, bool fallback, const std::string& where) const {
    const json* value = find(object, key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) fail(where + "." + key + " must be true or false, found " + value->dump());
    return value->get<bool>();
  }
  std::string string(const json& object, const std::string& key, const std::string& where) const {
    const json& value = require(object, key, where);
    if (!value.is_string()) fail(where + "." + key + " must be a string, found " + short_dump(value));
    return value.get<std::string>();
  }
  int32_t id(const json& value, const std::string& where) const {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      fail(where + " must be a non-negative token id, found " + short_dump(value));
    }
    return static_cast<int32_t>(value.get<int64_t>());
  }

  static std::string short_dump(const json& value) {
    std::string text = value.dump();
    if (text.size() > 60) text = text.substr(0, 57) + "...";
    return text;
  }

 private:
  std::string path_;
};

SplitBehavior parse_behavior(const JsonFile& file, const json& value, const std::string& where) {
  if (!value.is_string()) file.fail(where + " must be a string");
  const std::string name = value.get<std::string>();
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  file.fail(where + " is \"" + name +
            "\"; expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous");
}

std::string type_of(const JsonFile& file, const json& value, const std::string& where) {
  if (!value.is_object()) file.fail(where + " must be an object");
  return file.string(value, "type", where);
}

void parse_normalizer(const JsonFile& file, const json& value, Normalizer& normalizer,
                      const std::string& where) {
  const std::string type = type_of(file, value, where);
  if (type == "Sequence") {
    const json& steps = file.require(value, "normalizers", where);
    if (!steps.is_array()) file.fail(where + ".normalizers must be an array");
    for (size_t i = 0; i < steps.size(); ++i) {
      parse_normalizer(file, steps[i], normalizer, where + ".normalizers[" + std::to_string(i) + "]");
    }
  } else if (type == "NFC") {
    normalizer.add_step(unicode::NormalizationForm::kNfc);
  } else if (type == "NFD") {
    normalizer.add_step(unicode::NormalizationForm::kNfd);
  } else if (type == "NFKC") {
    normalizer.add_step(unicode::NormalizationForm::kNfkc);
  } else if (type == "NFKD") {
    normalizer.add_step(unicode::NormalizationForm::kNfkd);
  } else {
    file.unsupported("normalizer \"" + type + "\" is not supported",
                     "byte-level BPE tokenizers use no normalizer or NFC/NFD/NFKC/NFKD");
  }
}

void parse_pre_tokenizer(const JsonFile& file, const json& value, PreTokenizer& pre_tokenizer,
                         const std::string& where) {
  const std::string type = type_of(file, value, where);
  if (type == "Sequence") {
    const json& steps = file.require(value, "pretokenizers", where);
    if (!steps.is_array()) file.fail(where + ".pretokenizers must be an array");
    for (size_t i = 0; i < steps.size(); ++i) {
      parse_pre_tokenizer(file, steps[i], pre_tokenizer, where + ".pretokenizers[" + std::to_string(i) + "]");
    }
  } else if (type == "ByteLevel") {
    pre_tokenizer.add_byte_level(file.boolean(value, "add_prefix_space", false, where),
                                 file.boolean(value, "use_regex", true, where));
  } else if (type == "Split") {
    const json& pattern = file.require(value, "pattern", where);
    std::string regex;
    if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
      regex = pattern["Regex"].get<std::string>();
    } else if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
      regex = escape_regex_literal(pattern["String"].get<std::string>());
    } else {
      file.fail(where + ".pattern must be {\"Regex\": ...} or {\"String\": ...}");
    }
    std::shared_ptr<const Regex> compiled;
    try {
      compiled = std::make_shared<const Regex>(regex);
    } catch (const FormatError& error) {
      file.fail(where + ": " + error.what());
    }
    pre_tokenizer.add_regex_split(
        std::move(compiled),
        parse_behavior(file, file.require(value, "behavior", where), where + ".behavior"),
        file.boolean(value, "invert", false, where));
  } else if (type == "Digits") {
    pre_tokenizer.add_digits(file.boolean(value, "individual_digits", false, where));
  } else if (type == "Punctuation") {
    const json* behavior = file.find(value, "behavior");
    pre_tokenizer.add_punctuation(behavior == nullptr ? SplitBehavior::kIsolated
                                                      : parse_behavior(file, *behavior, where + ".behavior"));
  } else {
    file.unsupported("pre-tokenizer \"" + type + "\" is not supported",
                     "only byte-level BPE tokenizers (ByteLevel, Split, Digits, Punctuation, Sequence) are");
  }
}

void parse_post_processor(const JsonFile& file, const json& value, PostProcessor& post_processor,
                          const std::string& where) {
  const std::string type = type_of(file, value, where);
  if (type == "Sequence") {
    const json& steps = file.require(value, "processors", where);
    if (!steps.is_array()) file.fail(where + ".processors must be an array");
    for (size_t i = 0; i < steps.size(); ++i) {
      parse_post_processor(file, steps[i], post_processor, where + ".processors[" + std::to_string(i) + "]");
    }
  } else if (type == "ByteLevel") {
    // Only trims offsets; ids are unchanged.
  } else if (type == "TemplateProcessing") {
    const json& single = file.require(value, "single", where);
    if (!single.is_array()) file.fail(where + ".single must be an array");
    const json* special_tokens = file.find(value, "special_tokens");
    std::vector<PostProcessor::Item> items;
    for (const json& element : single) {
      if (element.is_object() && element.contains("Sequence")) {
        items.push_back(PostProcessor::Item{true, {}});
      } else if (element.is_object() && element.contains("SpecialToken") &&
                 element["SpecialToken"].is_object()) {
        const std::string name = file.string(element["SpecialToken"], "id", where + ".single[].SpecialToken");
        if (special_tokens == nullptr || !special_tokens->contains(name)) {
          file.fail(where + ".special_tokens has no entry for \"" + name + "\" used by the template");
        }
        const json& ids = file.require((*special_tokens)[name], "ids", where + ".special_tokens." + name);
        if (!ids.is_array()) file.fail(where + ".special_tokens." + name + ".ids must be an array");
        PostProcessor::Item item;
        for (const json& id : ids)
          item.ids.push_back(file.id(id, where + ".special_tokens." + name + ".ids[]"));
        items.push_back(std::move(item));
      } else {
        file.fail(where + ".single has an element that is neither Sequence nor SpecialToken: " +
                  JsonFile::short_dump(element));
      }
    }
    post_processor.add_template(std::move(items));
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto special = [&](const char* key) {
      const json& pair = file.require(value, key, where);
      if (!pair.is_array() || pair.size() != 2) file.fail(where + "." + key + " must be [token, id]");
      return file.id(pair[1], where + "." + key + "[1]");
    };
    post_processor.add_template({PostProcessor::Item{false, {special("cls")}}, PostProcessor::Item{true, {}},
                                 PostProcessor::Item{false, {special("sep")}}});
  } else {
    file.unsupported("post-processor \"" + type + "\" is not supported",
                     "supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence");
  }
}

void check_decoder(const JsonFile& file, const json& value, const std::string& where) {
  const std::string type = type_of(file, value, where);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const json& steps = file.require(value, "decoders", where);
    if (!steps.is_array()) file.fail(where + ".decoders must be an array");
    for (size_t i = 0; i < steps.size(); ++i) {
      check_decoder(file, steps[i], where + ".decoders[" + std::to_string(i) + "]");
    }
    return;
  }
  file.unsupported("decoder \"" + type + "\" is not supported",
                   "byte-level BPE tokenizers use the ByteLevel decoder");
}

std::unique_ptr<BpeModel> parse_model(const JsonFile& file, const json& model) {
  if (!model.is_object()) file.fail("\"model\" must be an object");
  const json* type = file.find(model, "type");
  if (type != nullptr && (!type->is_string() || type->get<std::string>() != "BPE")) {
    file.unsupported("model type " + type->dump() + " is not supported",
                     "only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM) are");
  }
  const json* dropout = file.find(model, "dropout");
  if (dropout != nullptr && (!dropout->is_number() || dropout->get<double>() != 0.0)) {
    file.unsupported("BPE dropout " + dropout->dump() + " makes encoding random",
                     "set model.dropout to null");
  }
  if (file.boolean(model, "byte_fallback", false, "model")) {
    file.unsupported("BPE byte_fallback (SentencePiece-style BPE) is not supported",
                     "only byte-level BPE tokenizers are");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* affix = file.find(model, key);
    if (affix != nullptr && (!affix->is_string() || !affix->get<std::string>().empty())) {
      file.unsupported(std::string("model.") + key + " " + affix->dump() + " is not supported",
                       "byte-level BPE tokenizers have none");
    }
  }

  const json& vocab = file.require(model, "vocab", "model");
  if (!vocab.is_object()) file.fail("model.vocab must be an object of token -> id");
  std::unordered_map<std::string, int32_t> piece_to_id;
  piece_to_id.reserve(vocab.size());
  // Ids index a table (BpeModel's id -> piece), so one huge id would allocate gigabytes: no real
  // vocabulary comes near 2^24 (found by the tokenizer_json fuzz target).
  constexpr int32_t kIdLimit = int32_t{1} << 24;
  for (const auto& [piece, id] : vocab.items()) {
    const int32_t value = file.id(id, "model.vocab[\"" + piece + "\"]");
    if (value >= kIdLimit) {
      file.fail("model.vocab[\"" + piece.substr(0, 40) + "\"] is " + std::to_string(value) +
                "; token ids must be below " + std::to_string(kIdLimit));
    }
    piece_to_id[piece] = value;
  }
  auto bpe = std::make_unique<BpeModel>(std::move(piece_to_id));

  const json& merges = file.require(model, "merges", "model");
  if (!merges.is_array()) file.fail("model.merges must be an array");
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {  // "left right"
      const std::string& text = merge.get_ref<const std::string&>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        file.fail("model.merges[" + std::to_string(rank) + "] is " + JsonFile::short_dump(merge) +
                  "; expected two tokens separated by one space");
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      file.fail("model.merges[" + std::to_string(rank) + "] is " + JsonFile::short_dump(merge) +
                "; expected \"left right\" or [\"left\", \"right\"]");
    }
    if (!bpe->add_merge(left, right)) {
      file.fail("model.merges[" + std::to_string(rank) + "] (\"" + left + "\", \"" + right +
                "\") names a token missing from model.vocab");
    }
  }
  bpe->set_ignore_merges(file.boolean(model, "ignore_merges", false, "model"));
  const json* unknown = file.find(model, "unk_token");
  if (unknown != nullptr) {
    if (!unknown->is_string()) file.fail("model.unk_token must be a string or null");
    const auto id = bpe->token_id(unknown->get<std::string>());
    if (!id) file.fail("model.unk_token \"" + unknown->get<std::string>() + "\" is not in model.vocab");
    bpe->set_unknown(id, file.boolean(model, "fuse_unk", false, "model"));
  }
  return bpe;
}

AddedToken parse_added_token(const JsonFile& file, const json& value, const std::string& where) {
  if (!value.is_object()) file.fail(where + " must be an object");
  AddedToken token;
  token.id = file.id(file.require(value, "id", where), where + ".id");
  token.content = file.string(value, "content", where);
  if (token.content.empty()) file.fail(where + ".content is empty");
  token.special = file.boolean(value, "special", false, where);
  token.lstrip = file.boolean(value, "lstrip", false, where);
  token.rstrip = file.boolean(value, "rstrip", false, where);
  token.single_word = file.boolean(value, "single_word", false, where);
  token.normalized = file.boolean(value, "normalized", !token.special, where);
  return token;
}

// A special token named in tokenizer_config.json: a string, or an AddedToken object with "content".
std::optional<AddedToken> config_token(const JsonFile& file, const json& value, const std::string& where) {
  if (value.is_null()) return std::nullopt;
  AddedToken token;
  token.special = true;
  if (value.is_string()) {
    token.content = value.get<std::string>();
  } else if (value.is_object()) {
    token.content = file.string(value, "content", where);
    token.lstrip = file.boolean(value, "lstrip", false, where);
    token.rstrip = file.boolean(value, "rstrip", false, where);
    token.single_word = file.boolean(value, "single_word", false, where);
    token.normalized = file.boolean(value, "normalized", false, where);
    token.special = file.boolean(value, "special", true, where);
  } else {
    file.fail(where + " must be a string or an object with \"content\"");
  }
  if (token.content.empty()) return std::nullopt;
  return token;
}

// The id HF tokenizers gives an added token (AddedVocabulary::add_tokens): an added token or vocabulary
// entry with the same content keeps its id; anything else goes after the vocabulary and the added
// tokens. The "id" written in tokenizer.json is not used (HF only warns when it differs).
int32_t added_token_id(const TokenizerState& state, const std::string& content) {
  if (const auto existing = lookup_token(state, content)) return *existing;
  const auto vocabulary_size = static_cast<int32_t>(state.model->size());
  int32_t largest = -1;
  for (const AddedToken& token : state.added.tokens()) largest = std::max(largest, token.id);
  return largest >= vocabulary_size ? largest + 1 : vocabulary_size;
}

}  // namespace

std::shared_ptr<TokenizerState> load_tokenizer_json_state(const std::string& tokenizer_json_path,
                                                          const std::string& tokenizer_config_path,
                                                          const std::string& chat_template_path) {
  auto state = std::make_shared<TokenizerState>();
  state->source = tokenizer_json_path;
  const JsonFile file(tokenizer_json_path);
  const json root = file.parse();
  if (!root.is_object()) file.fail("must hold a JSON object");

  state->model = parse_model(file, file.require(root, "model", "the tokenizer"));
  if (const json* normalizer = file.find(root, "normalizer")) {
    parse_normalizer(file, *normalizer, state->normalizer, "normalizer");
  }
  if (const json* pre_tokenizer = file.find(root, "pre_tokenizer")) {
    parse_pre_tokenizer(file, *pre_tokenizer, state->pre_tokenizer, "pre_tokenizer");
  }
  if (!state->pre_tokenizer.has_byte_level()) {
    file.unsupported("has no ByteLevel pre-tokenizer, so it is not a byte-level BPE tokenizer",
                     "SentencePiece-style tokenizers (Metaspace, byte_fallback) are not supported");
  }
  if (const json* post_processor = file.find(root, "post_processor")) {
    parse_post_processor(file, *post_processor, state->post_processor, "post_processor");
  }
  // No decoder: decoding still reverses the byte-level alphabet, which is what such files mean.
  if (const json* decoder = file.find(root, "decoder")) check_decoder(file, *decoder, "decoder");

  if (const json* added_tokens = file.find(root, "added_tokens")) {
    if (!added_tokens->is_array()) file.fail("\"added_tokens\" must be an array");
    for (size_t i = 0; i < added_tokens->size(); ++i) {
      AddedToken token =
          parse_added_token(file, (*added_tokens)[i], "added_tokens[" + std::to_string(i) + "]");
      token.id = added_token_id(*state, token.content);
      state->added.add(std::move(token));
    }
  }

  if (!tokenizer_config_path.empty()) {
    const JsonFile config_file(tokenizer_config_path);
    const json config = config_file.parse();
    if (!config.is_object()) config_file.fail("must hold a JSON object");
    state->split_special_tokens = config_file.boolean(config, "split_special_tokens", false, "the config");

    // Entries of added_tokens_decoder whose id the tokenizer lacks (transformers adds them).
    if (const json* decoder = config_file.find(config, "added_tokens_decoder")) {
      if (!decoder->is_object()) config_file.fail("added_tokens_decoder must be an object of id -> token");
      for (const auto& [key, value] : decoder->items()) {
        int64_t id = -1;
        try {
          id = std::stoll(key);
        } catch (const std::exception&) {
          config_file.fail("added_tokens_decoder key \"" + key + "\" is not a token id");
        }
        json entry = value;
        if (!entry.is_object()) config_file.fail("added_tokens_decoder[\"" + key + "\"] must be an object");
        entry["id"] = id;
        AddedToken token = parse_added_token(config_file, entry, "added_tokens_decoder[\"" + key + "\"]");
        if (state->added.find_by_content(token.content) == nullptr) {
          token.id = added_token_id(*state, token.content);
          state->added.add(std::move(token));
        }
      }
    }

    // Named special tokens (and additional ones) become special added tokens when the tokenizer does
    // not have them as added tokens yet, as transformers' TokenizersBackend does on load.
    auto add_special = [&](const json& value, const std::string& where) -> std::optional<AddedToken> {
      std::optional<AddedToken> token = config_token(config_file, value, where);
      if (!token) return std::nullopt;
      if (const AddedToken* existing = state->added.find_by_content(token->content)) return *existing;
      token->id = added_token_id(*state, token->content);
      state->added.add(*token);
      return token;
    };
    NamedToken* named[] = {&state->bos, &state->eos, &state->unk, &state->pad};
    const char* names[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (size_t i = 0; i < 4; ++i) {
      if (const json* value = config_file.find(config, names[i])) {
        if (const auto token = add_special(*value, names[i]))
          *named[i] = NamedToken{token->id, token->content};
      }
    }
    for (const char* key : {"sep_token", "cls_token", "mask_token"}) {
      if (const json* value = config_file.find(config, key)) add_special(*value, key);
    }
    for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
      const json* list = config_file.find(config, key);
      if (list == nullptr || !list->is_array()) continue;  // transformers also allows a dict of names
      for (size_t i = 0; i < list->size(); ++i)
        add_special((*list)[i], std::string(key) + "[" + std::to_string(i) + "]");
    }

    if (const json* chat_template = config_file.find(config, "chat_template")) {
      if (chat_template->is_string()) {
        state->chat_template = chat_template->get<std::string>();
      } else if (chat_template->is_array()) {
        for (const json& entry : *chat_template) {
          if (entry.is_object() && entry.contains("name") && entry["name"] == "default" &&
              entry.contains("template") && entry["template"].is_string()) {
            state->chat_template = entry["template"].get<std::string>();
          }
        }
      } else {
        config_file.fail("chat_template must be a string or a list of {name, template}");
      }
    }
  }
  if (!chat_template_path.empty()) state->chat_template = read_text_file(chat_template_path);
  state->added.build(state->normalizer);
  return state;
}

}  // namespace cartridge
