// UTF-8 repair against Python's bytes.decode("utf-8", errors="replace"), and regex splitting against HF
// tokenizers' Split pre-tokenizer.
#include <map>

#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"
#include "tokenizer_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

std::string from_hex(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return bytes;
}

TEST(Unicode, RepairMatchesPythonReplace) {
  const nlohmann::json cases = testing::read_json_fixture("tokenizer/utf8_cases.json");
  ASSERT_GT(cases.size(), 1000u);
  for (const nlohmann::json& test_case : cases) {
    const std::string bytes = from_hex(test_case["hex"].get<std::string>());
    const std::string expected = test_case["decoded"].get<std::string>();
    EXPECT_EQ(unicode::to_valid_utf8(bytes), expected) << test_case["hex"];
    EXPECT_EQ(unicode::is_valid_utf8(bytes), bytes == expected) << test_case["hex"];
  }
}

TEST(Unicode, ByteLevelAlphabetIsABijection) {
  for (int byte = 0; byte < 256; ++byte) {
    const char32_t code_point = unicode::byte_to_code_point(static_cast<uint8_t>(byte));
    EXPECT_EQ(unicode::byte_from_code_point(code_point), byte);
    EXPECT_FALSE(unicode::is_whitespace(code_point));  // the point of the alphabet: printable characters
  }
  EXPECT_EQ(unicode::byte_from_code_point(U'\u0120'), ' ');   // "Ġ"
  EXPECT_EQ(unicode::byte_from_code_point(U'\u010A'), '\n');  // "Ċ"
  EXPECT_EQ(unicode::byte_from_code_point(U'€'), -1);
}

// HF's Split pre-tokenizer (Oniguruma regexes) on patterns and texts chosen for the corners where PCRE2
// and Oniguruma differ: \s and U+180E, "$" before "\n", empty matches, lookahead-only patterns.
TEST(Regex, SplitMatchesHfTokenizers) {
  const nlohmann::json cases = testing::read_json_fixture("tokenizer/split_cases.json");
  ASSERT_GT(cases.size(), 100u);
  const std::map<std::string, SplitBehavior> behaviors = {
      {"removed", SplitBehavior::kRemoved},
      {"isolated", SplitBehavior::kIsolated},
      {"merged_with_previous", SplitBehavior::kMergedWithPrevious},
      {"merged_with_next", SplitBehavior::kMergedWithNext},
      {"contiguous", SplitBehavior::kContiguous}};
  for (const nlohmann::json& test_case : cases) {
    PreTokenizer pre_tokenizer;
    pre_tokenizer.add_regex_split(std::make_shared<const Regex>(test_case["pattern"].get<std::string>()),
                                  behaviors.at(test_case["behavior"].get<std::string>()),
                                  test_case["invert"].get<bool>());
    std::vector<std::string> pieces;
    pre_tokenizer.split(test_case["text"].get<std::string>(), pieces);
    EXPECT_EQ(pieces, test_case["pieces"].get<std::vector<std::string>>())
        << test_case["pattern"] << " " << test_case["behavior"] << " invert=" << test_case["invert"] << " on "
        << testing::shown(test_case["text"].get<std::string>());
  }
}

// The matches of GPT-2's regex tile a long input with no gap (JIT stack and match limits do not give up).
TEST(Regex, LongRunsAreMatchedWhole) {
  const Regex gpt2(kGpt2Pattern);
  for (const std::string& text : {std::string(1 << 20, ' '), std::string(1 << 20, 'a'),
                                  std::string(1 << 20, ' ') + "x", std::string(1 << 19, '7') + "\n\n"}) {
    size_t covered = 0;
    for (const auto& [start, end] : gpt2.find_all(text)) {
      EXPECT_EQ(start, covered);
      covered = end;
    }
    EXPECT_EQ(covered, text.size());
  }
}

TEST(Regex, InvalidPatternIsAFormatError) { EXPECT_THROW(Regex("(?<"), FormatError); }

}  // namespace
}  // namespace cartridge
