#include "util/error.h"

namespace cartridge {

std::string describe_file_problem(const std::string& path, const std::string& problem,
                                  const std::string& hint) {
  std::string message = path + ": " + problem;
  if (!hint.empty()) message += " (" + hint + ")";
  return message;
}

}  // namespace cartridge
