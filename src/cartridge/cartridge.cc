#include "cartridge/cartridge.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "util/error.h"

namespace cartridge {

Cartridge::Cartridge(const CartridgeShape& shape, at::Tensor frozen_embedding, at::Tensor trainable_embedding)
    : shape_(shape), frozen_(std::move(frozen_embedding)), trainable_(std::move(trainable_embedding)) {
  if (shape_.num_layers <= 0 || shape_.num_kv_heads <= 0 || shape_.head_dim <= 0) {
    throw InvalidArgumentError("a cartridge needs positive layers, KV heads and head_dim, got " +
                               shape_.describe());
  }
  auto check_block = [&](const at::Tensor& block, const char* name) {
    if (!block.defined() || block.dim() != 2 || block.size(1) != shape_.width() ||
        block.scalar_type() != at::kFloat) {
      throw InvalidArgumentError(std::string("the cartridge's ") + name + " rows must be float32 [rows, " +
                                 std::to_string(shape_.width()) + "] for " + shape_.describe());
    }
  };
  check_block(frozen_, "frozen");
  check_block(trainable_, "trainable");
  if (frozen_.device() != trainable_.device()) {
    throw InvalidArgumentError("the cartridge's frozen and trainable rows are on different devices");
  }
  if (num_virtual_tokens() == 0) throw InvalidArgumentError("a cartridge needs at least one virtual token");
}

Cartridge Cartridge::from_prompt_embeddings(const CartridgeShape& shape, const at::Tensor& prompt_embeddings,
                                            int64_t num_frozen_tokens) {
  if (prompt_embeddings.dim() != 2 || prompt_embeddings.size(1) != shape.width()) {
    throw InvalidArgumentError("prompt_embeddings should be [p, " + std::to_string(shape.width()) + "] for " +
                               shape.describe() + ", got " + std::to_string(prompt_embeddings.dim()) + "-D " +
                               (prompt_embeddings.dim() == 2
                                    ? "[" + std::to_string(prompt_embeddings.size(0)) + ", " +
                                          std::to_string(prompt_embeddings.size(1)) + "]"
                                    : std::string()));
  }
  const int64_t length = prompt_embeddings.size(0);
  if (num_frozen_tokens < 0 || num_frozen_tokens > length) {
    throw InvalidArgumentError("num_frozen_tokens must be in [0, p=" + std::to_string(length) + "], got " +
                               std::to_string(num_frozen_tokens));
  }
  const at::Tensor rows = prompt_embeddings.to(at::kFloat).contiguous();  // [p, W]
  return Cartridge(shape, rows.narrow(0, 0, num_frozen_tokens).clone(),
                   rows.narrow(0, num_frozen_tokens, length - num_frozen_tokens).clone());
}

Cartridge Cartridge::random(const CartridgeShape& shape, int64_t num_virtual_tokens,
                            int64_t num_frozen_tokens, uint64_t seed) {
  if (num_virtual_tokens <= 0) throw InvalidArgumentError("the cartridge length p must be positive");
  if (num_frozen_tokens < 0 || num_frozen_tokens > num_virtual_tokens) {
    throw InvalidArgumentError("num_frozen_tokens must be in [0, p=" + std::to_string(num_virtual_tokens) +
                               "], got " + std::to_string(num_frozen_tokens));
  }
  // A fresh generator in the state torch.manual_seed(seed) leaves the default one in; two normal_ calls
  // in PEFT's order (frozen block first), since normal_ draws in chunks and one call over [p, W] would
  // give different values.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor frozen = at::empty({num_frozen_tokens, shape.width()}, at::kFloat);  // [F, W]
  at::Tensor trainable =
      at::empty({num_virtual_tokens - num_frozen_tokens, shape.width()}, at::kFloat);  // [p-F, W]
  if (num_frozen_tokens > 0) frozen.normal_(0.0, 1.0, generator);
  trainable.normal_(0.0, 1.0, generator);
  return Cartridge(shape, frozen, trainable);
}

Cartridge Cartridge::from_kv_cache(const KvCache& cache, int64_t num_virtual_tokens,
                                   int64_t num_frozen_tokens, int64_t row) {
  if (cache.num_layers() == 0) throw InvalidArgumentError("the KV cache has no layers");
  if (row < 0 || row >= cache.batch_size()) {
    throw InvalidArgumentError("row " + std::to_string(row) + " is outside the KV cache's " +
                               std::to_string(cache.batch_size()) + " rows");
  }
  if (num_virtual_tokens <= 0) throw InvalidArgumentError("the cartridge length p must be positive");
  // Valid slots must be the leading ones: a padded slot inside the first p would not be a real key.
  const at::Tensor valid = cache.slot_mask()[row].to(at::kCPU);  // [S] bool
  int64_t leading_valid = 0;
  const auto valid_flags = valid.accessor<bool, 1>();
  while (leading_valid < valid.size(0) && valid_flags[leading_valid]) ++leading_valid;
  if (leading_valid < num_virtual_tokens) {
    throw InvalidArgumentError("need at least " + std::to_string(num_virtual_tokens) +
                               " cached tokens, got " + std::to_string(leading_valid) +
                               " (use a longer text or a smaller p)");
  }
  const at::Tensor& first_keys = cache.keys(0);  // [B, H_kv, S, D]
  const CartridgeShape shape{cache.num_layers(), first_keys.size(1), first_keys.size(3)};
  const KvPrefix prefix = cache.row_prefix(row, num_virtual_tokens);  // per layer [H_kv, p, D]
  // Upcast to float32 as PEFT's load_prompt_embeddings copies into its float32 parameters. clone() gives
  // ordinary tensors even when the cache was filled under InferenceMode.
  const at::Tensor rows = prompt_embeddings_from_kv_prefix(prefix).clone();  // [p, W]
  return from_prompt_embeddings(shape, rows, num_frozen_tokens);
}

Cartridge Cartridge::from_token_ids(const Model& model, const std::vector<int32_t>& token_ids,
                                    int64_t num_virtual_tokens, int64_t num_frozen_tokens) {
  if (num_virtual_tokens <= 0) throw InvalidArgumentError("the cartridge length p must be positive");
  const int64_t available = static_cast<int64_t>(token_ids.size());
  if (available < num_virtual_tokens) {
    throw InvalidArgumentError("the text has " + std::to_string(available) + " tokens, fewer than the " +
                               std::to_string(num_virtual_tokens) +
                               " virtual tokens asked for (use a longer text or a smaller --tokens)");
  }
  at::Tensor rows;  // [p, W] float32
  {
    c10::InferenceMode inference;
    at::Tensor input_ids = at::empty({1, num_virtual_tokens}, at::kLong);  // [1, p]
    auto ids = input_ids.accessor<int64_t, 2>();
    for (int64_t i = 0; i < num_virtual_tokens; ++i) {
      if (token_ids[i] < 0 || token_ids[i] >= model.config().vocab_size) {
        throw InvalidArgumentError("token id " + std::to_string(token_ids[i]) +
                                   " is outside the model's vocabulary of " +
                                   std::to_string(model.config().vocab_size));
      }
      ids[0][i] = token_ids[i];
    }
    const at::Tensor token_mask = at::ones({1, num_virtual_tokens}, at::kBool);  // [1, p]
    KvCache cache = model.new_cache(1);
    ForwardOptions options;
    options.last_token_only = true;  // the logits are not needed, only the cache
    model.forward(input_ids.to(model.device()), token_mask.to(model.device()), cache, options);
    rows = prompt_embeddings_from_kv_prefix(cache.row_prefix(0, num_virtual_tokens));
  }
  // Outside InferenceMode, so the parameters are ordinary tensors a trainer can differentiate.
  return from_prompt_embeddings(CartridgeShape::of_model(model.config()), rows.clone(), num_frozen_tokens);
}

Cartridge Cartridge::compose(const std::vector<Cartridge>& parts) {
  if (parts.empty()) throw InvalidArgumentError("nothing to compose: give at least one cartridge");
  const CartridgeShape& shape = parts.front().shape();
  std::vector<at::Tensor> rows;  // each [p_i, W]
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].shape() != shape) {
      throw MismatchError("cannot compose cartridge " + std::to_string(i + 1) + " (" +
                          parts[i].shape().describe() + ") with cartridge 1 (" + shape.describe() +
                          "): they are for different models");
    }
    rows.push_back(parts[i].prompt_embeddings().to(parts.front().frozen_.device()));
  }
  return from_prompt_embeddings(shape, at::cat(rows, 0), parts.front().num_frozen_tokens());
}

at::Tensor Cartridge::prompt_embeddings() const {
  if (frozen_.size(0) == 0) return trainable_;
  return at::cat({frozen_, trainable_}, 0);
}

void Cartridge::check_fits(const ModelConfig& config, const std::string& what,
                           const std::string& model_name) const {
  const CartridgeShape model_shape = CartridgeShape::of_model(config);
  const int64_t context = config.max_position_embeddings;
  if (context > 0 && num_virtual_tokens() >= context) {
    throw MismatchError(what + " has " + std::to_string(num_virtual_tokens()) + " rows and " + model_name +
                        "'s context is " + std::to_string(context) +
                        " positions: no prompt could follow it; use a cartridge of fewer rows");
  }
  if (model_shape == shape_) return;
  std::string problem;
  if (shape_.num_layers != model_shape.num_layers) {
    problem = std::to_string(shape_.num_layers) + " layers but the model has " +
              std::to_string(model_shape.num_layers);
  } else if (shape_.num_kv_heads != model_shape.num_kv_heads) {
    problem = std::to_string(shape_.num_kv_heads) + " KV heads but the model has " +
              std::to_string(model_shape.num_kv_heads);
  } else {
    problem = "head_dim " + std::to_string(shape_.head_dim) + " but the model has " +
              std::to_string(model_shape.head_dim);
  }
  throw MismatchError(what + " is a cartridge for " + shape_.describe() + " (" + problem + ": " + model_name +
                      " is " + model_shape.describe() + "); use a cartridge made for this model");
}

KvPrefix Cartridge::kv_prefix(const ModelConfig& config, at::ScalarType dtype, at::Device device) const {
  check_fits(config, "this cartridge", "the model");
  return kv_prefix_from_prompt_embeddings(prompt_embeddings(), config, dtype, device);
}

std::shared_ptr<const KvPrefix> Cartridge::kv_prefix_for(const Model& model) const {
  return std::make_shared<const KvPrefix>(kv_prefix(model.config(), model.dtype(), model.device()));
}

}  // namespace cartridge
