// GGUF models of each family (written like llama.cpp's converter by tests/fixtures/make_model_gguf.py):
// config from `<arch>.*` metadata, Llama Q/K rows un-permuted, tied embeddings when output.weight is absent;
// logits equal transformers loading the same GGUF.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "io/gguf.h"
#include "model/model.h"
#include "model_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

using testing::fixture_path;
using testing::get;
using testing::max_abs_diff;

class GgufModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufModelTest, LogitsMatchTransformersLoadingTheSameGguf) {
  const std::string path = fixture_path("model_gguf/" + GetParam() + ".gguf");
  const auto cases = testing::read_tensors(fixture_path("model_gguf/" + GetParam() + "_cases.safetensors"));
  LoadOptions options;
  options.show_progress = false;
  const auto model = Model::load(testing::gguf_model_files(path), options);

  const GgufFile gguf(path);
  const ModelConfig& config = model->config();
  EXPECT_EQ(config.model_type, GetParam() == "llama3" ? "llama" : GetParam());
  EXPECT_EQ(config.tie_word_embeddings, gguf.find_tensor("output.weight") == nullptr);
  EXPECT_EQ(config.attention_bias, gguf.find_tensor("blk.0.attn_q.bias") != nullptr);
  EXPECT_EQ(config.qk_norm, GetParam() == "qwen3");
  // head_dim is the width of one head's rows in attn_k: rows / kv heads.
  const GgufTensorInfo* k_proj = gguf.find_tensor("blk.0.attn_k.weight");
  ASSERT_NE(k_proj, nullptr);
  EXPECT_EQ(config.head_dim, k_proj->dims[1] / config.num_key_value_heads);
  EXPECT_EQ(config.vocab_size, get(cases, "logits").size(2));

  const at::Tensor& mask = get(cases, "mask");
  KvCache cache = model->new_cache(mask.size(0));
  const at::Tensor logits = model->forward(get(cases, "ids"), mask, cache);
  const at::Tensor real = mask.unsqueeze(-1).expand_as(logits);
  EXPECT_LE(max_abs_diff(logits.masked_select(real), get(cases, "logits").masked_select(real)), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Families, GgufModelTest, ::testing::Values("llama", "llama3", "qwen2", "qwen3"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(GgufModelErrors, UnsupportedGgufArchitecture) {
  // The tokenizer-only vocabulary files of the test data declare other architectures (gpt2, falcon, ...).
  const std::string path = testing::repo_root() + "/.testdata/llama.cpp/models/ggml-vocab-gpt-2.gguf";
  const GgufFile gguf(path);
  try {
    ModelConfig::from_gguf(gguf);
    ADD_FAILURE() << "no exception";
  } catch (const UnsupportedError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find("gpt2"), std::string::npos) << message;
    EXPECT_NE(message.find("qwen3"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace cartridge
