// The system_turn framing's prompt on the default model (docs/framing.md): the document's open system turn
// followed by the framing's tokens is the ICL prompt token for token, so a whole-document cartridge in this
// framing is ICL exactly; new_chat is the plain chat template; a user's system message joins the turn.
#include <gtest/gtest.h>

#include "generate/loaded_model.h"
#include "generate_test_util.h"

namespace cartridge {
namespace {

using testing::default_model;

std::vector<int32_t> joined(std::vector<int32_t> first, const std::vector<int32_t>& second) {
  first.insert(first.end(), second.begin(), second.end());
  return first;
}

TEST(FramingPrompt, DocumentTurnThenSystemTurnFramingIsTheIclPrompt) {
  const LoadedModel& model = default_model();
  const std::string document = "The Varnholm light was first lit in 1871.\nIts keepers logged every ship.";
  const std::string question = "When was the light first lit?";
  const std::vector<int32_t> icl = model.encode_chat({{"system", document}, {"user", question}}, true);
  const std::vector<int32_t> framed =
      joined(model.encode_document_turn(document),
             model.encode_chat_after_cartridge({{"user", question}}, Framing::kSystemTurn, true));
  EXPECT_EQ(framed, icl);
  // SmolLM2: the framing starts by closing the system turn.
  const std::vector<int32_t> after =
      model.encode_chat_after_cartridge({{"user", question}}, Framing::kSystemTurn, true);
  EXPECT_EQ(model.tokenizer->decode({after.front()}, /*skip_special_tokens=*/false), "<|im_end|>");
}

TEST(FramingPrompt, NewChatIsThePlainChatTemplate) {
  const LoadedModel& model = default_model();
  const std::vector<ChatMessage> messages = {{"user", "Hello?"}};
  EXPECT_EQ(model.encode_chat_after_cartridge(messages, Framing::kNewChat, true),
            model.encode_chat(messages, true));
}

TEST(FramingPrompt, AUsersSystemMessageJoinsTheCartridgesSystemTurn) {
  const LoadedModel& model = default_model();
  const std::string document = "A short document.";
  const std::vector<int32_t> with_system =
      joined(model.encode_document_turn(document),
             model.encode_chat_after_cartridge({{"system", "Be brief."}, {"user", "Why?"}},
                                               Framing::kSystemTurn, true));
  EXPECT_EQ(with_system, model.encode_chat({{"system", document + "\n\nBe brief."}, {"user", "Why?"}}, true));
}

}  // namespace
}  // namespace cartridge
