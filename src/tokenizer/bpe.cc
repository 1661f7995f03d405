#include "tokenizer/bpe.h"

#include <algorithm>
#include <functional>

#include "tokenizer/unicode.h"

namespace cartridge {

namespace {

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

uint64_t mix(uint64_t key) {  // murmur3's finaliser: spreads consecutive ids over the table
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  key *= 0xc4ceb9fe1a85ec53ULL;
  key ^= key >> 33;
  return key;
}

// One symbol of the word being merged, linked to its neighbours by index (HF's Symbol).
struct Symbol {
  int32_t id;
  int32_t previous;  // index, or -1
  int32_t next;      // index, or -1
  int32_t length;    // bytes of the word it covers; 0 once merged into its left neighbour
};

// A candidate merge of the symbol at `position` with the one after it.
struct Candidate {
  int32_t rank;
  int32_t position;
  int32_t merged_id;
};

// Heap order: the lowest rank first, and among equal ranks the leftmost (HF's Merge ordering).
struct LaterCandidate {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.position > b.position;
  }
};

}  // namespace

void MergeTable::reserve(size_t count) {
  size_t capacity = 16;
  while (capacity < count * 2) capacity *= 2;
  if (capacity <= entries_.size()) return;
  std::vector<Entry> old;
  old.swap(entries_);
  entries_.assign(capacity, Entry{kEmpty, {0, 0}});
  mask_ = capacity - 1;
  size_ = 0;
  for (const Entry& entry : old) {
    if (entry.key != kEmpty) {
      insert_or_assign(static_cast<int32_t>(entry.key >> 32), static_cast<int32_t>(entry.key & 0xFFFFFFFFu),
                       entry.merge);
    }
  }
}

void MergeTable::grow() { reserve(std::max<size_t>(16, size_ * 2 + 2)); }

void MergeTable::insert_or_assign(int32_t left, int32_t right, Merge merge) {
  if (entries_.empty() || (size_ + 1) * 2 > entries_.size()) grow();
  const uint64_t key = pair_key(left, right);
  for (uint64_t slot = mix(key) & mask_;; slot = (slot + 1) & mask_) {
    Entry& entry = entries_[slot];
    if (entry.key == kEmpty) {
      entry = Entry{key, merge};
      ++size_;
      return;
    }
    if (entry.key == key) {
      entry.merge = merge;
      return;
    }
  }
}

const MergeTable::Merge* MergeTable::find(int32_t left, int32_t right) const {
  if (entries_.empty()) return nullptr;
  const uint64_t key = pair_key(left, right);
  for (uint64_t slot = mix(key) & mask_;; slot = (slot + 1) & mask_) {
    const Entry& entry = entries_[slot];
    if (entry.key == key) return &entry.merge;
    if (entry.key == kEmpty) return nullptr;
  }
}

WordCache::Shard& WordCache::shard(const std::string& word) const {
  return shards_[std::hash<std::string>{}(word) % shards_.size()];
}

bool WordCache::lookup(const std::string& word, std::vector<int32_t>& ids) const {
  Shard& target = shard(word);
  std::lock_guard<std::mutex> lock(target.mutex);
  const auto found = target.words.find(word);
  if (found == target.words.end()) return false;
  ids.insert(ids.end(), found->second.begin(), found->second.end());
  return true;
}

void WordCache::store(const std::string& word, const int32_t* ids, size_t count) const {
  Shard& target = shard(word);
  std::lock_guard<std::mutex> lock(target.mutex);
  if (target.words.size() >= kEntriesPerShard) target.words.clear();
  target.words.emplace(word, std::vector<int32_t>(ids, ids + count));
}

BpeModel::BpeModel(std::unordered_map<std::string, int32_t> vocab) : piece_to_id_(std::move(vocab)) {
  small_character_ids_.fill(-1);
  int32_t limit = 0;
  for (const auto& [piece, id] : piece_to_id_) limit = std::max(limit, id + 1);
  id_to_piece_.assign(static_cast<size_t>(limit), nullptr);
  for (const auto& [piece, id] : piece_to_id_) {
    if (id < 0) continue;
    id_to_piece_[static_cast<size_t>(id)] = &piece;
    size_t position = 0;
    if (!piece.empty()) {
      const char32_t first = unicode::next_code_point(piece, position);
      if (position == piece.size() && first < small_character_ids_.size()) small_character_ids_[first] = id;
    }
  }
}

bool BpeModel::add_merge(std::string_view left, std::string_view right) {
  const auto left_id = token_id(left);
  const auto right_id = token_id(right);
  std::string merged;
  merged.reserve(left.size() + right.size());
  merged.append(left).append(right);
  const auto merged_id = token_id(merged);
  if (!left_id || !right_id || !merged_id) return false;
  merges_.insert_or_assign(*left_id, *right_id, {static_cast<int32_t>(merge_count_), *merged_id});
  ++merge_count_;
  return true;
}

void BpeModel::set_unknown(std::optional<int32_t> unknown_id, bool fuse_unknown) {
  unknown_id_ = unknown_id;
  fuse_unknown_ = fuse_unknown;
}

std::optional<int32_t> BpeModel::token_id(std::string_view piece) const {
  const auto found = piece_to_id_.find(std::string(piece));
  if (found == piece_to_id_.end()) return std::nullopt;
  return found->second;
}

const std::string* BpeModel::piece(int32_t id) const {
  if (id < 0 || id >= id_limit()) return nullptr;
  return id_to_piece_[static_cast<size_t>(id)];
}

void BpeModel::encode_word(const std::string& word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto found = piece_to_id_.find(word);
    if (found != piece_to_id_.end()) {
      ids.push_back(found->second);
      return;
    }
  }
  const bool cacheable = word.size() < WordCache::kMaxWordBytes;
  if (cacheable && cache_.lookup(word, ids)) return;
  const size_t first = ids.size();
  merge_word(word, ids);
  if (cacheable) cache_.store(word, ids.data() + first, ids.size() - first);
}

void BpeModel::merge_word(const std::string& word, std::vector<int32_t>& ids) const {
  // Scratch space reused by each thread: words are short but many.
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> queue;
  symbols.clear();
  queue.clear();

  auto add_symbol = [&](int32_t id, int32_t length) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back(Symbol{id, index - 1, -1, length});
  };
  // Characters missing from the vocabulary become the unknown token (joined when fuse_unknown) or vanish.
  int32_t unknown_length = 0;  // bytes of the pending unknown symbol; 0 when there is none
  size_t position = 0;
  while (position < word.size()) {
    const size_t start = position;
    const char32_t code_point = unicode::next_code_point(word, position);
    const auto length = static_cast<int32_t>(position - start);
    int32_t id = code_point < small_character_ids_.size() ? small_character_ids_[code_point] : -1;
    if (id < 0 && code_point >= small_character_ids_.size()) {
      const auto found = piece_to_id_.find(word.substr(start, position - start));
      if (found != piece_to_id_.end()) id = found->second;
    }
    if (id >= 0) {
      if (unknown_length > 0) {
        add_symbol(*unknown_id_, unknown_length);
        unknown_length = 0;
      }
      add_symbol(id, length);
    } else if (unknown_id_) {
      if (unknown_length > 0 && !fuse_unknown_) {
        add_symbol(*unknown_id_, unknown_length);
        unknown_length = 0;
      }
      unknown_length += length;
    }
  }
  if (unknown_length > 0) add_symbol(*unknown_id_, unknown_length);

  const LaterCandidate later;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeTable::Merge* merge = merges_.find(symbols[i].id, symbols[i + 1].id)) {
      queue.push_back(Candidate{merge->rank, static_cast<int32_t>(i), merge->merged_id});
    }
  }
  std::make_heap(queue.begin(), queue.end(), later);
  const auto symbol_count = static_cast<int32_t>(symbols.size());
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), later);
    const Candidate top = queue.back();
    queue.pop_back();
    Symbol& current = symbols[static_cast<size_t>(top.position)];
    if (current.length == 0 || current.next == -1) continue;
    const int32_t next_position = current.next;
    const Symbol right = symbols[static_cast<size_t>(next_position)];
    // A queue entry is stale when the pair at its position no longer merges into the same token.
    const MergeTable::Merge* still = merges_.find(current.id, right.id);
    if (still == nullptr || still->merged_id != top.merged_id) continue;

    current.id = top.merged_id;
    current.length += right.length;
    current.next = right.next;
    symbols[static_cast<size_t>(next_position)].length = 0;
    if (right.next > -1 && right.next < symbol_count)
      symbols[static_cast<size_t>(right.next)].previous = top.position;

    if (current.previous >= 0) {
      const Symbol& previous = symbols[static_cast<size_t>(current.previous)];
      if (const MergeTable::Merge* merge = merges_.find(previous.id, current.id)) {
        queue.push_back(Candidate{merge->rank, current.previous, merge->merged_id});
        std::push_heap(queue.begin(), queue.end(), later);
      }
    }
    if (current.next >= 0 && current.next < symbol_count) {
      const Symbol& following = symbols[static_cast<size_t>(current.next)];
      if (const MergeTable::Merge* merge = merges_.find(current.id, following.id)) {
        queue.push_back(Candidate{merge->rank, top.position, merge->merged_id});
        std::push_heap(queue.begin(), queue.end(), later);
      }
    }
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.length != 0) ids.push_back(symbol.id);
  }
}

}  // namespace cartridge
