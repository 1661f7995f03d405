// Malformed and unsupported tokenizer files give one typed error line naming the file, never a crash,
// a hang or a half-built tokenizer: hand-written broken tokenizer.json / tokenizer_config.json / GGUF
// vocabularies, plus random damage to small valid files.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/gguf.h"
#include "tokenizer/unicode.h"
#include "tokenizer_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

using nlohmann::json;

class TokenizerErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    folder_ = std::filesystem::temp_directory_path() /
              ("tokenizer_errors_" + std::to_string(::getpid()) + "_" +
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(folder_);
  }
  void TearDown() override { std::filesystem::remove_all(folder_); }

  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (folder_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  std::filesystem::path folder_;
};

// A small byte-level BPE tokenizer.json: the 256 byte tokens, two merges ("h"+"e", "he"+"l") and one
// special token.
json tiny_tokenizer() {
  json vocab = json::object();
  for (int byte = 0; byte < 256; ++byte) {
    std::string piece;
    unicode::append_utf8(piece, unicode::byte_to_code_point(static_cast<uint8_t>(byte)));
    vocab[piece] = byte;
  }
  vocab["he"] = 256;
  vocab["hel"] = 257;
  json tokenizer = {
      {"version", "1.0"},
      {"added_tokens", json::array({{{"id", 258},
                                     {"content", "<|end|>"},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false},
                                     {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"h e", "he l"})}}},
  };
  return tokenizer;
}

// Expects `body` to throw an error of type E whose message is one line naming `path`.
template <typename E, typename Body>
void expect_one_line_error(Body body, const std::string& path, const std::string& why) {
  try {
    body();
    ADD_FAILURE() << why << ": no error";
  } catch (const E& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(path), std::string::npos) << why << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << why << ": " << message;
  } catch (const std::exception& error) {
    ADD_FAILURE() << why << ": wrong exception type: " << error.what();
  }
}

TEST_F(TokenizerErrors, TinyTokenizerWorks) {
  const std::string path = write("tokenizer.json", tiny_tokenizer().dump());
  const Tokenizer tokenizer = Tokenizer::from_tokenizer_json(path);
  EXPECT_EQ(tokenizer.encode("hello<|end|>", false), (std::vector<int32_t>{257, 'l', 'o', 258}));
  EXPECT_EQ(tokenizer.decode({257, 'l', 'o', 258}), "hello<|end|>");
  EXPECT_EQ(tokenizer.decode({257, 'l', 'o', 258}, true), "hello");
  EXPECT_EQ(tokenizer.token_piece(256), "he");
  EXPECT_EQ(tokenizer.token_id("hel"), 257);
  EXPECT_FALSE(tokenizer.token_id("nope").has_value());
  EXPECT_THROW(tokenizer.token_piece(999), InvalidArgumentError);
  EXPECT_EQ(tokenizer.vocab_size(), 259);
  // Ill-formed UTF-8 reads as U+FFFD (Python's errors="replace").
  EXPECT_EQ(tokenizer.encode("a\xff"
                             "b",
                             false),
            tokenizer.encode("a\xEF\xBF\xBD"
                             "b",
                             false));
}

TEST_F(TokenizerErrors, MalformedTokenizerJson) {
  const std::string valid = tiny_tokenizer().dump();
  struct Case {
    const char* why;
    std::string text;
    bool unsupported;
  };
  std::vector<Case> cases;
  cases.push_back({"truncated", valid.substr(0, valid.size() / 2), false});
  cases.push_back({"empty file", "", false});
  cases.push_back({"not an object", "[1, 2, 3]", false});
  auto edited = [&](const char* why, bool unsupported, auto edit) {
    json tokenizer = tiny_tokenizer();
    edit(tokenizer);
    cases.push_back({why, tokenizer.dump(), unsupported});
  };
  edited("no model", false, [](json& t) { t.erase("model"); });
  edited("model is a string", false, [](json& t) { t["model"] = "BPE"; });
  edited("unigram model", true, [](json& t) { t["model"]["type"] = "Unigram"; });
  edited("vocab is an array", false, [](json& t) { t["model"]["vocab"] = json::array({1, 2}); });
  edited("negative id", false, [](json& t) { t["model"]["vocab"]["he"] = -3; });
  edited("string id", false, [](json& t) { t["model"]["vocab"]["he"] = "256"; });
  edited("merge of unknown tokens", false, [](json& t) { t["model"]["merges"].push_back("x yz"); });
  edited("merge without a space", false, [](json& t) { t["model"]["merges"].push_back("hel"); });
  edited("merge with three parts", false, [](json& t) { t["model"]["merges"].push_back("h e l"); });
  edited("merge pair of numbers", false, [](json& t) {
    t["model"]["merges"].push_back(json::array({1, 2}));
  });
  edited("merges missing", false, [](json& t) { t["model"].erase("merges"); });
  edited("dropout", true, [](json& t) { t["model"]["dropout"] = 0.1; });
  edited("byte fallback", true, [](json& t) { t["model"]["byte_fallback"] = true; });
  edited("unknown unk token", false, [](json& t) { t["model"]["unk_token"] = "<unk>"; });
  edited("Metaspace", true, [](json& t) { t["pre_tokenizer"] = {{"type", "Metaspace"}}; });
  edited("no pre-tokenizer", true, [](json& t) { t["pre_tokenizer"] = nullptr; });
  edited("pre-tokenizer without type", false, [](json& t) { t["pre_tokenizer"] = json::object(); });
  edited("bad regex", false, [](json& t) {
    t["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}},
          {{"type", "ByteLevel"}}}}};
  });
  edited("bad behavior", false, [](json& t) {
    t["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"}, {"pattern", {{"String", "x"}}}, {"behavior", "Sideways"}},
                            {{"type", "ByteLevel"}}}}};
  });
  edited("lowercase normalizer", true, [](json& t) { t["normalizer"] = {{"type", "Lowercase"}}; });
  edited("added token without content", false, [](json& t) { t["added_tokens"][0].erase("content"); });
  edited("added token with a string id", false, [](json& t) { t["added_tokens"][0]["id"] = "x"; });
  edited("added tokens not a list", false, [](json& t) { t["added_tokens"] = 5; });
  edited("template names an undefined token", false, [](json& t) {
    t["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}}}}}},
        {"special_tokens", json::object()}};
  });
  edited("unknown post-processor", true, [](json& t) { t["post_processor"] = {{"type", "Mystery"}}; });
  edited("WordPiece decoder", true, [](json& t) { t["decoder"] = {{"type", "WordPiece"}}; });
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = write("case" + std::to_string(i) + ".json", cases[i].text);
    auto load = [&] { Tokenizer::from_tokenizer_json(path); };
    if (cases[i].unsupported) {
      expect_one_line_error<UnsupportedError>(load, path, cases[i].why);
    } else {
      expect_one_line_error<FormatError>(load, path, cases[i].why);
    }
  }
  expect_one_line_error<FileNotFoundError>(
      [&] { Tokenizer::from_tokenizer_json((folder_ / "missing.json").string()); },
      (folder_ / "missing.json").string(), "missing file");
}

TEST_F(TokenizerErrors, MalformedTokenizerConfig) {
  const std::string tokenizer_path = write("tokenizer.json", tiny_tokenizer().dump());
  const std::vector<std::pair<const char*, std::string>> cases = {
      {"truncated", "{\"bos_token\": \"<|en"},
      {"not an object", "\"text\""},
      {"bos token is a number", "{\"bos_token\": 5}"},
      {"chat template is a number", "{\"chat_template\": 5}"},
      {"added_tokens_decoder key not an id", "{\"added_tokens_decoder\": {\"x\": {\"content\": \"a\"}}}"},
      {"added_tokens_decoder entry not an object", "{\"added_tokens_decoder\": {\"3\": 4}}"},
      {"split_special_tokens not a bool", "{\"split_special_tokens\": \"yes\"}"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = write("config" + std::to_string(i) + ".json", cases[i].second);
    expect_one_line_error<FormatError>([&] { Tokenizer::from_tokenizer_json(tokenizer_path, path); }, path,
                                       cases[i].first);
  }
  // A list of templates: the one named "default" is used; a new special token gets the next id.
  const std::string config =
      write("config_ok.json", json{{"chat_template", json::array({{{"name", 3}, {"template", "x"}},
                                                                  {{"name", "default"}, {"template", "T"}}})},
                                   {"eos_token", "<|new|>"},
                                   {"split_special_tokens", true}}
                                  .dump());
  const Tokenizer tokenizer = Tokenizer::from_tokenizer_json(tokenizer_path, config);
  EXPECT_EQ(tokenizer.chat_template(), "T");
  EXPECT_EQ(tokenizer.eos_token(), "<|new|>");
  EXPECT_EQ(tokenizer.eos_token_id(), 259);
  EXPECT_TRUE(tokenizer.is_special(259));
  // split_special_tokens: special-token text is encoded as plain text.
  EXPECT_EQ(tokenizer.encode("<|end|>", false).size(), 7u);
}

TEST_F(TokenizerErrors, RandomDamageToTokenizerJsonNeverCrashes) {
  std::string valid = tiny_tokenizer().dump();
  std::mt19937 random(12345);
  size_t loaded = 0, rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string damaged = valid;
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t position = random() % damaged.size();
      switch (random() % 3) {
        case 0: damaged[position] = static_cast<char>(random() % 256); break;
        case 1: damaged.erase(position, 1 + random() % 8); break;
        case 2: damaged.resize(position); break;
      }
      if (damaged.empty()) damaged = "{";
    }
    const std::string path = write("damaged.json", damaged);
    try {
      const Tokenizer tokenizer = Tokenizer::from_tokenizer_json(path);
      tokenizer.decode(tokenizer.encode("hello <|end|> world"));
      ++loaded;
    } catch (const Error& error) {
      EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos) << error.what();
      ++rejected;
    } catch (const std::exception& error) {
      ADD_FAILURE() << "untyped error for damaged file: " << error.what();
    }
  }
  EXPECT_GT(rejected, 0u);
  EXPECT_EQ(loaded + rejected, 300u);
}

// --- GGUF vocabularies -------------------------------------------------------------------------------

// Writes a GGUF v3 file with metadata only (no tensors).
class GgufBuilder {
 public:
  GgufBuilder& string(const std::string& key, const std::string& value) {
    begin(key, 8);
    put_string(value);
    return *this;
  }
  GgufBuilder& u32(const std::string& key, uint32_t value) {
    begin(key, 4);
    put(value);
    return *this;
  }
  GgufBuilder& boolean(const std::string& key, bool value) {
    begin(key, 7);
    body_.push_back(value ? 1 : 0);
    return *this;
  }
  GgufBuilder& strings(const std::string& key, const std::vector<std::string>& values) {
    begin(key, 9);
    put(uint32_t{8});
    put(static_cast<uint64_t>(values.size()));
    for (const std::string& value : values) put_string(value);
    return *this;
  }
  GgufBuilder& i32s(const std::string& key, const std::vector<int32_t>& values) {
    begin(key, 9);
    put(uint32_t{5});
    put(static_cast<uint64_t>(values.size()));
    for (const int32_t value : values) put(value);
    return *this;
  }
  std::string bytes() const {
    std::string out = "GGUF";
    append(out, uint32_t{3});
    append(out, uint64_t{0});  // tensors
    append(out, count_);
    out += body_;
    while (out.size() % 32 != 0) out.push_back('\0');
    return out;
  }

 private:
  template <typename T>
  static void append(std::string& out, T value) {
    char raw[sizeof(T)];
    std::memcpy(raw, &value, sizeof(T));
    out.append(raw, sizeof(T));
  }
  template <typename T>
  void put(T value) {
    append(body_, value);
  }
  void put_string(const std::string& value) {
    put(static_cast<uint64_t>(value.size()));
    body_ += value;
  }
  void begin(const std::string& key, uint32_t type) {
    put_string(key);
    put(type);
    ++count_;
  }
  std::string body_;
  uint64_t count_ = 0;
};

std::vector<std::string> byte_tokens() {
  std::vector<std::string> tokens;
  for (int byte = 0; byte < 256; ++byte) {
    std::string piece;
    unicode::append_utf8(piece, unicode::byte_to_code_point(static_cast<uint8_t>(byte)));
    tokens.push_back(piece);
  }
  tokens.push_back("he");
  tokens.push_back("hel");
  tokens.push_back("<|end|>");
  return tokens;
}

GgufBuilder tiny_gguf(const std::string& skip = "") {
  std::vector<int32_t> types(259, 1);
  types[258] = 3;  // control
  GgufBuilder builder;
  if (skip != "model") builder.string("tokenizer.ggml.model", "gpt2");
  if (skip != "pre") builder.string("tokenizer.ggml.pre", "smollm");
  if (skip != "tokens") builder.strings("tokenizer.ggml.tokens", byte_tokens());
  if (skip != "types") builder.i32s("tokenizer.ggml.token_type", types);
  if (skip != "merges") builder.strings("tokenizer.ggml.merges", {"h e", "he l"});
  builder.u32("tokenizer.ggml.bos_token_id", 258).u32("tokenizer.ggml.eos_token_id", 258);
  builder.boolean("tokenizer.ggml.add_bos_token", true);
  builder.string("tokenizer.chat_template", "{{ bos_token }}");
  return builder;
}

TEST_F(TokenizerErrors, TinyGgufWorks) {
  const std::string path = write("tiny.gguf", tiny_gguf().bytes());
  for (const auto source : {GgufPreTokenizerSource::kTransformers, GgufPreTokenizerSource::kLlamaCpp}) {
    const Tokenizer tokenizer = Tokenizer::from_gguf(GgufFile(path), source);
    EXPECT_EQ(tokenizer.encode("hello<|end|>"), (std::vector<int32_t>{258, 257, 'l', 'o', 258}));
    EXPECT_EQ(tokenizer.decode({258, 257, 'l', 'o'}, true), "hello");
    EXPECT_EQ(tokenizer.bos_token(), "<|end|>");
    EXPECT_EQ(tokenizer.chat_template(), "{{ bos_token }}");
    EXPECT_TRUE(tokenizer.is_special(258));
  }
}

TEST_F(TokenizerErrors, MalformedGgufVocabulary) {
  std::vector<int32_t> short_types(10, 1);
  struct Case {
    const char* why;
    std::string bytes;
    bool unsupported;
  };
  const std::vector<Case> cases = {
      {"no tokenizer", tiny_gguf("model").bytes(), false},
      {"no tokens", tiny_gguf("tokens").bytes(), false},
      {"no merges", tiny_gguf("merges").bytes(), false},
      {"sentencepiece", tiny_gguf("model").string("tokenizer.ggml.model", "llama").bytes(), true},
      {"tokens are numbers", tiny_gguf("tokens").i32s("tokenizer.ggml.tokens", {1, 2}).bytes(), false},
      {"model is a number", tiny_gguf("model").u32("tokenizer.ggml.model", 2).bytes(), false},
      {"token types too short", tiny_gguf("types").i32s("tokenizer.ggml.token_type", short_types).bytes(),
       false},
      {"merge of unknown tokens", tiny_gguf("merges").strings("tokenizer.ggml.merges", {"x yz"}).bytes(),
       false},
      {"merge without space", tiny_gguf("merges").strings("tokenizer.ggml.merges", {"hel"}).bytes(), false},
      {"empty token list", tiny_gguf("tokens").strings("tokenizer.ggml.tokens", {}).bytes(), false},
      {"unknown token id out of range", tiny_gguf().u32("tokenizer.ggml.unknown_token_id", 4000).bytes(),
       false},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = write("case" + std::to_string(i) + ".gguf", cases[i].bytes);
    auto load = [&] { Tokenizer::from_gguf(GgufFile(path)); };
    if (cases[i].unsupported) {
      expect_one_line_error<UnsupportedError>(load, path, cases[i].why);
    } else {
      expect_one_line_error<FormatError>(load, path, cases[i].why);
    }
  }
  // A pre-tokenizer name llama.cpp does not know: refused in that mode, GPT-2's regex for transformers.
  const std::string unknown_pre =
      write("pre.gguf", tiny_gguf("pre").string("tokenizer.ggml.pre", "no-such-pre").bytes());
  expect_one_line_error<UnsupportedError>(
      [&] { Tokenizer::from_gguf(GgufFile(unknown_pre), GgufPreTokenizerSource::kLlamaCpp); }, unknown_pre,
      "unknown pre-tokenizer");
  EXPECT_EQ(Tokenizer::from_gguf(GgufFile(unknown_pre)).encode("hello", false),
            (std::vector<int32_t>{257, 'l', 'o'}));
}

TEST_F(TokenizerErrors, RandomDamageToGgufNeverCrashes) {
  const std::string valid = tiny_gguf().bytes();
  std::mt19937 random(777);
  size_t rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string damaged = valid;
    for (int e = 0; e < 1 + static_cast<int>(random() % 3); ++e) {
      const size_t position = random() % damaged.size();
      if (random() % 4 == 0) {
        damaged.resize(position);
        if (damaged.empty()) damaged = "G";
      } else {
        damaged[position] = static_cast<char>(random() % 256);
      }
    }
    const std::string path = write("damaged.gguf", damaged);
    try {
      const Tokenizer tokenizer = Tokenizer::from_gguf(GgufFile(path));
      tokenizer.decode(tokenizer.encode("hello <|end|> world"));
    } catch (const Error& error) {
      EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos) << error.what();
      ++rejected;
    } catch (const std::exception& error) {
      ADD_FAILURE() << "untyped error for damaged file: " << error.what();
    }
  }
  EXPECT_GT(rejected, 0u);
}

}  // namespace
}  // namespace cartridge
