#include "cartridge/adapter_io.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "io/model_files.h"
#include "model/safetensors_dtype.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace cartridge {

namespace fs = std::filesystem;

namespace {

constexpr char kPromptEmbeddingsName[] = "prompt_embeddings";

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

bool has_config(const fs::path& folder) { return fs::is_regular_file(folder / kAdapterConfigFileName); }

// The folder itself, or its only adapter subfolder (PEFT's named adapters); nullopt when neither.
std::optional<std::string> adapter_in_folder(const fs::path& folder) {
  if (has_config(folder)) return folder.string();
  std::vector<std::string> named;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(folder, error)) {
    if (entry.is_directory() && has_config(entry.path())) named.push_back(entry.path().filename().string());
  }
  std::sort(named.begin(), named.end());
  if (named.size() == 1) return (folder / named.front()).string();
  if (named.size() > 1) {
    throw InvalidArgumentError(
        describe_file_problem(folder.string(), "holds several PEFT adapters (" + join(named, ", ") + ")",
                              "pass " + (folder / "<name>").string() + " to pick one"));
  }
  return std::nullopt;
}

// `prompt_embeddings` of an adapter folder in its stored dtype (a copy), checked against `config`.
struct StoredEmbeddings {
  at::Tensor tensor;  // [p, W] F32/F16/BF16 on the CPU
  SafetensorsDType dtype;
  int64_t file_bytes;
};

// A NaN or infinity in a cartridge would silently turn every answer into garbage (softmax over NaN): refuse
// it on load, naming the first bad entry. rows [p, W] with W = 2 * num_layers * token_dim laid out as
// [K_0 | V_0 | K_1 | V_1 | ...].
void check_finite_rows(const at::Tensor& rows, const std::string& path, const AdapterConfig& config) {
  const at::Tensor finite = at::isfinite(rows);  // [p, W] bool
  if (finite.all().item<bool>()) return;
  const int64_t flat = at::logical_not(finite).flatten().nonzero()[0][0].item<int64_t>();
  const int64_t row = flat / rows.size(1), column = flat % rows.size(1);
  const int64_t token_dim = std::max<int64_t>(config.token_dim, 1);
  const int64_t layer = column / (2 * token_dim);
  const bool is_value = (column % (2 * token_dim)) >= token_dim;
  const double value = rows[row][column].item<double>();
  throw FormatError(describe_file_problem(path,
                                          "holds " + std::string(std::isnan(value) ? "NaN" : "an infinity") +
                                              " in prompt_embeddings row " + std::to_string(row) +
                                              ", column " + std::to_string(column) + " (layer " +
                                              std::to_string(layer) + (is_value ? " values" : " keys") + ")",
                                          "the adapter is damaged: restore a good copy or make it again"));
}

StoredEmbeddings read_prompt_embeddings(const fs::path& folder, const AdapterConfig& config) {
  const fs::path path = folder / kAdapterWeightsFileName;
  if (!fs::is_regular_file(path)) {
    if (fs::is_regular_file(folder / kAdapterPickleWeightsFileName)) {
      throw UnsupportedError(
          describe_file_problem((folder / kAdapterPickleWeightsFileName).string(),
                                "is a pickle (torch.save) file, which is not read here",
                                "re-save the adapter with PEFT's save_pretrained(safe_serialization=True)"));
    }
    throw FileNotFoundError(describe_file_problem(folder.string(),
                                                  std::string("has no ") + kAdapterWeightsFileName,
                                                  "the adapter folder is incomplete"));
  }
  const SafetensorsFile file(path.string());
  const SafetensorsTensorInfo* info = file.find(kPromptEmbeddingsName);
  if (info == nullptr) {
    std::vector<std::string> names;
    for (const auto& tensor : file.tensors()) names.push_back(tensor.name);
    throw FormatError(describe_file_problem(path.string(),
                                            "has no prompt_embeddings tensor (found: " +
                                                (names.empty() ? std::string("none") : join(names, ", ")) +
                                                ")",
                                            "is this a CARTRIDGE adapter?"));
  }
  const at::ScalarType dtype = torch_dtype(info->dtype);
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
    throw UnsupportedError(describe_file_problem(
        path.string(), "stores prompt_embeddings as " + safetensors_dtype_name(info->dtype),
        "expected F32, F16 or BF16"));
  }
  const CartridgeShape shape = config.shape();
  const std::string config_path = (folder / kAdapterConfigFileName).string();
  if (info->shape.size() != 2) {
    throw FormatError(describe_file_problem(
        path.string(), "has a " + std::to_string(info->shape.size()) +
                           "-D prompt_embeddings; expected [num_virtual_tokens, width]"));
  }
  if (info->shape[0] != config.num_virtual_tokens) {
    throw FormatError(describe_file_problem(path.string(),
                                            "has " + std::to_string(info->shape[0]) + " rows but " +
                                                config_path + " says num_virtual_tokens " +
                                                std::to_string(config.num_virtual_tokens),
                                            "the files do not belong together"));
  }
  if (info->shape[1] != shape.width()) {
    throw FormatError(describe_file_problem(
        path.string(),
        "rows are " + std::to_string(info->shape[1]) + " wide but " + config_path + " (num_layers " +
            std::to_string(config.num_layers) + ", token_dim " + std::to_string(config.token_dim) +
            ") needs 2*" + std::to_string(config.num_layers) + "*" + std::to_string(config.token_dim) +
            " = " + std::to_string(shape.width()),
        "the files do not belong together"));
  }
  // Copy out of the mapping (little-endian bytes, as on every platform libtorch runs on).
  at::Tensor tensor =
      at::from_blob(const_cast<uint8_t*>(file.data(*info)), {info->shape[0], info->shape[1]}, dtype).clone();
  check_finite_rows(tensor, path.string(), config);
  return {tensor, info->dtype, static_cast<int64_t>(fs::file_size(path))};
}

std::optional<ModelFingerprint> read_fingerprint(const fs::path& folder, std::vector<std::string>& warnings) {
  const fs::path path = folder / kFingerprintFileName;
  if (!fs::is_regular_file(path)) return std::nullopt;
  try {
    return ModelFingerprint::from_json(nlohmann::json::parse(read_text_file(path.string())), path.string());
  } catch (const nlohmann::json::exception& error) {
    warnings.push_back(path.string() + ": not valid JSON, model identity not checked");
  } catch (const Error& error) {
    warnings.push_back(std::string(error.what()) + "; model identity not checked");
  }
  return std::nullopt;
}

std::string fingerprint_text(const ModelFingerprint& fingerprint) {
  return fingerprint.to_json().dump(2) + "\n";
}

std::string serialize_embeddings(const at::Tensor& rows /* [p, W] */, bool with_metadata) {
  const at::Tensor contiguous = rows.to(at::kCPU).contiguous();
  std::map<std::string, std::string> metadata;
  if (with_metadata) metadata["format"] = "pt";
  return serialize_safetensors({{kPromptEmbeddingsName,
                                 safetensors_dtype(contiguous.scalar_type()),
                                 {contiguous.size(0), contiguous.size(1)},
                                 contiguous.data_ptr()}},
                               metadata);
}

// --force replaces only what this tool writes. Anything else in the folder (a user's files, a subfolder
// that is not a training run's) makes it refuse, so a mistyped --out never deletes unrelated work.
void check_replaceable(const fs::path& folder) {
  if (!fs::is_directory(folder)) {
    throw InvalidArgumentError(describe_file_problem(folder.string(), "exists and is not a folder",
                                                     "choose another --out or remove it yourself"));
  }
  static const std::set<std::string> written = {
      kAdapterConfigFileName,
      kAdapterWeightsFileName,
      kAdapterPickleWeightsFileName,
      kFingerprintFileName,
      kFramingFileName,
      "README.md",  // PEFT's save_pretrained writes a model card
      "best",
      "loss.csv",
      "loss.svg",
      "dataset.jsonl"};  // a training run's outputs, with checkpoint-*
  for (const auto& entry : fs::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    if (written.count(name) != 0 || name.rfind("checkpoint-", 0) == 0) continue;
    throw InvalidArgumentError(describe_file_problem(
        folder.string(), "holds " + name + ", which this tool does not write, so --force will not replace it",
        "choose another --out or remove the folder yourself"));
  }
}

}  // namespace

std::string resolve_adapter_folder(const std::string& spec) {
  if (spec.empty()) throw InvalidArgumentError("an empty adapter path was given");
  const fs::path path(spec);
  if (fs::is_directory(path)) {
    if (auto folder = adapter_in_folder(path)) return *folder;
    throw FileNotFoundError(describe_file_problem(spec, std::string("has no ") + kAdapterConfigFileName,
                                                  "expected a PEFT adapter folder (adapter_config.json + "
                                                  "adapter_model.safetensors)"));
  }
  if (fs::is_regular_file(path)) {
    if (path.filename() == kAdapterConfigFileName)
      return path.parent_path().empty() ? "." : path.parent_path().string();
    throw InvalidArgumentError(describe_file_problem(spec, "is a file", "pass the adapter's folder"));
  }
  // A Hub id: org/name, optionally followed by a subfolder inside the repo.
  std::vector<std::string> parts;
  for (const auto& part : path) parts.push_back(part.string());
  const bool looks_like_hub_id =
      parts.size() >= 2 && !path.is_absolute() && parts[0] != "." && parts[0] != "..";
  std::vector<std::string> searched = {spec};
  if (looks_like_hub_id) {
    const std::string snapshot = cached_hub_snapshot(parts[0], parts[1], &searched);
    if (!snapshot.empty()) {
      fs::path folder = snapshot;
      for (size_t i = 2; i < parts.size(); ++i) folder /= parts[i];
      if (fs::is_directory(folder)) {
        if (auto found = adapter_in_folder(folder)) return *found;
      }
      searched.push_back(folder.string());
    }
  }
  throw FileNotFoundError(
      "no adapter found for '" + spec + "' (searched: " + join(searched, ", ") +
      "; pass a folder with adapter_config.json, or a Hub id already downloaded to the HF cache)");
}

LoadedAdapter load_adapter(const std::string& spec) {
  const fs::path folder = resolve_adapter_folder(spec);
  std::vector<std::string> warnings;
  std::vector<std::string> ignored_keys;
  AdapterConfig config = AdapterConfig::read((folder / kAdapterConfigFileName).string(), &ignored_keys);
  if (!ignored_keys.empty()) {
    warnings.push_back((folder / kAdapterConfigFileName).string() + ": ignoring keys PEFT " + kPeftVersion +
                       " does not know: " + join(ignored_keys, ", "));
  }
  StoredEmbeddings stored = read_prompt_embeddings(folder, config);
  Cartridge cartridge =
      Cartridge::from_prompt_embeddings(config.shape(), stored.tensor, config.num_frozen_tokens);
  std::optional<ModelFingerprint> fingerprint = read_fingerprint(folder, warnings);
  const Framing framing = read_framing(folder.string());
  return LoadedAdapter{folder.string(), std::move(config),  std::move(cartridge),
                       stored.dtype,    stored.file_bytes,  std::move(fingerprint),
                       framing,         std::move(warnings)};
}

std::vector<std::string> check_adapter_for_model(const LoadedAdapter& adapter, const ModelConfig& config,
                                                 const ModelFingerprint* model_fingerprint,
                                                 const std::string& model_name) {
  adapter.cartridge.check_fits(config, adapter.folder, model_name);
  std::vector<std::string> warnings;
  if (model_fingerprint != nullptr && adapter.fingerprint) {
    const std::vector<std::string> differences = adapter.fingerprint->differences(*model_fingerprint);
    if (!differences.empty()) {
      warnings.push_back(adapter.folder + " was made for a different model (" +
                         adapter.fingerprint->model_name + "; differs in " + join(differences, ", ") +
                         ") than " + model_name + "; its outputs may be meaningless");
    }
  }
  return warnings;
}

Cartridge load_cartridges_for_model(const std::vector<std::string>& specs, const ModelConfig& config,
                                    const ModelFiles* files, std::vector<std::string>* warnings,
                                    Framing* framing) {
  if (specs.empty()) throw InvalidArgumentError("no cartridge given");
  std::vector<LoadedAdapter> adapters;
  for (const std::string& spec : specs) adapters.push_back(load_adapter(spec));
  std::optional<ModelFingerprint> model_fingerprint;
  const bool any_fingerprint = std::any_of(adapters.begin(), adapters.end(),
                                           [](const LoadedAdapter& a) { return a.fingerprint.has_value(); });
  if (files != nullptr && any_fingerprint) model_fingerprint = fingerprint_model(*files, config);
  const std::string model_name = files != nullptr ? files->name : std::string("the model");
  std::vector<Cartridge> parts;
  for (const LoadedAdapter& adapter : adapters) {
    std::vector<std::string> found = check_adapter_for_model(
        adapter, config, model_fingerprint ? &*model_fingerprint : nullptr, model_name);
    if (warnings != nullptr) {
      warnings->insert(warnings->end(), adapter.warnings.begin(), adapter.warnings.end());
      warnings->insert(warnings->end(), found.begin(), found.end());
    }
    parts.push_back(adapter.cartridge);
  }
  if (framing != nullptr) {
    std::vector<Framing> framings;
    std::vector<std::string> folders;
    for (const LoadedAdapter& adapter : adapters) {
      framings.push_back(adapter.framing);
      folders.push_back(adapter.folder);
    }
    *framing = common_framing(framings, folders);
  }
  return parts.size() == 1 ? parts.front() : Cartridge::compose(parts);
}

void save_adapter(const std::string& folder, const Cartridge& cartridge, const AdapterConfig& config,
                  const ModelFingerprint* fingerprint, bool overwrite, std::optional<Framing> framing) {
  TORCH_CHECK(config.num_virtual_tokens == cartridge.num_virtual_tokens() &&
                  config.num_frozen_tokens == cartridge.num_frozen_tokens() &&
                  config.shape() == cartridge.shape(),
              "adapter config does not describe the cartridge being saved");
  // Serialise before touching the disk so a failure leaves nothing behind.
  const std::string config_text = config.to_json_text();
  const std::string weights =
      serialize_embeddings(cartridge.prompt_embeddings().detach(), /*with_metadata=*/true);
  const std::string fingerprint_json = fingerprint ? fingerprint_text(*fingerprint) : std::string();
  if (overwrite && fs::exists(folder)) check_replaceable(folder);
  write_directory_atomic(folder, overwrite, [&](const std::string& temporary) {
    write_file_atomic(temporary + "/" + kAdapterConfigFileName, config_text);
    write_file_atomic(temporary + "/" + kAdapterWeightsFileName, weights);
    if (fingerprint) write_file_atomic(temporary + "/" + kFingerprintFileName, fingerprint_json);
    if (framing) write_file_atomic(temporary + "/" + kFramingFileName, framing_file_text(*framing));
  });
}

std::vector<std::string> compose_adapter_folders(const std::vector<std::string>& specs,
                                                 const std::string& output_folder, bool overwrite) {
  if (specs.size() < 2)
    throw InvalidArgumentError("compose needs at least 2 adapters, got " + std::to_string(specs.size()));
  std::vector<fs::path> folders;
  std::vector<AdapterConfig> configs;
  for (const std::string& spec : specs) {
    folders.push_back(resolve_adapter_folder(spec));
    configs.push_back(AdapterConfig::read((folders.back() / kAdapterConfigFileName).string()));
  }
  const AdapterConfig& first = configs.front();
  for (size_t i = 1; i < configs.size(); ++i) {
    const AdapterConfig& other = configs[i];
    const char* field = nullptr;
    if (other.task_type != first.task_type)
      field = "task_type";
    else if (other.token_dim != first.token_dim)
      field = "token_dim";
    else if (other.num_layers != first.num_layers)
      field = "num_layers";
    else if (other.num_attention_heads != first.num_attention_heads)
      field = "num_attention_heads";
    else if (other.num_transformer_submodules != first.num_transformer_submodules)
      field = "num_transformer_submodules";
    if (field != nullptr) {
      // The values as adapter_config.json spells them (a null task_type included).
      throw MismatchError(folders[i].string() + " cannot be composed with " + folders[0].string() +
                          ": their " + field + " differ (" + first.to_json().at(field).dump() + " vs " +
                          other.to_json().at(field).dump() +
                          "); compose only cartridges made for the same model");
    }
  }
  std::vector<at::Tensor> parts;  // each [p_i, W] in its stored dtype
  std::vector<std::string> warnings;
  std::optional<ModelFingerprint> first_fingerprint;
  const bool first_has_framing = fs::is_regular_file(folders[0] / kFramingFileName);
  const Framing first_framing = read_framing(folders[0].string());
  for (size_t i = 0; i < folders.size(); ++i) {
    parts.push_back(read_prompt_embeddings(folders[i], configs[i]).tensor);
    if (const Framing framing = read_framing(folders[i].string()); framing != first_framing) {
      warnings.push_back(folders[i].string() + " was made for the " + framing_name(framing) + " framing, " +
                         folders[0].string() + " for " + framing_name(first_framing) +
                         "; the composition keeps the first one's");
    }
    std::optional<ModelFingerprint> fingerprint = read_fingerprint(folders[i], warnings);
    if (i == 0) {
      first_fingerprint = fingerprint;
    } else if (fingerprint && first_fingerprint && !fingerprint->differences(*first_fingerprint).empty()) {
      warnings.push_back(folders[i].string() + " was made for a different model (" + fingerprint->model_name +
                         ") than " + folders[0].string() + " (" + first_fingerprint->model_name +
                         "); the composition keeps the first one's fingerprint");
    }
  }
  const at::Tensor composed = at::cat(parts, 0);  // [sum p_i, W], dtype promoted as torch.cat does
  AdapterConfig config = first;
  config.num_virtual_tokens = composed.size(0);
  config.num_frozen_tokens = first.num_frozen_tokens;

  const std::string config_text = config.to_json_text();
  const std::string weights = serialize_embeddings(composed, /*with_metadata=*/false);
  const std::string fingerprint_json =
      first_fingerprint ? fingerprint_text(*first_fingerprint) : std::string();
  if (overwrite && fs::exists(output_folder)) check_replaceable(output_folder);
  write_directory_atomic(output_folder, overwrite, [&](const std::string& temporary) {
    write_file_atomic(temporary + "/" + kAdapterConfigFileName, config_text);
    write_file_atomic(temporary + "/" + kAdapterWeightsFileName, weights);
    if (first_fingerprint) write_file_atomic(temporary + "/" + kFingerprintFileName, fingerprint_json);
    if (first_has_framing)
      write_file_atomic(temporary + "/" + kFramingFileName, framing_file_text(first_framing));
  });
  return warnings;
}

}  // namespace cartridge
