// Building a byte-level BPE tokenizer from a GGUF's `tokenizer.ggml.*` metadata, either as transformers
// builds it (integrations/gguf: GPT2Tokenizer + a Split regex for some `tokenizer.ggml.pre` names) or as
// llama.cpp does (llama-vocab.cpp's pre-tokenizer table, which follows each model's own tokenizer.json).
#include <functional>
#include <limits>
#include <memory>
#include <string>

#include "io/gguf.h"
#include "tokenizer/tokenizer_state.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace cartridge {

namespace {

constexpr const char* kDamagedVocabularyHint =
    "the tokenizer metadata is damaged; convert the model again with llama.cpp's convert_hf_to_gguf.py";

// The split regexes of the original tokenizers, as written in their tokenizer.json files.
constexpr const char* kLlama3Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen35Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| "
    "?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kTekkenSplit =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kGpt4oSplit =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// deepseek-llm's letters: the cased letters of Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee, ...,
// written as code points because several (U+1FBE, U+2126, U+212A, ...) change under NFC in an editor.
constexpr const char* kDeepseekLetters =
    "\\s?["
    "\\x{41}-\\x{5A}\\x{61}-\\x{7A}\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}"
    "\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}-\\x{377}"
    "\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}"
    "\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}"
    "\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}"
    "\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}"
    "\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}"
    "\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}"
    "\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}"
    "\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}"
    "\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}-\\x{2184}"
    "\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}-\\x{2CF3}\\x{A640}-\\x{A66D}"
    "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}"
    "\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}"
    "\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}"
    "\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}"
    "]+";
constexpr const char* kDeepseekPunctuation =
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+";
constexpr const char* kCjk = "[\\x{4E00}-\\x{9FA5}\\x{0800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+";

bool in_list(const std::string& name, std::initializer_list<const char*> names) {
  for (const char* candidate : names) {
    if (name == candidate) return true;
  }
  return false;
}

bool in_byte_alphabet(const std::string& text) {
  size_t position = 0;
  while (position < text.size()) {
    if (unicode::byte_from_code_point(unicode::next_code_point(text, position)) < 0) return false;
  }
  return true;
}

void add_splits(PreTokenizer& pre_tokenizer, std::initializer_list<const char*> patterns) {
  for (const char* pattern : patterns) {
    pre_tokenizer.add_regex_split(std::make_shared<const Regex>(pattern), SplitBehavior::kIsolated, false);
  }
}

bool is_llama3_family(const std::string& pre) {
  return in_list(pre,
                 {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"});
}

// transformers' GGUF_PRE_TOKENIZER_SPLITS; any other name keeps GPT2Tokenizer's ByteLevel regex.
void transformers_pre_tokenizer(const std::string& pre, PreTokenizer& pre_tokenizer) {
  const char* split = nullptr;
  if (is_llama3_family(pre) || in_list(pre, {"jina-v5-nano", "dbrx", "smaug-bpe"})) {
    split = kLlama3Split;
  } else if (pre == "tekken") {
    split = kTekkenSplit;
  } else if (in_list(pre, {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"})) {
    split = kQwen2Split;
  } else if (pre == "qwen35") {
    split = kQwen35Split;
  } else if (in_list(pre, {"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"})) {
    split = kGpt4oSplit;
  }
  if (split != nullptr) {
    add_splits(pre_tokenizer, {split});
    pre_tokenizer.add_byte_level(false, false);
  } else {
    pre_tokenizer.add_byte_level(false, true);
  }
}

// llama.cpp's table (llama-vocab.cpp), written as the HF pre-tokenizers of the original models.
// Returns false for a name llama.cpp does not know either.
bool llama_cpp_pre_tokenizer(const std::string& pre, PreTokenizer& pre_tokenizer) {
  if (pre == "default") {
    add_splits(pre_tokenizer, {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2Pattern, "\\p{N}+", "[0-9][0-9][0-9]"});
    pre_tokenizer.add_byte_level(false, false);
  } else if (is_llama3_family(pre) || in_list(pre, {"dbrx", "smaug-bpe", "glm4", "chatglm-bpe"})) {
    add_splits(pre_tokenizer, {kLlama3Split});
    pre_tokenizer.add_byte_level(false, false);
  } else if (in_list(pre, {"qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "hunyuan"})) {
    add_splits(pre_tokenizer, {kQwen2Split});
    pre_tokenizer.add_byte_level(false, false);
  } else if (pre == "qwen35") {
    add_splits(pre_tokenizer, {kQwen35Split});
    pre_tokenizer.add_byte_level(false, false);
  } else if (in_list(pre, {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva"})) {
    pre_tokenizer.add_digits(true);
    pre_tokenizer.add_byte_level(false, true);
  } else if (in_list(pre, {"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                           "a.x-4.0", "mellum", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo",
                           "jais", "trillion", "granite-docling"})) {
    pre_tokenizer.add_byte_level(false, true);
  } else if (pre == "deepseek-llm") {
    add_splits(pre_tokenizer, {"[\\r\\n]", kDeepseekLetters, kDeepseekPunctuation, "\\s+$", kCjk, "\\p{N}+"});
    pre_tokenizer.add_byte_level(false, false);
  } else if (pre == "deepseek-coder") {
    add_splits(pre_tokenizer, {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", kCjk, "\\p{N}"});
    pre_tokenizer.add_byte_level(false, false);
  } else if (pre == "falcon") {
    pre_tokenizer.add_punctuation(SplitBehavior::kContiguous);
    pre_tokenizer.add_byte_level(false, true);
    pre_tokenizer.add_digits(false);
    add_splits(pre_tokenizer, {"[0-9][0-9][0-9]"});
  } else if (pre == "tekken") {
    add_splits(pre_tokenizer, {kTekkenSplit});
    pre_tokenizer.add_byte_level(false, false);
  } else if (in_list(pre, {"gpt-4o", "llama4", "minimax-m2"})) {
    add_splits(pre_tokenizer, {kGpt4oSplit});
    pre_tokenizer.add_byte_level(false, false);
  } else {
    return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<TokenizerState> load_gguf_state(const GgufFile& gguf, GgufPreTokenizerSource source) {
  const std::string& path = gguf.path();
  auto fail = [&](const std::string& problem) -> FormatError {
    return FormatError(describe_file_problem(path, problem, kDamagedVocabularyHint));
  };
  // Metadata accessors name the key but not the file; every error leaving here names both.
  auto with_path = [&](const std::function<void()>& body) {
    try {
      body();
    } catch (const FormatError& error) {
      const std::string message = error.what();
      if (message.rfind(path, 0) == 0) throw;
      throw FormatError(describe_file_problem(path, message, kDamagedVocabularyHint));
    }
  };

  auto state = std::make_shared<TokenizerState>();
  state->source = path;
  const GgufValue* model_value = gguf.find("tokenizer.ggml.model");
  if (model_value == nullptr) {
    throw fail("has no tokenizer.ggml.model, so no tokenizer is stored in it");
  }
  std::string model_name;
  with_path([&] { model_name = model_value->as_string("tokenizer.ggml.model"); });
  if (model_name != "gpt2") {
    throw UnsupportedError(describe_file_problem(
        path, "tokenizer model \"" + model_name + "\" is not supported",
        "only byte-level BPE vocabularies (tokenizer.ggml.model = gpt2: Llama 3, Qwen, SmolLM, GPT-2) are"));
  }

  std::vector<std::string> tokens;
  std::vector<int64_t> token_types;
  std::vector<std::string> merges;
  std::string pre = "default";
  with_path([&] {
    const GgufArray& token_array = gguf.get("tokenizer.ggml.tokens").as_array("tokenizer.ggml.tokens");
    tokens.reserve(token_array.size());
    for (const GgufValue& token : token_array) tokens.push_back(token.as_string("tokenizer.ggml.tokens"));
    if (const GgufValue* types = gguf.find("tokenizer.ggml.token_type")) {
      for (const GgufValue& type : types->as_array("tokenizer.ggml.token_type")) {
        token_types.push_back(type.as_int("tokenizer.ggml.token_type"));
      }
    }
    const GgufValue* merge_value = gguf.find("tokenizer.ggml.merges");
    if (merge_value == nullptr) throw fail("has no tokenizer.ggml.merges, which a BPE vocabulary needs");
    for (const GgufValue& merge : merge_value->as_array("tokenizer.ggml.merges")) {
      merges.push_back(merge.as_string("tokenizer.ggml.merges"));
    }
    if (const GgufValue* pre_value = gguf.find("tokenizer.ggml.pre"))
      pre = pre_value->as_string("tokenizer.ggml.pre");
  });
  if (tokens.empty()) throw fail("tokenizer.ggml.tokens is empty");
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) throw fail("too many tokens");
  if (!token_types.empty() && token_types.size() != tokens.size()) {
    throw fail("tokenizer.ggml.token_type has " + std::to_string(token_types.size()) + " entries for " +
               std::to_string(tokens.size()) + " tokens");
  }
  const bool transformers = source == GgufPreTokenizerSource::kTransformers;

  // The vocabulary. transformers re-spells a token outside the byte-level alphabet (a control token such
  // as "<｜begin▁of▁sentence｜>") in the alphabet; llama.cpp keeps the file's spelling.
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    std::string spelling;
    if (transformers && !in_byte_alphabet(tokens[id])) {
      unicode::append_byte_level(spelling, tokens[id]);
    } else {
      spelling = tokens[id];
    }
    vocab[spelling] = static_cast<int32_t>(id);  // a later duplicate wins, as in a Python dict
  }
  state->model = std::make_unique<BpeModel>(std::move(vocab));
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& merge = merges[rank];
    // As llama.cpp: the separator is the first space after the first byte.
    const size_t space = merge.size() > 1 ? merge.find(' ', 1) : std::string::npos;
    if (space == std::string::npos || space + 1 >= merge.size()) {
      throw fail("tokenizer.ggml.merges[" + std::to_string(rank) + "] \"" + merge +
                 "\" is not two tokens separated by a space");
    }
    if (!state->model->add_merge(std::string_view(merge).substr(0, space),
                                 std::string_view(merge).substr(space + 1))) {
      throw fail("tokenizer.ggml.merges[" + std::to_string(rank) + "] \"" + merge +
                 "\" names a token missing from tokenizer.ggml.tokens");
    }
  }
  state->model->set_ignore_merges(!transformers && is_llama3_family(pre));

  if (transformers) {
    transformers_pre_tokenizer(pre, state->pre_tokenizer);
  } else if (!llama_cpp_pre_tokenizer(pre, state->pre_tokenizer)) {
    throw UnsupportedError(describe_file_problem(
        path, "pre-tokenizer \"" + pre + "\" (tokenizer.ggml.pre) is not in llama.cpp's table here",
        "load it with GgufPreTokenizerSource::kTransformers, which uses GPT-2's regex for unknown names"));
  }

  // Added tokens: control tokens are special (chat markers such as <|im_start|>), user-defined ones are
  // matched whole but not special. transformers skips user-defined tokens outside the byte alphabet.
  constexpr int64_t kControl = 3, kUserDefined = 4;
  for (size_t id = 0; id < token_types.size(); ++id) {
    if (token_types[id] != kControl) continue;
    AddedToken token;
    token.id = static_cast<int32_t>(id);
    token.content = tokens[id];
    token.special = true;
    state->added.add(std::move(token));
  }
  for (size_t id = 0; id < token_types.size(); ++id) {
    if (token_types[id] != kUserDefined || (transformers && !in_byte_alphabet(tokens[id]))) continue;
    AddedToken token;
    token.id = static_cast<int32_t>(id);
    token.content = tokens[id];
    state->added.add(std::move(token));
  }

  auto named = [&](const char* key, NamedToken& target) {
    const GgufValue* value = gguf.find(key);
    if (value == nullptr) return;
    int64_t id = -1;
    with_path([&] { id = value->as_int(key); });
    if (id < 0 || id >= static_cast<int64_t>(tokens.size())) {
      throw fail(std::string(key) + " is " + std::to_string(id) + ", outside the " +
                 std::to_string(tokens.size()) + " tokens");
    }
    target = NamedToken{static_cast<int32_t>(id), tokens[static_cast<size_t>(id)]};
    // transformers makes every named token special (an added token matched whole in text).
    if (transformers && in_byte_alphabet(target.content)) {
      AddedToken token;
      token.id = *target.id;
      token.content = target.content;
      token.special = true;
      state->added.add(std::move(token));
    }
  };
  named("tokenizer.ggml.bos_token_id", state->bos);
  named("tokenizer.ggml.eos_token_id", state->eos);
  named("tokenizer.ggml.unknown_token_id", state->unk);
  named("tokenizer.ggml.padding_token_id", state->pad);

  bool add_bos = !transformers && is_llama3_family(pre);
  bool add_eos = false;
  with_path([&] {
    if (const GgufValue* value = gguf.find("tokenizer.ggml.add_bos_token"))
      add_bos = value->as_bool("add_bos_token");
    if (const GgufValue* value = gguf.find("tokenizer.ggml.add_eos_token"))
      add_eos = value->as_bool("add_eos_token");
    if (const GgufValue* value = gguf.find("tokenizer.chat_template")) {
      state->chat_template = value->as_string("tokenizer.chat_template");
    }
  });
  std::vector<PostProcessor::Item> items;
  if (add_bos && state->bos.id) items.push_back(PostProcessor::Item{false, {*state->bos.id}});
  items.push_back(PostProcessor::Item{true, {}});
  if (add_eos && state->eos.id) items.push_back(PostProcessor::Item{false, {*state->eos.id}});
  state->post_processor.add_template(std::move(items));

  state->added.build(state->normalizer);
  return state;
}

}  // namespace cartridge
