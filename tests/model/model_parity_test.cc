// Parity with Hugging Face transformers on random tiny Llama / Mistral / Qwen2 / Qwen3 models, tied and
// untied, one-file and sharded (oracle outputs from tests/fixtures/make_model.py, computed in the same test
// run): logits and KV cache of a padded batch, a KV prefix with per-row lengths and the gradient flowing
// into it, 20 cached decode steps, bfloat16.
#include <algorithm>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "io/model_files.h"
#include "model/model.h"
#include "model_test_util.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::get;
using testing::max_abs_diff;
using testing::read_tensors;

constexpr double kFloatTolerance = 1e-4;  // max |ours - transformers| for fp32 logits / KV

class ModelParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    cases_ = read_tensors(fixture_path("model/" + GetParam() + "_cases.safetensors"));
    LoadOptions options;
    options.show_progress = false;
    // The production resolver: config.json plus model.safetensors, or the shards its index lists.
    files_ = resolve_model_files(fixture_path("model/" + GetParam()));
    model_ = Model::load(files_, options);
  }

  const at::Tensor& t(const std::string& name) const { return get(cases_, name); }

  // Per-layer tensors "<stem>_<layer>".
  std::vector<at::Tensor> layers(const std::string& stem) const {
    std::vector<at::Tensor> out;
    for (int64_t layer = 0; layer < model_->config().num_layers; ++layer) {
      out.push_back(t(stem + "_" + std::to_string(layer)));
    }
    return out;
  }

  std::map<std::string, at::Tensor> cases_;
  ModelFiles files_;
  std::shared_ptr<const Model> model_;
};

TEST_P(ModelParityTest, ReadsEveryWeightFileTransformersWrote) {
  std::ifstream stream(fixture_path("model/models.json"));
  const nlohmann::json written = nlohmann::json::parse(stream).at(GetParam()).at("weight_files");
  std::vector<std::string> read;
  for (const std::string& path : files_.weight_paths)
    read.push_back(std::filesystem::path(path).filename().string());
  std::sort(read.begin(), read.end());
  EXPECT_EQ(read, written.get<std::vector<std::string>>());
}

TEST_P(ModelParityTest, ConfigMatchesTransformersResolvedConfig) {
  std::ifstream stream(fixture_path("model/models.json"));
  const nlohmann::json expected = nlohmann::json::parse(stream).at(GetParam()).at("resolved");
  const ModelConfig& config = model_->config();
  EXPECT_EQ(config.model_type, expected.at("model_type").get<std::string>());
  EXPECT_EQ(config.vocab_size, expected.at("vocab_size").get<int64_t>());
  EXPECT_EQ(config.hidden_size, expected.at("hidden_size").get<int64_t>());
  EXPECT_EQ(config.intermediate_size, expected.at("intermediate_size").get<int64_t>());
  EXPECT_EQ(config.num_layers, expected.at("num_layers").get<int64_t>());
  EXPECT_EQ(config.num_attention_heads, expected.at("num_attention_heads").get<int64_t>());
  EXPECT_EQ(config.num_key_value_heads, expected.at("num_key_value_heads").get<int64_t>());
  EXPECT_EQ(config.head_dim, expected.at("head_dim").get<int64_t>());
  EXPECT_EQ(config.max_position_embeddings, expected.at("max_position_embeddings").get<int64_t>());
  EXPECT_EQ(config.rms_norm_eps, expected.at("rms_norm_eps").get<double>());
  EXPECT_EQ(config.rope_theta, expected.at("rope_theta").get<double>());
  EXPECT_EQ(config.rope_scaling.type, expected.at("rope_type").get<std::string>());
  if (config.rope_scaling.type == "llama3") {
    EXPECT_EQ(config.rope_scaling.factor, expected.at("rope_factor").get<double>());
    EXPECT_EQ(config.rope_scaling.low_freq_factor, expected.at("rope_low_freq_factor").get<double>());
    EXPECT_EQ(config.rope_scaling.high_freq_factor, expected.at("rope_high_freq_factor").get<double>());
    EXPECT_EQ(config.rope_scaling.original_max_position_embeddings,
              expected.at("rope_original_max_position_embeddings").get<int64_t>());
  }
  EXPECT_EQ(config.tie_word_embeddings, expected.at("tie_word_embeddings").get<bool>());
  EXPECT_EQ(config.attention_bias, expected.at("qkv_bias").get<bool>());
  EXPECT_EQ(config.attention_output_bias, expected.at("o_bias").get<bool>());
  EXPECT_EQ(config.mlp_bias, expected.at("mlp_bias").get<bool>());
  EXPECT_EQ(config.qk_norm, expected.at("qk_norm").get<bool>());
  EXPECT_EQ(config.kv_width(), expected.at("kv_width").get<int64_t>());
  EXPECT_EQ(config.kv_bytes_per_token(at::kBFloat16), 2 * expected.at("kv_width").get<int64_t>());
}

TEST_P(ModelParityTest, PaddedBatchLogitsAndCacheMatchTransformers) {
  const at::Tensor& mask = t("padded_mask");  // [3, 7]: row 1 right-padded, row 2 left-padded
  KvCache cache = model_->new_cache(3);
  const at::Tensor logits = model_->forward(t("padded_ids"), mask, cache);  // [3, 7, V]
  const at::Tensor real = mask.unsqueeze(-1).expand_as(logits);
  EXPECT_LE(max_abs_diff(logits.masked_select(real), t("padded_logits").masked_select(real)),
            kFloatTolerance);

  // Exactly what transformers caches (post-RoPE keys, plain values), at every real slot.
  ASSERT_EQ(cache.length(), 7);
  EXPECT_TRUE(cache.slot_mask().equal(mask));
  EXPECT_TRUE(cache.next_positions().equal(mask.sum(1)));
  const std::vector<at::Tensor> keys = layers("padded_keys");
  const std::vector<at::Tensor> values = layers("padded_values");
  const at::Tensor slots = mask.view({3, 1, 7, 1});
  for (int64_t layer = 0; layer < model_->config().num_layers; ++layer) {
    const at::Tensor real_slots = slots.expand_as(keys[layer]);
    EXPECT_LE(
        max_abs_diff(cache.keys(layer).masked_select(real_slots), keys[layer].masked_select(real_slots)),
        kFloatTolerance)
        << "keys of layer " << layer;
    EXPECT_LE(
        max_abs_diff(cache.values(layer).masked_select(real_slots), values[layer].masked_select(real_slots)),
        kFloatTolerance)
        << "values of layer " << layer;
  }

  // last_token_only gives each row's last real token (row 1 ends at column 4).
  KvCache second = model_->new_cache(3);
  ForwardOptions last_only;
  last_only.last_token_only = true;
  const at::Tensor last = model_->forward(t("padded_ids"), mask, second, last_only);  // [3, 1, V]
  const at::Tensor last_columns = at::tensor(std::vector<int64_t>{6, 4, 6}, at::kLong);
  for (int64_t row = 0; row < 3; ++row) {
    EXPECT_LE(max_abs_diff(last[row][0], t("padded_logits")[row][last_columns[row].item<int64_t>()]),
              kFloatTolerance);
  }

  // Explicit positions equal to the implicit ones give the same result.
  KvCache third = model_->new_cache(3);
  ForwardOptions explicit_positions;
  explicit_positions.positions = t("padded_positions");
  const at::Tensor again = model_->forward(t("padded_ids"), mask, third, explicit_positions);
  EXPECT_LE(max_abs_diff(again.masked_select(real), logits.masked_select(real)), 0.0);
  EXPECT_TRUE(third.next_positions().equal(cache.next_positions()));
}

TEST_P(ModelParityTest, KvPrefixLogitsAndGradientMatchTransformers) {
  const at::Tensor& mask = t("prefix_mask");  // [2, 6]
  std::vector<at::Tensor> keys, values;
  for (const at::Tensor& tensor : layers("prefix_keys")) keys.push_back(tensor.clone().requires_grad_(true));
  for (const at::Tensor& tensor : layers("prefix_values"))
    values.push_back(tensor.clone().requires_grad_(true));
  c10::AutoGradMode grad(true);
  KvCache cache = KvCache::from_prefix_tensors(keys, values, t("prefix_lengths"));
  EXPECT_TRUE(cache.next_positions().equal(t("prefix_lengths")));
  const at::Tensor logits = model_->forward(t("prefix_ids"), mask, cache);  // [2, 6, V]
  const at::Tensor real = mask.unsqueeze(-1).expand_as(logits);
  EXPECT_LE(max_abs_diff(logits.masked_select(real), t("prefix_logits").masked_select(real)),
            kFloatTolerance);

  // The prefix is trained through the frozen model: the gradient must reach it, equal to PyTorch's.
  const at::Tensor loss = (logits * t("prefix_loss_weights")).sum();
  loss.backward();
  const std::vector<at::Tensor> key_grads = layers("prefix_key_grads");
  const std::vector<at::Tensor> value_grads = layers("prefix_value_grads");
  for (int64_t layer = 0; layer < model_->config().num_layers; ++layer) {
    ASSERT_TRUE(keys[layer].grad().defined()) << "no gradient reached the prefix keys of layer " << layer;
    ASSERT_TRUE(values[layer].grad().defined()) << "no gradient reached the prefix values of layer " << layer;
    EXPECT_GT(keys[layer].grad().abs().max().item<double>(), 0.0);
    EXPECT_LE(max_abs_diff(keys[layer].grad(), key_grads[layer]), kFloatTolerance) << "layer " << layer;
    EXPECT_LE(max_abs_diff(values[layer].grad(), value_grads[layer]), kFloatTolerance) << "layer " << layer;
  }
}

// Prefill after a broadcast prefix, then 20 decode steps fed with the tokens transformers chose.
void run_decode(const Model& model, const std::map<std::string, at::Tensor>& cases, bool reserve) {
  std::vector<at::Tensor> keys, values;
  for (int64_t layer = 0; layer < model.config().num_layers; ++layer) {
    keys.push_back(get(cases, "decode_prefix_keys_" + std::to_string(layer)));  // [1, H_kv, 4, D]
    values.push_back(get(cases, "decode_prefix_values_" + std::to_string(layer)));
  }
  c10::InferenceMode inference;
  KvPrefix prefix;  // one prefix shared by both rows
  for (size_t layer = 0; layer < keys.size(); ++layer) {
    prefix.keys.push_back(keys[layer][0]);  // [H_kv, 4, D]
    prefix.values.push_back(values[layer][0]);
  }
  KvCache cache = KvCache::with_prefix(prefix, 2);
  ForwardOptions last_only;
  last_only.last_token_only = true;
  at::Tensor logits = model.forward(get(cases, "decode_ids"), get(cases, "decode_mask"), cache, last_only);
  EXPECT_LE(max_abs_diff(logits.squeeze(1), get(cases, "decode_prefill_logits")), kFloatTolerance);
  if (reserve) cache.reserve(32);
  const at::Tensor& tokens = get(cases, "decode_tokens");       // [20, 2]
  const at::Tensor& step_logits = get(cases, "decode_logits");  // [20, 2, V]
  const at::Tensor all_real = at::ones({2, 1}, at::kBool);
  for (int64_t step = 0; step < tokens.size(0); ++step) {
    // Greedy: our argmax picks the token transformers picked.
    EXPECT_TRUE(logits.squeeze(1).argmax(-1).equal(tokens[step])) << "step " << step;
    logits = model.forward(tokens[step].unsqueeze(1), all_real, cache, last_only);
    EXPECT_LE(max_abs_diff(logits.squeeze(1), step_logits[step]), kFloatTolerance) << "step " << step;
  }
  EXPECT_EQ(cache.length(), 4 + 5 + tokens.size(0));
}

TEST_P(ModelParityTest, TwentyCachedDecodeStepsMatchTransformers) { run_decode(*model_, cases_, false); }

TEST_P(ModelParityTest, DecodeWithReservedCapacityMatchesTransformers) { run_decode(*model_, cases_, true); }

TEST_P(ModelParityTest, Bfloat16IsCloseToTransformersBfloat16) {
  LoadOptions options;
  options.dtype = at::kBFloat16;
  options.show_progress = false;
  const auto bf16_model = Model::load(files_, options);
  EXPECT_EQ(bf16_model->dtype(), at::kBFloat16);
  const at::Tensor& mask = t("padded_mask");
  KvCache cache = bf16_model->new_cache(3);
  EXPECT_EQ(cache.keys(0).scalar_type(), at::kBFloat16);
  const at::Tensor logits = bf16_model->forward(t("padded_ids"), mask, cache);
  EXPECT_EQ(logits.scalar_type(), at::kFloat);
  const at::Tensor real = mask.unsqueeze(-1).expand_as(logits);
  // bfloat16 keeps 8 significant bits, and the two implementations round at different places (fused
  // q/k/v matmul, SDPA kernel), so bitwise agreement is impossible. The yardstick is transformers' own
  // bf16 error: ours may be at most twice as far from the fp32 oracle (plus one bf16 step of the largest
  // logit), and within the same distance of transformers' bf16 logits.
  const at::Tensor oracle_bf16 = t("bf16_logits").masked_select(real);
  const at::Tensor oracle_fp32 = t("padded_logits").masked_select(real);
  const double reference_error = max_abs_diff(oracle_bf16, oracle_fp32);
  const double bf16_step = oracle_fp32.abs().max().item<double>() / 128;  // 2^-7 relative
  const double tolerance = 2 * reference_error + bf16_step;
  const double vs_bf16 = max_abs_diff(logits.masked_select(real), oracle_bf16);
  const double vs_fp32 = max_abs_diff(logits.masked_select(real), oracle_fp32);
  EXPECT_LE(vs_fp32, tolerance);
  EXPECT_LE(vs_bf16, tolerance);
  EXPECT_GT(vs_fp32, 0.0);  // it really ran in bf16
  std::cout << "[bf16] " << GetParam() << ": max |ours - transformers bf16| = " << vs_bf16
            << ", max |ours - fp32| = " << vs_fp32 << ", transformers bf16 vs fp32 = " << reference_error
            << ", tolerance " << tolerance << "\n";
}

// The CUDA path (fp32) against the same oracle; skipped on machines without a CUDA device.
TEST_P(ModelParityTest, CudaPaddedBatchMatchesTransformers) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device on this machine";
  LoadOptions options;
  options.show_progress = false;
  options.device = at::Device(at::kCUDA, 0);
  const auto cuda_model = Model::load(files_, options);
  const at::Tensor mask = t("padded_mask").to(options.device);  // [3, 7]
  KvCache cache = cuda_model->new_cache(3);
  const at::Tensor logits =
      cuda_model->forward(t("padded_ids").to(options.device), mask, cache).cpu();  // [3, 7, V]
  const at::Tensor real = t("padded_mask").unsqueeze(-1).expand_as(logits);
  const double difference = max_abs_diff(logits.masked_select(real), t("padded_logits").masked_select(real));
  std::cout << "[cuda] " << GetParam() << ": max |ours on CUDA - transformers fp32| = " << difference << "\n";
  // CUDA's reductions are ordered differently from the CPU's: allow ten times the CPU tolerance.
  EXPECT_LE(difference, 10 * kFloatTolerance);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, ModelParityTest,
                         ::testing::Values("llama_tied", "llama3_rope", "mistral", "qwen2", "qwen2_untied",
                                           "qwen3", "qwen3_tied"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace cartridge
