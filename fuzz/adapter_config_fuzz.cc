// Fuzz target: PEFT's adapter_config.json of a cartridge folder (cartridge/adapter_config.h), read from
// arbitrary bytes. A config the reader accepts must be writable (to_json_text, Python's json.dumps bytes),
// and what is written must read back to the same config; shape() may refuse it only with an exception.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "cartridge/adapter_config.h"
#include "fuzz_util.h"

namespace {
constexpr const char* kTarget = "adapter_config_fuzz";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  cartridge::AdapterConfig config;
  std::vector<std::string> ignored;
  try {
    config = cartridge::AdapterConfig::parse(text, "fuzz/adapter_config.json", &ignored);
  } catch (const std::exception&) {
    return 0;  // FormatError / UnsupportedError (util/error.h): the expected outcome for a bad file.
  }
  // Accepted: writing and reading back must work; an exception here escapes and is a finding.
  const std::string written = config.to_json_text();
  const cartridge::AdapterConfig again =
      cartridge::AdapterConfig::parse(written, "written adapter_config.json");
  fuzz::check(again.to_json_text() == written, kTarget, "written config reads back unchanged");
  fuzz::check(again.to_json() == config.to_json(), kTarget, "to_json() survives a write and a read");
  try {
    const cartridge::CartridgeShape shape = config.shape();
    (void)shape;
  } catch (const std::exception&) {
  }
  return 0;
}
