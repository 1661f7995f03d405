// Helpers shared by the cartridge tests: the PEFT fixtures written by tests/fixtures/make_cartridge.py,
// temporary folders, raw file bytes.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "io/model_files.h"
#include "test_support.h"

namespace cartridge::testing {

// The two tiny models of the fixture: a Llama (GQA, untied) and a Qwen3 (q/k norm, tied, head_dim 32).
inline const std::vector<std::string>& tiny_model_kinds() {
  static const std::vector<std::string> kinds = {"llama", "qwen3"};
  return kinds;
}

// <fixtures>/cartridge/<kind>/<relative>
inline std::string cartridge_fixture(const std::string& kind, const std::string& relative) {
  return fixture_path("cartridge/" + kind + "/" + relative);
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

inline nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_bytes(path)); }

// The fixture's expected.json for a model kind.
inline nlohmann::json expected_for(const std::string& kind) {
  return read_json(cartridge_fixture(kind, "expected.json"));
}

// A fresh folder removed (with its contents) at the end of the scope.
class TemporaryFolder {
 public:
  TemporaryFolder() {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("cartridge_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TemporaryFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TemporaryFolder(const TemporaryFolder&) = delete;
  TemporaryFolder& operator=(const TemporaryFolder&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Copies a fixture adapter folder into `destination` (to damage it without touching the fixture).
inline std::string copy_folder(const std::string& source, const std::string& destination) {
  std::filesystem::copy(source, destination, std::filesystem::copy_options::recursive);
  return destination;
}

// The ModelFiles of a tiny fixture model folder (what resolve_model_files finds there).
inline ModelFiles tiny_model_files(const std::string& kind) {
  const std::string folder = cartridge_fixture(kind, "model");
  ModelFiles files;
  files.format = ModelFormat::kHuggingFaceFolder;
  files.name = folder;
  files.folder = folder;
  files.config_path = folder + "/config.json";
  files.weight_paths = {folder + "/model.safetensors"};
  files.tokenizer_json_path = folder + "/tokenizer.json";
  files.tokenizer_config_path = folder + "/tokenizer_config.json";
  files.chat_template_path = folder + "/chat_template.jinja";
  files.generation_config_path = folder + "/generation_config.json";
  return files;
}

}  // namespace cartridge::testing
