#include "generate/sampler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>

#include "util/error.h"

namespace cartridge {
namespace {

TEST(SamplerTest, GreedyIsArgmaxWithTiesToTheLowestId) {
  Sampler sampler(SamplingOptions{});
  EXPECT_EQ(sampler.sample(at::tensor({0.1f, 3.0f, -1.0f, 3.0f})), 1);
}

TEST(SamplerTest, TopKOneIsGreedyAtAnyTemperature) {
  SamplingOptions options;
  options.temperature = 5.0;
  options.top_k = 1;
  Sampler sampler(options);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sampler.sample(at::tensor({0.0f, 1.0f, 2.0f, 0.5f})), 2);
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingTheMass) {
  // Probabilities 0.5, 0.3, 0.2: top_p = 0.6 keeps the first two (0.5 < 0.6 <= 0.8).
  const at::Tensor logits = at::tensor({std::log(0.5f), std::log(0.3f), std::log(0.2f)});
  SamplingOptions options;
  options.temperature = 1.0;
  options.top_p = 0.6;
  options.seed = 7;
  Sampler sampler(options);
  std::map<int64_t, int> counts;
  for (int i = 0; i < 2000; ++i) ++counts[sampler.sample(logits)];
  EXPECT_EQ(counts.count(2), 0u);
  // Renormalised over {0, 1}: 0.625 / 0.375; 2000 draws put the share within a few percent.
  EXPECT_NEAR(counts[0] / 2000.0, 0.625, 0.05);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const at::Tensor logits = at::zeros({1000});
  SamplingOptions options;
  options.temperature = 1.0;
  options.seed = 42;
  Sampler first(options), second(options);
  options.seed = 43;
  Sampler third(options);
  std::vector<int64_t> a, b, c;
  for (int i = 0; i < 32; ++i) {
    a.push_back(first.sample(logits));
    b.push_back(second.sample(logits));
    c.push_back(third.sample(logits));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(SamplerTest, RejectsOutOfRangeSettings) {
  SamplingOptions options;
  options.temperature = -1;
  EXPECT_THROW(Sampler{options}, InvalidArgumentError);
  options = {};
  options.top_p = 0;
  EXPECT_THROW(Sampler{options}, InvalidArgumentError);
  options = {};
  options.top_k = -3;
  EXPECT_THROW(Sampler{options}, InvalidArgumentError);
}

TEST(SamplerTest, TopLogProbsAreSortedFullVocabularyLogSoftmaxPerRow) {
  const at::Tensor logits = at::tensor({1.0f, 4.0f, 2.0f, 3.0f, 0.5f, -1.0f, 2.5f, 0.0f}).view({2, 4});
  const auto [ids, log_probs] = top_log_probabilities(logits, 2);  // [2, 2] each
  const at::Tensor expected = logits.log_softmax(1);
  ASSERT_EQ(ids.scalar_type(), at::kInt);
  EXPECT_TRUE(ids.equal(at::tensor({1, 3, 2, 0}, at::kInt).view({2, 2})));
  EXPECT_FLOAT_EQ(log_probs[0][0].item<float>(), expected[0][1].item<float>());
  EXPECT_FLOAT_EQ(log_probs[0][1].item<float>(), expected[0][3].item<float>());
  EXPECT_FLOAT_EQ(log_probs[1][0].item<float>(), expected[1][2].item<float>());
  EXPECT_FLOAT_EQ(log_probs[1][1].item<float>(), expected[1][0].item<float>());
  // More than the vocabulary: all of it.
  EXPECT_EQ(top_log_probabilities(logits, 9).first.size(1), 4);
}

}  // namespace
}  // namespace cartridge
