// Splits a Jinja template into tokens the way jinja2's lexer does for transformers' chat templates
// (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False): template text, `{{ }}` and
// `{% %}` delimiters with the tokens between them; comments vanish. Whitespace control (`-` / `+`
// markers, trim_blocks, lstrip_blocks) is applied here, so the parser sees the exact text to output.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cartridge::jinja {

enum class TokenType {
  kData,           // literal template text
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,           // identifiers and keywords (if, for, in, not, ...)
  kString,         // a string literal, escapes decoded
  kInteger,
  kFloat,
  kOperator,  // + - * / // % ** ~ == != < <= > >= = . : | , ( ) [ ] { } ;
  kEnd,       // end of the template
};

struct Token {
  TokenType type = TokenType::kEnd;
  std::string text;  // data, name, operator or decoded string
  int64_t integer = 0;
  double floating = 0.0;
  int line = 1;  // 1-based line where the token starts
};

// Tokenizes a whole template. Throws TemplateFailure (kSyntax) for text jinja2 would also reject, such
// as an unterminated comment or string, or an unexpected character inside a tag.
std::vector<Token> tokenize(std::string_view source);

}  // namespace cartridge::jinja
