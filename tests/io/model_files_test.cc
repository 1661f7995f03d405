// Resolving --model: GGUF files, Hugging Face folders (single file and sharded), and Hub ids in a fake
// Hugging Face cache built in a temporary folder.
#include "io/model_files.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "io_test_util.h"
#include "test_support.h"
#include "util/error.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;
using testing::TemporaryFolder;
using testing::write_bytes;

// Sets (or unsets, for nullopt) an environment variable for the lifetime of the object.
class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnvironment() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A minimal Hugging Face folder: config.json, weights, and whichever optional files are asked for.
void make_hf_folder(const std::string& folder, bool with_tokenizer = true) {
  write_bytes(folder + "/config.json", R"({"model_type": "llama"})");
  write_bytes(folder + "/model.safetensors", "weights");
  if (with_tokenizer) {
    write_bytes(folder + "/tokenizer.json", "{}");
    write_bytes(folder + "/tokenizer_config.json", "{}");
  }
}

TEST(ModelFiles, GgufFile) {
  const ModelFiles files = resolve_model_files(testing::default_model_path());
  EXPECT_EQ(files.format, ModelFormat::kGguf);
  EXPECT_EQ(files.gguf_path, testing::default_model_path());
  EXPECT_EQ(files.name, testing::default_model_path());
  // A GGUF file under another name is recognised by its magic.
  TemporaryFolder folder;
  write_bytes(folder.file("model.bin"), std::string("GGUF\x03\0\0\0", 8));
  EXPECT_EQ(resolve_model_files(folder.file("model.bin")).format, ModelFormat::kGguf);
  write_bytes(folder.file("notes.txt"), "hello");
  EXPECT_THROW(resolve_model_files(folder.file("notes.txt")), FormatError);
}

TEST(ModelFiles, HuggingFaceFolderWithOneWeightFile) {
  TemporaryFolder folder;
  make_hf_folder(folder.path());
  write_bytes(folder.file("chat_template.jinja"), "{{ messages }}");
  const ModelFiles files = resolve_model_files(folder.path());
  EXPECT_EQ(files.format, ModelFormat::kHuggingFaceFolder);
  EXPECT_EQ(files.name, folder.path());
  EXPECT_EQ(files.config_path, folder.file("config.json"));
  ASSERT_EQ(files.weight_paths.size(), 1u);
  EXPECT_EQ(files.weight_paths[0], folder.file("model.safetensors"));
  EXPECT_EQ(files.tokenizer_json_path, folder.file("tokenizer.json"));
  EXPECT_EQ(files.tokenizer_config_path, folder.file("tokenizer_config.json"));
  EXPECT_EQ(files.chat_template_path, folder.file("chat_template.jinja"));
  EXPECT_EQ(files.generation_config_path, "");
}

TEST(ModelFiles, ShardedWeightsInShardOrder) {
  TemporaryFolder folder;
  write_bytes(folder.file("config.json"), "{}");
  write_bytes(folder.file("model-00002-of-00002.safetensors"), "b");
  write_bytes(folder.file("model-00001-of-00002.safetensors"), "a");
  write_bytes(
      folder.file("model.safetensors.index.json"),
      R"({"metadata": {"total_size": 2}, "weight_map": {"z.weight": "model-00001-of-00002.safetensors",)"
      R"( "a.weight": "model-00002-of-00002.safetensors", "b.weight": "model-00001-of-00002.safetensors"}})");
  const ModelFiles files = resolve_model_files(folder.path());
  ASSERT_EQ(files.weight_paths.size(), 2u);
  EXPECT_EQ(files.weight_paths[0], folder.file("model-00001-of-00002.safetensors"));
  EXPECT_EQ(files.weight_paths[1], folder.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(files.tokenizer_json_path, "");
}

// Resolving `spec` throws E whose one-line message contains every string in `parts`.
template <typename E>
void expect_error(const std::string& spec, const std::vector<std::string>& parts) {
  try {
    resolve_model_files(spec);
    ADD_FAILURE() << "no error for " << spec;
  } catch (const E& error) {
    const std::string message = error.what();
    for (const std::string& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  } catch (const Error& error) {
    ADD_FAILURE() << "wrong error type: " << error.what();
  }
}

TEST(ModelFiles, MissingShardAndBadIndex) {
  TemporaryFolder folder;
  write_bytes(folder.file("config.json"), "{}");
  write_bytes(folder.file("model-00001-of-00002.safetensors"), "a");
  write_bytes(
      folder.file("model.safetensors.index.json"),
      R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  expect_error<FormatError>(folder.path(),
                            {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing"});
  write_bytes(folder.file("model.safetensors.index.json"), "{not json");
  expect_error<FormatError>(folder.path(), {"model.safetensors.index.json", "not valid JSON"});
  write_bytes(folder.file("model.safetensors.index.json"), R"({"weight_map": {"a": "../../etc/passwd"}})");
  expect_error<FormatError>(folder.path(), {"is not a file name"});
  write_bytes(folder.file("model.safetensors.index.json"), R"({"metadata": {}})");
  expect_error<FormatError>(folder.path(), {"weight_map"});
}

TEST(ModelFiles, FolderWithoutConfigPointsAtItsGguf) {
  TemporaryFolder folder;
  expect_error<FormatError>(folder.path(), {folder.path(), "no config.json"});
  write_bytes(folder.file("small.gguf"), "GGUF");
  expect_error<FormatError>(folder.path(), {"pass the file", folder.file("small.gguf")});
}

TEST(ModelFiles, HubIdInTheHuggingFaceCache) {
  TemporaryFolder home;
  ScopedEnvironment hub_cache("HF_HUB_CACHE", std::nullopt);
  ScopedEnvironment legacy_hub_cache("HUGGINGFACE_HUB_CACHE", std::nullopt);
  ScopedEnvironment hf_home("HF_HOME", home.path());
  const std::string repository = home.file("hub/models--HuggingFaceTB--SmolLM2-135M-Instruct");
  // Two snapshots; refs/main names the older one, which must win.
  make_hf_folder(repository + "/snapshots/aaaa1111");
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  make_hf_folder(repository + "/snapshots/bbbb2222", /*with_tokenizer=*/false);
  write_bytes(repository + "/refs/main", "aaaa1111\n");
  ModelFiles files = resolve_model_files("HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(files.format, ModelFormat::kHuggingFaceFolder);
  EXPECT_EQ(files.name, "HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(fs::path(files.folder), fs::path(repository + "/snapshots/aaaa1111"));
  EXPECT_NE(files.tokenizer_json_path, "");
  // Without refs/main: the newest snapshot.
  fs::remove(repository + "/refs/main");
  fs::last_write_time(repository + "/snapshots/bbbb2222",
                      fs::last_write_time(repository + "/snapshots/aaaa1111") + std::chrono::seconds(10));
  files = resolve_model_files("HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(fs::path(files.folder), fs::path(repository + "/snapshots/bbbb2222"));
  EXPECT_EQ(files.tokenizer_json_path, "");
  // Snapshot files are symlinks into blobs/ in a real cache.
  fs::create_directories(repository + "/blobs");
  write_bytes(repository + "/blobs/0123", "{}");
  fs::create_symlink("../../blobs/0123", repository + "/snapshots/bbbb2222/tokenizer.json");
  files = resolve_model_files("HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(files.tokenizer_json_path, repository + "/snapshots/bbbb2222/tokenizer.json");
}

TEST(ModelFiles, HubCacheEnvironmentPrecedence) {
  TemporaryFolder first, second;
  make_hf_folder(first.file("models--org--name/snapshots/r1"));
  make_hf_folder(second.file("hub/models--org--name/snapshots/r2"));
  {
    ScopedEnvironment hub_cache("HF_HUB_CACHE", first.path());
    ScopedEnvironment hf_home("HF_HOME", second.path());
    EXPECT_EQ(fs::path(resolve_model_files("org/name").folder),
              fs::path(first.file("models--org--name/snapshots/r1")));
  }
  {
    ScopedEnvironment hub_cache("HF_HUB_CACHE", std::nullopt);
    ScopedEnvironment legacy_hub_cache("HUGGINGFACE_HUB_CACHE", std::nullopt);
    ScopedEnvironment hf_home("HF_HOME", std::nullopt);
    ScopedEnvironment xdg("XDG_CACHE_HOME", std::nullopt);
    ScopedEnvironment home("HOME", second.path() + "/home");
    make_hf_folder(second.file("home/.cache/huggingface/hub/models--org--name/snapshots/r3"));
    EXPECT_EQ(fs::path(resolve_model_files("org/name").folder),
              fs::path(second.file("home/.cache/huggingface/hub/models--org--name/snapshots/r3")));
  }
}

TEST(ModelFiles, MissingModelListsThePathsSearched) {
  TemporaryFolder home;
  ScopedEnvironment hub_cache("HF_HUB_CACHE", std::nullopt);
  ScopedEnvironment legacy_hub_cache("HUGGINGFACE_HUB_CACHE", std::nullopt);
  ScopedEnvironment hf_home("HF_HOME", home.path());
  expect_error<FileNotFoundError>(
      "someorg/missing-model",
      {"someorg/missing-model", home.file("hub/models--someorg--missing-model"), "hf download"});
  // A repository folder with no snapshot.
  fs::create_directories(home.file("hub/models--someorg--empty/snapshots"));
  expect_error<FileNotFoundError>("someorg/empty", {home.file("hub/models--someorg--empty/snapshots")});
  // Not a Hub id and not on disk.
  expect_error<FileNotFoundError>("/no/such/model.gguf", {"/no/such/model.gguf", "no such file or folder"});
  EXPECT_THROW(resolve_model_files(""), InvalidArgumentError);
}

}  // namespace
}  // namespace cartridge
