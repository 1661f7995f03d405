// The PEFT adapter format against files written by the real PEFT (tests/fixtures/make_cartridge.py):
// config bytes, safetensors bytes, compose bytes, named-adapter subfolders, BF16 storage, random init,
// the Hub cache, and every way a damaged or mismatched adapter is refused.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>

#include "cartridge/adapter_io.h"
#include "cartridge/python_json.h"
#include "cartridge_test_util.h"
#include "io/safetensors.h"
#include "util/error.h"

namespace cartridge {
namespace {

namespace fs = std::filesystem;
using testing::cartridge_fixture;
using testing::expected_for;
using testing::read_bytes;
using testing::TemporaryFolder;
using testing::tiny_model_kinds;
using testing::write_bytes;

const std::vector<std::string> kPeftAdapters = {"peft_plain",         "peft_chat",     "peft_random",
                                                "peft_trained",       "peft_composed", "peft_bf16",
                                                "peft_composed_mixed"};

// The stored prompt_embeddings of an adapter file, upcast to float32.
at::Tensor stored_embeddings(const std::string& adapter_folder) {
  const SafetensorsFile file(adapter_folder + "/adapter_model.safetensors");
  const SafetensorsTensorInfo* info = file.find("prompt_embeddings");
  EXPECT_NE(info, nullptr);
  const at::ScalarType dtype = info->dtype == SafetensorsDType::BF16 ? at::kBFloat16 : at::kFloat;
  return at::from_blob(const_cast<uint8_t*>(file.data(*info)), {info->shape[0], info->shape[1]}, dtype)
      .to(at::kFloat)
      .clone();
}

TEST(PythonJson, MatchesPythonJsonDumps) {
  const nlohmann::json cases = testing::read_json(testing::fixture_path("cartridge/python_json_cases.json"));
  ASSERT_GE(cases.size(), 5u);
  for (const auto& item : cases) {
    const nlohmann::json value = nlohmann::json::parse(item.at("input").get<std::string>());
    EXPECT_EQ(python_json_dumps(value, 2), item.at("expected").get<std::string>()) << item.at("input");
  }
}

TEST(PythonJson, RejectsInvalidUtf8) {
  // nlohmann stores bytes as given; Python could never have produced this string.
  nlohmann::json value = {{"key", std::string("\xff\xfe")}};
  EXPECT_THROW(python_json_dumps(value, 2), InvalidArgumentError);
}

TEST(AdapterConfig, RoundTripsEveryPeftConfigByteForByte) {
  for (const std::string& kind : tiny_model_kinds()) {
    for (const std::string& adapter : kPeftAdapters) {
      const std::string path = cartridge_fixture(kind, adapter + "/adapter_config.json");
      const AdapterConfig config = AdapterConfig::read(path);
      EXPECT_EQ(config.to_json_text(), read_bytes(path)) << path;
    }
  }
}

TEST(AdapterConfig, DerivedFieldsMatchPeftsGqaRule) {
  // Our config for the model equals what PEFT's get_peft_model + save_pretrained wrote (same p, F, name).
  for (const std::string& kind : tiny_model_kinds()) {
    const ModelConfig model = ModelConfig::from_hf_config_json(cartridge_fixture(kind, "model/config.json"));
    const std::string base = expected_for(kind).at("base_model_name_or_path");
    for (const auto& [adapter, p, frozen] : std::vector<std::tuple<std::string, int, int>>{
             {"peft_plain", 16, 1}, {"peft_chat", 12, 2}, {"peft_random", 8, 1}}) {
      const AdapterConfig ours = AdapterConfig::for_model(model, p, frozen, base);
      EXPECT_EQ(ours.to_json_text(), read_bytes(cartridge_fixture(kind, adapter + "/adapter_config.json")))
          << kind << " " << adapter;
    }
  }
}

TEST(AdapterConfig, ParseAppliesPeftDefaultsAndIgnoresUnknownKeys) {
  std::vector<std::string> ignored;
  const AdapterConfig config = AdapterConfig::parse(
      R"({"peft_type": "CARTRIDGE", "num_virtual_tokens": 4, "num_layers": 2, "num_attention_heads": 2,
          "token_dim": 32, "some_future_key": 1})",
      "test.json", &ignored);
  EXPECT_EQ(config.num_frozen_tokens, 1);
  EXPECT_FALSE(config.inference_mode);
  EXPECT_FALSE(config.task_type.has_value());
  EXPECT_EQ(config.peft_version.value_or(""), kPeftVersion);
  EXPECT_EQ(ignored, std::vector<std::string>{"some_future_key"});
  EXPECT_EQ(config.shape(), (CartridgeShape{2, 2, 16}));
}

TEST(AdapterConfig, RefusesWhatItCannotRead) {
  const std::string sizes =
      R"("num_virtual_tokens": 4, "num_layers": 2, "num_attention_heads": 2, "token_dim": 32)";
  EXPECT_THROW(AdapterConfig::parse("{not json", "a.json"), FormatError);
  EXPECT_THROW(AdapterConfig::parse("[1, 2]", "a.json"), FormatError);
  EXPECT_THROW(AdapterConfig::parse(R"({"peft_type": "LORA", "r": 8})", "a.json"), UnsupportedError);
  EXPECT_THROW(AdapterConfig::parse(R"({"peft_type": "CARTRIDGE", "num_layers": 2})", "a.json"), FormatError);
  EXPECT_THROW(
      AdapterConfig::parse(R"({"peft_type": "CARTRIDGE", "num_frozen_tokens": 5, )" + sizes + "}", "a.json"),
      FormatError);
  EXPECT_THROW(
      AdapterConfig::parse(R"({"peft_type": "CARTRIDGE", "num_frozen_tokens": -1, )" + sizes + "}", "a.json"),
      FormatError);
  EXPECT_THROW(AdapterConfig::parse(
                   R"({"peft_type": "CARTRIDGE", "task_type": "SEQ_2_SEQ_LM", )" + sizes + "}", "a.json"),
               UnsupportedError);
  EXPECT_THROW(AdapterConfig::parse(
                   R"({"peft_type": "CARTRIDGE", "num_transformer_submodules": 2, )" + sizes + "}", "a.json"),
               UnsupportedError);
  EXPECT_THROW(AdapterConfig::parse(R"({"peft_type": "CARTRIDGE", "num_virtual_tokens": "4", "num_layers": 2,
                                       "num_attention_heads": 2, "token_dim": 32})",
                                    "a.json"),
               FormatError);
  EXPECT_THROW(AdapterConfig::parse(R"({"peft_type": "CARTRIDGE", "num_virtual_tokens": 4, "num_layers": 2,
                                       "num_attention_heads": 3, "token_dim": 32})",
                                    "a.json"),
               FormatError);
  // The message is one line and names the file.
  try {
    AdapterConfig::parse(R"({"peft_type": "LORA"})", "/some/adapter_config.json");
    FAIL();
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("/some/adapter_config.json"), std::string::npos);
    EXPECT_EQ(message.find('\n'), std::string::npos);
  }
}

TEST(AdapterIo, LoadsEveryPeftAdapterWithItsValues) {
  for (const std::string& kind : tiny_model_kinds()) {
    for (const std::string& adapter : kPeftAdapters) {
      const std::string folder = cartridge_fixture(kind, adapter);
      const LoadedAdapter loaded = load_adapter(folder);
      EXPECT_EQ(loaded.folder, folder);
      EXPECT_FALSE(loaded.fingerprint.has_value());  // PEFT writes none
      EXPECT_TRUE(loaded.warnings.empty());
      EXPECT_EQ(loaded.cartridge.num_virtual_tokens(), loaded.config.num_virtual_tokens);
      EXPECT_EQ(loaded.cartridge.num_frozen_tokens(), loaded.config.num_frozen_tokens);
      EXPECT_TRUE(at::equal(loaded.cartridge.prompt_embeddings(), stored_embeddings(folder))) << folder;
      EXPECT_EQ(loaded.weights_file_bytes,
                static_cast<int64_t>(fs::file_size(folder + "/adapter_model.safetensors")));
    }
  }
}

TEST(AdapterIo, ReadsBf16StorageAsPeftDoes) {
  const LoadedAdapter bf16 = load_adapter(cartridge_fixture("llama", "peft_bf16"));
  const LoadedAdapter f32 = load_adapter(cartridge_fixture("llama", "peft_plain"));
  EXPECT_EQ(bf16.stored_dtype, SafetensorsDType::BF16);
  EXPECT_EQ(f32.stored_dtype, SafetensorsDType::F32);
  EXPECT_TRUE(at::equal(bf16.cartridge.prompt_embeddings(),
                        f32.cartridge.prompt_embeddings().to(at::kBFloat16).to(at::kFloat)));
}

TEST(AdapterIo, FindsPeftNamedAdapterSubfolder) {
  const std::string named = cartridge_fixture("llama", "peft_named");
  EXPECT_EQ(resolve_adapter_folder(named), named + "/second");
  const LoadedAdapter loaded = load_adapter(named);
  const LoadedAdapter same_values = load_adapter(cartridge_fixture("llama", "peft_random"));
  EXPECT_TRUE(at::equal(loaded.cartridge.prompt_embeddings(), same_values.cartridge.prompt_embeddings()));
}

TEST(AdapterIo, RefusesAFolderWithSeveralNamedAdapters) {
  TemporaryFolder folder;
  testing::copy_folder(cartridge_fixture("llama", "peft_random"), folder / "one");
  testing::copy_folder(cartridge_fixture("llama", "peft_plain"), folder / "two");
  EXPECT_THROW(resolve_adapter_folder(folder.path()), InvalidArgumentError);
  EXPECT_EQ(resolve_adapter_folder(folder / "two"), folder / "two");
}

TEST(AdapterIo, FindsAHubIdInTheLocalCache) {
  TemporaryFolder cache;
  const std::string repo = cache / "models--someone--my-cartridge";
  fs::create_directories(repo + "/refs");
  write_bytes(repo + "/refs/main", "abc123\n");
  fs::create_directories(repo + "/snapshots");
  testing::copy_folder(cartridge_fixture("qwen3", "peft_plain"), repo + "/snapshots/abc123");
  testing::copy_folder(cartridge_fixture("qwen3", "peft_random"), repo + "/snapshots/abc123/sub");
  const char* previous = std::getenv("HF_HUB_CACHE");
  const std::string saved = previous ? previous : "";
  ::setenv("HF_HUB_CACHE", cache.path().c_str(), 1);
  EXPECT_EQ(resolve_adapter_folder("someone/my-cartridge"), repo + "/snapshots/abc123");
  EXPECT_EQ(resolve_adapter_folder("someone/my-cartridge/sub"), repo + "/snapshots/abc123/sub");
  EXPECT_THROW(resolve_adapter_folder("someone/not-downloaded"), FileNotFoundError);
  if (previous)
    ::setenv("HF_HUB_CACHE", saved.c_str(), 1);
  else
    ::unsetenv("HF_HUB_CACHE");
}

TEST(AdapterIo, FindsAHubIdWhereverHuggingFaceHubPutsItsCache) {
  // The adapter loader resolves the cache as models are resolved: $HUGGINGFACE_HUB_CACHE and
  // $XDG_CACHE_HOME/huggingface/hub count too, and a refs/main naming a missing snapshot falls back to one
  // that exists.
  TemporaryFolder cache;
  const std::string repo = cache / "huggingface/hub/models--someone--my-cartridge";
  fs::create_directories(repo + "/refs");
  write_bytes(repo + "/refs/main", "gone\n");
  fs::create_directories(repo + "/snapshots");
  testing::copy_folder(cartridge_fixture("qwen3", "peft_plain"), repo + "/snapshots/def456");
  std::map<std::string, std::optional<std::string>> saved;
  for (const char* name : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"}) {
    const char* value = std::getenv(name);
    saved[name] = value ? std::optional<std::string>(value) : std::nullopt;
    ::unsetenv(name);
  }
  ::setenv("XDG_CACHE_HOME", cache.path().c_str(), 1);
  EXPECT_EQ(resolve_adapter_folder("someone/my-cartridge"), repo + "/snapshots/def456");
  ::unsetenv("XDG_CACHE_HOME");
  ::setenv("HUGGINGFACE_HUB_CACHE", (cache / "huggingface/hub").c_str(), 1);
  EXPECT_EQ(resolve_adapter_folder("someone/my-cartridge"), repo + "/snapshots/def456");
  for (const auto& [name, value] : saved) {
    if (value)
      ::setenv(name.c_str(), value->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
}

TEST(AdapterIo, SaveIsByteIdenticalToPeftSavePretrained) {
  for (const std::string& kind : tiny_model_kinds()) {
    for (const std::string adapter : {"peft_plain", "peft_chat", "peft_random", "peft_trained"}) {
      const std::string source = cartridge_fixture(kind, adapter);
      const LoadedAdapter loaded = load_adapter(source);
      TemporaryFolder out;
      save_adapter(out / "adapter", loaded.cartridge, loaded.config, nullptr, /*overwrite=*/false);
      for (const char* file : {"adapter_config.json", "adapter_model.safetensors"}) {
        EXPECT_EQ(read_bytes(out / ("adapter/" + std::string(file))), read_bytes(source + "/" + file))
            << kind << " " << adapter << " " << file;
      }
      EXPECT_FALSE(fs::exists(out / "adapter/cartridge_fingerprint.json"));
    }
  }
}

TEST(AdapterIo, ComposeIsByteIdenticalToPeft) {
  for (const std::string& kind : tiny_model_kinds()) {
    for (const auto& [inputs, expected] : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"peft_plain", "peft_random"}, "peft_composed"},
             {{"peft_bf16", "peft_random"}, "peft_composed_mixed"}}) {
      TemporaryFolder out;
      std::vector<std::string> folders;
      for (const std::string& input : inputs) folders.push_back(cartridge_fixture(kind, input));
      const std::vector<std::string> warnings = compose_adapter_folders(folders, out / "composed", false);
      EXPECT_TRUE(warnings.empty());
      for (const char* file : {"adapter_config.json", "adapter_model.safetensors"}) {
        EXPECT_EQ(read_bytes(out / ("composed/" + std::string(file))),
                  read_bytes(cartridge_fixture(kind, expected + "/" + file)))
            << kind << " " << expected << " " << file;
      }
    }
  }
}

TEST(AdapterIo, ComposeInMemoryMatchesPeft) {
  const LoadedAdapter plain = load_adapter(cartridge_fixture("qwen3", "peft_plain"));
  const LoadedAdapter random = load_adapter(cartridge_fixture("qwen3", "peft_random"));
  const LoadedAdapter composed = load_adapter(cartridge_fixture("qwen3", "peft_composed"));
  const Cartridge ours = Cartridge::compose({plain.cartridge, random.cartridge});
  EXPECT_EQ(ours.num_frozen_tokens(), composed.config.num_frozen_tokens);
  EXPECT_EQ(ours.num_virtual_tokens(), composed.config.num_virtual_tokens);
  EXPECT_TRUE(at::equal(ours.prompt_embeddings(), composed.cartridge.prompt_embeddings()));
}

TEST(AdapterIo, ComposeRefusesIncompatibleAdaptersAndWritesNothing) {
  TemporaryFolder out;
  EXPECT_THROW(compose_adapter_folders(
                   {cartridge_fixture("llama", "peft_plain"), cartridge_fixture("qwen3", "peft_plain")},
                   out / "composed", false),
               MismatchError);
  EXPECT_THROW(compose_adapter_folders({cartridge_fixture("llama", "peft_plain")}, out / "composed", false),
               InvalidArgumentError);
  // A damaged second input: still nothing written.
  testing::copy_folder(cartridge_fixture("llama", "peft_random"), out / "damaged");
  fs::resize_file(out / "damaged/adapter_model.safetensors", 100);
  EXPECT_THROW(compose_adapter_folders({cartridge_fixture("llama", "peft_plain"), out / "damaged"},
                                       out / "composed", false),
               FormatError);
  EXPECT_FALSE(fs::exists(out / "composed"));
  for (const auto& entry : fs::directory_iterator(out.path())) {
    EXPECT_EQ(entry.path().filename().string().find("composed"), std::string::npos) << entry.path();
  }
}

TEST(AdapterIo, RandomInitMatchesPeftSeeded) {
  // torch.manual_seed(seed); get_peft_model(...) -> the same values from our seeded generator.
  for (const std::string& kind : tiny_model_kinds()) {
    const LoadedAdapter peft = load_adapter(cartridge_fixture(kind, "peft_random"));
    const uint64_t seed = expected_for(kind).at("seed").get<uint64_t>();
    const Cartridge ours = Cartridge::random(peft.config.shape(), peft.config.num_virtual_tokens,
                                             peft.config.num_frozen_tokens, seed);
    EXPECT_TRUE(at::equal(ours.prompt_embeddings(), peft.cartridge.prompt_embeddings())) << kind;
  }
}

// Damages a copy of an adapter in one way and expects load_adapter to refuse it with `Expected`.
template <typename Expected>
void expect_refused(const std::function<void(const std::string& folder)>& damage, const std::string& what) {
  TemporaryFolder temporary;
  const std::string folder =
      testing::copy_folder(cartridge_fixture("llama", "peft_plain"), temporary / "adapter");
  damage(folder);
  try {
    load_adapter(folder);
    ADD_FAILURE() << what << ": loaded";
  } catch (const Expected& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_NE(message.find(folder), std::string::npos) << what << ": " << message;
  } catch (const std::exception& error) {
    ADD_FAILURE() << what << ": wrong exception: " << error.what();
  }
}

void edit_config(const std::string& folder, const std::string& key, const nlohmann::json& value) {
  nlohmann::json config = testing::read_json(folder + "/adapter_config.json");
  config[key] = value;
  write_bytes(folder + "/adapter_config.json", config.dump(2));
}

TEST(AdapterIo, RefusesDamagedOrMismatchedFiles) {
  expect_refused<FormatError>(
      [](const std::string& f) { fs::resize_file(f + "/adapter_model.safetensors", 50); },
      "truncated safetensors");
  expect_refused<FormatError>(
      [](const std::string& f) {
        std::string bytes = read_bytes(f + "/adapter_model.safetensors");
        bytes[6] = '\x7f';  // header length far beyond the file
        write_bytes(f + "/adapter_model.safetensors", bytes);
      },
      "corrupt header length");
  expect_refused<FormatError>(
      [](const std::string& f) { write_bytes(f + "/adapter_config.json", "{\"peft_type\": "); },
      "truncated config");
  expect_refused<FormatError>([](const std::string& f) { edit_config(f, "num_layers", 3); },
                              "wrong layer count (W)");
  expect_refused<FormatError>([](const std::string& f) { edit_config(f, "token_dim", 16); },
                              "wrong head dim (W)");
  expect_refused<FormatError>([](const std::string& f) { edit_config(f, "num_virtual_tokens", 17); },
                              "wrong p");
  expect_refused<UnsupportedError>([](const std::string& f) { edit_config(f, "peft_type", "PREFIX_TUNING"); },
                                   "another PEFT method");
  expect_refused<UnsupportedError>(
      [](const std::string& f) { fs::rename(f + "/adapter_model.safetensors", f + "/adapter_model.bin"); },
      "pickle only");
  expect_refused<FileNotFoundError>(
      [](const std::string& f) { fs::remove(f + "/adapter_model.safetensors"); }, "no weights");
  expect_refused<FormatError>(
      [](const std::string& f) {
        const at::Tensor other = at::zeros({16, 128});
        write_bytes(f + "/adapter_model.safetensors",
                    serialize_safetensors(
                        {{"something_else", SafetensorsDType::F32, {16, 128}, other.data_ptr()}}, {}));
      },
      "no prompt_embeddings");
  expect_refused<UnsupportedError>(
      [](const std::string& f) {
        const at::Tensor ints = at::zeros({16, 128}, at::kLong);
        write_bytes(f + "/adapter_model.safetensors",
                    serialize_safetensors(
                        {{"prompt_embeddings", SafetensorsDType::I64, {16, 128}, ints.data_ptr()}}, {}));
      },
      "integer tensor");
  EXPECT_THROW(load_adapter("/nonexistent/adapter"), FileNotFoundError);
}

TEST(AdapterIo, ChecksTheModelShape) {
  const LoadedAdapter llama = load_adapter(cartridge_fixture("llama", "peft_plain"));
  const ModelConfig llama_config =
      ModelConfig::from_hf_config_json(cartridge_fixture("llama", "model/config.json"));
  const ModelConfig qwen_config =
      ModelConfig::from_hf_config_json(cartridge_fixture("qwen3", "model/config.json"));
  EXPECT_TRUE(check_adapter_for_model(llama, llama_config, nullptr, "llama").empty());
  EXPECT_THROW(check_adapter_for_model(llama, qwen_config, nullptr, "qwen3"), MismatchError);  // layer count
  ModelConfig other_head_dim = llama_config;
  other_head_dim.head_dim = 32;
  EXPECT_THROW(check_adapter_for_model(llama, other_head_dim, nullptr, "x"), MismatchError);
  ModelConfig other_heads = llama_config;
  other_heads.num_key_value_heads = 4;
  try {
    check_adapter_for_model(llama, other_heads, nullptr, "the-model");
    FAIL();
  } catch (const MismatchError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("KV heads"), std::string::npos) << message;
    EXPECT_NE(message.find("the-model"), std::string::npos) << message;
  }
}

TEST(AdapterIo, SaveRefusesToOverwriteAndLeavesTheOldFolder) {
  const LoadedAdapter loaded = load_adapter(cartridge_fixture("llama", "peft_plain"));
  TemporaryFolder out;
  save_adapter(out / "a", loaded.cartridge, loaded.config, nullptr, false);
  const std::string before = read_bytes(out / "a/adapter_model.safetensors");
  const LoadedAdapter other = load_adapter(cartridge_fixture("llama", "peft_random"));
  EXPECT_THROW(save_adapter(out / "a", other.cartridge, other.config, nullptr, false), InvalidArgumentError);
  EXPECT_EQ(read_bytes(out / "a/adapter_model.safetensors"), before);
  save_adapter(out / "a", other.cartridge, other.config, nullptr, true);
  EXPECT_EQ(read_bytes(out / "a/adapter_model.safetensors"),
            read_bytes(cartridge_fixture("llama", "peft_random/adapter_model.safetensors")));
}

TEST(Fingerprint, RoundTripsAndReportsDifferences) {
  ModelFingerprint fingerprint;
  fingerprint.architecture = "llama";
  fingerprint.num_layers = 2;
  fingerprint.hidden_size = 64;
  fingerprint.num_attention_heads = 4;
  fingerprint.num_key_value_heads = 2;
  fingerprint.head_dim = 16;
  fingerprint.vocabulary_tokens = 500;
  fingerprint.vocabulary_hash = "fnv1a64:0000000000000001";
  fingerprint.weight_hash = "fnv1a64:0000000000000002";
  fingerprint.model_name = "m";
  const ModelFingerprint back = ModelFingerprint::from_json(fingerprint.to_json(), "f.json");
  EXPECT_TRUE(back.differences(fingerprint).empty());
  ModelFingerprint other = back;
  other.weight_hash = "fnv1a64:0000000000000003";
  other.model_name = "another name is not a difference";
  ASSERT_EQ(other.differences(fingerprint).size(), 1u);
  EXPECT_NE(other.differences(fingerprint)[0].find("weights"), std::string::npos);
  nlohmann::json newer = fingerprint.to_json();
  newer["version"] = ModelFingerprint::kVersion + 1;
  EXPECT_THROW(ModelFingerprint::from_json(newer, "f.json"), UnsupportedError);
}

TEST(Fingerprint, HashesTheTinyModelsFromTheirFiles) {
  const ModelConfig llama_config =
      ModelConfig::from_hf_config_json(cartridge_fixture("llama", "model/config.json"));
  const ModelConfig qwen_config =
      ModelConfig::from_hf_config_json(cartridge_fixture("qwen3", "model/config.json"));
  const ModelFingerprint llama = fingerprint_model(testing::tiny_model_files("llama"), llama_config);
  const ModelFingerprint qwen = fingerprint_model(testing::tiny_model_files("qwen3"), qwen_config);
  EXPECT_EQ(llama.architecture, "llama");
  EXPECT_EQ(qwen.architecture, "qwen3");
  EXPECT_EQ(llama.vocabulary_tokens,
            llama_config.vocab_size);                      // the fixture sizes the model to its tokenizer
  EXPECT_EQ(llama.vocabulary_hash, qwen.vocabulary_hash);  // same trained tokenizer, same tokens
  EXPECT_EQ(llama.vocabulary_hash.rfind("fnv1a64:", 0), 0u);
  EXPECT_FALSE(llama.differences(qwen).empty());
  EXPECT_TRUE(fingerprint_model(testing::tiny_model_files("llama"), llama_config).differences(llama).empty());
}

TEST(Fingerprint, DifferentFingerprintWarnsButLoads) {
  const ModelConfig config =
      ModelConfig::from_hf_config_json(cartridge_fixture("llama", "model/config.json"));
  const ModelFingerprint model_fingerprint = fingerprint_model(testing::tiny_model_files("llama"), config);
  const LoadedAdapter peft = load_adapter(cartridge_fixture("llama", "peft_plain"));
  TemporaryFolder out;
  save_adapter(out / "same", peft.cartridge, peft.config, &model_fingerprint, false);
  const LoadedAdapter same = load_adapter(out / "same");
  ASSERT_TRUE(same.fingerprint.has_value());
  EXPECT_TRUE(check_adapter_for_model(same, config, &model_fingerprint, "llama").empty());

  ModelFingerprint retrained = model_fingerprint;
  retrained.weight_hash = "fnv1a64:00000000deadbeef";
  save_adapter(out / "other", peft.cartridge, peft.config, &retrained, false);
  const std::vector<std::string> warnings =
      check_adapter_for_model(load_adapter(out / "other"), config, &model_fingerprint, "llama");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("weights"), std::string::npos) << warnings[0];

  // A fingerprint from a newer version: loads, with a warning, and is not checked.
  nlohmann::json newer = model_fingerprint.to_json();
  newer["version"] = 99;
  write_bytes(out / "same/cartridge_fingerprint.json", newer.dump());
  const LoadedAdapter unreadable = load_adapter(out / "same");
  EXPECT_FALSE(unreadable.fingerprint.has_value());
  EXPECT_EQ(unreadable.warnings.size(), 1u);
}

}  // namespace
}  // namespace cartridge
