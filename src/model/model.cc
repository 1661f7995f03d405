#include "model/model.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include "model/decode_step.h"
#include "model/float_block_kernels.h"
#include "model/quantized_kernels.h"
#include "model/rope.h"
#include "model/weight_source.h"
#include "util/error.h"
#include "util/progress.h"

namespace cartridge {

namespace {

std::string shape_string(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

}  // namespace

KvCache Model::new_cache(int64_t batch_size) const {
  return KvCache::empty(config_, batch_size, dtype_, device_);
}

KvCache Model::new_cache(int64_t batch_size, const KvPrefix* prefix) const {
  if (prefix == nullptr || prefix->length() == 0) return new_cache(batch_size);
  if (prefix->num_layers() != config_.num_layers) {
    throw MismatchError("a cartridge has " + std::to_string(prefix->num_layers()) +
                        " layers but the model has " + std::to_string(config_.num_layers) +
                        " (use a cartridge made for this model)");
  }
  return KvCache::with_prefix(*prefix, batch_size);
}

at::Tensor prompt_logits(const Model& model, const KvPrefix* prefix, const std::vector<int32_t>& token_ids) {
  if (token_ids.empty()) throw InvalidArgumentError("the prompt is empty: give at least one token");
  c10::InferenceMode inference;
  KvCache cache = model.new_cache(1, prefix);
  const at::Tensor input_ids =
      at::tensor(std::vector<int64_t>(token_ids.begin(), token_ids.end()), at::kLong).unsqueeze(0);  // [1, T]
  const at::Tensor token_mask = at::ones_like(input_ids, at::kBool);                                 // [1, T]
  const at::Tensor logits = model.forward(input_ids.to(model.device()), token_mask.to(model.device()), cache);
  return logits[0].to(at::kCPU, at::kFloat).clone();  // [T, V]
}

void Model::check_forward_inputs(const at::Tensor& input_ids, const at::Tensor& token_mask,
                                 const KvCache& cache) const {
  TORCH_CHECK(input_ids.dim() == 2, "Model::forward: input_ids must be [B, T], got ", input_ids.sizes());
  TORCH_CHECK(token_mask.sizes() == input_ids.sizes(), "Model::forward: token_mask ", token_mask.sizes(),
              " does not match input_ids ", input_ids.sizes());
  TORCH_CHECK(cache.num_layers() == config_.num_layers, "Model::forward: cache has ", cache.num_layers(),
              " layers, the model ", config_.num_layers);
  const int64_t batch = input_ids.size(0);
  const int64_t new_tokens = input_ids.size(1);
  TORCH_CHECK(cache.batch_size() == batch, "Model::forward: cache has ", cache.batch_size(), " rows, input ",
              batch);
  TORCH_CHECK(new_tokens > 0, "Model::forward: no input tokens");
  for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
    const at::Tensor& keys = cache.keys(layer);
    const at::Tensor& values = cache.values(layer);
    TORCH_CHECK(keys.scalar_type() == dtype_ && values.scalar_type() == dtype_,
                "Model::forward: cache layer ", layer, " is ", keys.scalar_type(), ", the model runs in ",
                dtype_, " (cast the prefix to the model dtype)");
    TORCH_CHECK(keys.dim() == 4 && keys.size(0) == batch && keys.size(1) == config_.num_key_value_heads &&
                    keys.size(2) == cache.length() && keys.size(3) == config_.head_dim &&
                    values.sizes() == keys.sizes(),
                "Model::forward: cache layer ", layer, " keys ", keys.sizes(), " values ", values.sizes(),
                ", expected [", batch, ", ", config_.num_key_value_heads, ", ", cache.length(), ", ",
                config_.head_dim, "]");
  }
  const int64_t reached = cache.longest_shared_prefix() + cache.length() + new_tokens;  // slots, at most
  if (config_.sliding_window > 0 && reached > config_.sliding_window) {
    throw UnsupportedError("this model uses sliding-window attention (window " +
                           std::to_string(config_.sliding_window) + " tokens) and the sequence would reach " +
                           std::to_string(reached) +
                           " slots; sliding windows are not implemented (use shorter inputs)");
  }
  // Padding ids are arbitrary (often -1): only real tokens must be in the vocabulary.
  const at::Tensor real_ids = at::where(token_mask.to(at::kBool), input_ids.to(at::kLong), 0);
  const at::Tensor bounds = at::stack({real_ids.min(), real_ids.max()}).cpu();
  const int64_t smallest = bounds[0].item<int64_t>();
  const int64_t largest = bounds[1].item<int64_t>();
  if (smallest < 0 || largest >= config_.vocab_size) {
    throw InvalidArgumentError("token id " + std::to_string(smallest < 0 ? smallest : largest) +
                               " is outside the model's vocabulary [0, " +
                               std::to_string(config_.vocab_size) +
                               ") (the tokenizer does not belong to this model)");
  }
}

at::Tensor Model::token_positions(const at::Tensor& token_mask, const KvCache& cache,
                                  const ForwardOptions& options) const {
  if (options.positions.has_value()) {
    const at::Tensor positions = options.positions->to(at::TensorOptions().dtype(at::kLong).device(device_));
    TORCH_CHECK(positions.sizes() == token_mask.sizes(), "Model::forward: positions ", positions.sizes(),
                " do not match input_ids ", token_mask.sizes());
    return positions;
  }
  // Row b's real tokens continue at its next position; padding takes none (it repeats its neighbour's).
  const at::Tensor running_count = token_mask.to(at::kLong).cumsum(1);  // [B, T]
  return (cache.next_positions().to(device_).unsqueeze(1) + running_count - 1).clamp_min(0);
}

at::Tensor Model::forward(const at::Tensor& input_ids_in, const at::Tensor& token_mask_in, KvCache& cache,
                          const ForwardOptions& options) const {
  check_forward_inputs(input_ids_in, token_mask_in, cache);
  // Autograd only when something upstream (a trainable prefix) asks for it; weights never require grad.
  std::optional<c10::NoGradGuard> no_grad;
  if (!cache.requires_grad()) no_grad.emplace();

  const int64_t new_tokens = input_ids_in.size(1);
  const at::Tensor token_mask =
      token_mask_in.to(at::TensorOptions().dtype(at::kBool).device(device_));  // [B, T]
  const at::Tensor ids =
      at::where(token_mask, input_ids_in.to(at::TensorOptions().dtype(at::kLong).device(device_)), 0);
  const at::Tensor positions = token_positions(token_mask, cache, options);  // [B, T]
  const at::Tensor real_counts = token_mask.to(at::kLong).sum(1);            // [B]
  // Column of each row's last real token (T - 1 for a row without any).
  const at::Tensor columns = at::arange(new_tokens, at::TensorOptions().dtype(at::kLong).device(device_));
  const at::Tensor last_columns =
      at::where(real_counts > 0, (token_mask.to(at::kLong) * columns).amax(1), new_tokens - 1);  // [B]

  LayerInputs inputs;
  std::tie(inputs.rope_cos, inputs.rope_sin) = rope_cos_sin(positions, inverse_frequencies_, dtype_);
  inputs.mask = cache.attention_mask_for(token_mask);  // before the cache grows
  static const ForwardKernels kFastKernels;
  const ForwardKernels& kernels = options.kernels != nullptr ? *options.kernels : kFastKernels;

  at::Tensor hidden = weight_rows(embedding_, ids);  // [B, T, hidden], a fresh tensor
  if (options.fused_decode && options.kernels == nullptr &&
      fused_decode_applies(new_tokens, dtype_, device_, cache)) {
    // The fused step reads these as raw buffers: made contiguous once here, not in every layer.
    hidden = hidden.contiguous();
    inputs.rope_cos = inputs.rope_cos.contiguous();
    inputs.rope_sin = inputs.rope_sin.contiguous();
    if (inputs.mask.allowed.defined()) inputs.mask.allowed = inputs.mask.allowed.contiguous();
    for (size_t layer = 0; layer < layers_.size(); ++layer) {
      fused_decode_layer(layer_configs_[layer], layers_[layer], hidden, inputs, cache);
    }
  } else {
    for (size_t layer = 0; layer < layers_.size(); ++layer) {
      hidden = transformer_layer(layer_configs_[layer], layers_[layer], hidden, inputs, cache, kernels);
    }
  }

  // Each row continues one past its last real position (explicit positions may jump).
  const at::Tensor last_positions = positions.gather(1, last_columns.unsqueeze(1)).squeeze(1);  // [B]
  const at::Tensor next_positions = cache.next_positions().to(device_);
  cache.commit_tokens(token_mask, options.positions.has_value()
                                      ? at::where(real_counts > 0, last_positions + 1, next_positions)
                                      : next_positions + real_counts);
  return output_head(hidden, last_columns, options);
}

at::Tensor Model::output_head(at::Tensor hidden, const at::Tensor& last_columns,
                              const ForwardOptions& options) const {
  if (options.last_token_only) {
    const int64_t batch = hidden.size(0);
    const at::Tensor index = last_columns.view({batch, 1, 1}).expand({batch, 1, hidden.size(2)});
    hidden = hidden.gather(1, index);  // [B, 1, hidden]
  }
  hidden = rms_norm(hidden, final_norm_, config_.rms_norm_eps);
  if (options.final_hidden_states) return hidden;  // [B, T or 1, hidden]
  return logits_from_hidden(hidden);               // [B, T or 1, V]
}

at::Tensor Model::logits_from_hidden(const at::Tensor& hidden) const {
  return linear(hidden, lm_head_).to(at::kFloat);
}

// --- building from a weight source -------------------------------------------------------------------

std::shared_ptr<const Model> Model::build(const ModelConfig& config, WeightSource& source,
                                          const LoadOptions& options) {
  config.validate(source.checkpoint());
  auto model = std::shared_ptr<Model>(new Model());
  model->config_ = config;
  model->dtype_ = options.dtype;
  model->device_ = options.device;
  TORCH_CHECK(options.dtype == at::kFloat || options.dtype == at::kBFloat16 || options.dtype == at::kHalf,
              "Model: unsupported compute dtype ", options.dtype);
  const auto target = at::TensorOptions().dtype(options.dtype).device(options.device);

  // Fetches a tensor, checks its shape against the config, converts it (always a copy: sources may
  // alias memory-mapped files).
  auto fetch = [&](const std::string& name, std::vector<int64_t> expected,
                   bool required = true) -> at::Tensor {
    std::optional<at::Tensor> tensor = source.get(name);
    if (!tensor.has_value()) {
      if (!required) return {};
      throw FormatError(describe_file_problem(
          source.checkpoint(), "missing tensor \"" + name + "\"",
          "the weights do not match the " + architecture_name(config.architecture) +
              " config (layers, biases, tied embeddings); use the checkpoint that came with this config"));
    }
    if (tensor->sizes() != at::IntArrayRef(expected)) {
      throw FormatError(describe_file_problem(source.describe(name),
                                              "tensor \"" + name + "\" has shape " +
                                                  shape_string(tensor->sizes()) + ", the config implies " +
                                                  shape_string(expected),
                                              "the weights and the config belong to different models"));
    }
    const at::ScalarType stored = tensor->scalar_type();
    if (stored != at::kFloat && stored != at::kHalf && stored != at::kBFloat16 && stored != at::kDouble) {
      throw UnsupportedError(describe_file_problem(
          source.describe(name), "tensor \"" + name + "\" has dtype " + std::string(c10::toString(stored)),
          "supported: F32, F16, BF16, F64"));
    }
    return tensor->to(target, /*non_blocking=*/false, /*copy=*/true);
  };

  const bool keep_blocks = options.quantized_weights != QuantizedWeights::kDequantize;
  if (keep_blocks && (options.dtype != at::kFloat || !options.device.is_cpu())) {
    throw InvalidArgumentError(
        "weights kept in their quantised blocks multiply float32 activations on the CPU: with --weights "
        "stored or stored-int8 use --dtype auto or fp32, and --device cpu");
  }
  const QuantizedKernels* int8_kernels = options.quantized_weights == QuantizedWeights::kInt8Activations
                                             ? &QuantizedKernels::for_this_cpu()
                                             : nullptr;
  const std::function<bool(uint32_t)> accepts = [int8_kernels](uint32_t type) {
    return int8_kernels != nullptr ? int8_kernels->supports(type) : float_block_kernels::supports(type);
  };
  // The matrices `parts` (name, rows), each with `columns` columns, stacked by rows: in their stored block
  // type when keeping blocks and every part is stored in the same one, else dense in the model dtype.
  auto fetch_matrix = [&](const std::vector<std::pair<std::string, int64_t>>& parts,
                          int64_t columns) -> LinearWeight {
    if (keep_blocks) {
      std::vector<at::Tensor> rows;  // each [part rows, bytes per row] uint8
      uint32_t type = 0;
      for (const auto& [name, row_count] : parts) {
        std::optional<StoredBlocks> blocks = source.get_blocks(name, accepts);
        if (!blocks.has_value() || blocks->columns != columns || blocks->rows.size(0) != row_count ||
            (!rows.empty() && blocks->ggml_type != type)) {
          break;
        }
        type = blocks->ggml_type;
        rows.push_back(std::move(blocks->rows));
      }
      if (rows.size() == parts.size()) {
        model->has_quantized_weights_ = true;
        return ggml_blocks_weight(rows.size() == 1 ? rows[0] : at::cat(rows, 0), type, columns, int8_kernels);
      }
    }
    std::vector<at::Tensor> dense;  // each [part rows, columns]
    for (const auto& [name, row_count] : parts) dense.push_back(fetch(name, {row_count, columns}));
    LinearWeight weight;
    weight.weight = dense.size() == 1 ? dense[0] : at::cat(dense, 0);
    return weight;
  };

  const int64_t hidden = config.hidden_size;
  const int64_t head_dim = config.head_dim;
  const int64_t q_rows = config.num_attention_heads * head_dim;
  const int64_t kv_rows = config.num_key_value_heads * head_dim;
  const int64_t width = config.intermediate_size;
  ProgressBar progress("loading weights", config.num_layers + 2, "layers", options.show_progress);

  model->embedding_ = fetch_matrix({{"model.embed_tokens.weight", config.vocab_size}}, hidden);
  model->final_norm_ = fetch("model.norm.weight", {hidden});
  // transformers ties whenever the config says so, even if the checkpoint also has lm_head.weight.
  model->lm_head_ = config.tie_word_embeddings
                        ? model->embedding_
                        : fetch_matrix({{"lm_head.weight", config.vocab_size}}, hidden);
  at::Tensor frequency_factors;
  if (std::optional<at::Tensor> factors = source.get("rope_freqs.weight")) frequency_factors = *factors;
  model->inverse_frequencies_ = rope_inverse_frequencies(config, frequency_factors).to(options.device);
  model->layer_configs_ = layer_configs(config);
  progress.advance();

  for (int64_t index = 0; index < config.num_layers; ++index) {
    const std::string prefix = "model.layers." + std::to_string(index) + ".";
    LayerWeights layer;
    layer.input_norm = fetch(prefix + "input_layernorm.weight", {hidden});
    layer.qkv = fetch_matrix({{prefix + "self_attn.q_proj.weight", q_rows},
                              {prefix + "self_attn.k_proj.weight", kv_rows},
                              {prefix + "self_attn.v_proj.weight", kv_rows}},
                             hidden);
    if (config.attention_bias) {
      layer.qkv.bias = at::cat({fetch(prefix + "self_attn.q_proj.bias", {q_rows}),
                                fetch(prefix + "self_attn.k_proj.bias", {kv_rows}),
                                fetch(prefix + "self_attn.v_proj.bias", {kv_rows})},
                               0);
    }
    if (config.qk_norm) {
      layer.q_norm = fetch(prefix + "self_attn.q_norm.weight", {head_dim});
      layer.k_norm = fetch(prefix + "self_attn.k_norm.weight", {head_dim});
    }
    layer.output = fetch_matrix({{prefix + "self_attn.o_proj.weight", hidden}}, q_rows);
    if (config.attention_output_bias) layer.output.bias = fetch(prefix + "self_attn.o_proj.bias", {hidden});
    layer.post_norm = fetch(prefix + "post_attention_layernorm.weight", {hidden});
    layer.gate_up = fetch_matrix(
        {{prefix + "mlp.gate_proj.weight", width}, {prefix + "mlp.up_proj.weight", width}}, hidden);
    layer.down = fetch_matrix({{prefix + "mlp.down_proj.weight", hidden}}, width);
    if (config.mlp_bias) {
      layer.gate_up.bias = at::cat(
          {fetch(prefix + "mlp.gate_proj.bias", {width}), fetch(prefix + "mlp.up_proj.bias", {width})}, 0);
      layer.down.bias = fetch(prefix + "mlp.down_proj.bias", {hidden});
    }
    model->layers_.push_back(std::move(layer));
    progress.advance();
  }
  progress.advance();
  progress.finish();
  return model;
}

}  // namespace cartridge
