// Bad input gives one typed, one-line error naming the file: unsupported architecture, missing tensor,
// wrong tensor shape, bad token ids.
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "model/model.h"
#include "model_test_util.h"
#include "util/error.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;
using testing::fixture_path;

LoadOptions quiet() {
  LoadOptions options;
  options.show_progress = false;
  return options;
}

// Runs `action`, expects an exception of type E whose message is one line containing every `needle`.
template <typename E, typename F>
void expect_one_line_error(F action, const std::vector<std::string>& needles) {
  try {
    action();
    ADD_FAILURE() << "no exception";
  } catch (const E& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const std::string& needle : needles) EXPECT_NE(message.find(needle), std::string::npos) << message;
  } catch (const std::exception& error) {
    ADD_FAILURE() << "wrong exception type: " << error.what();
  }
}

fs::path temporary_folder(const std::string& name) {
  const fs::path folder =
      fs::temp_directory_path() / ("cartridge_model_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(folder);
  fs::create_directories(folder);
  return folder;
}

TEST(ModelErrors, UnsupportedArchitectureNamesFileArchitectureAndSupportedOnes) {
  const fs::path folder = temporary_folder("arch");
  const fs::path config = folder / "config.json";
  std::ofstream(config) << R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64})";
  expect_one_line_error<UnsupportedError>([&] { ModelConfig::from_hf_config_json(config.string()); },
                                          {config.string(), "gpt2", "llama", "qwen2", "qwen3"});
  fs::remove_all(folder);
}

TEST(ModelErrors, UnsupportedRopeTypeAndActivation) {
  const fs::path folder = temporary_folder("rope");
  const fs::path config = folder / "config.json";
  std::ofstream(config) << R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})";
  expect_one_line_error<UnsupportedError>([&] { ModelConfig::from_hf_config_json(config.string()); },
                                          {config.string(), "yarn"});
  std::ofstream(config) << R"({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_act": "gelu"})";
  expect_one_line_error<UnsupportedError>([&] { ModelConfig::from_hf_config_json(config.string()); },
                                          {config.string(), "gelu"});
  fs::remove_all(folder);
}

TEST(ModelErrors, MalformedConfigJson) {
  const fs::path folder = temporary_folder("json");
  const fs::path config = folder / "config.json";
  std::ofstream(config) << R"({"model_type": "llama", "hidden_size": 64,)";
  expect_one_line_error<FormatError>([&] { ModelConfig::from_hf_config_json(config.string()); },
                                     {config.string()});
  std::ofstream(config) << R"({"model_type": "llama", "hidden_size": "big", "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4})";
  expect_one_line_error<FormatError>([&] { ModelConfig::from_hf_config_json(config.string()); },
                                     {config.string(), "hidden_size"});
  std::ofstream(config) << R"({"model_type": "llama", "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4})";
  expect_one_line_error<FormatError>([&] { ModelConfig::from_hf_config_json(config.string()); },
                                     {config.string(), "hidden_size"});
  std::ofstream(config) << R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3})";
  expect_one_line_error<FormatError>([&] { ModelConfig::from_hf_config_json(config.string()); },
                                     {config.string(), "multiple"});
  // A number no double holds is nlohmann's out_of_range, not its parse_error: still a FormatError.
  std::ofstream(config) << R"({"model_type": "llama", "hidden_size": 64, "rope_theta": 1e999})";
  expect_one_line_error<FormatError>([&] { ModelConfig::from_hf_config_json(config.string()); },
                                     {config.string(), "not valid JSON"});
  expect_one_line_error<FileNotFoundError>(
      [&] { ModelConfig::from_hf_config_json((folder / "absent.json").string()); }, {"absent.json"});
  fs::remove_all(folder);
}

TEST(ModelErrors, MissingTensorNamesCheckpointAndTensor) {
  const std::string folder = fixture_path("model/broken_missing_tensor");
  expect_one_line_error<FormatError>([&] { Model::load(testing::hf_model_files(folder), quiet()); },
                                     {"model.safetensors", "model.layers.1.mlp.up_proj.weight", "missing"});
}

TEST(ModelErrors, WrongTensorShapeNamesFileTensorAndShapes) {
  const std::string folder = fixture_path("model/broken_wrong_shape");
  expect_one_line_error<FormatError>(
      [&] { Model::load(testing::hf_model_files(folder), quiet()); },
      {"model.safetensors", "model.layers.0.self_attn.k_proj.weight", "[30, 64]", "[32, 64]"});
}

TEST(ModelErrors, TokenIdOutsideVocabulary) {
  const auto model = Model::load(testing::hf_model_files(fixture_path("model/qwen3")), quiet());
  KvCache cache = model->new_cache(1);
  const at::Tensor ids =
      at::tensor(std::vector<int64_t>{3, model->config().vocab_size}, at::kLong).view({1, 2});
  expect_one_line_error<InvalidArgumentError>(
      [&] {
        model->forward(ids, at::ones({1, 2}, at::kBool), cache);
      },
      {std::to_string(model->config().vocab_size), "vocabulary"});
  // Padding ids are never looked up, whatever they are.
  const at::Tensor padded = at::tensor(std::vector<int64_t>{-1, 5}, at::kLong).view({1, 2});
  const at::Tensor mask = at::tensor(std::vector<int64_t>{0, 1}, at::kLong).to(at::kBool).view({1, 2});
  EXPECT_NO_THROW(model->forward(padded, mask, cache));
}

}  // namespace
}  // namespace cartridge
