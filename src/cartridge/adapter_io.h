// Reading and writing cartridges as PEFT CARTRIDGE adapters (docs/cartridge_format.md): a folder with
// `adapter_config.json` and `adapter_model.safetensors` (one tensor `prompt_embeddings` [p, W]), plus our
// `cartridge_fingerprint.json` that PEFT ignores. Files written here are byte-identical to PEFT's
// save_pretrained / compose_cartridge_adapters output for the same values; folders are written
// atomically (nothing appears on failure).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cartridge/adapter_config.h"
#include "cartridge/cartridge.h"
#include "cartridge/fingerprint.h"
#include "cartridge/framing.h"
#include "io/safetensors.h"

namespace cartridge {

// Finds the folder holding adapter_config.json for what a user typed:
//  - a folder that has adapter_config.json;
//  - a folder without one whose subfolders hold adapters (PEFT saves an adapter named other than
//    "default" in <folder>/<name>/): the only one, or an InvalidArgumentError listing the names to choose;
//  - a Hub id `org/name` or `org/name/<subfolder>` already in the local Hugging Face cache (found as
//    models are: hub_cache_folder() and cached_hub_snapshot() in io/model_files.h).
// Throws FileNotFoundError naming every place searched.
std::string resolve_adapter_folder(const std::string& spec);

struct LoadedAdapter {
  std::string folder;  // the resolved folder
  AdapterConfig config;
  Cartridge cartridge;                          // float32, rows as stored
  SafetensorsDType stored_dtype;                // F32, F16 or BF16 (upcast to float32 on load, as PEFT does)
  int64_t weights_file_bytes = 0;               // size of adapter_model.safetensors
  std::optional<ModelFingerprint> fingerprint;  // absent for adapters written by PEFT
  Framing framing = Framing::kNewChat;          // cartridge_framing.json; kNewChat without one
  std::vector<std::string> warnings;            // ignored config keys, an unreadable fingerprint, ...
};

// Loads an adapter (see resolve_adapter_folder for `spec`). Validates everything against the config
// before use: FormatError for a damaged/truncated file, a missing `prompt_embeddings`, or a tensor whose
// shape disagrees with the config (rows != num_virtual_tokens, width != 2*num_layers*token_dim);
// UnsupportedError for a pickle-only adapter (adapter_model.bin) or another tensor dtype.
LoadedAdapter load_adapter(const std::string& spec);

// Refuses (MismatchError) an adapter whose layout does not fit `config`; returns warnings when
// `model_fingerprint` is given and the adapter's stored fingerprint differs from it.
std::vector<std::string> check_adapter_for_model(const LoadedAdapter& adapter, const ModelConfig& config,
                                                 const ModelFingerprint* model_fingerprint,
                                                 const std::string& model_name);

// Loads the adapters `specs` (at least one) for a model, refuses any that does not fit `config`, compares
// fingerprints with the model in `files` (computed only when some adapter has one; skipped when `files`
// is null) and composes them in order (docs/cartridge_format.md, "Composing cartridges") into one cartridge.
// Warnings (fingerprint differences, ignored config keys) are appended to `warnings` when given. When
// `framing` is given it receives the cartridges' common framing (common_framing: MismatchError when they
// disagree).
Cartridge load_cartridges_for_model(const std::vector<std::string>& specs, const ModelConfig& config,
                                    const ModelFiles* files, std::vector<std::string>* warnings,
                                    Framing* framing = nullptr);

// Writes `cartridge` as a PEFT adapter folder at `folder`: adapter_config.json (`config`, whose
// num_virtual_tokens / num_frozen_tokens / shape must agree with the cartridge), adapter_model.safetensors
// (F32, metadata {"format": "pt"}, exactly as PeftModel.save_pretrained) and, when given,
// cartridge_fingerprint.json and cartridge_framing.json. Atomic: on any error nothing is left behind. An
// existing `folder` is replaced only when `overwrite`, else InvalidArgumentError, and only when it holds
// nothing but what this tool writes (adapter files, a PEFT README.md, a training run's outputs), else
// InvalidArgumentError naming the first other entry (also for compose_adapter_folders).
void save_adapter(const std::string& folder, const Cartridge& cartridge, const AdapterConfig& config,
                  const ModelFingerprint* fingerprint, bool overwrite,
                  std::optional<Framing> framing = std::nullopt);

// PEFT's compose_cartridge_adapters on adapter folders (docs/cartridge_format.md, "Composing cartridges"): at
// least two CARTRIDGE adapters agreeing on task_type, token_dim, num_layers, num_attention_heads and
// num_transformer_submodules (MismatchError naming the field and the adapter otherwise); tensors concatenated
// in order in their stored dtypes (promoted as torch.cat does); config = the first one's with
// num_virtual_tokens = the sum and the first one's num_frozen_tokens; safetensors without metadata. The same
// bytes as PEFT. The first adapter's fingerprint and framing are kept; returns warnings when the inputs'
// fingerprints or framings differ. Atomic.
std::vector<std::string> compose_adapter_folders(const std::vector<std::string>& specs,
                                                 const std::string& output_folder, bool overwrite);

}  // namespace cartridge
