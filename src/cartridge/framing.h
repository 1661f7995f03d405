// The framing of a cartridge: which tokens go between the cartridge and the conversation that follows it
// (docs/framing.md). A cartridge stands for a document; the model answers best when the question comes as
// it would have come after that document in its chat template. The choice is recorded beside the adapter
// in cartridge_framing.json (PEFT ignores the file) and used wherever a cartridge is: generate --chat,
// chat, the server's chat endpoint, the self-study student sequence, eval's cartridge rows.
#pragma once

#include <string>
#include <vector>

namespace cartridge {

enum class Framing {
  // The messages alone through the chat template: a new conversation after the cartridge, with the
  // template's default system prompt if it adds one. What cartridges without a framing file get.
  kNewChat,
  // The conversation whose system turn the cartridge holds goes on: the template's text after a system
  // message's content (its end of turn), then the messages, as if the document had been the system
  // message. A system message of the user's own is added to that system turn.
  kSystemTurn,
};

inline constexpr char kFramingFileName[] = "cartridge_framing.json";
inline constexpr char kFramingFormat[] = "cartridge-framing";
inline constexpr int kFramingVersion = 1;

// "new_chat", "system_turn" (the spellings of files and of --framing).
const char* framing_name(Framing framing);
// Parses a framing_name (also with '-' for '_'); InvalidArgumentError naming the choices otherwise.
Framing parse_framing(const std::string& name);

// The file's text: {"format": "cartridge-framing", "version": 1, "framing": "..."} and a newline.
std::string framing_file_text(Framing framing);
// The framing recorded in `folder`; kNewChat when it has no cartridge_framing.json (cartridges made
// before framings were recorded, or by PEFT). FormatError naming the file when it is damaged,
// UnsupportedError for a newer version.
Framing read_framing(const std::string& folder);

// The framing of cartridges composed in order: theirs when they agree. MismatchError naming the
// cartridges and their framings otherwise (pass --framing to choose).
Framing common_framing(const std::vector<Framing>& framings, const std::vector<std::string>& names);

}  // namespace cartridge
