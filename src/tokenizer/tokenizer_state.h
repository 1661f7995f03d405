// The parts a Tokenizer is made of (internal to the tokenizer layer): built once by a loader
// (tokenizer_json.cc, gguf_tokenizer.cc), then shared read-only by every copy of the Tokenizer.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

struct NamedToken {
  std::optional<int32_t> id;
  std::string content;  // "" when absent
};

struct TokenizerState {
  std::string source;  // the file it came from, for messages
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  AddedVocabulary added;
  PostProcessor post_processor;
  bool split_special_tokens = false;  // special-token strings in text are encoded as plain text
  NamedToken bos, eos, pad, unk;
  std::string chat_template;
};

// Builds the state from tokenizer.json (+ tokenizer_config.json and chat_template.jinja when their paths
// are not empty). Defined in tokenizer_json.cc.
std::shared_ptr<TokenizerState> load_tokenizer_json_state(const std::string& tokenizer_json_path,
                                                          const std::string& tokenizer_config_path,
                                                          const std::string& chat_template_path);

// Builds the state from a GGUF's tokenizer metadata. Defined in gguf_tokenizer.cc.
std::shared_ptr<TokenizerState> load_gguf_state(const GgufFile& gguf, GgufPreTokenizerSource source);

// Looks up `content` among the added tokens, then in the model vocabulary.
std::optional<int32_t> lookup_token(const TokenizerState& state, std::string_view content);

}  // namespace cartridge
