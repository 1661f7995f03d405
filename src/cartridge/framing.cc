#include "cartridge/framing.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {

const char* framing_name(Framing framing) {
  return framing == Framing::kSystemTurn ? "system_turn" : "new_chat";
}

Framing parse_framing(const std::string& name) {
  std::string spelled = name;
  for (char& character : spelled) {
    if (character == '-') character = '_';
  }
  if (spelled == "system_turn") return Framing::kSystemTurn;
  if (spelled == "new_chat") return Framing::kNewChat;
  throw InvalidArgumentError(
      "unknown framing '" + name +
      "' (choose system_turn: the question continues the conversation whose system "
      "turn the cartridge holds, or new_chat: a new conversation after the cartridge)");
}

std::string framing_file_text(Framing framing) {
  const nlohmann::ordered_json file = {
      {"format", kFramingFormat}, {"version", kFramingVersion}, {"framing", framing_name(framing)}};
  return file.dump(2) + "\n";
}

Framing read_framing(const std::string& folder) {
  const std::string path = (std::filesystem::path(folder) / kFramingFileName).string();
  if (!std::filesystem::is_regular_file(path)) return Framing::kNewChat;
  nlohmann::json file;
  try {
    file = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception&) {
    throw FormatError(describe_file_problem(path, "is not valid JSON",
                                            "write it again with `cartridge init`/`train`, or delete it"));
  }
  if (!file.is_object() || file.value("format", "") != kFramingFormat || !file.contains("version") ||
      !file["version"].is_number_integer() || !file.contains("framing") || !file["framing"].is_string()) {
    throw FormatError(describe_file_problem(path, "is not a cartridge framing file",
                                            "expected {\"format\": \"cartridge-framing\", \"version\": 1, "
                                            "\"framing\": \"system_turn\" or \"new_chat\"}"));
  }
  if (file["version"].get<int>() > kFramingVersion) {
    throw UnsupportedError(describe_file_problem(
        path, "has framing version " + std::to_string(file["version"].get<int>()),
        "this build reads version " + std::to_string(kFramingVersion) + "; use a newer cartridge.cpp"));
  }
  try {
    return parse_framing(file["framing"].get<std::string>());
  } catch (const InvalidArgumentError& error) {
    throw FormatError(describe_file_problem(path, error.what()));
  }
}

Framing common_framing(const std::vector<Framing>& framings, const std::vector<std::string>& names) {
  if (framings.empty()) return Framing::kNewChat;
  for (const Framing framing : framings) {
    if (framing == framings.front()) continue;
    std::string listing;
    for (size_t index = 0; index < framings.size(); ++index) {
      listing += (index ? ", " : "") + (index < names.size() ? names[index] : "#" + std::to_string(index)) +
                 ": " + framing_name(framings[index]);
    }
    throw MismatchError("the cartridges were made for different framings (" + listing +
                        "); pass --framing system_turn or --framing new_chat to choose one");
  }
  return framings.front();
}

}  // namespace cartridge
