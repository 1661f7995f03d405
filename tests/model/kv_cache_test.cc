// KvCache operations used by generation and serving (fork, select rows, concatenate rows, drop padding
// columns, clone, reserve; the row pool's rows joining and leaving) must not change what the model
// computes. The reference is the same model
// (the tiny Qwen3 whose forward matches transformers, model_parity_test.cc) run on an untouched cache.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "model/model.h"
#include "model_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::max_abs_diff;

constexpr double kTolerance = 1e-5;

class KvCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LoadOptions options;
    options.show_progress = false;
    model_ = Model::load(testing::hf_model_files(fixture_path("model/qwen3")), options);
    cases_ = testing::read_tensors(fixture_path("model/qwen3_cases.safetensors"));
  }

  // Logits [B, V] of one decode step with `tokens` [B] on `cache`.
  at::Tensor step(KvCache& cache, const at::Tensor& tokens) const {
    ForwardOptions last_only;
    last_only.last_token_only = true;
    return model_->forward(tokens.view({-1, 1}), at::ones({tokens.size(0), 1}, at::kBool), cache, last_only)
        .squeeze(1);
  }

  KvCache prefill(const at::Tensor& ids, const at::Tensor& mask) const {
    KvCache cache = model_->new_cache(ids.size(0));
    model_->forward(ids, mask, cache);
    return cache;
  }

  at::Tensor tokens(std::vector<int64_t> values) const { return at::tensor(values, at::kLong); }

  // Two prefixes to share: the KV of prompt 0 alone (7 slots) and of prompt 1's first 3 tokens alone.
  std::pair<std::shared_ptr<const KvPrefix>, std::shared_ptr<const KvPrefix>> two_prefixes() const {
    const at::Tensor& ids = testing::get(cases_, "padded_ids");  // [3, 7]
    KvCache first = prefill(ids.narrow(0, 0, 1), at::ones({1, 7}, at::kBool));
    KvCache second = prefill(ids.narrow(0, 1, 1).narrow(1, 0, 3), at::ones({1, 3}, at::kBool));
    return {std::make_shared<const KvPrefix>(first.row_prefix(0, 7)),
            std::make_shared<const KvPrefix>(second.row_prefix(0, 3))};
  }

  std::shared_ptr<const Model> model_;
  std::map<std::string, at::Tensor> cases_;
};

TEST_F(KvCacheTest, ShallowCopiesSharingCapacityDoNotOverwriteEachOther) {
  c10::InferenceMode inference;
  const at::Tensor& ids = testing::get(cases_, "padded_ids");
  const at::Tensor& mask = testing::get(cases_, "padded_mask");
  KvCache original = prefill(ids, mask);
  original.reserve(8);
  KvCache fork = original;  // shares the growth buffers
  KvCache reference = original.clone();

  const at::Tensor first = step(original, tokens({1, 2, 3}));  // writes slot 7 in place
  const at::Tensor forked = step(fork, tokens({4, 5, 6}));     // must not write into the same slot
  const at::Tensor expected = step(reference, tokens({4, 5, 6}));
  EXPECT_LE(max_abs_diff(forked, expected), kTolerance);
  // The original continues from its own token, unaffected by the fork.
  KvCache original_reference = prefill(ids, mask);
  step(original_reference, tokens({1, 2, 3}));
  EXPECT_LE(max_abs_diff(step(original, tokens({7, 8, 9})), step(original_reference, tokens({7, 8, 9}))),
            kTolerance);
  EXPECT_GT(max_abs_diff(first, forked), 0.0);
}

TEST_F(KvCacheTest, CacheFilledUnderInferenceModeKeepsWorkingOutsideIt) {
  const at::Tensor& ids = testing::get(cases_, "padded_ids");
  const at::Tensor& mask = testing::get(cases_, "padded_mask");
  KvCache cache;
  {
    c10::InferenceMode inference;
    cache = prefill(ids, mask);
    cache.reserve(4);
  }
  // Outside InferenceMode the inference-mode buffers cannot be written in place; appends must still work.
  at::NoGradGuard no_grad;
  const at::Tensor outside = step(cache, tokens({1, 2, 3}));
  KvCache reference = prefill(ids, mask);
  EXPECT_LE(max_abs_diff(outside, step(reference, tokens({1, 2, 3}))), kTolerance);
  cache.reserve(4);
  EXPECT_LE(max_abs_diff(step(cache, tokens({4, 5, 6})), step(reference, tokens({4, 5, 6}))), kTolerance);
}

TEST_F(KvCacheTest, SelectRowsKeepsEachRowsComputation) {
  c10::InferenceMode inference;
  KvCache cache = prefill(testing::get(cases_, "padded_ids"), testing::get(cases_, "padded_mask"));
  KvCache selected = cache.select_rows(tokens({2, 0}));
  EXPECT_EQ(selected.batch_size(), 2);
  const at::Tensor full = step(cache, tokens({11, 22, 33}));
  const at::Tensor subset = step(selected, tokens({33, 11}));
  EXPECT_LE(max_abs_diff(subset[0], full[2]), kTolerance);
  EXPECT_LE(max_abs_diff(subset[1], full[0]), kTolerance);
}

TEST_F(KvCacheTest, ConcatRowsOfDifferentLengthsEqualsSeparateRows) {
  c10::InferenceMode inference;
  const at::Tensor& ids = testing::get(cases_, "padded_ids");
  KvCache long_row = prefill(ids.narrow(0, 0, 1), at::ones({1, 7}, at::kBool));
  KvCache short_row = prefill(ids.narrow(0, 0, 1).narrow(1, 0, 4), at::ones({1, 4}, at::kBool));
  KvCache both = KvCache::concat_rows({long_row, short_row});
  EXPECT_EQ(both.batch_size(), 2);
  EXPECT_EQ(both.length(), 7);
  EXPECT_EQ(both.slot_mask()[1].sum().item<int64_t>(), 4);
  EXPECT_EQ(both.next_positions()[1].item<int64_t>(), 4);
  const at::Tensor together = step(both, tokens({5, 6}));
  EXPECT_LE(max_abs_diff(together[0], step(long_row, tokens({5}))[0]), kTolerance);
  EXPECT_LE(max_abs_diff(together[1], step(short_row, tokens({6}))[0]), kTolerance);
}

TEST_F(KvCacheTest, DropPaddingColumnsKeepsResults) {
  c10::InferenceMode inference;
  KvCache cache = prefill(testing::get(cases_, "padded_ids"), testing::get(cases_, "padded_mask"));
  KvCache right_padded = cache.select_rows(tokens({1}));  // 5 real tokens, then 2 padding slots
  KvCache trimmed = right_padded;
  trimmed.drop_padding_columns();
  EXPECT_EQ(trimmed.length(), 5);
  EXPECT_TRUE(trimmed.slot_mask().all().item<bool>());
  EXPECT_EQ(trimmed.keys(0).size(2), 5);
  EXPECT_LE(max_abs_diff(step(trimmed, tokens({9})), step(right_padded, tokens({9}))), kTolerance);
}

TEST_F(KvCacheTest, EmptyCacheAndBytesPerToken) {
  const KvCache cache = model_->new_cache(4);
  EXPECT_EQ(cache.batch_size(), 4);
  EXPECT_EQ(cache.length(), 0);
  EXPECT_EQ(cache.num_layers(), model_->config().num_layers);
  EXPECT_EQ(cache.keys(0).sizes(),
            at::IntArrayRef({4, model_->config().num_key_value_heads, 0, model_->config().head_dim}));
  EXPECT_TRUE(cache.next_positions().equal(at::zeros({4}, at::kLong)));
}

TEST_F(KvCacheTest, GradientFlowsThroughSeveralCalls) {
  // Prefix trained over a prompt then an answer fed in a second call (autograd across appends).
  const ModelConfig& config = model_->config();
  KvPrefix prefix;
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    prefix.keys.push_back(at::randn({config.num_key_value_heads, 3, config.head_dim}).requires_grad_(true));
    prefix.values.push_back(at::randn({config.num_key_value_heads, 3, config.head_dim}).requires_grad_(true));
  }
  const std::vector<at::Tensor>& keys = prefix.keys;
  const std::vector<at::Tensor>& values = prefix.values;
  KvCache cache = KvCache::with_prefix(prefix, 2);
  const at::Tensor ids = testing::get(cases_, "padded_ids").narrow(0, 0, 2);
  model_->forward(ids.narrow(1, 0, 4), at::ones({2, 4}, at::kBool), cache);
  const at::Tensor logits = model_->forward(ids.narrow(1, 4, 3), at::ones({2, 3}, at::kBool), cache);
  logits.logsumexp(-1).sum().backward();
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    ASSERT_TRUE(keys[layer].grad().defined());
    EXPECT_GT(keys[layer].grad().abs().sum().item<double>(), 0.0);
    EXPECT_GT(values[layer].grad().abs().sum().item<double>(), 0.0);
  }
  EXPECT_EQ(cache.next_positions()[0].item<int64_t>(), 3 + 7);
}

TEST_F(KvCacheTest, RowPrefixesEqualTheRowsTheyCameFrom) {
  c10::InferenceMode inference;
  const at::Tensor& ids = testing::get(cases_, "padded_ids");
  // Two prompts prefilled alone become prefixes; a batch with a prefix per row (one row without) computes
  // what each row computes on its own cache.
  KvCache first = prefill(ids.narrow(0, 0, 1), at::ones({1, 7}, at::kBool));
  KvCache second = prefill(ids.narrow(0, 1, 1).narrow(1, 0, 3), at::ones({1, 3}, at::kBool));
  const auto first_prefix = std::make_shared<const KvPrefix>(first.row_prefix(0, 7));
  const auto second_prefix = std::make_shared<const KvPrefix>(second.row_prefix(0, 3));
  EXPECT_EQ(first_prefix->length(), 7);
  EXPECT_EQ(second_prefix->first(2).length(), 2);
  KvCache batch = KvCache::with_row_prefixes(model_->config(), model_->dtype(), model_->device(),
                                             {first_prefix, nullptr, second_prefix});
  EXPECT_EQ(batch.length(), 7);
  EXPECT_TRUE(batch.next_positions().equal(tokens({7, 0, 3})));
  EXPECT_EQ(batch.slot_mask().sum().item<int64_t>(), 7 + 3);
  const at::Tensor together = step(batch, tokens({5, 6, 7}));
  KvCache alone = model_->new_cache(1);
  EXPECT_LE(max_abs_diff(together[0], step(first, tokens({5}))[0]), kTolerance);
  EXPECT_LE(max_abs_diff(together[1], step(alone, tokens({6}))[0]), kTolerance);
  EXPECT_LE(max_abs_diff(together[2], step(second, tokens({7}))[0]), kTolerance);
  // K and V in use: rows x slots x layers x 2 x H_kv x D x 4 bytes (padding included).
  const ModelConfig& config = model_->config();
  EXPECT_EQ(batch.bytes(), 3 * 8 * config.kv_bytes_per_token(at::kFloat));
}

TEST_F(KvCacheTest, SharedPrefixesComputeWhatCopiedPrefixesDo) {
  c10::InferenceMode inference;
  const at::Tensor& ids = testing::get(cases_, "padded_ids");  // [3, 7]
  const auto [first_prefix, second_prefix] = two_prefixes();
  const std::vector<std::shared_ptr<const KvPrefix>> prefixes = {first_prefix, nullptr, first_prefix,
                                                                 second_prefix};
  const ModelConfig& config = model_->config();
  KvCache copied = KvCache::with_row_prefixes(config, model_->dtype(), model_->device(), prefixes);
  KvCache shared = KvCache::with_shared_prefixes(config, model_->dtype(), model_->device(),
                                                 {{first_prefix}, {}, {first_prefix}, {second_prefix}});
  ASSERT_EQ(shared.shared_prefixes().size(), 2u);
  EXPECT_EQ(shared.shared_prefixes()[0].rows, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(shared.shared_prefixes()[1].rows, (std::vector<int64_t>{3}));
  EXPECT_EQ(shared.length(), 0);
  EXPECT_TRUE(shared.next_positions().equal(copied.next_positions()));
  EXPECT_EQ(shared.longest_shared_prefix(), 7);
  // Each prefix counted once; the rows hold no copy.
  EXPECT_EQ(shared.shared_prefix_bytes(), (7 + 3) * config.kv_bytes_per_token(at::kFloat));
  EXPECT_EQ(shared.bytes(), 0);
  EXPECT_THROW(shared.row_prefix(0, 0), c10::Error);

  // A right-padded prompt per row, then decode steps, with rows leaving and joining in between.
  const at::Tensor prompt = ids.narrow(0, 0, 2).narrow(1, 0, 4).repeat({2, 1});  // [4, 4]
  const at::Tensor prompt_mask =
      at::tensor({1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0}, at::kLong).to(at::kBool).view({4, 4});
  ForwardOptions last_only;
  last_only.last_token_only = true;
  EXPECT_LE(max_abs_diff(model_->forward(prompt, prompt_mask, shared, last_only),
                         model_->forward(prompt, prompt_mask, copied, last_only)),
            kTolerance);
  EXPECT_LE(max_abs_diff(step(shared, tokens({5, 6, 7, 8})), step(copied, tokens({5, 6, 7, 8}))), kTolerance);
  // Rows 3 and 0 stay (renumbered 0 and 1); then a cache with row 2 joins: one shared entry per prefix.
  const at::Tensor kept = tokens({3, 0});
  KvCache joined = KvCache::concat_rows({shared.select_rows(kept), shared.select_rows(tokens({2}))});
  KvCache joined_copied = KvCache::concat_rows({copied.select_rows(kept), copied.select_rows(tokens({2}))});
  ASSERT_EQ(joined.shared_prefixes().size(), 2u);
  EXPECT_EQ(joined.shared_prefixes()[0].prefix, first_prefix);
  EXPECT_EQ(joined.shared_prefixes()[0].rows, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(joined.shared_prefixes()[1].prefix, second_prefix);
  EXPECT_EQ(joined.shared_prefixes()[1].rows, (std::vector<int64_t>{0}));
  KvCache naive_cache = joined.clone();
  KvCache naive_cache_copied = joined_copied.clone();
  EXPECT_LE(max_abs_diff(step(joined, tokens({1, 2, 3})), step(joined_copied, tokens({1, 2, 3}))),
            kTolerance);
  // The naive reference kernels on the shared cache agree with the fast ones on the copied cache.
  ForwardKernels naive;
  naive.attention = naive_attention;
  ForwardOptions naive_options = last_only;
  naive_options.kernels = &naive;
  EXPECT_LE(max_abs_diff(model_
                             ->forward(tokens({4, 5, 6}).view({3, 1}), at::ones({3, 1}, at::kBool),
                                       naive_cache, naive_options)
                             .squeeze(1),
                         step(naive_cache_copied, tokens({4, 5, 6}))),
            kTolerance);
}

TEST_F(KvCacheTest, ACompositionOfSharedPrefixesComputesWhatItsCopyDoes) {
  c10::InferenceMode inference;
  const auto [a, b] = two_prefixes();
  // Row 0 composes b then a, row 1 reads a, row 2 repeats b (its slots are read twice).
  const std::vector<std::vector<std::shared_ptr<const KvPrefix>>> rows = {{b, a}, {a}, {b, b}};
  const ModelConfig& config = model_->config();
  KvCache shared = KvCache::with_shared_prefixes(config, model_->dtype(), model_->device(), rows);
  ASSERT_EQ(shared.shared_prefixes().size(), 3u);  // b, a, and b's second use
  EXPECT_EQ(shared.shared_prefixes()[2].occurrence, 1);
  EXPECT_EQ(shared.shared_prefix_bytes(), (3 + 7 + 3) * config.kv_bytes_per_token(at::kFloat));
  std::vector<std::shared_ptr<const KvPrefix>> composed;
  for (const auto& row : rows)
    composed.push_back(std::make_shared<const KvPrefix>(concatenate_prefixes(row)));
  EXPECT_EQ(composed[0]->length(), 10);
  KvCache copied = KvCache::with_row_prefixes(config, model_->dtype(), model_->device(), composed);
  EXPECT_TRUE(shared.next_positions().equal(tokens({10, 7, 6})));
  EXPECT_TRUE(shared.next_positions().equal(copied.next_positions()));
  EXPECT_LE(max_abs_diff(step(shared, tokens({5, 6, 7})), step(copied, tokens({5, 6, 7}))), kTolerance);
  // The copy of the repeated prefix differs from reading it once: the repeat is not dropped.
  KvCache once = KvCache::with_shared_prefixes(config, model_->dtype(), model_->device(), {{b}});
  KvCache twice = KvCache::with_shared_prefixes(config, model_->dtype(), model_->device(), {{b, b}});
  EXPECT_GT(max_abs_diff(step(once, tokens({7})), step(twice, tokens({7}))), 1e-3);
}

TEST_F(KvCacheTest, ASharedPrefixIsNotCopiedAndRefusesAnotherModelsLayerCount) {
  c10::InferenceMode inference;
  KvCache source = prefill(testing::get(cases_, "padded_ids").narrow(0, 0, 1), at::ones({1, 7}, at::kBool));
  const KvPrefix prefix = source.row_prefix(0, 5);
  KvCache cache = model_->new_cache(4, &prefix);
  EXPECT_EQ(cache.batch_size(), 4);
  EXPECT_EQ(cache.keys(0).data_ptr(), prefix.keys[0].data_ptr());  // a broadcast view of the one copy
  EXPECT_EQ(cache.keys(0).stride(0), 0);
  EXPECT_TRUE(cache.next_positions().equal(at::full({4}, 5, at::kLong)));
  KvPrefix short_prefix = prefix;
  short_prefix.keys.pop_back();
  short_prefix.values.pop_back();
  EXPECT_THROW(model_->new_cache(2, &short_prefix), MismatchError);
}

// The row pool against each row alone in a rectangular cache: rows of different lengths join at different
// times (one of them left-padded in its prefill, so its real slots are gathered), a forward of several
// tokens with a right-padded row, a row leaving (the last one takes its place), decode steps after each.
TEST_F(KvCacheTest, RowPoolRowsOfDifferentLengthsComputeWhatTheyComputeAlone) {
  c10::InferenceMode inference;
  const at::Tensor& ids = testing::get(cases_, "padded_ids");    // [3, 7]
  const at::Tensor& mask = testing::get(cases_, "padded_mask");  // row 1 right-, row 2 left-padded
  KvCache three = prefill(ids, mask);
  std::vector<KvCache> alone;  // per row: its real tokens alone, no padding
  alone.push_back(prefill(ids.narrow(0, 0, 1), at::ones({1, 7}, at::kBool)));
  alone.push_back(prefill(ids.narrow(0, 1, 1).narrow(1, 0, 5), at::ones({1, 5}, at::kBool)));
  alone.push_back(prefill(ids.narrow(0, 2, 1).narrow(1, 3, 4), at::ones({1, 4}, at::kBool)));

  KvCache pool = KvCache::row_pool(model_->config(), model_->dtype(), model_->device());
  EXPECT_TRUE(pool.is_row_pool());
  pool.add_rows(three, {1}, 8);     // 5 slots
  pool.add_rows(three, {0, 2}, 8);  // 7 slots, then 4 gathered from the left-padded row
  EXPECT_EQ(pool.batch_size(), 3);
  EXPECT_EQ(pool.length(), 7);
  EXPECT_TRUE(pool.next_positions().equal(tokens({5, 7, 4})));
  EXPECT_EQ(pool.bytes(), (5 + 7 + 4) * model_->config().kv_bytes_per_token(model_->dtype()));
  EXPECT_GE(pool.capacity_bytes(), pool.bytes());

  const at::Tensor stepped = step(pool, tokens({11, 12, 13}));
  EXPECT_LE(max_abs_diff(stepped[0], step(alone[1], tokens({11}))[0]), kTolerance);
  EXPECT_LE(max_abs_diff(stepped[1], step(alone[0], tokens({12}))[0]), kTolerance);
  EXPECT_LE(max_abs_diff(stepped[2], step(alone[2], tokens({13}))[0]), kTolerance);

  // Three tokens at once, the first row right-padded to two: each at its own row's length.
  const at::Tensor block = tokens({21, 22, 0, 31, 32, 33, 41, 42, 43}).view({3, 3});
  const at::Tensor block_mask =
      at::tensor(std::vector<uint8_t>{1, 1, 0, 1, 1, 1, 1, 1, 1}).view({3, 3}).to(at::kBool);
  const at::Tensor logits = model_->forward(block, block_mask, pool);  // [3, 3, V]
  const std::vector<int> source = {1, 0, 2};                           // pool row -> alone
  for (int64_t row = 0; row < 3; ++row) {
    const int64_t real = row == 0 ? 2 : 3;
    const at::Tensor expected =
        model_->forward(block[row].narrow(0, 0, real).view({1, -1}), at::ones({1, real}, at::kBool),
                        alone[source[row]]);  // [1, real, V]
    EXPECT_LE(max_abs_diff(logits[row].narrow(0, 0, real), expected[0]), kTolerance) << "row " << row;
  }
  EXPECT_TRUE(pool.next_positions().equal(tokens({8, 11, 8})));
  EXPECT_EQ(pool.length(), 11);

  // Row 0 leaves: the last row takes its place, the middle one stays.
  EXPECT_EQ(pool.remove_rows({0}), (std::vector<int64_t>{2, 1}));
  EXPECT_TRUE(pool.next_positions().equal(tokens({8, 11})));
  const at::Tensor after = step(pool, tokens({51, 52}));
  EXPECT_LE(max_abs_diff(after[0], step(alone[2], tokens({51}))[0]), kTolerance);
  EXPECT_LE(max_abs_diff(after[1], step(alone[0], tokens({52}))[0]), kTolerance);
  EXPECT_EQ(pool.remove_rows({0, 1}), std::vector<int64_t>{});
  EXPECT_EQ(pool.batch_size(), 0);
}

// Joining within the pool's capacity writes only the new row; leaving moves only the last row. The
// other rows' slots stay where they are, byte for byte.
TEST_F(KvCacheTest, RowPoolJoiningAndLeavingMoveNoOtherRow) {
  c10::InferenceMode inference;
  KvCache three = prefill(testing::get(cases_, "padded_ids"), testing::get(cases_, "padded_mask"));
  KvCache pool = KvCache::row_pool(model_->config(), model_->dtype(), model_->device());
  pool.add_rows(three, {0, 1, 2}, 4);
  step(pool, tokens({1, 2, 3}));
  const void* storage = pool.keys(0).data_ptr();
  auto row_slots = [&](int64_t row, int64_t length) {  // every layer's keys and values of a row, cloned
    std::vector<at::Tensor> slots;
    for (int64_t layer = 0; layer < pool.num_layers(); ++layer) {
      slots.push_back(pool.keys(layer)[row].narrow(1, 0, length).clone());
      slots.push_back(pool.values(layer)[row].narrow(1, 0, length).clone());
    }
    return slots;
  };
  auto same = [](const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
    for (size_t index = 0; index < a.size(); ++index) {
      if (!a[index].equal(b[index])) return false;
    }
    return true;
  };
  const std::vector<at::Tensor> row0 = row_slots(0, 8), row2 = row_slots(2, 5);
  EXPECT_EQ(pool.remove_rows({1}), (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(pool.keys(0).data_ptr(), storage);
  EXPECT_TRUE(same(row_slots(0, 8), row0));
  EXPECT_TRUE(same(row_slots(1, 5), row2));  // moved from row 2
  pool.add_rows(three, {1}, 4);              // into the free row: nothing grows, nothing else is written
  EXPECT_EQ(pool.keys(0).data_ptr(), storage);
  EXPECT_TRUE(same(row_slots(0, 8), row0));
  EXPECT_TRUE(same(row_slots(1, 5), row2));
  EXPECT_TRUE(pool.next_positions().equal(tokens({8, 5, 5})));
}

TEST_F(KvCacheTest, RowPoolRefusesPaddingBeforeARealToken) {
  c10::InferenceMode inference;
  KvCache three = prefill(testing::get(cases_, "padded_ids"), testing::get(cases_, "padded_mask"));
  KvCache pool = KvCache::row_pool(model_->config(), model_->dtype(), model_->device());
  pool.add_rows(three, {0}, 4);
  const at::Tensor left_padded = at::tensor(std::vector<uint8_t>{0, 1}).view({1, 2}).to(at::kBool);
  EXPECT_THROW(model_->forward(tokens({0, 5}).view({1, 2}), left_padded, pool), c10::Error);
  EXPECT_THROW(pool.remove_rows({1}), c10::Error);
  EXPECT_THROW(pool.select_rows(tokens({0})), c10::Error);
}

}  // namespace
}  // namespace cartridge
