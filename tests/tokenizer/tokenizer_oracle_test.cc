// Our tokenizer against HF (transformers 5 and `tokenizers`) on >= 5,000 generated strings, for the default
// SmolLM2 GGUF, the same tokenizer saved as tokenizer.json, the Qwen3 and Llama 3 tokenizer.json files and
// a tokenizer.json variant that exercises normalizers, pre-tokenizers, templates and added-token flags.
#include <atomic>
#include <thread>

#include "io/gguf.h"
#include "io/model_files.h"
#include "tokenizer_test_util.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {
namespace {

using testing::expect_matches_oracle;
using testing::fixture_path;
using testing::read_json_fixture;

TEST(TokenizerOracle, GeneratesEnoughStrings) { EXPECT_GE(testing::tokenizer_strings().size(), 5000u); }

TEST(TokenizerOracle, SmolLM2FromGgufMatchesTransformers) {
  const GgufFile gguf(testing::default_model_path());
  const Tokenizer tokenizer = Tokenizer::from_gguf(gguf);
  expect_matches_oracle(tokenizer, read_json_fixture("tokenizer/expected_smollm2_gguf.json"));
}

TEST(TokenizerOracle, SmolLM2FromTokenizerJsonMatchesTransformers) {
  const Tokenizer tokenizer =
      Tokenizer::from_tokenizer_json(fixture_path("tokenizer/smollm2/tokenizer.json"),
                                     fixture_path("tokenizer/smollm2/tokenizer_config.json"));
  expect_matches_oracle(tokenizer, read_json_fixture("tokenizer/expected_smollm2_json.json"));
  // transformers wrote the GGUF's template to chat_template.jinja; both roads give the same text.
  const GgufFile gguf(testing::default_model_path());
  EXPECT_EQ(tokenizer.chat_template(), Tokenizer::from_gguf(gguf).chat_template());
  EXPECT_EQ(tokenizer.chat_template(), read_text_file(fixture_path("tokenizer/smollm2/chat_template.jinja")));
}

TEST(TokenizerOracle, LoadPicksGgufOrFolder) {
  ModelFiles gguf_files;
  gguf_files.format = ModelFormat::kGguf;
  gguf_files.gguf_path = testing::default_model_path();
  ModelFiles folder_files;
  folder_files.format = ModelFormat::kHuggingFaceFolder;
  folder_files.folder = fixture_path("tokenizer/smollm2");
  folder_files.tokenizer_json_path = folder_files.folder + "/tokenizer.json";
  folder_files.tokenizer_config_path = folder_files.folder + "/tokenizer_config.json";
  folder_files.chat_template_path = folder_files.folder + "/chat_template.jinja";
  const Tokenizer from_gguf = Tokenizer::load(gguf_files);
  const Tokenizer from_folder = Tokenizer::load(folder_files);
  const auto expected = read_json_fixture("tokenizer/expected_smollm2_gguf.json")["ids"];
  const auto& strings = testing::tokenizer_strings();
  for (size_t i = 0; i < strings.size(); i += 97) {
    EXPECT_EQ(from_gguf.encode(strings[i]), expected[i].get<std::vector<int32_t>>());
    EXPECT_EQ(from_folder.encode(strings[i]), expected[i].get<std::vector<int32_t>>());
  }
  EXPECT_EQ(from_folder.chat_template(), from_gguf.chat_template());

  ModelFiles without_tokenizer = folder_files;
  without_tokenizer.tokenizer_json_path.clear();
  EXPECT_THROW(Tokenizer::load(without_tokenizer), FileNotFoundError);
}

TEST(TokenizerOracle, Qwen3MatchesTransformers) {
  const std::string folder = testing::repo_root() + "/.testdata/tokenizers/qwen3";
  const Tokenizer tokenizer =
      Tokenizer::from_tokenizer_json(folder + "/tokenizer.json", folder + "/tokenizer_config.json");
  expect_matches_oracle(tokenizer, read_json_fixture("tokenizer/expected_qwen3.json"));
}

TEST(TokenizerOracle, Llama3MatchesTransformers) {
  const std::string folder = testing::repo_root() + "/.testdata/tokenizers/llama3";
  const Tokenizer tokenizer =
      Tokenizer::from_tokenizer_json(folder + "/tokenizer.json", folder + "/tokenizer_config.json");
  expect_matches_oracle(tokenizer, read_json_fixture("tokenizer/expected_llama3.json"));
}

TEST(TokenizerOracle, FeatureVariantMatchesHfTokenizers) {
  const Tokenizer tokenizer =
      Tokenizer::from_tokenizer_json(fixture_path("tokenizer/variant/tokenizer.json"));
  expect_matches_oracle(tokenizer, read_json_fixture("tokenizer/expected_variant.json"));
  // Its template puts <|im_start|> before and <|im_end|> after every sequence.
  EXPECT_EQ(tokenizer.special_prefix_ids(), std::vector<int32_t>{*tokenizer.token_id("<|im_start|>")});
  EXPECT_EQ(tokenizer.special_suffix_ids(), std::vector<int32_t>{*tokenizer.token_id("<|im_end|>")});
}

// One tokenizer shared by many threads gives every thread the ids a lone thread gets (the word cache is
// shared and bounded; run it past its capacity).
TEST(TokenizerOracle, ConcurrentEncodingMatches) {
  const GgufFile gguf(testing::default_model_path());
  const Tokenizer tokenizer = Tokenizer::from_gguf(gguf);
  const auto expected = read_json_fixture("tokenizer/expected_smollm2_gguf.json")["ids"]
                            .get<std::vector<std::vector<int32_t>>>();
  const auto& strings = testing::tokenizer_strings();
  std::atomic<size_t> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 2; ++round) {
        for (size_t k = 0; k < strings.size(); ++k) {
          const size_t i =
              (k * 7 + static_cast<size_t>(t) * 613) % strings.size();  // each thread its own order
          if (tokenizer.encode(strings[i]) != expected[i]) ++mismatches;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0u);
}

}  // namespace
}  // namespace cartridge
