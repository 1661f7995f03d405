// llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf with .inp/.out, made by llama.cpp's
// convert_hf_to_gguf_update.py from each model's own HF tokenizer). Read the way llama.cpp's
// tests/test-tokenizer-0.cpp reads them: inputs separated by "\n__ggml_vocab_test__\n", one line of
// space-separated ids per input, encoded without adding special tokens.
#include <fstream>
#include <sstream>

#include "io/gguf.h"
#include "tokenizer_test_util.h"

namespace cartridge {
namespace {

struct VocabCase {
  std::string input;
  std::vector<int32_t> ids;
};

std::string read_file(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  EXPECT_TRUE(stream.good()) << "cannot read " << path << " (run scripts/fetch_test_data.sh)";
  std::stringstream buffer;
  buffer << stream.rdbuf();
  return buffer.str();
}

std::string vocab_path(const std::string& name) {
  return testing::repo_root() + "/.testdata/llama.cpp/models/ggml-vocab-" + name + ".gguf";
}

std::vector<VocabCase> read_cases(const std::string& name) {
  const std::string inputs = read_file(vocab_path(name) + ".inp");
  const std::string outputs = read_file(vocab_path(name) + ".out");
  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t position = 0; position < inputs.size();) {
    const size_t next = inputs.find(separator, position);
    if (next == std::string::npos) {
      texts.push_back(inputs.substr(position));
      break;
    }
    texts.push_back(inputs.substr(position, next - position));
    position = next + separator.size();
  }
  std::vector<VocabCase> cases;
  std::istringstream lines(outputs);
  std::string line;
  for (const std::string& text : texts) {
    EXPECT_TRUE(static_cast<bool>(std::getline(lines, line))) << name << ": fewer outputs than inputs";
    VocabCase test_case{text, {}};
    std::istringstream numbers(line);
    int32_t id = 0;
    while (numbers >> id) test_case.ids.push_back(id);
    cases.push_back(std::move(test_case));
  }
  EXPECT_GE(cases.size(), 40u) << name;
  return cases;
}

void expect_vectors(const std::string& name, GgufPreTokenizerSource source) {
  const GgufFile gguf(vocab_path(name));
  const Tokenizer tokenizer = Tokenizer::from_gguf(gguf, source);
  for (const VocabCase& test_case : read_cases(name)) {
    EXPECT_EQ(tokenizer.encode(test_case.input, false), test_case.ids)
        << name << ": " << testing::shown(test_case.input);
    // The ids decode back to the input (these vocabularies have no normalizer).
    EXPECT_EQ(tokenizer.decode(test_case.ids), test_case.input)
        << name << ": " << testing::shown(test_case.input);
  }
}

class LlamaCppVocab : public ::testing::TestWithParam<const char*> {};

TEST_P(LlamaCppVocab, LlamaCppPreTokenizerMatchesVectors) {
  expect_vectors(GetParam(), GgufPreTokenizerSource::kLlamaCpp);
}

INSTANTIATE_TEST_SUITE_P(AllVocabularies, LlamaCppVocab,
                         ::testing::Values("gpt-2", "llama-bpe", "qwen2", "starcoder", "deepseek-llm",
                                           "falcon"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

// transformers' GGUF tokenizer agrees with these vectors for GPT-2 and Qwen2 (it lacks Llama 3's
// ignore_merges and the digit / punctuation splits of starcoder, deepseek and falcon).
TEST(LlamaCppVocabTransformers, Gpt2MatchesVectors) {
  expect_vectors("gpt-2", GgufPreTokenizerSource::kTransformers);
}
TEST(LlamaCppVocabTransformers, Qwen2MatchesVectors) {
  expect_vectors("qwen2", GgufPreTokenizerSource::kTransformers);
}

TEST(LlamaCppVocabTransformers, AddBosFollowsTheFile) {
  // llama-bpe's file has no add_bos_token key: transformers adds nothing, llama.cpp adds BOS for Llama 3.
  const GgufFile gguf(vocab_path("llama-bpe"));
  const Tokenizer transformers = Tokenizer::from_gguf(gguf, GgufPreTokenizerSource::kTransformers);
  const Tokenizer llama_cpp = Tokenizer::from_gguf(gguf, GgufPreTokenizerSource::kLlamaCpp);
  EXPECT_EQ(transformers.special_prefix_ids(), std::vector<int32_t>{});
  ASSERT_TRUE(llama_cpp.bos_token_id().has_value());
  EXPECT_EQ(llama_cpp.special_prefix_ids(), std::vector<int32_t>{*llama_cpp.bos_token_id()});
  EXPECT_EQ(llama_cpp.encode("Hello").front(), *llama_cpp.bos_token_id());
  // deepseek-llm's file says add_bos_token = true.
  const GgufFile deepseek(vocab_path("deepseek-llm"));
  const Tokenizer deepseek_tokenizer = Tokenizer::from_gguf(deepseek, GgufPreTokenizerSource::kTransformers);
  EXPECT_EQ(deepseek_tokenizer.special_prefix_ids(),
            std::vector<int32_t>{*deepseek_tokenizer.bos_token_id()});
}

}  // namespace
}  // namespace cartridge
