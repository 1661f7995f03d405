// Helpers shared by the model-layer tests: reading oracle tensors written by tests/fixtures/make_model*.py
// and comparing tensors.
#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "io/model_files.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/safetensors_dtype.h"
#include "test_support.h"

namespace cartridge::testing {

// Every tensor of a safetensors fixture, copied into owned CPU tensors (F32, F16, BF16, I64, BOOL).
inline std::map<std::string, at::Tensor> read_tensors(const std::string& path) {
  SafetensorsFile file(path);
  std::map<std::string, at::Tensor> tensors;
  for (const SafetensorsTensorInfo& info : file.tensors()) {
    const at::ScalarType dtype = torch_dtype(info.dtype);
    if (dtype == at::ScalarType::Undefined) {
      ADD_FAILURE() << "unexpected dtype in " << path << ": " << info.name;
      continue;
    }
    tensors[info.name] =
        at::from_blob(const_cast<uint8_t*>(file.data(info)), info.shape, at::TensorOptions().dtype(dtype))
            .clone();
  }
  return tensors;
}

inline const at::Tensor& get(const std::map<std::string, at::Tensor>& tensors, const std::string& name) {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::runtime_error("fixture has no tensor " + name);
  return it->second;
}

// Largest |a - b| over elements (both converted to float32 on the CPU).
inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes() || a.numel() == 0) return a.numel() == 0 ? 0.0 : 1e30;
  return (a.detach().to(at::kFloat).cpu() - b.detach().to(at::kFloat).cpu()).abs().max().item<double>();
}

// The one file of a GGUF model.
inline ModelFiles gguf_model_files(const std::string& path) {
  ModelFiles files;
  files.format = ModelFormat::kGguf;
  files.name = path;
  files.gguf_path = path;
  return files;
}

// Files of a Hugging Face model folder written by save_pretrained: config.json and model.safetensors, or the
// shards its index lists (built here so the model tests depend only on the safetensors reader).
inline ModelFiles hf_model_files(const std::string& folder) {
  ModelFiles files;
  files.format = ModelFormat::kHuggingFaceFolder;
  files.name = folder;
  files.folder = folder;
  files.config_path = folder + "/config.json";
  const std::string index_path = folder + "/model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    std::ifstream stream(index_path);
    const nlohmann::json index = nlohmann::json::parse(stream);
    std::set<std::string> shards;
    for (const auto& entry : index.at("weight_map").items()) shards.insert(entry.value().get<std::string>());
    for (const std::string& shard : shards) files.weight_paths.push_back(folder + "/" + shard);
  } else {
    files.weight_paths.push_back(folder + "/model.safetensors");
  }
  return files;
}

// A test over one of the tiny random models of tests/fixtures/make_model.py per parameter (its folder under
// the fixtures' model/): the model loaded in fp32 and its oracle cases.
class TinyModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    LoadOptions options;
    options.show_progress = false;
    model_ = Model::load(hf_model_files(fixture_path("model/" + GetParam())), options);
    cases_ = read_tensors(fixture_path("model/" + GetParam() + "_cases.safetensors"));
  }

  std::shared_ptr<const Model> model_;
  std::map<std::string, at::Tensor> cases_;
};

}  // namespace cartridge::testing
