// Added tokens (HF's AddedVocabulary): strings such as "<|im_start|>" that are cut out of the text whole,
// before normalization and BPE, with HF's matching rules: leftmost-longest, then the token's single_word,
// lstrip and rstrip flags. Tokens with normalized=false match the raw text; those with normalized=true
// match the normalized text. Immutable after build(); thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/normalizer.h"

namespace cartridge {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;      // skipped by decode(skip_special_tokens); a control token of the model
  bool lstrip = false;       // also swallows the whitespace before it
  bool rstrip = false;       // also swallows the whitespace after it
  bool single_word = false;  // only matches when not inside a word
  bool normalized = false;   // matched against the normalized text instead of the raw text
};

class AddedVocabulary {
 public:
  // Adds `token` unless a token with the same content is already there (the first one is kept).
  // Returns whether it was added.
  bool add(AddedToken token);
  // Builds the matchers; the patterns of normalized tokens are normalized with `normalizer` first.
  void build(const Normalizer& normalizer);

  // One piece of a split: an added token's id, or a stretch of text (`token_id` = -1).
  struct Piece {
    std::string_view text;
    int32_t token_id = -1;
  };
  // Splits `text` on the added tokens with normalized == `normalized_tokens`. When
  // `skip_special_tokens` is set, special tokens stay text (HF's split_special_tokens).
  void split(std::string_view text, bool normalized_tokens, bool skip_special_tokens,
             std::vector<Piece>& pieces) const;

  const AddedToken* find_by_id(int32_t id) const;
  const AddedToken* find_by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // A byte trie over token contents; edges live in one hash map keyed by (node << 8 | byte).
  struct Trie {
    std::unordered_map<uint64_t, int32_t> edges;
    std::vector<int32_t> terminal_token;  // per node: index into tokens_, or -1
    bool first_byte[256] = {};
    void insert(std::string_view pattern, int32_t token_index);
    // Length of the longest pattern starting at text[start], and its token index (-1 when none).
    int32_t longest_match(std::string_view text, size_t start, size_t& length) const;
  };

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> index_by_id_;
  std::unordered_map<std::string, size_t> index_by_content_;
  Trie raw_trie_;
  Trie normalized_trie_;
};

}  // namespace cartridge
