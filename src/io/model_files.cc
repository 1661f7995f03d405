#include "io/model_files.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/quoted.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {

namespace fs = std::filesystem;

namespace {

bool file_exists(const fs::path& path) {
  std::error_code error;
  return fs::is_regular_file(path, error);  // follows symlinks: a cache snapshot links into blobs/
}

bool folder_exists(const fs::path& path) {
  std::error_code error;
  return fs::is_directory(path, error);
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// True when the file starts with the GGUF magic, whatever its name.
bool has_gguf_magic(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  char magic[4] = {};
  return stream.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

std::string existing_or_empty(const fs::path& path) { return file_exists(path) ? path.string() : ""; }

// A shard name from an index must be a plain file name inside the folder.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
         name != "." && name != "..";
}

ModelFiles resolve_folder(const std::string& spec, const fs::path& folder) {
  ModelFiles files;
  files.format = ModelFormat::kHuggingFaceFolder;
  files.name = spec;
  files.folder = folder.string();
  const fs::path config = folder / "config.json";
  if (!file_exists(config)) {
    std::string hint = "a Hugging Face model folder needs config.json next to its weights";
    std::error_code error;
    for (fs::directory_iterator it(folder, error), end; !error && it != end; it.increment(error)) {
      if (ends_with(it->path().filename().string(), ".gguf")) {
        hint = "to use the GGUF model in it, pass the file: " + it->path().string();
        break;
      }
    }
    throw FormatError(describe_file_problem(folder.string(), "folder has no config.json", hint));
  }
  files.config_path = config.string();

  const fs::path single = folder / "model.safetensors";
  const fs::path index = folder / "model.safetensors.index.json";
  if (file_exists(single)) {
    files.weight_paths.push_back(single.string());
  } else if (file_exists(index)) {
    nlohmann::json parsed;
    try {
      parsed = nlohmann::json::parse(read_text_file(index.string()));
    } catch (const nlohmann::json::exception& error) {
      std::string detail = error.what();
      std::replace(detail.begin(), detail.end(), '\n', ' ');
      throw FormatError(describe_file_problem(index.string(), "not valid JSON: " + detail,
                                              "download the model's index file again"));
    }
    if (!parsed.is_object() || !parsed.contains("weight_map") || !parsed["weight_map"].is_object()) {
      throw FormatError(describe_file_problem(index.string(), "has no \"weight_map\" object",
                                              "download the model's index file again"));
    }
    std::set<std::string> shards;  // file names sort in shard order: model-00001-of-00003.safetensors, ...
    for (const auto& [tensor, shard] : parsed["weight_map"].items()) {
      if (!shard.is_string() || !is_plain_file_name(shard.get<std::string>())) {
        throw FormatError(describe_file_problem(
            index.string(), "weight_map entry for " + quote_name(tensor) + " is not a file name",
            "download the model's index file again"));
      }
      shards.insert(shard.get<std::string>());
    }
    if (shards.empty()) {
      throw FormatError(describe_file_problem(index.string(), "weight_map lists no shards",
                                              "download the model's index file again"));
    }
    for (const std::string& shard : shards) {
      const fs::path path = folder / shard;
      if (!file_exists(path)) {
        throw FormatError(describe_file_problem(
            index.string(), "names shard " + quote_name(shard) + ", which is missing from " + folder.string(),
            "download the missing shard into the folder"));
      }
      files.weight_paths.push_back(path.string());
    }
  }
  // No safetensors weights at all is left to the weight loader to report: tokenizer-only uses do not need
  // them.
  files.tokenizer_json_path = existing_or_empty(folder / "tokenizer.json");
  files.tokenizer_config_path = existing_or_empty(folder / "tokenizer_config.json");
  files.chat_template_path = existing_or_empty(folder / "chat_template.jinja");
  files.generation_config_path = existing_or_empty(folder / "generation_config.json");
  return files;
}

// `org/name`: two non-empty parts of letters, digits, '-', '_', '.', as the Hub allows.
bool looks_like_hub_id(const std::string& spec) {
  const size_t slash = spec.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == spec.size()) return false;
  if (spec.find('/', slash + 1) != std::string::npos) return false;
  for (char character : spec) {
    const bool allowed = std::isalnum(static_cast<unsigned char>(character)) || character == '-' ||
                         character == '_' || character == '.' || character == '/';
    if (!allowed) return false;
  }
  const std::string org = spec.substr(0, slash), name = spec.substr(slash + 1);
  return org != "." && org != ".." && name != "." && name != "..";
}

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

}  // namespace

std::string hub_cache_folder() {
  if (const std::string hub_cache = environment("HF_HUB_CACHE"); !hub_cache.empty()) return hub_cache;
  if (const std::string legacy = environment("HUGGINGFACE_HUB_CACHE"); !legacy.empty()) return legacy;
  if (const std::string hf_home = environment("HF_HOME"); !hf_home.empty())
    return (fs::path(hf_home) / "hub").string();
  if (const std::string xdg = environment("XDG_CACHE_HOME"); !xdg.empty()) {
    return (fs::path(xdg) / "huggingface" / "hub").string();
  }
  return (fs::path(environment("HOME")) / ".cache" / "huggingface" / "hub").string();
}

std::string cached_hub_snapshot(const std::string& org, const std::string& name,
                                std::vector<std::string>* searched) {
  const fs::path repository = fs::path(hub_cache_folder()) / ("models--" + org + "--" + name);
  if (!folder_exists(repository)) {
    searched->push_back(repository.string());
    return "";
  }
  const fs::path snapshots = repository / "snapshots";
  const fs::path main_ref = repository / "refs" / "main";
  if (file_exists(main_ref)) {
    std::string revision = read_text_file(main_ref.string());
    revision.erase(std::remove_if(revision.begin(), revision.end(),
                                  [](char c) { return std::isspace(static_cast<unsigned char>(c)); }),
                   revision.end());
    if (is_plain_file_name(revision)) {
      const fs::path snapshot = snapshots / revision;
      searched->push_back(snapshot.string() + " (refs/main)");
      if (folder_exists(snapshot)) return snapshot.string();
    }
  }
  searched->push_back(snapshots.string() + "/*");
  fs::path newest;
  fs::file_time_type newest_time{};
  std::error_code error;
  for (fs::directory_iterator it(snapshots, error), end; !error && it != end; it.increment(error)) {
    std::error_code time_error;
    if (!folder_exists(it->path())) continue;
    const fs::file_time_type time = fs::last_write_time(it->path(), time_error);
    if (time_error) continue;
    if (newest.empty() || time > newest_time || (time == newest_time && it->path() > newest)) {
      newest = it->path();
      newest_time = time;
    }
  }
  return newest.string();
}

ModelFiles resolve_model_files(const std::string& spec) {
  if (spec.empty()) {
    throw InvalidArgumentError(
        "no model given: pass a .gguf file, a Hugging Face model folder or a Hub id (org/name)");
  }
  const fs::path path(spec);
  if (file_exists(path)) {
    if (ends_with(spec, ".gguf") || has_gguf_magic(path)) {
      ModelFiles files;
      files.format = ModelFormat::kGguf;
      files.name = spec;
      files.gguf_path = spec;
      return files;
    }
    throw FormatError(
        describe_file_problem(spec, "is neither a GGUF file nor a folder",
                              "pass a .gguf file, or the Hugging Face folder that holds config.json "
                              "and the .safetensors weights"));
  }
  if (folder_exists(path)) return resolve_folder(spec, path);

  std::vector<std::string> searched = {spec + " (no such file or folder)"};
  if (looks_like_hub_id(spec)) {
    const std::string org = spec.substr(0, spec.find('/'));
    const std::string name = spec.substr(spec.find('/') + 1);
    const std::string snapshot = cached_hub_snapshot(org, name, &searched);
    if (!snapshot.empty()) return resolve_folder(spec, snapshot);
  }
  std::string list;
  for (const std::string& place : searched) list += (list.empty() ? "" : ", ") + place;
  throw FileNotFoundError(
      "model " + quote_name(spec) + " not found; searched: " + list +
      " (pass a .gguf file or a model folder, or download the model into the Hugging Face "
      "cache on a machine with network: hf download " +
      (looks_like_hub_id(spec) ? spec : std::string("org/name")) + ")");
}

}  // namespace cartridge
