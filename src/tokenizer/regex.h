// A compiled pre-tokenizer regex (PCRE2, UTF + Unicode properties, JIT) that behaves like the Oniguruma
// regexes HF tokenizers compiles: `\s` is exactly the Unicode White_Space set, `^`/`$` are line anchors
// (Ruby syntax) and empty matches right after a match are skipped as Rust's find_iter does.
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

// `pattern` with `\s` and `\S` spelled out as the White_Space set (PCRE2's own \s adds U+180E).
std::string translate_oniguruma_pattern(const std::string& pattern);

}  // namespace cartridge
