#include "tokenizer/unicode.h"

#include <array>
#include <cstdlib>
#include <memory>
#include <stdexcept>

#include <utf8proc.h>

namespace cartridge::unicode {

Utf8Status read_utf8(const uint8_t* data, size_t size, size_t& length, char32_t& code_point) {
  const uint8_t lead = data[0];
  if (lead < 0x80) {
    length = 1;
    code_point = lead;
    return Utf8Status::kComplete;
  }
  // Well-formed sequences (Unicode Table 3-7): the lead byte fixes the length and the range allowed for
  // the second byte; later bytes are always 80..BF.
  size_t needed = 0;
  uint8_t second_low = 0x80, second_high = 0xBF;
  char32_t value = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    needed = 2;
    value = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    needed = 3;
    value = lead & 0x0F;
    if (lead == 0xE0) second_low = 0xA0;
    if (lead == 0xED) second_high = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    needed = 4;
    value = lead & 0x07;
    if (lead == 0xF0) second_low = 0x90;
    if (lead == 0xF4) second_high = 0x8F;  // nothing above U+10FFFF
  } else {
    length = 1;  // a continuation byte or a byte that never starts a character
    return Utf8Status::kInvalid;
  }
  for (size_t i = 1; i < needed; ++i) {
    if (i >= size) {
      length = i;
      return Utf8Status::kIncomplete;
    }
    const uint8_t byte = data[i];
    const uint8_t low = i == 1 ? second_low : 0x80;
    const uint8_t high = i == 1 ? second_high : 0xBF;
    if (byte < low || byte > high) {
      length = i;  // the valid prefix read so far is one maximal subpart
      return Utf8Status::kInvalid;
    }
    value = (value << 6) | (byte & 0x3F);
  }
  length = needed;
  code_point = value;
  return Utf8Status::kComplete;
}

void append_utf8(std::string& out, char32_t code_point) {
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view bytes) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t position = 0;
  while (position < bytes.size()) {
    if (data[position] < 0x80) {  // fast path for ASCII
      ++position;
      continue;
    }
    size_t length = 0;
    char32_t code_point = 0;
    if (read_utf8(data + position, bytes.size() - position, length, code_point) != Utf8Status::kComplete) {
      return false;
    }
    position += length;
  }
  return true;
}

std::string to_valid_utf8(std::string_view bytes) {
  if (is_valid_utf8(bytes)) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size() + 8);
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t position = 0;
  while (position < bytes.size()) {
    size_t length = 0;
    char32_t code_point = 0;
    const Utf8Status status = read_utf8(data + position, bytes.size() - position, length, code_point);
    if (status == Utf8Status::kComplete) {
      out.append(bytes.data() + position, length);
    } else {
      append_utf8(out, kReplacementCharacter);
    }
    position += length;
  }
  return out;
}

char32_t next_code_point(std::string_view text, size_t& position) {
  const auto* data = reinterpret_cast<const uint8_t*>(text.data());
  size_t length = 0;
  char32_t code_point = 0;
  if (read_utf8(data + position, text.size() - position, length, code_point) != Utf8Status::kComplete) {
    // Callers validate text first; an ill-formed byte still advances so no loop can stall.
    code_point = kReplacementCharacter;
  }
  position += length;
  return code_point;
}

namespace {

struct ByteLevelAlphabet {
  std::array<char32_t, 256> byte_to_code_point{};
  std::array<int16_t, 0x200> code_point_to_byte{};  // the alphabet lies below U+0144
  std::array<std::string, 256> byte_to_utf8;

  ByteLevelAlphabet() {
    code_point_to_byte.fill(-1);
    // Printable bytes keep their own code point; the others are moved to U+0100 onwards in byte order.
    char32_t next_free = 256;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
      const char32_t code_point = printable ? static_cast<char32_t>(byte) : next_free++;
      byte_to_code_point[byte] = code_point;
      code_point_to_byte[code_point] = static_cast<int16_t>(byte);
      append_utf8(byte_to_utf8[byte], code_point);
    }
  }
};

const ByteLevelAlphabet& alphabet() {
  static const ByteLevelAlphabet instance;
  return instance;
}

}  // namespace

char32_t byte_to_code_point(uint8_t byte) { return alphabet().byte_to_code_point[byte]; }

int byte_from_code_point(char32_t code_point) {
  if (code_point >= alphabet().code_point_to_byte.size()) return -1;
  return alphabet().code_point_to_byte[code_point];
}

void append_byte_level(std::string& out, std::string_view bytes) {
  const ByteLevelAlphabet& table = alphabet();
  for (const char byte : bytes) out += table.byte_to_utf8[static_cast<uint8_t>(byte)];
}

bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const utf8proc_category_t category = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return category == UTF8PROC_CATEGORY_ND || category == UTF8PROC_CATEGORY_NL ||
         category == UTF8PROC_CATEGORY_NO;
}

bool is_punctuation(char32_t c) {
  if (c < 0x80)
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO: return true;
    default: return false;
  }
}

bool is_word_character(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (c == 0x200C || c == 0x200D) return true;  // join controls
  // Other_Alphabetic symbols (circled and squared Latin letters) are alphabetic although category So.
  if ((c >= 0x24B6 && c <= 0x24E9) || (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
      (c >= 0x1F170 && c <= 0x1F189)) {
    return true;
  }
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC: return true;
    default: return false;
  }
}

std::string normalize(std::string_view text, NormalizationForm form) {
  if (text.empty()) return std::string();
  // Pure ASCII is invariant under every normalization form.
  bool ascii = true;
  for (const char c : text) {
    if (static_cast<uint8_t>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(text);
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalizationForm::kNfc: options |= UTF8PROC_COMPOSE; break;
    case NormalizationForm::kNfd: options |= UTF8PROC_DECOMPOSE; break;
    case NormalizationForm::kNfkc: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalizationForm::kNfkd: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t length = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                               static_cast<utf8proc_ssize_t>(text.size()), &result,
                                               static_cast<utf8proc_option_t>(options));
  // Text reaching here is valid UTF-8 (encode repairs its input), so a failure is an internal error.
  if (length < 0) throw std::logic_error(std::string("utf8proc_map failed: ") + utf8proc_errmsg(length));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(result, &std::free);
  return std::string(reinterpret_cast<const char*>(result), static_cast<size_t>(length));
}

}  // namespace cartridge::unicode
