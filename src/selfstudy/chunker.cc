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
                               std::to_string(options_.min_tokens) + " and " + std::to_string(options_.max_tokens) +
                               ")");
  }
  if (longest_allowed < 1) {
    throw InvalidArgumentError("the model's context leaves no room for a corpus chunk next to the question and "
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

Chunk Chunker::sample(SynthesisRandom& random) const {
  const int64_t length = random.uniform_int(min_length_, max_length_);
  const int64_t start = random.uniform_int(0, corpus_tokens() - length);
  return chunk_at(start, length);
}

}  // namespace cartridge
