// The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) loaded by us and by transformers (fp32, oracle from
// tests/fixtures/make_model_smollm2.py in the same run): same logits within 1e-3 and the same 32-token greedy
// continuation for several prompts, one at a time and as a left-padded batch.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "io/gguf.h"
#include "model/model.h"
#include "model_test_util.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::get;
using testing::max_abs_diff;

constexpr double kLogitTolerance = 1e-3;
constexpr int kPrompts = 4;

class SmolLM2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cases_ = new std::map<std::string, at::Tensor>(
        testing::read_tensors(fixture_path("model_smollm2/smollm2_cases.safetensors")));
    LoadOptions options;
    options.show_progress = false;
    model_ = new std::shared_ptr<const Model>(
        Model::load(testing::gguf_model_files(testing::default_model_path()), options));
  }
  static void TearDownTestSuite() {
    delete cases_;
    delete model_;
  }
  static const at::Tensor& t(const std::string& name) { return get(*cases_, name); }
  static const Model& model() { return **model_; }

  static std::map<std::string, at::Tensor>* cases_;
  static std::shared_ptr<const Model>* model_;
};

std::map<std::string, at::Tensor>* SmolLM2Test::cases_ = nullptr;
std::shared_ptr<const Model>* SmolLM2Test::model_ = nullptr;

TEST_F(SmolLM2Test, ConfigFromGgufMetadata) {
  const GgufFile gguf(testing::default_model_path());
  const ModelConfig& config = model().config();
  EXPECT_EQ(config.architecture, Architecture::kLlama);
  EXPECT_EQ(config.num_layers, gguf.get("llama.block_count").as_int("llama.block_count"));
  EXPECT_EQ(config.hidden_size, gguf.get("llama.embedding_length").as_int("llama.embedding_length"));
  EXPECT_EQ(config.num_attention_heads, gguf.get("llama.attention.head_count").as_int("h"));
  EXPECT_EQ(config.num_key_value_heads, gguf.get("llama.attention.head_count_kv").as_int("h"));
  EXPECT_EQ(config.head_dim, gguf.get("llama.rope.dimension_count").as_int("d"));
  EXPECT_EQ(config.rope_theta, gguf.get("llama.rope.freq_base").as_double("f"));
  EXPECT_EQ(config.rms_norm_eps, gguf.get("llama.attention.layer_norm_rms_epsilon").as_double("e"));
  EXPECT_EQ(config.vocab_size,
            static_cast<int64_t>(gguf.get("tokenizer.ggml.tokens").as_array("tokenizer.ggml.tokens").size()));
  EXPECT_EQ(config.tie_word_embeddings, gguf.find_tensor("output.weight") == nullptr);
  EXPECT_EQ(config.intermediate_size, gguf.get("llama.feed_forward_length").as_int("i"));
}

TEST_F(SmolLM2Test, PromptLogitsAndGreedyContinuationsMatchTransformers) {
  c10::InferenceMode inference;
  for (int prompt = 0; prompt < kPrompts; ++prompt) {
    SCOPED_TRACE("prompt " + std::to_string(prompt));
    const std::string index = std::to_string(prompt);
    const at::Tensor ids = t("prompt_" + index).unsqueeze(0);  // [1, T]
    KvCache cache = model().new_cache(1);
    const at::Tensor logits = model().forward(ids, at::ones_like(ids, at::kBool), cache);  // [1, T, V]
    const at::Tensor& expected = t("logits_" + index);  // [last positions, V]
    EXPECT_LE(max_abs_diff(logits[0].narrow(0, ids.size(1) - expected.size(0), expected.size(0)), expected),
              kLogitTolerance);

    // Greedy loop: argmax over our own logits, our own cache.
    const at::Tensor& greedy = t("greedy_" + index);           // [32]
    const at::Tensor& top_ids = t("greedy_top_ids_" + index);  // [32, 8]
    const at::Tensor& top_logits = t("greedy_top_logits_" + index);
    at::Tensor last = logits[0][ids.size(1) - 1];  // [V]
    ForwardOptions last_only;
    last_only.last_token_only = true;
    std::vector<int64_t> ours;
    for (int64_t step = 0; step < greedy.size(0); ++step) {
      EXPECT_LE(max_abs_diff(last.index_select(0, top_ids[step]), top_logits[step]), kLogitTolerance)
          << "step " << step;
      const int64_t token = last.argmax().item<int64_t>();
      ours.push_back(token);
      const at::Tensor next = at::full({1, 1}, token, at::kLong);
      last = model().forward(next, at::ones({1, 1}, at::kBool), cache, last_only)[0][0];
    }
    const at::Tensor ours_tensor = at::tensor(ours, at::kLong);
    EXPECT_TRUE(ours_tensor.equal(greedy)) << "ours " << ours_tensor << "\ntransformers " << greedy;
  }
}

TEST_F(SmolLM2Test, LeftPaddedBatchMatchesSinglePrompts) {
  c10::InferenceMode inference;
  int64_t longest = 0;
  for (int prompt = 0; prompt < kPrompts; ++prompt)
    longest = std::max(longest, t("prompt_" + std::to_string(prompt)).size(0));
  at::Tensor ids = at::zeros({kPrompts, longest}, at::kLong);
  at::Tensor mask = at::zeros({kPrompts, longest}, at::kBool);
  for (int prompt = 0; prompt < kPrompts; ++prompt) {
    const at::Tensor& prompt_ids = t("prompt_" + std::to_string(prompt));
    ids[prompt].narrow(0, longest - prompt_ids.size(0), prompt_ids.size(0)).copy_(prompt_ids);
    mask[prompt].narrow(0, longest - prompt_ids.size(0), prompt_ids.size(0)).fill_(true);
  }
  KvCache cache = model().new_cache(kPrompts);
  ForwardOptions last_only;
  last_only.last_token_only = true;
  at::Tensor logits = model().forward(ids, mask, cache, last_only);  // [4, 1, V]
  // Then two batched decode steps fed with the transformers greedy tokens.
  for (int64_t step = 0; step < 3; ++step) {
    for (int prompt = 0; prompt < kPrompts; ++prompt) {
      const std::string index = std::to_string(prompt);
      const at::Tensor& top_ids = t("greedy_top_ids_" + index);
      EXPECT_LE(max_abs_diff(logits[prompt][0].index_select(0, top_ids[step]),
                             t("greedy_top_logits_" + index)[step]),
                kLogitTolerance)
          << "prompt " << prompt << " step " << step;
    }
    at::Tensor next = at::empty({kPrompts, 1}, at::kLong);
    for (int prompt = 0; prompt < kPrompts; ++prompt)
      next[prompt][0] = t("greedy_" + std::to_string(prompt))[step];
    logits = model().forward(next, at::ones({kPrompts, 1}, at::kBool), cache, last_only);
  }
}

}  // namespace
}  // namespace cartridge
