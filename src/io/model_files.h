// Finding a model's files from what a user types after --model: a GGUF file, a Hugging Face model folder,
// or a Hub id (`org/name`) already in the local Hugging Face cache. These machines have no network, so a
// missing model is a clear error that names every path searched.
#pragma once

#include <string>
#include <vector>

namespace cartridge {

enum class ModelFormat { kGguf, kHuggingFaceFolder };

struct ModelFiles {
  ModelFormat format;
  std::string name;  // what the user typed, for messages and adapter_config's base_model_name_or_path

  // kGguf: the .gguf file (weights, config and tokenizer are all inside).
  std::string gguf_path;

  // kHuggingFaceFolder: the folder and the files found in it ("" when absent).
  std::string folder;
  std::string config_path;                // config.json (required)
  std::vector<std::string> weight_paths;  // model.safetensors, or the shards listed by the index, in order
  std::string tokenizer_json_path;        // tokenizer.json
  std::string tokenizer_config_path;      // tokenizer_config.json
  std::string chat_template_path;         // chat_template.jinja (transformers >= 4.43 writes it separately)
  std::string generation_config_path;     // generation_config.json
};

// Resolves `spec`:
//  - an existing file ending in .gguf (or starting with the GGUF magic) -> kGguf;
//  - an existing folder with config.json -> kHuggingFaceFolder (weights: model.safetensors, or
//    model.safetensors.index.json and its shards, each checked to exist, in file-name order; weight_paths is
//    left empty when the folder has neither, for the weight loader to report);
//  - otherwise, if it looks like `org/name`, the snapshot folder in the HF cache
//    ($HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
//    else ~/.cache/huggingface/hub, as huggingface_hub chooses; models--org--name/snapshots/<rev>,
//    the revision named by refs/main when present, else the newest snapshot).
// Throws FileNotFoundError listing the paths searched, FormatError for an existing file that is not GGUF,
// a folder without config.json, or an index that is not JSON or names a missing shard, and
// InvalidArgumentError for an empty spec.
ModelFiles resolve_model_files(const std::string& spec);

// The Hugging Face hub cache folder, chosen as huggingface_hub chooses it: $HF_HUB_CACHE, else
// $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub.
std::string hub_cache_folder();

// The snapshot folder of the Hub repository org/name in that cache (models--org--name/snapshots/<rev>):
// the revision refs/main names when that folder exists, else the most recently modified snapshot; "" when
// there is none. Appends each place looked at to `searched`, for the caller's "not found" message.
std::string cached_hub_snapshot(const std::string& org, const std::string& name,
                                std::vector<std::string>* searched);

// The default model, relative to the repository root: scripts/setup.sh fetches it there.
inline constexpr char kDefaultModelPath[] = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

}  // namespace cartridge
