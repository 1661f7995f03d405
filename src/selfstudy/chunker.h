// Random token chunks of a corpus (self-study, spec §B1.1 step 1): the teacher sees one chunk at a time,
// so a corpus longer than the model's context can still be studied and every part of it gets covered.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "selfstudy/synthesis_random.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

struct ChunkerOptions {
  int64_t min_tokens = 512;   // shortest chunk asked for, tokens
  int64_t max_tokens = 4096;  // longest chunk asked for, tokens
  // One line describing the corpus; when set, the chunk text is `description + "\n\n" + chunk` (as in the
  // paper, so the teacher knows what the excerpt is part of).
  std::string description;
};

struct Chunk {
  int64_t start = 0;   // first corpus token
  int64_t length = 0;  // tokens
  std::string text;    // the tokens decoded (special tokens kept), after the description if there is one
};

class Chunker {
 public:
  // `corpus_ids` [N]: the corpus tokenized without special tokens. `longest_allowed`: the most tokens a
  // chunk may have so that the teacher's prompt and its generations fit the model's context. Throws
  // InvalidArgumentError for an empty corpus, min_tokens < 1, min_tokens > max_tokens or
  // longest_allowed < 1 (naming what to change).
  Chunker(const Tokenizer& tokenizer, std::vector<int32_t> corpus_ids, ChunkerOptions options,
          int64_t longest_allowed);

  // Length bounds actually used: the asked range cut to the corpus length and to longest_allowed (when the
  // corpus or the context is shorter than min_tokens, every chunk has the largest possible length).
  int64_t min_length() const { return min_length_; }
  int64_t max_length() const { return max_length_; }
  int64_t corpus_tokens() const { return static_cast<int64_t>(corpus_ids_.size()); }

  // A chunk: length uniform in [min_length(), max_length()], start uniform among the positions where it
  // fits.
  Chunk sample(SynthesisRandom& random) const;

  // The chunk [start, start + length) of the corpus (for tests and tools).
  Chunk chunk_at(int64_t start, int64_t length) const;

 private:
  Tokenizer tokenizer_;
  std::vector<int32_t> corpus_ids_;  // [N]
  ChunkerOptions options_;
  int64_t min_length_ = 0;
  int64_t max_length_ = 0;
};

}  // namespace cartridge
