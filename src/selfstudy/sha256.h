// SHA-256 (FIPS 180-4), to identify the corpus a dataset was synthesized from.
#pragma once

#include <string>
#include <string_view>

namespace cartridge {

// Lowercase hex digest of `bytes` (64 characters), as Python's hashlib.sha256(bytes).hexdigest().
std::string sha256_hex(std::string_view bytes);

}  // namespace cartridge
