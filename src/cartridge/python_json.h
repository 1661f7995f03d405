// JSON text exactly as Python's `json.dumps(value, indent=2, sort_keys=True)` writes it, which is how PEFT
// writes adapter_config.json (docs/cartridge_format.md): "key": value pairs, "," at line ends, keys sorted at
// every level, non-ASCII and DEL escaped as \uXXXX (ensure_ascii), no trailing newline.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace cartridge {

// Throws InvalidArgumentError for a string that is not valid UTF-8 (Python could not have produced it).
std::string python_json_dumps(const nlohmann::json& value, int indent = 2);

}  // namespace cartridge
