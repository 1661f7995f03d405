// Fuzz target: encode/decode of arbitrary bytes with fixed fixture tokenizers: SmolLM2's tokenizer.json and
// the feature variant from build/fixtures/tokenizer/ (after a main build), plus the small tokenizer.json
// files of fuzz/corpus/tokenizer_json/ (always there). CARTRIDGE_FUZZ_TOKENIZER names one more. Checks
// tokenizer_check.h's invariants; for a tokenizer without normalizer or whitespace-eating tokens and with
// every byte in its vocabulary (minimal.json) also that well-formed text comes back unchanged from
// decode(encode(text)).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_check.h"
#include "util/error.h"

namespace {
constexpr const char* kTarget = "tokenizer_encode_fuzz";

struct Fixture {
  std::string path;
  cartridge::Tokenizer tokenizer;
  bool lossless;
};

std::vector<Fixture>& fixtures() {
  static std::vector<Fixture> result;
  return result;
}

void load(const std::string& path, bool lossless) {
  if (!std::filesystem::exists(path)) return;
  try {
    fixtures().push_back({path, cartridge::Tokenizer::from_tokenizer_json(path), lossless});
    std::fprintf(stderr, "%s: tokenizer %s\n", kTarget, path.c_str());
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: cannot load fixture %s: %s\n", kTarget, path.c_str(), error.what());
    std::abort();
  }
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string root = CARTRIDGE_FUZZ_ROOT;
  // SmolLM2's vocabulary lacks some byte-level characters (0x1d's "ĝ", ...): like HF tokenizers, encode drops
  // those bytes, so it is not lossless. minimal.json has all 256.
  load(root + "/build/fixtures/tokenizer/smollm2/tokenizer.json", false);
  load(root + "/build/fixtures/tokenizer/variant/tokenizer.json", false);
  load(root + "/fuzz/corpus/tokenizer_json/minimal.json", true);
  load(root + "/fuzz/corpus/tokenizer_json/variant.json", false);
  load(root + "/fuzz/corpus/tokenizer_json/split_regex.json", false);
  if (const char* extra = std::getenv("CARTRIDGE_FUZZ_TOKENIZER")) load(extra, false);
  if (fixtures().empty()) {
    std::fprintf(stderr, "%s: no fixture tokenizer found under %s\n", kTarget, root.c_str());
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const Fixture& fixture : fixtures()) {
    // encode() takes any bytes (ill-formed UTF-8 reads as U+FFFD): only the project's typed errors
    // (util/error.h) are an accepted outcome; another exception escapes and is a finding.
    try {
      fuzz::check_encode_decode(kTarget, fixture.tokenizer, text, fixture.lossless);
    } catch (const cartridge::Error&) {
    }
  }
  // The input as token ids too (little-endian int32): decode must drop unknown ids, never fail.
  std::vector<int32_t> ids(size / 4);
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<int32_t>(
        static_cast<uint32_t>(data[4 * i]) | static_cast<uint32_t>(data[4 * i + 1]) << 8 |
        static_cast<uint32_t>(data[4 * i + 2]) << 16 | static_cast<uint32_t>(data[4 * i + 3]) << 24);
  for (const Fixture& fixture : fixtures()) {
    for (bool skip : {false, true})
      fuzz::check(fuzz::is_valid_utf8(fixture.tokenizer.decode(ids, skip)), kTarget,
                  "decode() of any ids gives well-formed UTF-8");
    cartridge::StreamingDecoder streaming(fixture.tokenizer, false);
    std::string streamed;
    for (int32_t id : ids) streamed += streaming.push(id);
    streamed += streaming.flush();
    fuzz::check(fuzz::is_valid_utf8(streamed), kTarget,
                "StreamingDecoder of any ids gives well-formed UTF-8");
  }
  return 0;
}
