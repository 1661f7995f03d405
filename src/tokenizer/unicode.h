// Unicode helpers for the tokenizer: UTF-8 decoding with the same replacement rules as Python's and Rust's
// lossy decoders, the GPT-2 byte-level alphabet, the character classes the HF pre-tokenizers test
// (Rust's char::is_numeric / is_whitespace, Unicode punctuation) and normalization forms (utf8proc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace cartridge::unicode {

constexpr char32_t kReplacementCharacter = 0xFFFD;

// How the bytes at the start of a buffer read as UTF-8.
enum class Utf8Status {
  kComplete,    // a well-formed character of `length` bytes
  kInvalid,     // ill-formed: the first `length` bytes (the "maximal subpart") become one U+FFFD
  kIncomplete,  // a valid prefix of a character that the buffer cuts off (only at the end of the buffer)
};

// Reads one character at `data[0..size)` (size >= 1). `length` receives the bytes it spans and
// `code_point` the character when kComplete.
Utf8Status read_utf8(const uint8_t* data, size_t size, size_t& length, char32_t& code_point);

// Appends the UTF-8 encoding of `code_point`.
void append_utf8(std::string& out, char32_t code_point);

// True when `bytes` is well-formed UTF-8.
bool is_valid_utf8(std::string_view bytes);

// `bytes` with each ill-formed sequence replaced by U+FFFD (maximal-subpart rule, as Python's
// bytes.decode(errors="replace") and Rust's String::from_utf8_lossy). Incomplete tails are replaced too.
std::string to_valid_utf8(std::string_view bytes);

// Decodes the character starting at `text[position]` of valid UTF-8 and advances `position`.
char32_t next_code_point(std::string_view text, size_t& position);

// GPT-2's byte-level alphabet: every byte is written as one printable character (bytes_to_unicode()).
char32_t byte_to_code_point(uint8_t byte);
// The byte a byte-level character stands for, or -1 when `code_point` is not in the alphabet.
int byte_from_code_point(char32_t code_point);
// Appends the byte-level spelling of `bytes` (each byte becomes one character of the alphabet).
void append_byte_level(std::string& out, std::string_view bytes);

// Rust's char::is_whitespace (the Unicode White_Space property).
bool is_whitespace(char32_t code_point);
// Rust's char::is_numeric (general categories Nd, Nl, No).
bool is_numeric(char32_t code_point);
// HF's Punctuation pre-tokenizer: ASCII punctuation or a Unicode punctuation category (P*). Categories
// come from utf8proc (Unicode 15); HF's table is older (Unicode 9), so punctuation assigned since (such as
// U+061D) is punctuation here and not there. Only Falcon's pre-tokenizer uses this.
bool is_punctuation(char32_t code_point);
// Rust regex's \w (alphabetic, marks, decimal numbers, connector punctuation, join controls).
bool is_word_character(char32_t code_point);

enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };
// `text` (valid UTF-8) in the given normalization form.
std::string normalize(std::string_view text, NormalizationForm form);

}  // namespace cartridge::unicode
