// Random corpus chunks: bounds, uniform coverage, determinism, text = decoded tokens (+ description).
#include "selfstudy/chunker.h"

#include <algorithm>
#include <set>

#include <gtest/gtest.h>

#include "test_support.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {
namespace {

using testing::fixture_path;

class ChunkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = std::make_unique<Tokenizer>(
        Tokenizer::from_tokenizer_json(fixture_path("synthesis/tiny_llama/tokenizer.json"),
                                       fixture_path("synthesis/tiny_llama/tokenizer_config.json")));
    corpus_ids_ = tokenizer_->encode(read_text_file(fixture_path("synthesis/corpus.txt")), false);
    ASSERT_GT(corpus_ids_.size(), 1000u);
  }
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<int32_t> corpus_ids_;
};

TEST_F(ChunkerTest, LengthsAndStartsStayInBoundsAndCoverTheRange) {
  ChunkerOptions options;
  options.min_tokens = 100;
  options.max_tokens = 300;
  const Chunker chunker(*tokenizer_, corpus_ids_, options, /*longest_allowed=*/100000);
  EXPECT_EQ(chunker.min_length(), 100);
  EXPECT_EQ(chunker.max_length(), 300);
  const int64_t corpus = static_cast<int64_t>(corpus_ids_.size());
  std::set<int64_t> lengths;
  int64_t lowest_start = corpus, highest_end = 0;
  for (uint64_t index = 0; index < 2000; ++index) {
    SynthesisRandom random(7, RandomPurpose::kChunk, index);
    const Chunk chunk = chunker.sample(random);
    ASSERT_GE(chunk.length, 100);
    ASSERT_LE(chunk.length, 300);
    ASSERT_GE(chunk.start, 0);
    ASSERT_LE(chunk.start + chunk.length, corpus);
    lengths.insert(chunk.length);
    lowest_start = std::min(lowest_start, chunk.start);
    highest_end = std::max(highest_end, chunk.start + chunk.length);
  }
  // Uniform draws over 201 lengths and ~1400 starts: 2000 samples reach both ends and most lengths.
  EXPECT_TRUE(lengths.count(100) || lengths.count(101));
  EXPECT_TRUE(lengths.count(300) || lengths.count(299));
  EXPECT_GT(lengths.size(), 180u);
  EXPECT_LT(lowest_start, 10);
  EXPECT_GT(highest_end, corpus - 10);
}

// How often each corpus token lies in a sampled chunk, [N] counts over `samples` chunks.
std::vector<int64_t> coverage(const Chunker& chunker, int64_t samples) {
  std::vector<int64_t> counts(chunker.corpus_tokens(), 0);
  for (int64_t index = 0; index < samples; ++index) {
    SynthesisRandom random(11, RandomPurpose::kChunk, static_cast<uint64_t>(index));
    const Chunk chunk = chunker.sample(random);
    EXPECT_GE(chunk.length, chunker.min_length());
    EXPECT_LE(chunk.length, chunker.max_length());
    EXPECT_GE(chunk.start, 0);
    EXPECT_LE(chunk.start + chunk.length, chunker.corpus_tokens());
    for (int64_t token = chunk.start; token < chunk.start + chunk.length; ++token) ++counts[token];
  }
  return counts;
}

TEST_F(ChunkerTest, UniformStartSeesTheEndsLessEvenCoverageSeesEveryTokenAlike) {
  ChunkerOptions options;
  options.min_tokens = 100;
  options.max_tokens = 300;
  const int64_t corpus = static_cast<int64_t>(corpus_ids_.size());
  const int64_t middle = corpus / 2;
  const auto ratio = [&](const std::vector<int64_t>& counts, int64_t token) {
    return static_cast<double>(counts[token]) / static_cast<double>(counts[middle]);
  };
  // Uniform start: token 5 is in about 6 / (N - L + 1) of the chunks, the middle in L / (N - L + 1).
  const std::vector<int64_t> uniform_start =
      coverage(Chunker(*tokenizer_, corpus_ids_, options, 100000), 20000);
  EXPECT_LT(ratio(uniform_start, 5), 0.2);
  EXPECT_LT(ratio(uniform_start, corpus - 6), 0.2);
  // Even coverage: (L + x) / L of the middle for x tokens from an end (x = 5: about 1.03), sampling noise
  // about 2 % at 20000 chunks.
  options.placement = ChunkPlacement::kEvenCoverage;
  const std::vector<int64_t> even = coverage(Chunker(*tokenizer_, corpus_ids_, options, 100000), 20000);
  for (const int64_t token : {int64_t{0}, int64_t{5}, corpus - 6, corpus - 1}) {
    EXPECT_GT(ratio(even, token), 0.9) << "token " << token;
    EXPECT_LT(ratio(even, token), 1.15) << "token " << token;
  }
  EXPECT_STREQ(chunk_placement_name(ChunkPlacement::kEvenCoverage), "even_coverage");
  EXPECT_STREQ(chunk_placement_name(ChunkPlacement::kUniformStart), "uniform_start");
  EXPECT_EQ(parse_chunk_placement("even_coverage"), ChunkPlacement::kEvenCoverage);
  EXPECT_EQ(parse_chunk_placement("uniform_start"), ChunkPlacement::kUniformStart);
  EXPECT_THROW(parse_chunk_placement("middle"), InvalidArgumentError);
}

TEST_F(ChunkerTest, BoundedByCorpusAndContext) {
  ChunkerOptions options;
  options.min_tokens = 512;
  options.max_tokens = 4096;
  const int64_t corpus = static_cast<int64_t>(corpus_ids_.size());
  {
    // The corpus is shorter than max_tokens: chunks up to the whole corpus.
    const Chunker chunker(*tokenizer_, corpus_ids_, options, 100000);
    EXPECT_EQ(chunker.max_length(), corpus);
    EXPECT_EQ(chunker.min_length(), 512);
  }
  {
    // The context allows only 300 tokens: every chunk is 300 tokens (min is cut too).
    const Chunker chunker(*tokenizer_, corpus_ids_, options, 300);
    EXPECT_EQ(chunker.min_length(), 300);
    EXPECT_EQ(chunker.max_length(), 300);
    SynthesisRandom random(1, RandomPurpose::kChunk, 0);
    EXPECT_EQ(chunker.sample(random).length, 300);
  }
  {
    // A corpus shorter than min_tokens: the whole corpus every time.
    std::vector<int32_t> short_corpus(corpus_ids_.begin(), corpus_ids_.begin() + 50);
    const Chunker chunker(*tokenizer_, short_corpus, options, 100000);
    SynthesisRandom random(1, RandomPurpose::kChunk, 0);
    const Chunk chunk = chunker.sample(random);
    EXPECT_EQ(chunk.start, 0);
    EXPECT_EQ(chunk.length, 50);
  }
}

TEST_F(ChunkerTest, TextIsTheDecodedTokensAfterTheDescription) {
  ChunkerOptions options;
  options.min_tokens = 20;
  options.max_tokens = 40;
  const Chunker plain(*tokenizer_, corpus_ids_, options, 100000);
  options.description = "An excerpt from the harbour records of a fictional town.";
  const Chunker described(*tokenizer_, corpus_ids_, options, 100000);
  for (uint64_t index = 0; index < 20; ++index) {
    SynthesisRandom random_a(3, RandomPurpose::kChunk, index), random_b(3, RandomPurpose::kChunk, index);
    const Chunk a = plain.sample(random_a);
    const Chunk b = described.sample(random_b);
    // Same stream, same draw.
    ASSERT_EQ(a.start, b.start);
    ASSERT_EQ(a.length, b.length);
    const std::vector<int32_t> ids(corpus_ids_.begin() + a.start, corpus_ids_.begin() + a.start + a.length);
    EXPECT_EQ(a.text, tokenizer_->decode(ids));
    EXPECT_EQ(b.text, options.description + "\n\n" + a.text);
  }
}

TEST_F(ChunkerTest, SameStreamSameChunkOtherStreamsDiffer) {
  ChunkerOptions options;
  options.min_tokens = 10;
  options.max_tokens = 1000;
  const Chunker chunker(*tokenizer_, corpus_ids_, options, 100000);
  SynthesisRandom first(5, RandomPurpose::kChunk, 9), again(5, RandomPurpose::kChunk, 9);
  const Chunk a = chunker.sample(first), b = chunker.sample(again);
  EXPECT_EQ(a.start, b.start);
  EXPECT_EQ(a.length, b.length);
  std::set<std::pair<int64_t, int64_t>> distinct;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    SynthesisRandom random(seed, RandomPurpose::kChunk, 9);
    const Chunk chunk = chunker.sample(random);
    distinct.insert({chunk.start, chunk.length});
  }
  EXPECT_EQ(distinct.size(), 10u);
}

TEST_F(ChunkerTest, BadOptionsAreRefused) {
  ChunkerOptions options;
  options.min_tokens = 10;
  options.max_tokens = 5;
  EXPECT_THROW(Chunker(*tokenizer_, corpus_ids_, options, 1000), InvalidArgumentError);
  options.min_tokens = 0;
  EXPECT_THROW(Chunker(*tokenizer_, corpus_ids_, options, 1000), InvalidArgumentError);
  options = ChunkerOptions();
  EXPECT_THROW(Chunker(*tokenizer_, {}, options, 1000), InvalidArgumentError);
  EXPECT_THROW(Chunker(*tokenizer_, corpus_ids_, options, 0), InvalidArgumentError);
}

TEST(SynthesisRandomTest, UniformIntCoversTheRangeWithoutBias) {
  SynthesisRandom random(11, RandomPurpose::kConversation, 0);
  std::vector<int64_t> counts(6, 0);
  for (int i = 0; i < 60000; ++i) {
    const int64_t value = random.uniform_int(-2, 3);
    ASSERT_GE(value, -2);
    ASSERT_LE(value, 3);
    ++counts[value + 2];
  }
  // Each of 6 values ~10000 times; 5 standard deviations is about 460.
  for (int64_t count : counts) EXPECT_NEAR(count, 10000, 460);
  EXPECT_EQ(random.uniform_int(4, 4), 4);
}

}  // namespace
}  // namespace cartridge
