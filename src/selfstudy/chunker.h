// Random token chunks of a corpus (self-study, docs/self_study.md step 1): the teacher sees one chunk at a
// time, so a corpus longer than the model's context can still be studied and every part of it gets covered.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "selfstudy/synthesis_random.h"
#include "tokenizer/tokenizer.h"

namespace cartridge {

// Where a chunk of a given length goes.
enum class ChunkPlacement {
  // Start uniform among the positions where the chunk fits (the paper's TokenChunker). Tokens near either end
  // of the corpus are covered less often: with chunks of L tokens in a corpus of N, token x < L is in
  // (x + 1) / (N - L + 1) of the chunks against L / (N - L + 1) in the middle (5x less at x = 150 for
  // N = 2224, L = 768). Negligible for a corpus much longer than its chunks.
  kUniformStart,
  // Every token equally likely to be covered: a window of L tokens starts uniform in [-(L - 1), N - 1] and
  // is cut to the corpus, so chunks at the ends are shorter; one shorter than the shortest length (m) is
  // widened into the corpus to m tokens, so token x < m of either end is covered (L + x) / L times as often
  // as the middle (1 at the very end, under 1 + m / L).
  kEvenCoverage,
};

// "uniform_start" / "even_coverage" (the --chunk-placement values and the dataset setting).
const char* chunk_placement_name(ChunkPlacement placement);
// The inverse; throws InvalidArgumentError naming both choices for any other name.
ChunkPlacement parse_chunk_placement(const std::string& name);

struct ChunkerOptions {
  int64_t min_tokens = 512;   // shortest chunk asked for, tokens
  int64_t max_tokens = 4096;  // longest chunk asked for, tokens
  // One line describing the corpus; when set, the chunk text is `description + "\n\n" + chunk` (as in the
  // paper, so the teacher knows what the excerpt is part of).
  std::string description;
  ChunkPlacement placement = ChunkPlacement::kUniformStart;
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
  const std::vector<int32_t>& corpus_ids() const { return corpus_ids_; }

  // A chunk: length uniform in [min_length(), max_length()], placed as options.placement says.
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
