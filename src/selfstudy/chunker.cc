#include "selfstudy/chunker.h"

#include <algorithm>

#include <c10/util/Exception.h>

#include "util/error.h"

namespace cartridge {

Chunker::Chunker(const Tokenizer& tokenizer, std::vector<int32_t> corpus_ids, ChunkerOptions options,
                 int64_t longest_allowed)
    : tokenizer_(tokenizer), corpus_ids_(std::move(corpus_ids)), options_(std::move(options)) {
  if (corpus_ids_.empty()) throw InvalidArgumentError("the corpus is empty: give a file with some text");
  if (options_.min_tokens < 1 || options_.min_tokens > options_.max_tokens) {
    throw InvalidArgumentError("chunk sizes must satisfy 1 <= --min-chunk <= --max-chunk (got " +
                               std::to_string(options_.min_tokens) + " and " +
                               std::to_string(options_.max_tokens) + ")");
  }
  if (longest_allowed < 1) {
    throw InvalidArgumentError(
        "the model's context leaves no room for a corpus chunk next to the question and "
        "answer (lower --max-question-tokens / --max-answer-tokens)");
  }
  max_length_ = std::min({options_.max_tokens, corpus_tokens(), longest_allowed});
  min_length_ = std::min(options_.min_tokens, max_length_);
}

Chunk Chunker::chunk_at(int64_t start, int64_t length) const {
  TORCH_CHECK(start >= 0 && length >= 1 && start + length <= corpus_tokens(), "chunk out of the corpus");
  Chunk chunk;
  chunk.start = start;
  chunk.length = length;
  const std::vector<int32_t> ids(corpus_ids_.begin() + start, corpus_ids_.begin() + start + length);
  const std::string text = tokenizer_.decode(ids, /*skip_special_tokens=*/false);
  chunk.text = options_.description.empty() ? text : options_.description + "\n\n" + text;
  return chunk;
}

const char* chunk_placement_name(ChunkPlacement placement) {
  return placement == ChunkPlacement::kEvenCoverage ? "even_coverage" : "uniform_start";
}

ChunkPlacement parse_chunk_placement(const std::string& name) {
  if (name == "uniform_start") return ChunkPlacement::kUniformStart;
  if (name == "even_coverage") return ChunkPlacement::kEvenCoverage;
  throw InvalidArgumentError("--chunk-placement must be uniform_start or even_coverage (got '" + name + "')");
}

Chunk Chunker::sample(SynthesisRandom& random) const {
  const int64_t length = random.uniform_int(min_length_, max_length_);
  if (options_.placement == ChunkPlacement::kUniformStart) {
    return chunk_at(random.uniform_int(0, corpus_tokens() - length), length);
  }
  // Window [window_start, window_start + length) over the corpus extended by length - 1 tokens on each side:
  // each corpus token lies in exactly `length` of the N + length - 1 windows.
  const int64_t window_start = random.uniform_int(-(length - 1), corpus_tokens() - 1);
  int64_t start = std::max<int64_t>(window_start, 0);
  int64_t end = std::min<int64_t>(window_start + length, corpus_tokens());
  if (end - start < min_length_) {  // widen into the corpus (min_length_ <= N, so this fits)
    if (start == 0) {
      end = min_length_;
    } else {
      start = corpus_tokens() - min_length_;
    }
  }
  return chunk_at(start, end - start);
}

}  // namespace cartridge
