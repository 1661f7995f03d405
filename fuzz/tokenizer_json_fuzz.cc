// Fuzz target: loading a tokenizer.json (Tokenizer::from_tokenizer_json) from arbitrary bytes: the JSON,
// the BPE model (vocab, merges as strings or pairs), added tokens, normalizer, pre-tokenizer (regex
// splits compiled with PCRE2), post-processor and decoder. A file the loader accepts must then encode and
// decode a few fixed texts without failing (tokenizer_check.h).
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_check.h"

namespace {
constexpr const char* kTarget = "tokenizer_json_fuzz";
constexpr const char* kTexts[] = {
    "Hello world! The theater in 2024: 12345 apples.",
    "<|im_start|>user\nhi<|im_end|><think> \t été::x",
    "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 \xff\xfe broken \xc3",
    "",
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemoryFile file("tokenizer.json");
  const std::string& path = file.write(data, size);
  try {
    const cartridge::Tokenizer tokenizer = cartridge::Tokenizer::from_tokenizer_json(path);
    fuzz::check(tokenizer.vocab_size() >= 0, kTarget, "vocab_size not negative");
    for (const char* text : kTexts) fuzz::check_encode_decode(kTarget, tokenizer, text, false);
    for (int32_t id : {-1, 0, 1, 2, 100000}) (void)tokenizer.token_bytes(id);
    (void)tokenizer.special_prefix_ids();
    (void)tokenizer.special_suffix_ids();
    (void)tokenizer.bos_token();
    (void)tokenizer.eos_token();
  } catch (const std::exception&) {
    // FormatError / UnsupportedError (util/error.h): the expected outcome for a bad file. Crashes,
    // sanitizer reports and broken invariants (aborts) are the findings.
  }
  return 0;
}
