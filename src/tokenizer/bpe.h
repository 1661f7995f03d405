// The BPE model: vocabulary, ranked merges, and the merge loop of HF tokenizers (lowest rank first, then
// leftmost; stale queue entries skipped exactly as HF does), with a bounded, thread-safe cache of the
// ids of recently seen words. Immutable after building except for the cache, which has its own locks.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cartridge {

// Open-addressing map from a pair of token ids to (rank, merged id): the innermost lookup of BPE.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  void reserve(size_t count);
  // Sets the merge for (left, right); a later merge of the same pair replaces the earlier one, as in HF.
  void insert_or_assign(int32_t left, int32_t right, Merge merge);
  const Merge* find(int32_t left, int32_t right) const;
  size_t size() const { return size_; }

 private:
  struct Entry {
    uint64_t key;  // (left << 32) | right, or kEmpty
    Merge merge;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  void grow();

  std::vector<Entry> entries_;
  uint64_t mask_ = 0;
  size_t size_ = 0;
};

// Ids of recently encoded words, so a repeated word skips the merge loop. Sharded locks keep threads that
// share one tokenizer from serialising on it; each shard is cleared when full, which bounds memory.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 256;      // longer words are not cached (as HF)
  static constexpr size_t kEntriesPerShard = 4096;  // 16 shards: at most 65,536 words

  // Appends the cached ids of `word` to `ids` and returns true, or returns false.
  bool lookup(const std::string& word, std::vector<int32_t>& ids) const;
  void store(const std::string& word, const int32_t* ids, size_t count) const;

 private:
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };
  Shard& shard(const std::string& word) const;
  mutable std::array<Shard, 16> shards_;
};

class BpeModel {
 public:
  // `vocab`: token string (in the model's alphabet) -> id.
  explicit BpeModel(std::unordered_map<std::string, int32_t> vocab);
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Appends a merge of rank merge_count(); returns false (and adds nothing) when `left`, `right` or their
  // concatenation is not in the vocabulary, which callers report as a malformed file.
  bool add_merge(std::string_view left, std::string_view right);
  size_t merge_count() const { return merge_count_; }

  // HF BPE options. ignore_merges: a word that is itself in the vocabulary is one token. unknown_id: the
  // id for characters missing from the vocabulary (they are dropped when unset); fuse_unknown joins a run.
  void set_ignore_merges(bool ignore_merges) { ignore_merges_ = ignore_merges; }
  void set_unknown(std::optional<int32_t> unknown_id, bool fuse_unknown);

  // Appends the ids of one word (in the model's alphabet). Thread-safe.
  void encode_word(const std::string& word, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_id(std::string_view piece) const;
  // The vocabulary string of `id`, or nullptr when the vocabulary has no such id.
  const std::string* piece(int32_t id) const;
  // One past the largest id in the vocabulary.
  int32_t id_limit() const { return static_cast<int32_t>(id_to_piece_.size()); }
  size_t size() const { return piece_to_id_.size(); }

 private:
  void merge_word(const std::string& word, std::vector<int32_t>& ids) const;

  std::unordered_map<std::string, int32_t> piece_to_id_;
  std::vector<const std::string*> id_to_piece_;       // points into piece_to_id_ (stable node addresses)
  std::array<int32_t, 0x200> small_character_ids_{};  // one-character tokens below U+0200 (the byte alphabet)
  MergeTable merges_;
  size_t merge_count_ = 0;
  bool ignore_merges_ = false;
  std::optional<int32_t> unknown_id_;
  bool fuse_unknown_ = false;
  WordCache cache_;
};

}  // namespace cartridge
