// Model::load: weight sources for Hugging Face safetensors checkpoints and GGUF files.
#include <cstring>
#include <memory>
#include <unordered_map>

#include <ATen/ATen.h>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/quantized_kernels.h"
#include "model/safetensors_dtype.h"
#include "model/weight_source.h"
#include "util/error.h"

namespace cartridge {
namespace {

// A Hugging Face checkpoint: model.safetensors or the shards named by its index.
class SafetensorsWeightSource : public WeightSource {
 public:
  SafetensorsWeightSource(const ModelFiles& files) : folder_(files.folder) {
    if (files.weight_paths.empty()) {
      throw FileNotFoundError(
          describe_file_problem(files.folder, "no model.safetensors (or index and shards) found",
                                "download the model's safetensors weights into this folder"));
    }
    for (const std::string& path : files.weight_paths) {
      files_.push_back(std::make_unique<SafetensorsFile>(path));
      for (const SafetensorsTensorInfo& info : files_.back()->tensors()) {
        where_.emplace(info.name, std::make_pair(files_.back().get(), &info));
      }
    }
  }

  std::optional<at::Tensor> get(const std::string& hf_name) override {
    auto it = where_.find(hf_name);
    if (it == where_.end()) return std::nullopt;
    const SafetensorsFile& file = *it->second.first;
    const SafetensorsTensorInfo& info = *it->second.second;
    const at::ScalarType dtype = torch_dtype(info.dtype);
    if (!at::isFloatingType(dtype)) {
      throw UnsupportedError(describe_file_problem(
          file.path(), "tensor \"" + hf_name + "\" has dtype " + safetensors_dtype_name(info.dtype),
          "supported: F32, F16, BF16, F64"));
    }
    // A view of the mapping; Model copies it into its own storage.
    return at::from_blob(const_cast<uint8_t*>(file.data(info)), info.shape, at::TensorOptions().dtype(dtype));
  }

  std::string describe(const std::string& hf_name) const override {
    auto it = where_.find(hf_name);
    return it == where_.end() ? folder_ : it->second.first->path();
  }
  std::string checkpoint() const override {
    return files_.size() == 1 ? files_.front()->path()
                              : folder_ + " (" + std::to_string(files_.size()) + " shards)";
  }

 private:
  std::string folder_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, std::pair<const SafetensorsFile*, const SafetensorsTensorInfo*>> where_;
};

// A GGUF file: dequantises each tensor to float32 on demand, under its HF name.
class GgufWeightSource : public WeightSource {
 public:
  GgufWeightSource(const GgufFile& gguf, const ModelConfig& config) : gguf_(gguf), config_(config) {}

  std::optional<at::Tensor> get(const std::string& hf_name) override {
    const std::string name = gguf_name(hf_name);
    if (name.empty()) return std::nullopt;
    const GgufTensorInfo* info = gguf_.find_tensor(name);
    if (info == nullptr) return std::nullopt;
    std::vector<int64_t> shape(info->dims.rbegin(), info->dims.rend());  // ggml dims are fastest-first
    at::Tensor tensor = at::empty(shape, at::kFloat);
    gguf_.dequantize(*info, tensor.data_ptr<float>());
    // llama.cpp's converter interleaves the two RoPE halves of every Llama Q/K head (its rotation pairs
    // adjacent channels); undo it so the weights compute the HF function and the HF KV cache.
    if (config_.architecture == Architecture::kLlama) {
      if (name.find(".attn_q.") != std::string::npos) {
        tensor = unpermute_rope_rows(tensor, config_.num_attention_heads);
      } else if (name.find(".attn_k.") != std::string::npos) {
        tensor = unpermute_rope_rows(tensor, config_.num_key_value_heads);
      }
    }
    return tensor;
  }

  std::optional<StoredBlocks> get_blocks(const std::string& hf_name,
                                         const std::function<bool(uint32_t)>& accepts) override {
    const std::string name = gguf_name(hf_name);
    if (name.empty()) return std::nullopt;
    const GgufTensorInfo* info = gguf_.find_tensor(name);
    if (info == nullptr || info->dims.size() != 2 || !accepts(static_cast<uint32_t>(info->type))) {
      return std::nullopt;
    }
    StoredBlocks blocks;
    blocks.ggml_type = static_cast<uint32_t>(info->type);
    blocks.columns = info->dims[0];
    const int64_t row_count = info->dims[1];
    const int64_t bytes_per_row = QuantizedKernels::row_bytes(blocks.ggml_type, blocks.columns);
    TORCH_CHECK(static_cast<uint64_t>(row_count * bytes_per_row) == info->byte_size, "GGUF tensor ", name,
                ": ", info->byte_size, " bytes for ", row_count, " rows of ", bytes_per_row);
    blocks.rows = at::empty({row_count, bytes_per_row}, at::kByte);
    std::memcpy(blocks.rows.data_ptr<uint8_t>(), gguf_.tensor_data(*info), info->byte_size);
    // Blocks run along a row, so the RoPE un-permutation of get() moves whole rows of bytes just the same.
    if (config_.architecture == Architecture::kLlama) {
      if (name.find(".attn_q.") != std::string::npos) {
        blocks.rows = unpermute_rope_rows(blocks.rows, config_.num_attention_heads);
      } else if (name.find(".attn_k.") != std::string::npos) {
        blocks.rows = unpermute_rope_rows(blocks.rows, config_.num_key_value_heads);
      }
    }
    return blocks;
  }

  std::string describe(const std::string& hf_name) const override {
    const std::string name = gguf_name(hf_name);
    return gguf_.path() + (name.empty() ? "" : " (tensor " + name + ")");
  }
  std::string checkpoint() const override { return gguf_.path(); }

 private:
  // Inverse of llama.cpp's `permute`: rows [heads, D/2, 2, ...] -> [heads, 2, D/2, ...].
  static at::Tensor unpermute_rope_rows(const at::Tensor& weights, int64_t heads) {
    std::vector<int64_t> split = {heads, weights.size(0) / heads / 2, 2};
    for (int64_t dim = 1; dim < weights.dim(); ++dim) split.push_back(weights.size(dim));
    return weights.reshape(split).transpose(1, 2).reshape(weights.sizes()).contiguous();
  }

  // HF name -> GGUF name ("" for names GGUF does not have).
  static std::string gguf_name(const std::string& hf_name) {
    static const std::unordered_map<std::string, std::string> kGlobal = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
        {"rope_freqs.weight", "rope_freqs.weight"},
    };
    if (auto it = kGlobal.find(hf_name); it != kGlobal.end()) return it->second;
    static const std::string kLayerPrefix = "model.layers.";
    if (hf_name.compare(0, kLayerPrefix.size(), kLayerPrefix) != 0) return "";
    const size_t dot = hf_name.find('.', kLayerPrefix.size());
    if (dot == std::string::npos) return "";
    const std::string layer = hf_name.substr(kLayerPrefix.size(), dot - kLayerPrefix.size());
    const std::string rest = hf_name.substr(dot + 1);
    static const std::unordered_map<std::string, std::string> kLayer = {
        {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},
        {"self_attn.k_proj", "attn_k"},      {"self_attn.v_proj", "attn_v"},
        {"self_attn.o_proj", "attn_output"}, {"self_attn.q_norm", "attn_q_norm"},
        {"self_attn.k_norm", "attn_k_norm"}, {"post_attention_layernorm", "ffn_norm"},
        {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
        {"mlp.down_proj", "ffn_down"},
    };
    const size_t last_dot = rest.rfind('.');
    if (last_dot == std::string::npos) return "";
    auto it = kLayer.find(rest.substr(0, last_dot));
    if (it == kLayer.end()) return "";
    return "blk." + layer + "." + it->second + rest.substr(last_dot);
  }

  const GgufFile& gguf_;
  const ModelConfig& config_;
};

}  // namespace

std::shared_ptr<const Model> Model::load(const ModelFiles& files, const LoadOptions& options) {
  if (files.format == ModelFormat::kGguf) {
    const GgufFile gguf(files.gguf_path);
    const ModelConfig config = ModelConfig::from_gguf(gguf);
    GgufWeightSource source(gguf, config);
    return build(config, source, options);
  }
  if (files.config_path.empty()) {
    throw FileNotFoundError(
        describe_file_problem(files.folder, "no config.json", "a Hugging Face model folder has one"));
  }
  const ModelConfig config = ModelConfig::from_hf_config_json(files.config_path);
  SafetensorsWeightSource source(files);
  return build(config, source, options);
}

}  // namespace cartridge
