// The pre-tokenizer of an HF tokenizer: cuts one normalized piece of text into the words that BPE encodes
// separately. Steps run in order, each on every piece the previous steps left (an HF "Sequence"):
// Split (regex or literal, with HF's five delimiter behaviours), ByteLevel (GPT-2 regex, then every byte
// written in the byte-level alphabet), Digits and Punctuation. Immutable once built; thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace cartridge {

// What a split does with the text a pattern matched (HF's SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// GPT-2's pre-tokenizer regex, used by ByteLevel when use_regex is true.
extern const char* const kGpt2Pattern;

class PreTokenizer {
 public:
  // Split on every match of `regex`; `invert` swaps matches and the text between them.
  void add_regex_split(std::shared_ptr<const Regex> regex, SplitBehavior behavior, bool invert);
  // ByteLevel: optionally a leading space, optionally the GPT-2 regex split, then the byte-level alphabet.
  void add_byte_level(bool add_prefix_space, bool use_regex);
  // Digits: numeric characters (Rust's char::is_numeric) alone, or runs of them together.
  void add_digits(bool individual_digits);
  // Punctuation: ASCII or Unicode punctuation, with the given behaviour.
  void add_punctuation(SplitBehavior behavior);

  // Whether some step writes the byte-level alphabet (byte-level BPE requires it).
  bool has_byte_level() const;

  // Appends to `words` the words of `text` (valid UTF-8), in the model's alphabet. Empty words are dropped.
  void split(std::string_view text, std::vector<std::string>& words) const;

 private:
  enum class Kind { kRegexSplit, kByteLevel, kDigits, kPunctuation };
  struct Step {
    Kind kind = Kind::kRegexSplit;
    std::shared_ptr<const Regex> regex;  // kRegexSplit
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;   // kByteLevel
    bool use_regex = true;           // kByteLevel
    bool individual_digits = false;  // kDigits
  };
  void apply(const Step& step, const std::string& piece, std::vector<std::string>& out) const;

  std::vector<Step> steps_;
};

// A regex matching `literal` exactly (HF's Split with a "String" pattern).
std::string escape_regex_literal(std::string_view literal);

}  // namespace cartridge
