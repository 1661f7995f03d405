#include "model/model.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

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

// RMSNorm exactly as transformers' LlamaRMSNorm: normalise in float32, round back to the input dtype, then
// scale by the weight in the input dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (x.scalar_type() == at::kFloat) {
    // One fused kernel; in float32 it is the same computation.
    return at::rms_norm(x, {x.size(-1)}, weight, eps);
  }
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor normalised = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normalised.to(x.scalar_type());
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

}  // namespace

std::shared_ptr<const Model> Model::from_weights(const ModelConfig& config,
                                                 const std::map<std::string, at::Tensor>& weights,
                                                 const LoadOptions& options, const std::string& source) {
  MapWeightSource weight_source(weights, source);
  return build(config, weight_source, options);
}

KvCache Model::new_cache(int64_t batch_size) const {
  return KvCache::empty(config_, batch_size, dtype_, device_);
}

std::pair<at::Tensor, at::Tensor> Model::rope_tables(const at::Tensor& positions) const {
  return rope_cos_sin(positions, inverse_frequencies_, dtype_);
}

at::Tensor Model::attention_mask(const KvCache& cache, const at::Tensor& token_mask) const {
  const int64_t batch = token_mask.size(0);
  const int64_t new_tokens = token_mask.size(1);
  const int64_t old_slots = cache.length();
  const auto bool_options = at::TensorOptions().dtype(at::kBool).device(token_mask.device());
  const at::Tensor causal = at::ones({new_tokens, new_tokens}, bool_options).tril();  // [T, T]
  const at::Tensor diagonal = at::eye(new_tokens, bool_options);                      // [T, T]
  // Query i sees the real tokens j <= i of this call, and always itself so that a padding query never
  // has an empty row (an all-masked softmax is NaN, and NaN * 0 poisons gradients).
  const at::Tensor new_part =
      causal.unsqueeze(0).logical_and(token_mask.unsqueeze(1)).logical_or(diagonal);  // [B, T, T]
  if (old_slots == 0) return new_part.unsqueeze(1);                                   // [B, 1, T, T]
  const at::Tensor old_part =
      cache.slot_mask.unsqueeze(1).expand({batch, new_tokens, old_slots});  // [B, T, S]
  return at::cat({old_part, new_part}, 2).unsqueeze(1);                     // [B, 1, T, S + T]
}

at::Tensor Model::forward(const at::Tensor& input_ids, const at::Tensor& token_mask_in, KvCache& cache,
                          const ForwardOptions& options) const {
  TORCH_CHECK(input_ids.dim() == 2, "Model::forward: input_ids must be [B, T], got ", input_ids.sizes());
  TORCH_CHECK(token_mask_in.sizes() == input_ids.sizes(), "Model::forward: token_mask ",
              token_mask_in.sizes(), " does not match input_ids ", input_ids.sizes());
  TORCH_CHECK(cache.num_layers() == config_.num_layers, "Model::forward: cache has ", cache.num_layers(),
              " layers, the model ", config_.num_layers);
  const int64_t batch = input_ids.size(0);
  const int64_t new_tokens = input_ids.size(1);
  TORCH_CHECK(cache.batch_size() == batch, "Model::forward: cache has ", cache.batch_size(), " rows, input ",
              batch);
  TORCH_CHECK(new_tokens > 0, "Model::forward: no input tokens");
  for (int64_t layer = 0; layer < config_.num_layers; ++layer) {
    const at::Tensor& keys = cache.keys[layer];
    TORCH_CHECK(keys.scalar_type() == dtype_ && cache.values[layer].scalar_type() == dtype_,
                "Model::forward: cache layer ", layer, " is ", keys.scalar_type(), ", the model runs in ",
                dtype_, " (cast the prefix to the model dtype)");
    TORCH_CHECK(keys.dim() == 4 && keys.size(0) == batch && keys.size(1) == config_.num_key_value_heads &&
                    keys.size(2) == cache.length() && keys.size(3) == config_.head_dim &&
                    cache.values[layer].sizes() == keys.sizes(),
                "Model::forward: cache layer ", layer, " keys ", keys.sizes(), " values ",
                cache.values[layer].sizes(), ", expected [", batch, ", ", config_.num_key_value_heads, ", ",
                cache.length(), ", ", config_.head_dim, "]");
  }
  if (config_.sliding_window > 0 && cache.length() + new_tokens > config_.sliding_window) {
    throw UnsupportedError("this model uses sliding-window attention (window " +
                           std::to_string(config_.sliding_window) + " tokens) and the sequence would reach " +
                           std::to_string(cache.length() + new_tokens) +
                           " slots; sliding windows are not implemented (use shorter inputs)");
  }

  // Autograd only when something upstream (a trainable prefix) asks for it; weights never require grad.
  bool needs_grad = false;
  if (c10::GradMode::is_enabled()) {
    for (int64_t layer = 0; layer < config_.num_layers && !needs_grad; ++layer) {
      needs_grad = cache.keys[layer].requires_grad() || cache.values[layer].requires_grad();
    }
  }
  std::optional<c10::NoGradGuard> no_grad;
  if (!needs_grad) no_grad.emplace();

  const at::Tensor token_mask = token_mask_in.to(at::TensorOptions().dtype(at::kBool).device(device_));
  // Padding ids are arbitrary (often -1); give them a valid id so the embedding lookup is safe.
  const at::Tensor ids =
      at::where(token_mask, input_ids.to(at::TensorOptions().dtype(at::kLong).device(device_)), 0);
  {
    const at::Tensor bounds = at::stack({ids.min(), ids.max()}).cpu();
    const int64_t smallest = bounds[0].item<int64_t>();
    const int64_t largest = bounds[1].item<int64_t>();
    if (smallest < 0 || largest >= config_.vocab_size) {
      throw InvalidArgumentError("token id " + std::to_string(smallest < 0 ? smallest : largest) +
                                 " is outside the model's vocabulary [0, " +
                                 std::to_string(config_.vocab_size) +
                                 ") (the tokenizer does not belong to this model)");
    }
  }

  const at::Tensor mask_long = token_mask.to(at::kLong);               // [B, T]
  const at::Tensor real_counts = mask_long.sum(1);                     // [B]
  const at::Tensor running_count = mask_long.cumsum(1);                // [B, T]
  const at::Tensor next_positions = cache.next_positions.to(device_);  // [B]
  at::Tensor positions;                                                // [B, T]
  if (options.positions.has_value()) {
    positions = options.positions->to(at::TensorOptions().dtype(at::kLong).device(device_));
    TORCH_CHECK(positions.sizes() == input_ids.sizes(), "Model::forward: positions ", positions.sizes(),
                " do not match input_ids ", input_ids.sizes());
  } else {
    positions = (next_positions.unsqueeze(1) + running_count - 1).clamp_min(0);
  }
  // Column of each row's last real token (T - 1 for a row without any).
  const at::Tensor columns = at::arange(new_tokens, at::TensorOptions().dtype(at::kLong).device(device_));
  const at::Tensor last_column =
      at::where(real_counts > 0, (mask_long * columns).amax(1), new_tokens - 1);  // [B]

  // Mask before the cache grows: the fast paths need no mask at all.
  const bool all_real = token_mask.all().item<bool>();
  const bool old_all_valid = cache.length() == 0 || cache.slot_mask.all().item<bool>();
  at::Tensor mask;         // [B, 1, T, S + T] bool, or undefined
  bool is_causal = false;  // top-left aligned causal mask, valid only when there are no older slots
  if (all_real && old_all_valid && new_tokens == 1) {
    // One real token per row, every slot valid: attend to everything.
  } else if (all_real && cache.length() == 0) {
    is_causal = true;
  } else {
    mask = attention_mask(cache, token_mask);
  }

  const auto [cos, sin] = rope_tables(positions);  // [B, 1, T, D]
  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const int64_t groups = heads / kv_heads;
  // SDPA's native GQA is fastest on the CPU (flash kernel, any mask) and on CUDA without a mask; CUDA's
  // kernels that take a mask (memory-efficient) do not support GQA and SDPA would fall back to the slow
  // math path, so there the KV heads are expanded instead (what transformers does too).
  const bool expand_kv_heads = groups > 1 && device_.is_cuda() && mask.defined();

  at::Tensor hidden = at::embedding(embedding_, ids);  // [B, T, hidden]
  for (int64_t layer_index = 0; layer_index < config_.num_layers; ++layer_index) {
    const LayerWeights& layer = layers_[layer_index];
    const at::Tensor normed = rms_norm(hidden, layer.input_norm, config_.rms_norm_eps);
    const at::Tensor qkv = linear(normed, layer.qkv_weight, layer.qkv_bias);  // [B, T, (H + 2 H_kv) D]
    at::Tensor query = qkv.narrow(-1, 0, heads * head_dim).view({batch, new_tokens, heads, head_dim});
    at::Tensor key =
        qkv.narrow(-1, heads * head_dim, kv_heads * head_dim).view({batch, new_tokens, kv_heads, head_dim});
    at::Tensor value = qkv.narrow(-1, (heads + kv_heads) * head_dim, kv_heads * head_dim)
                           .view({batch, new_tokens, kv_heads, head_dim});
    if (config_.qk_norm) {
      query = rms_norm(query, layer.q_norm, config_.rms_norm_eps);
      key = rms_norm(key, layer.k_norm, config_.rms_norm_eps);
    }
    query = apply_rope(query.transpose(1, 2), cos, sin);  // [B, H, T, D]
    key = apply_rope(key.transpose(1, 2), cos, sin);      // [B, H_kv, T, D]
    value = value.transpose(1, 2);                        // [B, H_kv, T, D]
    cache.append_layer(layer_index, key, value);
    at::Tensor all_keys = cache.keys[layer_index];      // [B, H_kv, S + T, D]
    at::Tensor all_values = cache.values[layer_index];  // [B, H_kv, S + T, D]
    if (expand_kv_heads) {
      // Each KV head repeated for its query group (as transformers' repeat_kv): [B, H, S + T, D].
      const int64_t slots = all_keys.size(2);
      all_keys = all_keys.unsqueeze(2)
                     .expand({batch, kv_heads, groups, slots, head_dim})
                     .reshape({batch, heads, slots, head_dim});
      all_values = all_values.unsqueeze(2)
                       .expand({batch, kv_heads, groups, slots, head_dim})
                       .reshape({batch, heads, slots, head_dim});
    }
    const at::Tensor attended = at::scaled_dot_product_attention(
        query, all_keys, all_values, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt, 0.0,
        is_causal, scale, /*enable_gqa=*/kv_heads != heads && !expand_kv_heads);  // [B, H, T, D]
    const at::Tensor merged = attended.transpose(1, 2).reshape({batch, new_tokens, heads * head_dim});
    hidden = hidden + linear(merged, layer.output_weight, layer.output_bias);

    const at::Tensor normed_mlp = rms_norm(hidden, layer.post_norm, config_.rms_norm_eps);
    const at::Tensor gate_up = linear(normed_mlp, layer.gate_up_weight, layer.gate_up_bias);  // [B, T, 2 I]
    const int64_t width = config_.intermediate_size;
    const at::Tensor activated = at::silu(gate_up.narrow(-1, 0, width)) * gate_up.narrow(-1, width, width);
    hidden = hidden + linear(activated, layer.down_weight, layer.down_bias);
  }

  // Bookkeeping of the grown cache.
  cache.slot_mask = at::cat({cache.slot_mask.to(device_), token_mask}, 1);
  if (options.positions.has_value()) {
    const at::Tensor last_position = positions.gather(1, last_column.unsqueeze(1)).squeeze(1);
    cache.next_positions = at::where(real_counts > 0, last_position + 1, next_positions);
  } else {
    cache.next_positions = next_positions + real_counts;
  }

  if (options.last_token_only) {
    const at::Tensor index = last_column.view({batch, 1, 1}).expand({batch, 1, hidden.size(2)});
    hidden = hidden.gather(1, index);  // [B, 1, hidden]
  }
  hidden = rms_norm(hidden, final_norm_, config_.rms_norm_eps);
  if (options.final_hidden_states) return hidden;  // [B, T or 1, hidden]
  return logits_from_hidden(hidden);               // [B, T or 1, V]
}

at::Tensor Model::logits_from_hidden(const at::Tensor& hidden) const {
  return at::linear(hidden, lm_head_).to(at::kFloat);
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

  const int64_t hidden = config.hidden_size;
  const int64_t head_dim = config.head_dim;
  const int64_t q_rows = config.num_attention_heads * head_dim;
  const int64_t kv_rows = config.num_key_value_heads * head_dim;
  const int64_t width = config.intermediate_size;
  ProgressBar progress("loading weights", config.num_layers + 2, "layers", options.show_progress);

  model->embedding_ = fetch("model.embed_tokens.weight", {config.vocab_size, hidden});
  model->final_norm_ = fetch("model.norm.weight", {hidden});
  // transformers ties whenever the config says so, even if the checkpoint also has lm_head.weight.
  model->lm_head_ =
      config.tie_word_embeddings ? model->embedding_ : fetch("lm_head.weight", {config.vocab_size, hidden});
  at::Tensor frequency_factors;
  if (std::optional<at::Tensor> factors = source.get("rope_freqs.weight")) frequency_factors = *factors;
  model->inverse_frequencies_ = rope_inverse_frequencies(config, frequency_factors).to(options.device);
  progress.advance();

  for (int64_t index = 0; index < config.num_layers; ++index) {
    const std::string prefix = "model.layers." + std::to_string(index) + ".";
    LayerWeights layer;
    layer.input_norm = fetch(prefix + "input_layernorm.weight", {hidden});
    layer.qkv_weight = at::cat({fetch(prefix + "self_attn.q_proj.weight", {q_rows, hidden}),
                                fetch(prefix + "self_attn.k_proj.weight", {kv_rows, hidden}),
                                fetch(prefix + "self_attn.v_proj.weight", {kv_rows, hidden})},
                               0);
    if (config.attention_bias) {
      layer.qkv_bias = at::cat({fetch(prefix + "self_attn.q_proj.bias", {q_rows}),
                                fetch(prefix + "self_attn.k_proj.bias", {kv_rows}),
                                fetch(prefix + "self_attn.v_proj.bias", {kv_rows})},
                               0);
    }
    if (config.qk_norm) {
      layer.q_norm = fetch(prefix + "self_attn.q_norm.weight", {head_dim});
      layer.k_norm = fetch(prefix + "self_attn.k_norm.weight", {head_dim});
    }
    layer.output_weight = fetch(prefix + "self_attn.o_proj.weight", {hidden, q_rows});
    if (config.attention_output_bias) layer.output_bias = fetch(prefix + "self_attn.o_proj.bias", {hidden});
    layer.post_norm = fetch(prefix + "post_attention_layernorm.weight", {hidden});
    layer.gate_up_weight = at::cat({fetch(prefix + "mlp.gate_proj.weight", {width, hidden}),
                                    fetch(prefix + "mlp.up_proj.weight", {width, hidden})},
                                   0);
    layer.down_weight = fetch(prefix + "mlp.down_proj.weight", {hidden, width});
    if (config.mlp_bias) {
      layer.gate_up_bias = at::cat(
          {fetch(prefix + "mlp.gate_proj.bias", {width}), fetch(prefix + "mlp.up_proj.bias", {width})}, 0);
      layer.down_bias = fetch(prefix + "mlp.down_proj.bias", {hidden});
    }
    model->layers_.push_back(std::move(layer));
    progress.advance();
  }
  progress.advance();
  progress.finish();
  return model;
}

}  // namespace cartridge
