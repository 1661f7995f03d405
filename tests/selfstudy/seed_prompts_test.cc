// Seed prompts: the five types drawn uniformly, structuring formats, restriction to chosen types.
#include "selfstudy/seed_prompts.h"

#include <map>

#include <gtest/gtest.h>

#include "util/error.h"

namespace cartridge {
namespace {

TEST(SeedPromptsTest, FiveTypesDrawnUniformly) {
  const std::vector<std::string> expected = {"structuring", "summarization", "question", "use_cases",
                                             "creative"};
  EXPECT_EQ(seed_prompt_types(), expected);
  std::map<std::string, int> counts;
  std::map<std::string, int> formats;
  for (uint64_t index = 0; index < 10000; ++index) {
    SynthesisRandom random(0, RandomPurpose::kConversation, index);
    const SeedPrompt prompt = sample_seed_prompt(random, seed_prompt_types());
    ++counts[prompt.type];
    EXPECT_FALSE(prompt.text.empty());
    EXPECT_EQ(prompt.text.find('{'), std::string::npos) << prompt.text;  // no placeholder left
    if (prompt.type == "structuring") {
      int found = 0;
      for (const std::string& format : structuring_formats()) {
        if (prompt.text.find(" as " + format + ",") != std::string::npos ||
            prompt.text.find(" as " + format + ".") != std::string::npos) {
          ++formats[format];
          ++found;
        }
      }
      EXPECT_EQ(found, 1) << prompt.text;
    }
  }
  ASSERT_EQ(counts.size(), 5u);
  // 2000 expected per type; 5 standard deviations is 200.
  for (const auto& [type, count] : counts) EXPECT_NEAR(count, 2000, 200) << type;
  const std::vector<std::string> all_formats = {"JSON", "YAML", "TOML", "INI", "XML", "plain text"};
  EXPECT_EQ(structuring_formats(), all_formats);
  EXPECT_EQ(formats.size(), 6u);
}

TEST(SeedPromptsTest, SameStreamSamePrompt) {
  SynthesisRandom a(42, RandomPurpose::kConversation, 3), b(42, RandomPurpose::kConversation, 3);
  const SeedPrompt first = sample_seed_prompt(a, seed_prompt_types());
  const SeedPrompt second = sample_seed_prompt(b, seed_prompt_types());
  EXPECT_EQ(first.type, second.type);
  EXPECT_EQ(first.text, second.text);
}

TEST(SeedPromptsTest, OnlyTheChosenTypes) {
  for (uint64_t index = 0; index < 200; ++index) {
    SynthesisRandom random(1, RandomPurpose::kConversation, index);
    const std::string type = sample_seed_prompt(random, {"question", "creative"}).type;
    EXPECT_TRUE(type == "question" || type == "creative") << type;
  }
  SynthesisRandom random(1, RandomPurpose::kConversation, 0);
  EXPECT_THROW(sample_seed_prompt(random, {"questions"}), InvalidArgumentError);
  EXPECT_THROW(sample_seed_prompt(random, {}), InvalidArgumentError);
}

TEST(SeedPromptsTest, AllTextsListsEveryVariant) {
  const std::vector<std::string> texts = all_seed_prompt_texts();
  // Two phrasings per type; the structuring ones once per format; the three quote phrasings.
  EXPECT_EQ(texts.size(), 4u * 2u + 2u * 6u + 3u);
  for (uint64_t index = 0; index < 500; ++index) {
    SynthesisRandom random(9, RandomPurpose::kConversation, index);
    const SeedPrompt prompt = sample_seed_prompt(random, seed_prompt_types());
    EXPECT_NE(std::find(texts.begin(), texts.end(), prompt.text), texts.end());
  }
}

}  // namespace
}  // namespace cartridge
