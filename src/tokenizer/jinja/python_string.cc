#include "tokenizer/jinja/python_string.h"

#include <utf8proc.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace cartridge::jinja {

namespace {

constexpr char32_t kReplacementCharacter = 0xFFFD;

// Decodes one code point at `position` and advances it.
char32_t next_code_point(std::string_view text, size_t& position) {
  const auto byte = static_cast<unsigned char>(text[position]);
  int length = 0;
  char32_t code_point = 0;
  if (byte < 0x80) {
    position += 1;
    return byte;
  } else if ((byte & 0xE0) == 0xC0) {
    length = 2;
    code_point = byte & 0x1F;
  } else if ((byte & 0xF0) == 0xE0) {
    length = 3;
    code_point = byte & 0x0F;
  } else if ((byte & 0xF8) == 0xF0) {
    length = 4;
    code_point = byte & 0x07;
  } else {
    position += 1;
    return kReplacementCharacter;
  }
  if (position + length > text.size()) {
    position += 1;
    return kReplacementCharacter;
  }
  for (int i = 1; i < length; ++i) {
    const auto continuation = static_cast<unsigned char>(text[position + i]);
    if ((continuation & 0xC0) != 0x80) {
      position += 1;
      return kReplacementCharacter;
    }
    code_point = (code_point << 6) | (continuation & 0x3F);
  }
  position += length;
  return code_point;
}

bool is_cased(char32_t code_point) {
  const auto category = utf8proc_category(static_cast<utf8proc_int32_t>(code_point));
  return category == UTF8PROC_CATEGORY_LU || category == UTF8PROC_CATEGORY_LL ||
         category == UTF8PROC_CATEGORY_LT;
}

char32_t to_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}
char32_t to_upper(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
}
char32_t to_title(char32_t c) {
  if (c < 0x80) return to_upper(c);
  return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c)));
}

// Python's str.isprintable() for one code point: everything except the "Other" and "Separator"
// categories, with the ASCII space allowed.
bool is_python_printable(char32_t c) {
  if (c == ' ') return true;
  if (c < 0x20 || c == 0x7F) return false;
  if (c < 0x7F) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return false;
    default: return true;
  }
}

std::u32string to_code_points(const std::optional<std::string>& chars) {
  return chars ? decode_utf8(*chars) : std::u32string();
}

bool in_set(char32_t c, const std::u32string& set) { return set.find(c) != std::u32string::npos; }

}  // namespace

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t position = 0;
  while (position < text.size()) out.push_back(next_code_point(text, position));
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view code_points) {
  std::string out;
  out.reserve(code_points.size());
  for (char32_t c : code_points) append_utf8(out, c);
  return out;
}

int64_t count_code_points(std::string_view text) {
  int64_t count = 0;
  for (char byte : text) {
    if ((static_cast<unsigned char>(byte) & 0xC0) != 0x80) ++count;
  }
  return count;
}

bool is_ascii(std::string_view text) {
  for (char byte : text) {
    if (static_cast<unsigned char>(byte) >= 0x80) return false;
  }
  return true;
}

bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_python_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
         c == 0x85 || c == 0x2028 || c == 0x2029;
}

std::string python_strip(std::string_view text, const std::optional<std::string>& chars, bool left,
                         bool right) {
  const std::u32string code_points = decode_utf8(text);
  const std::u32string set = to_code_points(chars);
  auto strippable = [&](char32_t c) { return chars ? in_set(c, set) : is_python_space(c); };
  size_t begin = 0;
  size_t end = code_points.size();
  if (left) {
    while (begin < end && strippable(code_points[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strippable(code_points[end - 1])) --end;
  }
  return encode_utf8(std::u32string_view(code_points).substr(begin, end - begin));
}

std::vector<std::string> python_split(std::string_view text, const std::optional<std::string>& separator,
                                      int64_t max_split) {
  std::vector<std::string> parts;
  if (separator) {
    if (separator->empty()) throw std::invalid_argument("empty separator");
    size_t start = 0;
    while (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) {
      const size_t found = text.find(*separator, start);
      if (found == std::string_view::npos) break;
      parts.emplace_back(text.substr(start, found - start));
      start = found + separator->size();
    }
    parts.emplace_back(text.substr(start));
    return parts;
  }
  const std::u32string code_points = decode_utf8(text);
  size_t i = 0;
  const size_t n = code_points.size();
  while (true) {
    while (i < n && is_python_space(code_points[i])) ++i;
    if (i == n) break;
    if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
      // The remainder keeps its trailing whitespace, as in Python.
      parts.push_back(encode_utf8(std::u32string_view(code_points).substr(i)));
      break;
    }
    const size_t start = i;
    while (i < n && !is_python_space(code_points[i])) ++i;
    parts.push_back(encode_utf8(std::u32string_view(code_points).substr(start, i - start)));
  }
  return parts;
}

std::vector<std::string> python_rsplit(std::string_view text, const std::optional<std::string>& separator,
                                       int64_t max_split) {
  std::vector<std::string> parts;
  if (separator) {
    if (separator->empty()) throw std::invalid_argument("empty separator");
    size_t end = text.size();
    while (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) {
      if (end < separator->size()) break;
      const size_t found = text.rfind(*separator, end - separator->size());
      if (found == std::string_view::npos) break;
      parts.emplace_back(text.substr(found + separator->size(), end - found - separator->size()));
      end = found;
    }
    parts.emplace_back(text.substr(0, end));
    return {parts.rbegin(), parts.rend()};
  }
  const std::u32string code_points = decode_utf8(text);
  int64_t i = static_cast<int64_t>(code_points.size());
  while (true) {
    while (i > 0 && is_python_space(code_points[i - 1])) --i;
    if (i == 0) break;
    if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
      parts.push_back(encode_utf8(std::u32string_view(code_points).substr(0, i)));
      break;
    }
    const int64_t end = i;
    while (i > 0 && !is_python_space(code_points[i - 1])) --i;
    parts.push_back(encode_utf8(std::u32string_view(code_points).substr(i, end - i)));
  }
  return {parts.rbegin(), parts.rend()};
}

std::vector<std::string> python_splitlines(std::string_view text, bool keep_ends) {
  const std::u32string code_points = decode_utf8(text);
  std::vector<std::string> lines;
  size_t start = 0;
  size_t i = 0;
  while (i < code_points.size()) {
    const char32_t c = code_points[i];
    if (!is_python_line_break(c)) {
      ++i;
      continue;
    }
    size_t end_of_break = i + 1;
    if (c == '\r' && end_of_break < code_points.size() && code_points[end_of_break] == '\n') ++end_of_break;
    const size_t line_end = keep_ends ? end_of_break : i;
    lines.push_back(encode_utf8(std::u32string_view(code_points).substr(start, line_end - start)));
    start = i = end_of_break;
  }
  if (start < code_points.size())
    lines.push_back(encode_utf8(std::u32string_view(code_points).substr(start)));
  return lines;
}

std::string python_replace(std::string_view text, std::string_view old_text, std::string_view new_text,
                           int64_t count) {
  std::string out;
  if (old_text.empty()) {
    // Python inserts `new` between every code point (and at both ends), up to `count` times.
    const std::u32string code_points = decode_utf8(text);
    int64_t done = 0;
    for (char32_t c : code_points) {
      if (count < 0 || done < count) {
        out.append(new_text);
        ++done;
      }
      append_utf8(out, c);
    }
    if (count < 0 || done < count) out.append(new_text);
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t found = text.find(old_text, start);
    if (found == std::string_view::npos) break;
    out.append(text.substr(start, found - start));
    out.append(new_text);
    start = found + old_text.size();
    ++done;
  }
  out.append(text.substr(start));
  return out;
}

std::string python_lower(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : decode_utf8(text)) append_utf8(out, to_lower(c));
  return out;
}

std::string python_upper(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : decode_utf8(text)) append_utf8(out, to_upper(c));
  return out;
}

std::string python_title(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool previous_cased = false;
  for (char32_t c : decode_utf8(text)) {
    append_utf8(out, previous_cased ? to_lower(c) : to_title(c));
    previous_cased = is_cased(c);
  }
  return out;
}

std::string python_capitalize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool first = true;
  for (char32_t c : decode_utf8(text)) {
    append_utf8(out, first ? to_title(c) : to_lower(c));
    first = false;
  }
  return out;
}

bool python_is_lower(std::string_view text) {
  bool any_cased = false;
  for (char32_t c : decode_utf8(text)) {
    if (!is_cased(c)) continue;
    if (to_lower(c) != c || utf8proc_category(static_cast<utf8proc_int32_t>(c)) != UTF8PROC_CATEGORY_LL) {
      return false;
    }
    any_cased = true;
  }
  return any_cased;
}

bool python_is_upper(std::string_view text) {
  bool any_cased = false;
  for (char32_t c : decode_utf8(text)) {
    if (!is_cased(c)) continue;
    if (utf8proc_category(static_cast<utf8proc_int32_t>(c)) != UTF8PROC_CATEGORY_LU) return false;
    any_cased = true;
  }
  return any_cased;
}

std::string python_string_repr(std::string_view text) {
  const bool has_single = text.find('\'') != std::string_view::npos;
  const bool has_double = text.find('"') != std::string_view::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  char buffer[16];
  for (char32_t c : decode_utf8(text)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (is_python_printable(c)) {
      append_utf8(out, c);
    } else if (c < 0x100) {
      std::snprintf(buffer, sizeof(buffer), "\\x%02x", static_cast<unsigned>(c));
      out += buffer;
    } else if (c < 0x10000) {
      std::snprintf(buffer, sizeof(buffer), "\\u%04x", static_cast<unsigned>(c));
      out += buffer;
    } else {
      std::snprintf(buffer, sizeof(buffer), "\\U%08x", static_cast<unsigned>(c));
      out += buffer;
    }
  }
  out.push_back(quote);
  return out;
}

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  // Shortest round-trip digits in scientific form, e.g. "1.2345e+02", then laid out as Python does.
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  const std::string scientific(buffer, result.ptr);
  const size_t e_position = scientific.find('e');
  std::string mantissa = scientific.substr(0, e_position);
  const int exponent = std::stoi(scientific.substr(e_position + 1));
  std::string sign;
  if (mantissa[0] == '-') {
    sign = "-";
    mantissa.erase(0, 1);
  }
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits.push_back(c);
  }
  if (exponent >= -4 && exponent < 16) {
    std::string out = sign;
    if (exponent < 0) {
      out += "0." + std::string(-exponent - 1, '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exponent + 1) {
      out += digits + std::string(exponent + 1 - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, exponent + 1) + "." + digits.substr(exponent + 1);
    }
    return out;
  }
  std::string out = sign + digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  std::snprintf(buffer, sizeof(buffer), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + buffer;
}

std::string json_quote(std::string_view text, bool ensure_ascii) {
  std::string out = "\"";
  char buffer[16];
  for (char32_t c : decode_utf8(text)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
          if (c >= 0x10000) {
            // A UTF-16 surrogate pair, as json.dumps writes astral code points with ensure_ascii.
            const char32_t v = c - 0x10000;
            std::snprintf(buffer, sizeof(buffer), "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 | (v >> 10)),
                          static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
          } else {
            std::snprintf(buffer, sizeof(buffer), "\\u%04x", static_cast<unsigned>(c));
          }
          out += buffer;
        } else {
          append_utf8(out, c);
        }
    }
  }
  out += "\"";
  return out;
}

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&#39;"; break;
      case '"': out += "&#34;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

}  // namespace cartridge::jinja
