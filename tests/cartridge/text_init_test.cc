// Tokenization for text initialisation against what PEFT's initialize_kv_prefix_from_text tokenized
// (plain: tokenizer(text) with default special tokens; chat: one system message through the template),
// and the whole text -> cartridge path against PEFT's adapters.
#include "cartridge/text_init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "cartridge/adapter_io.h"
#include "cartridge_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::cartridge_fixture;
using testing::expected_for;
using testing::tiny_model_kinds;

struct TinyTokenizer {
  Tokenizer tokenizer;
  std::unique_ptr<ChatTemplate> chat_template;
};

TinyTokenizer load_tokenizer(const std::string& kind) {
  Tokenizer tokenizer = Tokenizer::load(testing::tiny_model_files(kind));
  auto chat_template =
      std::make_unique<ChatTemplate>(tokenizer.chat_template(), tokenizer.bos_token(), tokenizer.eos_token());
  return {std::move(tokenizer), std::move(chat_template)};
}

TEST(TextInit, TokenizesAsPeft) {
  for (const std::string& kind : tiny_model_kinds()) {
    const TinyTokenizer loaded = load_tokenizer(kind);
    const std::string text = testing::read_bytes(cartridge_fixture(kind, "text.txt"));
    const nlohmann::json expected = expected_for(kind).at("init_token_ids");
    EXPECT_EQ(
        tokenize_init_text(loaded.tokenizer, loaded.chat_template.get(), text, InitTokenization::kPlain),
        expected.at("plain").get<std::vector<int32_t>>())
        << kind;
    EXPECT_EQ(tokenize_init_text(loaded.tokenizer, loaded.chat_template.get(), text,
                                 InitTokenization::kChatTemplate),
              expected.at("chat").get<std::vector<int32_t>>())
        << kind;
    // PEFT's default (use_chat_template=True) takes the template when there is one, plain otherwise.
    EXPECT_EQ(tokenize_init_text(loaded.tokenizer, loaded.chat_template.get(), text, InitTokenization::kAuto),
              expected.at("chat").get<std::vector<int32_t>>());
    EXPECT_EQ(tokenize_init_text(loaded.tokenizer, nullptr, text, InitTokenization::kAuto),
              expected.at("plain").get<std::vector<int32_t>>());
    EXPECT_THROW(tokenize_init_text(loaded.tokenizer, nullptr, text, InitTokenization::kChatTemplate),
                 UnsupportedError);
  }
}

TEST(TextInit, TextToCartridgeMatchesPeft) {
  for (const std::string& kind : tiny_model_kinds()) {
    LoadOptions options;
    options.show_progress = false;
    const auto model = Model::load(testing::tiny_model_files(kind), options);
    const TinyTokenizer loaded = load_tokenizer(kind);
    const std::string text = testing::read_bytes(cartridge_fixture(kind, "text.txt"));
    for (const auto& [mode, adapter] : std::vector<std::pair<InitTokenization, std::string>>{
             {InitTokenization::kPlain, "peft_plain"}, {InitTokenization::kChatTemplate, "peft_chat"}}) {
      const LoadedAdapter peft = load_adapter(cartridge_fixture(kind, adapter));
      const Cartridge ours =
          initialize_from_text(*model, loaded.tokenizer, loaded.chat_template.get(), text, mode,
                               peft.config.num_virtual_tokens, peft.config.num_frozen_tokens);
      EXPECT_LE((ours.prompt_embeddings() - peft.cartridge.prompt_embeddings()).abs().max().item<double>(),
                1e-5)
          << kind << " " << adapter;
    }
    EXPECT_THROW(initialize_from_text(*model, loaded.tokenizer, loaded.chat_template.get(), "too short",
                                      InitTokenization::kPlain, 64, 1),
                 InvalidArgumentError);
  }
}

}  // namespace
}  // namespace cartridge
