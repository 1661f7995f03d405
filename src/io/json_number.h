// JSON has no NaN or infinity: the files and reports we write give a number that is not finite (a score
// that was not computed) as null. The one helper for it.
#pragma once

#include <cmath>

#include <nlohmann/json.hpp>

namespace cartridge {

// `value` as a JSON number, or null when it is NaN or infinite.
inline nlohmann::json json_number(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
}

}  // namespace cartridge
