// A compiled pre-tokenizer regex (PCRE2, UTF + Unicode properties, JIT) that behaves like the Oniguruma
// regexes HF tokenizers compiles: `\s` is exactly the Unicode White_Space set, `\w`/`\b` use Unicode word
// characters, `\h` is a hex digit, `^`/`$` are line anchors (Ruby syntax) and an empty match right after
// a match is skipped as Rust's find_iter does.
// A Regex is immutable after construction and safe to use from many threads at once.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cartridge {

class Regex {
 public:
  // Compiles `pattern` (Oniguruma syntax as found in tokenizer.json). Throws FormatError with the PCRE2
  // message and the offset when it does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The [start, end) byte ranges of the successive non-overlapping matches in `text` (valid UTF-8).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

// `pattern` rewritten for PCRE2 where Oniguruma's escapes mean something else: \s \S (White_Space; PCRE2
// adds U+180E), \w \W \b \B (Oniguruma's word characters exclude \p{No}, PCRE2's include it), \h \H.
std::string translate_oniguruma_pattern(const std::string& pattern);

}  // namespace cartridge
