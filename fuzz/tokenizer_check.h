// What every encode/decode must satisfy, whatever the tokenizer and the text: ids inside the vocabulary,
// decoded text and streamed text well-formed UTF-8 (ill-formed bytes become U+FFFD), no exception.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace fuzz {

// `text` with bytes outside printable ASCII as \xNN, for messages.
inline std::string escaped(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
      out += buffer;
    }
  }
  return out;
}

// Encodes `text` both ways and decodes the ids; with `lossless`, a tokenizer without normalizer or
// whitespace-eating tokens must give back well-formed `text` exactly (decode(encode(text)) == text).
inline void check_encode_decode(const char* target, const cartridge::Tokenizer& tokenizer,
                                std::string_view text, bool lossless) {
  for (bool add_special : {false, true}) {
    const std::vector<int32_t> ids = tokenizer.encode(text, add_special);
    for (int32_t id : ids)
      check(id >= 0 && id < tokenizer.vocab_size(), target, "encoded id inside the vocabulary");
    for (bool skip : {false, true}) {
      const std::string decoded = tokenizer.decode(ids, skip);
      check(is_valid_utf8(decoded), target, "decode() gives well-formed UTF-8");
      if (lossless && !add_special && !skip && is_valid_utf8(std::string(text))) {
        if (decoded != text) {
          std::fprintf(stderr, "%s: text    %s\n%s: decoded %s\n", target, escaped(text).c_str(), target,
                       escaped(decoded).c_str());
        }
        check(decoded == text, target, "decode(encode(text)) == text for a lossless tokenizer");
      }
    }
    cartridge::StreamingDecoder streaming(tokenizer, true);
    std::string streamed;
    for (int32_t id : ids) streamed += streaming.push(id);
    streamed += streaming.flush();
    check(is_valid_utf8(streamed), target, "StreamingDecoder gives well-formed UTF-8");
  }
}

}  // namespace fuzz
