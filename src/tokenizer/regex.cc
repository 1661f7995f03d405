#include "tokenizer/regex.h"

#include <cstdint>
#include <optional>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "util/error.h"

namespace cartridge {

namespace {

// Unicode White_Space, which is what Oniguruma's \s means for UTF-8 text; usable inside a class.
constexpr const char* kWhiteSpaceRanges =
    "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}";

// Oniguruma's \w for Unicode text (UTS #18 word characters); PCRE2's \w is \p{L}, \p{N} and "_".
constexpr const char* kWordCharacters = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}";

// Per-thread match state shared by every Regex: PCRE2 match data and a JIT stack are not thread-safe, and
// creating them for each small piece of text would cost more than the match itself.
struct ThreadMatchState {
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  ThreadMatchState() {
    match_data = pcre2_match_data_create(32, nullptr);
    context = pcre2_match_context_create(nullptr);
    // Oniguruma has no backtracking budget; long runs of one character class must not make PCRE2 give up.
    pcre2_set_match_limit(context, UINT32_MAX);
    pcre2_set_depth_limit(context, UINT32_MAX);
    pcre2_set_heap_limit(context, UINT32_MAX);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr);  // bytes: start, maximum
    if (jit_stack != nullptr) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(match_data);
  }
};

ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

std::string translate_oniguruma_pattern(const std::string& pattern) {
  const std::string space = kWhiteSpaceRanges;
  const std::string word = kWordCharacters;
  const std::string word_class = "[" + word + "]";
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  size_t i = 0;
  while (i < pattern.size()) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char escaped = pattern[i + 1];
      i += 2;
      if (escaped == 's') {
        out += in_class ? space : "[" + space + "]";
      } else if (escaped == 'w') {
        out += in_class ? word : word_class;
      } else if (escaped == 'h') {  // Ruby syntax: a hexadecimal digit (PCRE2: horizontal space)
        out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
      } else if (!in_class && escaped == 'S') {
        out += "[^" + space + "]";
      } else if (!in_class && escaped == 'W') {
        out += "[^" + word + "]";
      } else if (!in_class && escaped == 'H') {
        out += "[^0-9a-fA-F]";
      } else if (!in_class && escaped == 'b') {
        out +=
            "(?:(?<=" + word_class + ")(?!" + word_class + ")|(?<!" + word_class + ")(?=" + word_class + "))";
      } else if (!in_class && escaped == 'B') {
        out +=
            "(?:(?<=" + word_class + ")(?=" + word_class + ")|(?<!" + word_class + ")(?!" + word_class + "))";
      } else {
        out += c;
        out += escaped;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < pattern.size() && pattern[i] == '^') out += pattern[i++];
      if (i < pattern.size() && pattern[i] == ']') out += pattern[i++];  // a literal ']' first in a class
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {  // POSIX [:name:]
      const size_t end = pattern.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(pattern, i, end + 2 - i);
        i = end + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  const std::string translated = translate_oniguruma_pattern(pattern);
  pcre2_compile_context* compile_context = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(compile_context, PCRE2_NEWLINE_LF);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // MULTILINE: in Oniguruma's default (Ruby) syntax ^ and $ match at every line break.
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &error_code, &error_offset, compile_context);
  pcre2_compile_context_free(compile_context);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    throw FormatError("pre-tokenizer regex /" + pattern +
                      "/ does not compile: " + reinterpret_cast<const char*>(message) + " at offset " +
                      std::to_string(error_offset) + " of the translated pattern");
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  ThreadMatchState& state = thread_match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const auto* code = static_cast<const pcre2_code*>(code_);
  size_t search_from = 0;
  std::optional<size_t> last_match_end;
  while (search_from <= text.size()) {
    const int rc =
        jit_ ? pcre2_jit_match(code, subject, text.size(), search_from, 0, state.match_data, state.context)
             : pcre2_match(code, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK, state.match_data,
                           state.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      throw InvalidArgumentError(
          "pre-tokenizer regex /" + pattern_ + "/ failed on a text of " + std::to_string(text.size()) +
          " bytes: " + reinterpret_cast<const char*>(message) + " (split the text into smaller pieces)");
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data);
    const size_t start = ovector[0];
    const size_t end = ovector[1];
    if (start == end && last_match_end == end) {
      // As Rust's find_iter: no empty match right after the previous match; step one character on.
      if (search_from >= text.size()) break;
      ++search_from;
      while (search_from < text.size() && (static_cast<uint8_t>(text[search_from]) & 0xC0) == 0x80)
        ++search_from;
      continue;
    }
    matches.emplace_back(start, end);
    search_from = end;
    last_match_end = end;
  }
  return matches;
}

}  // namespace cartridge
