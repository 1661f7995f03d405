#include "tokenizer/added_vocabulary.h"

#include <algorithm>

#include "tokenizer/unicode.h"

namespace cartridge {

namespace {

// Byte offset where the last character of `text` starts (text non-empty, valid UTF-8).
size_t last_character_start(std::string_view text) {
  size_t start = text.size() - 1;
  while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  return start;
}

bool ends_with_word_character(std::string_view text) {
  if (text.empty()) return false;
  size_t position = last_character_start(text);
  return unicode::is_word_character(unicode::next_code_point(text, position));
}

bool starts_with_word_character(std::string_view text) {
  if (text.empty()) return false;
  size_t position = 0;
  return unicode::is_word_character(unicode::next_code_point(text, position));
}

// Where the whitespace at the end of `text` begins (text.size() when there is none).
size_t trailing_whitespace_start(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    const size_t start = last_character_start(text.substr(0, end));
    size_t position = start;
    if (!unicode::is_whitespace(unicode::next_code_point(text, position))) break;
    end = start;
  }
  return end;
}

// Bytes of whitespace at the start of `text`.
size_t leading_whitespace_length(std::string_view text) {
  size_t position = 0;
  while (position < text.size()) {
    size_t next = position;
    if (!unicode::is_whitespace(unicode::next_code_point(text, next))) break;
    position = next;
  }
  return position;
}

}  // namespace

void AddedVocabulary::Trie::insert(std::string_view pattern, int32_t token_index) {
  if (pattern.empty()) return;
  if (terminal_token.empty()) terminal_token.push_back(-1);  // the root
  uint64_t node = 0;
  for (const char c : pattern) {
    const uint64_t key = (node << 8) | static_cast<uint8_t>(c);
    const auto found = edges.find(key);
    if (found != edges.end()) {
      node = static_cast<uint64_t>(found->second);
    } else {
      const auto child = static_cast<int32_t>(terminal_token.size());
      terminal_token.push_back(-1);
      edges.emplace(key, child);
      node = static_cast<uint64_t>(child);
    }
  }
  // Two tokens with the same pattern: the first one wins, as aho-corasick reports the first pattern.
  if (terminal_token[node] < 0) terminal_token[node] = token_index;
  first_byte[static_cast<uint8_t>(pattern[0])] = true;
}

int32_t AddedVocabulary::Trie::longest_match(std::string_view text, size_t start, size_t& length) const {
  int32_t best = -1;
  uint64_t node = 0;
  for (size_t i = start; i < text.size(); ++i) {
    const auto found = edges.find((node << 8) | static_cast<uint8_t>(text[i]));
    if (found == edges.end()) break;
    node = static_cast<uint64_t>(found->second);
    if (terminal_token[node] >= 0) {
      best = terminal_token[node];
      length = i + 1 - start;
    }
  }
  return best;
}

bool AddedVocabulary::add(AddedToken token) {
  if (token.content.empty() || index_by_content_.count(token.content) != 0) return false;
  const size_t index = tokens_.size();
  index_by_content_.emplace(token.content, index);
  index_by_id_.emplace(token.id, index);
  tokens_.push_back(std::move(token));
  return true;
}

void AddedVocabulary::build(const Normalizer& normalizer) {
  raw_trie_ = Trie();
  normalized_trie_ = Trie();
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& token = tokens_[i];
    if (token.normalized) {
      normalized_trie_.insert(normalizer.apply(token.content), static_cast<int32_t>(i));
    } else {
      raw_trie_.insert(token.content, static_cast<int32_t>(i));
    }
  }
}

void AddedVocabulary::split(std::string_view text, bool normalized_tokens, bool skip_special_tokens,
                            std::vector<Piece>& pieces) const {
  const Trie& trie = normalized_tokens ? normalized_trie_ : raw_trie_;
  size_t start_offset = 0;  // end of what has been emitted
  if (!trie.edges.empty()) {
    size_t scan = 0;
    while (scan < text.size()) {
      if (!trie.first_byte[static_cast<uint8_t>(text[scan])]) {
        ++scan;
        continue;
      }
      size_t length = 0;
      const int32_t index = trie.longest_match(text, scan, length);
      if (index < 0) {
        ++scan;
        continue;
      }
      // Matches are found first and filtered after, as HF does: a rejected match is not searched again
      // for a shorter token inside it.
      size_t start = scan;
      size_t stop = scan + length;
      scan = stop;
      const AddedToken& token = tokens_[static_cast<size_t>(index)];
      if (skip_special_tokens && token.special) continue;
      if (token.single_word) {
        const bool space_before = start == 0 || !ends_with_word_character(text.substr(0, start));
        const bool space_after = stop == text.size() || !starts_with_word_character(text.substr(stop));
        if (!space_before || !space_after) continue;
      }
      if (token.lstrip) start = std::max(trailing_whitespace_start(text.substr(0, start)), start_offset);
      if (token.rstrip) stop += leading_whitespace_length(text.substr(stop));
      if (start_offset < start) pieces.push_back(Piece{text.substr(start_offset, start - start_offset), -1});
      pieces.push_back(Piece{text.substr(start, stop - start), token.id});
      start_offset = stop;
    }
  }
  if (start_offset < text.size()) pieces.push_back(Piece{text.substr(start_offset), -1});
}

const AddedToken* AddedVocabulary::find_by_id(int32_t id) const {
  const auto found = index_by_id_.find(id);
  return found == index_by_id_.end() ? nullptr : &tokens_[found->second];
}

const AddedToken* AddedVocabulary::find_by_content(std::string_view content) const {
  const auto found = index_by_content_.find(std::string(content));
  return found == index_by_content_.end() ? nullptr : &tokens_[found->second];
}

}  // namespace cartridge
