#include "tokenizer/jinja/lexer.h"

#include <cctype>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "tokenizer/jinja/failure.h"
#include "tokenizer/jinja/python_string.h"

namespace cartridge::jinja {

namespace {

// transformers' environment: trim_blocks=True, lstrip_blocks=True.
constexpr bool kTrimBlocks = true;
constexpr bool kLStripBlocks = true;

[[noreturn]] void syntax_error(const std::string& message, int line) {
  throw TemplateFailure(FailureKind::kSyntax, message, line);
}

// Byte length of the whitespace code point (Python's \s) at `position`, or 0.
size_t whitespace_length_at(std::string_view text, size_t position) {
  if (position >= text.size()) return 0;
  const auto byte = static_cast<unsigned char>(text[position]);
  if (byte < 0x80) return is_python_space(byte) ? 1 : 0;
  size_t end = position + 1;
  while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
  const std::u32string code_point = decode_utf8(text.substr(position, end - position));
  return (code_point.size() == 1 && is_python_space(code_point[0])) ? end - position : 0;
}

size_t skip_whitespace(std::string_view text, size_t position) {
  while (size_t length = whitespace_length_at(text, position)) position += length;
  return position;
}

// Python's str.rstrip() (whitespace only).
std::string rstrip_whitespace(std::string_view text) {
  return python_strip(text, std::nullopt, /*left=*/false, /*right=*/true);
}

// Whether `text` from `start` on is one or more whitespace characters (jinja2's \s+ fullmatch).
bool is_whitespace_run(std::string_view text, size_t start) {
  if (start >= text.size()) return false;
  return skip_whitespace(text, start) == text.size();
}

int count_newlines(std::string_view text) {
  int count = 0;
  for (char c : text) count += c == '\n';
  return count;
}

// Newlines normalised to \n, one trailing newline dropped (keep_trailing_newline=False).
std::string normalize_source(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes a string literal body as jinja2 does: Python's unicode-escape after non-ASCII characters have
// been turned into \x / \u / \U escapes.
std::string decode_string_literal(std::string_view body, int line) {
  // jinja2 first writes every non-ASCII character as a backslash escape; a backslash right before one
  // therefore escapes the escape's own backslash, leaving e.g. "\xe9" as text.
  std::string escaped;
  for (char32_t c : decode_utf8(body)) {
    if (c < 0x80) {
      escaped.push_back(static_cast<char>(c));
      continue;
    }
    char buffer[16];
    if (c < 0x100) {
      std::snprintf(buffer, sizeof(buffer), "\\x%02x", static_cast<unsigned>(c));
    } else if (c < 0x10000) {
      std::snprintf(buffer, sizeof(buffer), "\\u%04x", static_cast<unsigned>(c));
    } else {
      std::snprintf(buffer, sizeof(buffer), "\\U%08x", static_cast<unsigned>(c));
    }
    escaped += buffer;
  }
  std::string out;
  for (size_t i = 0; i < escaped.size(); ++i) {
    const char c = escaped[i];
    if (c != '\\' || i + 1 >= escaped.size()) {
      out.push_back(c);
      continue;
    }
    const char next = escaped[++i];
    auto read_hex = [&](int digits) -> char32_t {
      char32_t value = 0;
      for (int d = 1; d <= digits; ++d) {
        if (i + d >= escaped.size() || hex_value(escaped[i + d]) < 0) {
          syntax_error("truncated escape sequence in a string literal", line);
        }
        value = value * 16 + hex_value(escaped[i + d]);
      }
      i += digits;
      return value;
    };
    switch (next) {
      case '\n': break;  // line continuation
      case '\\': out.push_back('\\'); break;
      case '\'': out.push_back('\''); break;
      case '"': out.push_back('"'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'v': out.push_back('\v'); break;
      case 'x': append_utf8(out, read_hex(2)); break;
      case 'u': append_utf8(out, read_hex(4)); break;
      case 'U': append_utf8(out, read_hex(8)); break;
      case 'N': throw TemplateFailure(FailureKind::kUnsupported, "\\N{...} escapes in string literals", line);
      default:
        if (next >= '0' && next <= '7') {
          char32_t value = next - '0';
          for (int d = 0; d < 2 && i + 1 < escaped.size() && escaped[i + 1] >= '0' && escaped[i + 1] <= '7';
               ++d) {
            value = value * 8 + (escaped[++i] - '0');
          }
          append_utf8(out, value);
        } else {
          out.push_back('\\');
          out.push_back(next);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : source_(normalize_source(source)) {}

  std::vector<Token> run() {
    while (position_ < source_.size()) lex_root();
    Token end;
    end.type = TokenType::kEnd;
    end.line = line_;
    tokens_.push_back(end);
    return std::move(tokens_);
  }

 private:
  enum class TagKind { kVariable, kBlock, kComment, kRaw };

  void emit(TokenType type, std::string text, int line) {
    Token token;
    token.type = type;
    token.text = std::move(text);
    token.line = line;
    tokens_.push_back(std::move(token));
  }

  // Applies the whitespace rules to the template text before a tag and emits it.
  void emit_data_before_tag(std::string text, char sign, TagKind kind) {
    if (sign == '-') {
      text = rstrip_whitespace(text);
    } else if (sign != '+' && kLStripBlocks && kind != TagKind::kVariable) {
      const size_t newline = text.rfind('\n');
      const size_t line_start = newline == std::string::npos ? 0 : newline + 1;
      if ((line_start > 0 || line_starting_) && is_whitespace_run(text, line_start)) text.resize(line_start);
    }
    if (!text.empty()) emit(TokenType::kData, text, line_);
  }

  // Whether `{% raw %}` (any whitespace, optional sign) starts at `position`; sets where it ends.
  bool match_raw_begin(size_t position, size_t& end) const {
    size_t p = position + 2;
    if (p < source_.size() && (source_[p] == '-' || source_[p] == '+')) ++p;
    p = skip_whitespace(source_, p);
    if (source_.compare(p, 3, "raw") != 0) return false;
    p = skip_whitespace(source_, p + 3);
    if (source_.compare(p, 3, "-%}") == 0) {
      end = skip_whitespace(source_, p + 3);
      return true;
    }
    if (source_.compare(p, 2, "%}") == 0) {
      end = p + 2;
      return true;
    }
    return false;
  }

  void lex_root() {
    // The earliest tag start; "{%" may open a raw block.
    size_t start = std::string::npos;
    TagKind kind = TagKind::kVariable;
    for (size_t p = source_.find('{', position_); p != std::string::npos; p = source_.find('{', p + 1)) {
      if (p + 1 >= source_.size()) break;
      const char next = source_[p + 1];
      if (next == '{' || next == '%' || next == '#') {
        start = p;
        kind = next == '{' ? TagKind::kVariable : next == '%' ? TagKind::kBlock : TagKind::kComment;
        break;
      }
    }
    if (start == std::string::npos) {
      emit(TokenType::kData, source_.substr(position_), line_);
      line_ += count_newlines(source_.substr(position_));
      position_ = source_.size();
      return;
    }
    size_t raw_body_start = 0;
    if (kind == TagKind::kBlock && match_raw_begin(start, raw_body_start)) kind = TagKind::kRaw;
    char sign = 0;
    if (start + 2 < source_.size() && (source_[start + 2] == '-' || source_[start + 2] == '+')) {
      sign = source_[start + 2];
    }
    const std::string text = source_.substr(position_, start - position_);
    emit_data_before_tag(text, sign, kind);
    line_ += count_newlines(text);
    position_ = start + 2 + (sign ? 1 : 0);
    line_starting_ = false;
    switch (kind) {
      case TagKind::kComment: lex_comment(); break;
      case TagKind::kRaw:
        line_ += count_newlines(std::string_view(source_).substr(position_, raw_body_start - position_));
        line_starting_ = source_[raw_body_start - 1] == '\n';
        position_ = raw_body_start;
        lex_raw_body();
        break;
      case TagKind::kVariable:
        emit(TokenType::kVariableBegin, "{{", line_);
        lex_tag(/*block=*/false);
        break;
      case TagKind::kBlock:
        emit(TokenType::kBlockBegin, "{%", line_);
        lex_tag(/*block=*/true);
        break;
    }
  }

  // Consumes a tag end at position_: "-X}" strips the following whitespace, "X}" followed by a newline
  // drops that newline when `trim` (trim_blocks), "+X}" keeps everything.
  void consume_tag_end(size_t marker_length, bool has_sign_minus, bool has_sign_plus, bool trim) {
    const size_t begin = position_;
    position_ += marker_length;
    if (has_sign_minus) {
      position_ = skip_whitespace(source_, position_);
    } else if (!has_sign_plus && trim && position_ < source_.size() && source_[position_] == '\n') {
      ++position_;
    }
    line_ += count_newlines(std::string_view(source_).substr(begin, position_ - begin));
    line_starting_ = source_[position_ - 1] == '\n';
  }

  void lex_comment() {
    const int start_line = line_;
    for (size_t p = position_; p < source_.size(); ++p) {
      const bool plus = source_.compare(p, 3, "+#}") == 0;
      const bool minus = source_.compare(p, 3, "-#}") == 0;
      if (plus || minus || source_.compare(p, 2, "#}") == 0) {
        line_ += count_newlines(std::string_view(source_).substr(position_, p - position_));
        position_ = p;
        consume_tag_end(plus || minus ? 3 : 2, minus, plus, kTrimBlocks);
        return;
      }
    }
    syntax_error("Missing end of comment tag", start_line);
  }

  void lex_raw_body() {
    // The body runs to the first {% endraw %}, whose own markers control the whitespace around it.
    for (size_t p = source_.find("{%", position_); p != std::string::npos; p = source_.find("{%", p + 1)) {
      size_t q = p + 2;
      char sign = 0;
      if (q < source_.size() && (source_[q] == '-' || source_[q] == '+')) sign = source_[q++];
      q = skip_whitespace(source_, q);
      if (source_.compare(q, 6, "endraw") != 0) continue;
      q = skip_whitespace(source_, q + 6);
      const bool plus = source_.compare(q, 3, "+%}") == 0;
      const bool minus = source_.compare(q, 3, "-%}") == 0;
      if (!plus && !minus && source_.compare(q, 2, "%}") != 0) continue;
      const std::string body = source_.substr(position_, p - position_);
      emit_data_before_tag(body, sign, TagKind::kBlock);
      line_ += count_newlines(std::string_view(source_).substr(position_, q - position_));
      position_ = q;
      consume_tag_end(plus || minus ? 3 : 2, minus, plus, kTrimBlocks);
      return;
    }
    syntax_error("Missing end of raw directive", line_);
  }

  void lex_tag(bool block) {
    const int start_line = line_;
    std::vector<char> balance;  // closing brackets we wait for
    while (true) {
      if (position_ >= source_.size()) {
        syntax_error(block ? "unexpected end of template, expected end of statement block ('%}')"
                           : "unexpected end of template, expected end of print statement ('}}')",
                     start_line);
      }
      if (balance.empty()) {
        const char end_char = block ? '%' : '}';
        const std::string end_marker = block ? "%}" : "}}";
        if (block && source_.compare(position_, 3, "+%}") == 0) {
          emit(TokenType::kBlockEnd, "%}", line_);
          consume_tag_end(3, false, true, kTrimBlocks);
          return;
        }
        if (source_.compare(position_, 1, "-") == 0 && source_.compare(position_ + 1, 2, end_marker) == 0) {
          emit(block ? TokenType::kBlockEnd : TokenType::kVariableEnd, end_marker, line_);
          consume_tag_end(3, true, false, block && kTrimBlocks);
          return;
        }
        if (source_[position_] == end_char && source_.compare(position_, 2, end_marker) == 0) {
          emit(block ? TokenType::kBlockEnd : TokenType::kVariableEnd, end_marker, line_);
          consume_tag_end(2, false, false, block && kTrimBlocks);
          return;
        }
      }
      if (size_t length = whitespace_length_at(source_, position_)) {
        const size_t end = skip_whitespace(source_, position_ + length);
        line_ += count_newlines(std::string_view(source_).substr(position_, end - position_));
        position_ = end;
        continue;
      }
      if (lex_number() || lex_name() || lex_string()) continue;
      lex_operator(balance);
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  // Digits with single underscores between them ((\d+_)*\d+); returns the end or `position` if none.
  size_t scan_digits(size_t position) const {
    size_t p = position;
    if (p >= source_.size() || !is_digit(source_[p])) return position;
    while (true) {
      while (p < source_.size() && is_digit(source_[p])) ++p;
      if (p + 1 < source_.size() && source_[p] == '_' && is_digit(source_[p + 1])) {
        ++p;
        continue;
      }
      return p;
    }
  }

  bool lex_number() {
    const size_t start = position_;
    if (start >= source_.size() || !is_digit(source_[start])) return false;
    // Float: digits then a fraction and/or an exponent; never right after a '.' (jinja2's lookbehind).
    const bool after_dot = start > 0 && source_[start - 1] == '.';
    if (!after_dot) {
      const size_t integer_end = scan_digits(start);
      size_t p = integer_end;
      bool has_fraction = false;
      if (p < source_.size() && source_[p] == '.') {
        const size_t fraction_end = scan_digits(p + 1);
        if (fraction_end > p + 1) {
          has_fraction = true;
          p = fraction_end;
        }
      }
      bool has_exponent = false;
      if (p < source_.size() && (source_[p] == 'e' || source_[p] == 'E')) {
        size_t q = p + 1;
        if (q < source_.size() && (source_[q] == '+' || source_[q] == '-')) ++q;
        const size_t exponent_end = scan_digits(q);
        if (exponent_end > q) {
          has_exponent = true;
          p = exponent_end;
        }
      }
      if (has_fraction || has_exponent) {
        std::string text;
        for (size_t i = start; i < p; ++i) {
          if (source_[i] != '_') text.push_back(source_[i]);
        }
        Token token;
        token.type = TokenType::kFloat;
        token.text = text;
        token.floating = std::stod(text);
        token.line = line_;
        tokens_.push_back(token);
        position_ = p;
        return true;
      }
    }
    // Integer: 0b / 0o / 0x prefixes, or decimal without leading zeros (a lone run of zeros is 0).
    size_t p = start;
    int base = 10;
    if (source_[start] == '0' && start + 1 < source_.size()) {
      const char prefix = static_cast<char>(std::tolower(static_cast<unsigned char>(source_[start + 1])));
      if (prefix == 'b' || prefix == 'o' || prefix == 'x') base = prefix == 'b' ? 2 : prefix == 'o' ? 8 : 16;
    }
    std::string digits;
    if (base != 10) {
      p = start + 2;
      auto valid = [&](char c) {
        const int v = hex_value(c);
        return v >= 0 && v < base;
      };
      while (p < source_.size()) {
        if (source_[p] == '_' && p + 1 < source_.size() && valid(source_[p + 1])) {
          ++p;
        } else if (!valid(source_[p])) {
          break;
        }
        digits.push_back(source_[p++]);
      }
      if (digits.empty()) {
        base = 10;
        p = start;
      }
    }
    if (base == 10) {
      if (source_[start] == '0') {
        p = start + 1;
        while (p + 1 < source_.size() &&
               (source_[p] == '0' || (source_[p] == '_' && source_[p + 1] == '0'))) {
          p += source_[p] == '_' ? 2 : 1;
        }
        digits = "0";
      } else {
        p = scan_digits(start);
        for (size_t i = start; i < p; ++i) {
          if (source_[i] != '_') digits.push_back(source_[i]);
        }
      }
    }
    Token token;
    token.type = TokenType::kInteger;
    token.text = source_.substr(start, p - start);
    try {
      token.integer = std::stoll(digits, nullptr, base);
    } catch (const std::out_of_range&) {
      throw TemplateFailure(FailureKind::kUnsupported, "integer literal " + token.text + " beyond 64 bits",
                            line_);
    }
    token.line = line_;
    tokens_.push_back(token);
    position_ = p;
    return true;
  }

  bool lex_name() {
    auto is_start = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; };
    auto is_part = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
    if (!is_start(source_[position_])) return false;
    size_t p = position_ + 1;
    while (p < source_.size() && is_part(source_[p])) ++p;
    emit(TokenType::kName, source_.substr(position_, p - position_), line_);
    position_ = p;
    return true;
  }

  bool lex_string() {
    const char quote = source_[position_];
    if (quote != '\'' && quote != '"') return false;
    size_t p = position_ + 1;
    while (p < source_.size() && source_[p] != quote) {
      if (source_[p] == '\\') ++p;
      ++p;
    }
    if (p >= source_.size()) syntax_error(std::string("unexpected char '") + quote + "'", line_);
    const std::string body = source_.substr(position_ + 1, p - position_ - 1);
    emit(TokenType::kString, decode_string_literal(body, line_), line_);
    line_ += count_newlines(body);
    position_ = p + 1;
    return true;
  }

  void lex_operator(std::vector<char>& balance) {
    static const char* const kTwoCharacter[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : kTwoCharacter) {
      if (source_.compare(position_, 2, op) == 0) {
        emit(TokenType::kOperator, op, line_);
        position_ += 2;
        return;
      }
    }
    const char c = source_[position_];
    static const std::string kSingle = "+-/*%~[](){}><=.:|,;";
    if (kSingle.find(c) == std::string::npos) {
      syntax_error(std::string("unexpected char '") + c + "'", line_);
    }
    if (c == '(' || c == '[' || c == '{') {
      balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    } else if (c == ')' || c == ']' || c == '}') {
      if (balance.empty()) syntax_error(std::string("unexpected '") + c + "'", line_);
      if (balance.back() != c) {
        syntax_error(std::string("unexpected '") + c + "', expected '" + balance.back() + "'", line_);
      }
      balance.pop_back();
    }
    emit(TokenType::kOperator, std::string(1, c), line_);
    ++position_;
  }

  std::string source_;
  size_t position_ = 0;
  int line_ = 1;
  bool line_starting_ = true;  // the last thing consumed ended a line (or nothing was consumed yet)
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view source) { return Lexer(source).run(); }

}  // namespace cartridge::jinja
