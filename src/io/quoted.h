// Internal to io/: names read from files (tensor names, metadata keys) quoted for one-line error messages.
#pragma once

#include <string>

namespace cartridge {

// `text` in double quotes, with control characters escaped (\n, \xNN) so a damaged file cannot break a
// message over lines, and cut to `max_bytes` with "..." so it cannot flood one.
inline std::string quote_name(const std::string& text, size_t max_bytes = 120) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (size_t i = 0; i < text.size(); ++i) {
    if (i == max_bytes) {
      out += "...";
      break;
    }
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte == '\n') {
      out += "\\n";
    } else if (byte == '"' || byte == '\\') {
      out += '\\';
      out += static_cast<char>(byte);
    } else if (byte < 0x20 || byte == 0x7F) {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xF];
    } else {
      out += static_cast<char>(byte);
    }
  }
  return out + "\"";
}

}  // namespace cartridge
