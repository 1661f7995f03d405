// Python `str` semantics on UTF-8 strings, for the Jinja renderer: chat templates are run by jinja2 in
// Python, so lengths, indexing, strip(), split(), lower(), repr() and float printing must behave exactly
// like Python's to render byte-identical prompts. Strings are UTF-8 bytes; Python counts code points.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cartridge::jinja {

// Code points of a UTF-8 string. Invalid bytes decode as U+FFFD (inputs come from JSON and template
// files, which are valid UTF-8).
std::u32string decode_utf8(std::string_view text);
// UTF-8 encoding of code points.
std::string encode_utf8(std::u32string_view code_points);
void append_utf8(std::string& out, char32_t code_point);
// Number of code points (Python len()).
int64_t count_code_points(std::string_view text);
bool is_ascii(std::string_view text);

// Python str.isspace() for one code point.
bool is_python_space(char32_t code_point);
// Python line boundaries (str.splitlines()).
bool is_python_line_break(char32_t code_point);

// str.strip / lstrip / rstrip; `chars` unset means whitespace.
std::string python_strip(std::string_view text, const std::optional<std::string>& chars, bool left,
                         bool right);
// str.split(sep, maxsplit): `separator` unset means runs of whitespace; maxsplit < 0 means no limit.
// Throws std::invalid_argument for an empty separator (Python's ValueError).
std::vector<std::string> python_split(std::string_view text, const std::optional<std::string>& separator,
                                      int64_t max_split);
// str.rsplit(sep, maxsplit).
std::vector<std::string> python_rsplit(std::string_view text, const std::optional<std::string>& separator,
                                       int64_t max_split);
// str.splitlines(keepends).
std::vector<std::string> python_splitlines(std::string_view text, bool keep_ends);
// str.replace(old, new, count); count < 0 means all.
std::string python_replace(std::string_view text, std::string_view old_text, std::string_view new_text,
                           int64_t count);

// Case mappings (simple per-code-point mappings, as utf8proc provides them).
std::string python_lower(std::string_view text);
std::string python_upper(std::string_view text);
// str.title(): a cased letter after a non-cased character starts a word.
std::string python_title(std::string_view text);
// str.capitalize(): first character title-cased, the rest lower-cased.
std::string python_capitalize(std::string_view text);
bool python_is_lower(std::string_view text);
bool python_is_upper(std::string_view text);

// repr() of a str: single quotes unless the text contains ' and no ", escapes like CPython.
std::string python_string_repr(std::string_view text);
// repr() / str() of a float: the shortest digits that round-trip, in Python's layout (1.0, 1e-05, 1e+16,
// inf, nan).
std::string python_float_repr(double value);
// A JSON string literal as Python's json.dumps writes it; ensure_ascii escapes everything above 0x7f.
std::string json_quote(std::string_view text, bool ensure_ascii);
// markupsafe.escape: & < > ' " as HTML entities.
std::string html_escape(std::string_view text);

}  // namespace cartridge::jinja
