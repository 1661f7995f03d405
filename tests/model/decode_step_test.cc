// The fused decode step (model/decode_step.h) against its oracle, the layer of named ATen steps
// (ForwardOptions::fused_decode = false), on every tiny model family (biases, q/k norms, GQA 2:1 and 4:1,
// head dims 8 to 32) and on the default model with its blocks kept as stored: decode steps after a
// cartridge-like prefix with padded rows, on a row pool whose rows have different lengths (a mask per
// row), and with rows reading shared prefixes (the server's cartridges). Its two vector kernels are held
// to explicit float64 references on shapes that reach their scalar tails. ForwardKernelsTest also holds
// the fused step to the naive float64 kernels.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "model/decode_kernels.h"
#include "model/decode_step.h"
#include "model/float_block_kernels.h"
#include "model/model.h"
#include "model_test_util.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::get;
using testing::max_abs_diff;

// Both paths compute in float32 with other summation orders (attention's dot products, the norms' sums of
// squares in float64 here) and another exp (Highway's polynomial against Sleef's); over a few layers the
// logits of the tiny models (magnitude ~1) agree to a few float32 roundings.
constexpr double kTinyLogitTolerance = 2e-5;
// The default model's logits reach about 30 over 30 layers, and fp32 against transformers holds 1e-3.
constexpr double kSmolLogitTolerance = 1e-3;

at::Tensor tokens(std::vector<int64_t> ids) { return at::tensor(ids, at::kLong).view({-1, 1}); }

// Logits of `steps` decode steps after a prefill of `ids` [B, T] with `mask` into a cache built by
// `make_cache`, with the fused step or the ATen layers; the last step's token ids are step + 1 + row.
template <typename MakeCache>
std::vector<at::Tensor> decode_logits(const Model& model, const at::Tensor& ids, const at::Tensor& mask,
                                      MakeCache&& make_cache, int steps, bool fused) {
  c10::InferenceMode inference;
  ForwardOptions options;
  options.fused_decode = fused;
  KvCache cache = make_cache();
  std::vector<at::Tensor> logits;
  logits.push_back(model.forward(ids, mask, cache, options).masked_fill(mask.logical_not().unsqueeze(-1), 0));
  const int64_t batch = ids.size(0);
  for (int step = 0; step < steps; ++step) {
    std::vector<int64_t> next(batch);
    for (int64_t row = 0; row < batch; ++row) next[row] = (step + 1 + row) % model.config().vocab_size;
    logits.push_back(model.forward(tokens(next), at::ones({batch, 1}, at::kBool), cache, options));
  }
  return logits;
}

// Logits of 3 decode steps of a row pool, with the fused step or the ATen layers: `ids` [3, T] with
// `mask` go through a cache from `make_cache`, whose rows then join an empty pool in two groups (`first`,
// then `then`, room for 8 more slots); step s feeds tokens first_token + s + row.
template <typename MakeCache>
std::vector<at::Tensor> row_pool_logits(const Model& model, const at::Tensor& ids, const at::Tensor& mask,
                                        MakeCache&& make_cache, const std::vector<int64_t>& first,
                                        const std::vector<int64_t>& then, int64_t first_token, bool fused) {
  c10::InferenceMode inference;
  ForwardOptions options;
  options.fused_decode = fused;
  KvCache joining = make_cache();
  model.forward(ids, mask, joining, options);
  KvCache pool = KvCache::row_pool(model.config(), model.dtype(), model.device());
  pool.add_rows(joining, first, 8);
  pool.add_rows(joining, then, 8);
  std::vector<at::Tensor> logits;
  for (int64_t step = 0; step < 3; ++step) {
    const int64_t token = first_token + step;
    logits.push_back(
        model.forward(tokens({token, token + 1, token + 2}), at::ones({3, 1}, at::kBool), pool, options));
  }
  return logits;
}

// Each step's logits of the fused step within kTinyLogitTolerance of the ATen layers'.
void expect_same_logits(const std::vector<at::Tensor>& fused, const std::vector<at::Tensor>& layered) {
  ASSERT_EQ(fused.size(), layered.size());
  for (size_t step = 0; step < fused.size(); ++step) {
    EXPECT_LE(max_abs_diff(fused[step], layered[step]), kTinyLogitTolerance) << "step " << step;
  }
}

class FusedDecodeTinyModelTest : public testing::TinyModelTest {};

// Rows padded differently after a 3-slot prefix: the decode steps read a per-row mask over padding slots.
TEST_P(FusedDecodeTinyModelTest, PaddedRowsAfterAPrefixMatchTheAtenLayers) {
  const at::Tensor& ids = get(cases_, "padded_ids");    // [3, 7]
  const at::Tensor& mask = get(cases_, "padded_mask");  // [3, 7]
  KvCache prefill = model_->new_cache(1);
  {
    c10::InferenceMode inference;
    model_->forward(ids.narrow(0, 0, 1), at::ones({1, 7}, at::kBool), prefill);
  }
  const KvPrefix prefix = prefill.row_prefix(0, 3);
  const auto make_cache = [&] { return model_->new_cache(3, &prefix); };
  expect_same_logits(decode_logits(*model_, ids, mask, make_cache, 4, true),
                     decode_logits(*model_, ids, mask, make_cache, 4, false));
}

// A row pool whose rows joined with 5, 7 and 4 slots: each row attends to its own length.
TEST_P(FusedDecodeTinyModelTest, RowPoolRowsOfDifferentLengthsMatchTheAtenLayers) {
  const at::Tensor& ids = get(cases_, "padded_ids");    // [3, 7]
  const at::Tensor& mask = get(cases_, "padded_mask");  // row 1 right-, row 2 left-padded
  const auto make_cache = [&] { return model_->new_cache(3); };
  expect_same_logits(row_pool_logits(*model_, ids, mask, make_cache, {1}, {0, 2}, 11, true),
                     row_pool_logits(*model_, ids, mask, make_cache, {1}, {0, 2}, 11, false));
}

// Rows reading shared prefixes held once (what `serve` decodes): one row a prefix, one a composition of
// two, one none, then a row pool built from them (the server's layout) with rows of different lengths.
TEST_P(FusedDecodeTinyModelTest, RowsReadingSharedPrefixesMatchTheAtenLayers) {
  const at::Tensor& ids = get(cases_, "padded_ids");    // [3, 7]
  const at::Tensor& mask = get(cases_, "padded_mask");  // row 1 right-, row 2 left-padded
  std::shared_ptr<const KvPrefix> first, second;
  {
    c10::InferenceMode inference;
    KvCache prefill = model_->new_cache(2);
    model_->forward(ids.narrow(0, 0, 2), at::ones({2, 7}, at::kBool), prefill);
    first = std::make_shared<const KvPrefix>(prefill.row_prefix(0, 3));
    second = std::make_shared<const KvPrefix>(prefill.row_prefix(1, 2));
  }
  const std::vector<std::vector<std::shared_ptr<const KvPrefix>>> reads = {{first}, {first, second}, {}};
  const auto shared_cache = [&] {
    return KvCache::with_shared_prefixes(model_->config(), model_->dtype(), model_->device(), reads);
  };
  expect_same_logits(decode_logits(*model_, ids, mask, shared_cache, 4, true),
                     decode_logits(*model_, ids, mask, shared_cache, 4, false));
  expect_same_logits(row_pool_logits(*model_, ids, mask, shared_cache, {2, 1}, {0}, 21, true),
                     row_pool_logits(*model_, ids, mask, shared_cache, {2, 1}, {0}, 21, false));
}

// A prefix read by more than 4 rows goes to the ATen layer, which reads it once for all of them.
TEST_P(FusedDecodeTinyModelTest, APrefixOfManyRowsIsLeftToTheAtenLayers) {
  c10::InferenceMode inference;
  KvCache prefill = model_->new_cache(1);
  model_->forward(get(cases_, "padded_ids").narrow(0, 0, 1), at::ones({1, 7}, at::kBool), prefill);
  const auto prefix = std::make_shared<const KvPrefix>(prefill.row_prefix(0, 3));
  for (const int64_t rows : {4, 5}) {
    const KvCache cache = KvCache::with_shared_prefixes(
        model_->config(), model_->dtype(), model_->device(),
        std::vector<std::vector<std::shared_ptr<const KvPrefix>>>(rows, {prefix}));
    EXPECT_EQ(fused_decode_applies(1, at::kFloat, at::kCPU, cache), rows <= 4) << rows << " rows";
  }
}

// The same 7 tokens as one prefill (the ATen layers) and as 7 decode steps (the fused step, from an empty
// cache: its first step attends to one slot) give the same last logits.
TEST_P(FusedDecodeTinyModelTest, SevenDecodeStepsEqualOnePrefillOfTheSameTokens) {
  c10::InferenceMode inference;
  const at::Tensor& ids = get(cases_, "padded_ids");  // [3, 7]
  KvCache whole = model_->new_cache(1);
  const at::Tensor prefill_logits = model_->forward(ids.narrow(0, 0, 1), at::ones({1, 7}, at::kBool), whole);
  KvCache stepped = model_->new_cache(1);
  at::Tensor step_logits;
  for (int64_t column = 0; column < 7; ++column) {
    step_logits =
        model_->forward(ids.narrow(0, 0, 1).narrow(1, column, 1), at::ones({1, 1}, at::kBool), stepped);
  }
  EXPECT_LE(max_abs_diff(step_logits[0][0], prefill_logits[0][6]), kTinyLogitTolerance);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, FusedDecodeTinyModelTest,
                         ::testing::Values("llama_tied", "llama3_rope", "mistral", "qwen2", "qwen2_untied",
                                           "qwen3", "qwen3_tied"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// The default model, its blocks kept as stored (the default inference path): 8 decode steps of two rows
// after prompts of different lengths, at every instruction set this CPU runs.
TEST(FusedDecodeSmolLM2Test, StoredBlocksMatchTheAtenLayersAtEveryInstructionSet) {
  LoadOptions load;
  load.show_progress = false;
  load.quantized_weights = QuantizedWeights::kFloatActivations;
  const std::shared_ptr<const Model> model =
      Model::load(testing::gguf_model_files(testing::default_model_path()), load);
  const at::Tensor ids =
      at::tensor(std::vector<int64_t>{1, 504, 3458, 314, 260,  1789, 282,  4649, 2,  2,   2,   2,
                                      1, 504, 3458, 28,  5248, 253,  1345, 1123, 11, 339, 457, 30},
                 at::kLong)
          .view({2, 12});
  at::Tensor mask = at::ones({2, 12}, at::kBool);
  mask[0].narrow(0, 8, 4).fill_(false);  // row 0: 8 real tokens, right-padded
  const auto make_cache = [&] { return model->new_cache(2); };
  for (const std::string& target : float_block_kernels::runnable_targets()) {
    float_block_kernels::use_target(target);
    const std::vector<at::Tensor> fused = decode_logits(*model, ids, mask, make_cache, 8, true);
    const std::vector<at::Tensor> layered = decode_logits(*model, ids, mask, make_cache, 8, false);
    for (size_t step = 1; step < fused.size(); ++step) {
      EXPECT_LE(max_abs_diff(fused[step], layered[step]), kSmolLogitTolerance) << target << " step " << step;
      EXPECT_TRUE(fused[step].argmax(-1).equal(layered[step].argmax(-1))) << target << " step " << step;
    }
  }
  float_block_kernels::use_target("");
}

// attend_one_token against softmax attention in float64, for head dims with and without a scalar tail,
// with every slot allowed and with some masked, over one part or split into a prefix part and a part of
// its own (one softmax over both: a row reading a shared prefix).
TEST(DecodeKernelsTest, AttendOneTokenEqualsFloat64Attention) {
  at::manual_seed(7);
  for (const std::string& target : float_block_kernels::runnable_targets()) {
    float_block_kernels::use_target(target);
    for (const int64_t head_dim : {8, 20, 64, 128}) {
      for (const bool masked : {false, true}) {
        for (const int64_t prefix_slots : {0, 10}) {
          const int64_t group = 3, slots = 37, stride = head_dim + 5;  // slots spaced as in a wider buffer
          const at::Tensor queries = at::randn({group, head_dim});
          const at::Tensor storage = at::randn({2, slots, stride});  // [keys | values, S, stride]
          const at::Tensor keys = storage[0].narrow(1, 0, head_dim);
          const at::Tensor values = storage[1].narrow(1, 0, head_dim);
          at::Tensor allowed = at::ones({slots}, at::kBool);
          if (masked) allowed.narrow(0, 13, 10).fill_(false);
          const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
          // The first prefix_slots slots as a part with no mask, the rest as a part with the mask.
          std::vector<decode_kernels::KeyValueSlots> parts;
          if (prefix_slots > 0) {
            parts.push_back(
                {keys.data_ptr<float>(), values.data_ptr<float>(), stride, prefix_slots, nullptr});
          }
          parts.push_back({keys.data_ptr<float>() + prefix_slots * stride,
                           values.data_ptr<float>() + prefix_slots * stride, stride, slots - prefix_slots,
                           masked ? allowed.data_ptr<bool>() + prefix_slots : nullptr});
          at::Tensor output = at::empty({group, head_dim});
          decode_kernels::attend_one_token(queries.data_ptr<float>(), group, head_dim, parts.data(),
                                           static_cast<int64_t>(parts.size()), scale,
                                           output.data_ptr<float>());
          at::Tensor scores =
              at::matmul(queries.to(at::kDouble), keys.to(at::kDouble).t()) * scale;  // [g, S]
          scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
          const at::Tensor expected = at::matmul(at::softmax(scores, -1), values.to(at::kDouble));  // [g, D]
          // float32 products of head_dim terms and a float32 softmax over 37 slots.
          EXPECT_LE(max_abs_diff(output, expected), 1e-5)
              << target << " D " << head_dim << " masked " << masked << " prefix " << prefix_slots;
        }
      }
    }
  }
  float_block_kernels::use_target("");
}

TEST(DecodeKernelsTest, SiluTimesUpEqualsAten) {
  at::manual_seed(8);
  for (const std::string& target : float_block_kernels::runnable_targets()) {
    float_block_kernels::use_target(target);
    const at::Tensor gate = at::randn({101}) * 6;  // into exp's tails; 101 reaches the scalar tail
    const at::Tensor up = at::randn({101});
    at::Tensor output = at::empty({101});
    decode_kernels::silu_times_up(gate.data_ptr<float>(), up.data_ptr<float>(), 101,
                                  output.data_ptr<float>());
    const at::Tensor expected = at::silu(gate.to(at::kDouble)) * up.to(at::kDouble);
    EXPECT_LE(max_abs_diff(output, expected), 1e-5) << target;
  }
  float_block_kernels::use_target("");
}

}  // namespace
}  // namespace cartridge
