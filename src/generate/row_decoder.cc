#include "generate/row_decoder.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "util/error.h"

namespace cartridge {

void check_generation_request(const ModelConfig& config, const GenerationRequest& request) {
  if (request.prompt_ids.empty()) throw InvalidArgumentError("the prompt is empty: give at least one token");
  if (request.max_new_tokens < 0) throw InvalidArgumentError("max_new_tokens must be >= 0");
  const int64_t prefix_length = request.prefix ? request.prefix->length() : 0;
  const int64_t needed =
      prefix_length + static_cast<int64_t>(request.prompt_ids.size()) + request.max_new_tokens;
  if (needed > config.max_position_embeddings) {
    throw InvalidArgumentError(
        "cartridge (" + std::to_string(prefix_length) + ") + prompt (" +
        std::to_string(request.prompt_ids.size()) + ") + max_new_tokens (" +
        std::to_string(request.max_new_tokens) + ") tokens exceed the model's context of " +
        std::to_string(config.max_position_embeddings) + " (shorten the prompt or lower max_new_tokens)");
  }
}

RowDecoder::RowDecoder(const GenerationRequest& request, const Tokenizer& tokenizer)
    : request_(&request),
      tokenizer_(&tokenizer),
      sampler_(request.sampling),
      decoder_(tokenizer, /*skip_special_tokens=*/true),
      stop_matcher_(request.stop_strings) {
  result_.prompt_tokens = static_cast<int64_t>(request.prompt_ids.size());
  if (request.max_new_tokens == 0) finish("length");
}

bool RowDecoder::is_stop_token(int32_t token) const {
  if (request_->stop_at_eos && tokenizer_->eos_token_id() && token == *tokenizer_->eos_token_id())
    return true;
  return std::find(request_->stop_token_ids.begin(), request_->stop_token_ids.end(), token) !=
         request_->stop_token_ids.end();
}

std::string RowDecoder::finish(const std::string& reason) {
  std::string tail = stop_matcher_.stopped() ? "" : stop_matcher_.push(decoder_.flush());
  tail += stop_matcher_.flush();
  result_.text += tail;
  result_.finish_reason = reason;
  finished_ = true;
  return tail;
}

std::string RowDecoder::advance(const at::Tensor& logits) {
  TORCH_CHECK(!finished_, "RowDecoder::advance on a finished row");
  const int32_t token = static_cast<int32_t>(sampler_.sample(logits));
  if (is_stop_token(token)) return finish("stop");
  result_.token_ids.push_back(token);
  std::string visible = stop_matcher_.push(decoder_.push(token));
  result_.text += visible;
  if (stop_matcher_.stopped()) return visible + finish("stop");
  if (static_cast<int64_t>(result_.token_ids.size()) >= request_->max_new_tokens)
    return visible + finish("length");
  return visible;
}

KvCache make_prefixed_cache(const Model& model,
                            const std::vector<std::shared_ptr<const KvPrefix>>& prefixes) {
  const ModelConfig& config = model.config();
  const int64_t batch = static_cast<int64_t>(prefixes.size());
  int64_t longest = 0;  // P_max, tokens
  for (const auto& prefix : prefixes) longest = std::max<int64_t>(longest, prefix ? prefix->length() : 0);
  if (longest == 0) return KvCache::empty(config, batch, model.dtype(), model.device());

  const auto tensor_options = at::TensorOptions().dtype(model.dtype()).device(model.device());
  std::vector<at::Tensor> keys, values;  // per layer [B, H_kv, P_max, D]
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    keys.push_back(at::zeros({batch, config.num_key_value_heads, longest, config.head_dim}, tensor_options));
    values.push_back(
        at::zeros({batch, config.num_key_value_heads, longest, config.head_dim}, tensor_options));
  }
  at::Tensor lengths = at::zeros({batch}, at::kLong);  // [B] valid prefix slots per row
  for (int64_t row = 0; row < batch; ++row) {
    const auto& prefix = prefixes[row];
    if (!prefix || prefix->length() == 0) continue;
    if (static_cast<int64_t>(prefix->keys.size()) != config.num_layers) {
      throw MismatchError("a cartridge has " + std::to_string(prefix->keys.size()) +
                          " layers but the model has " + std::to_string(config.num_layers) +
                          " (use a cartridge made for this model)");
    }
    const int64_t length = prefix->length();
    for (int64_t layer = 0; layer < config.num_layers; ++layer) {
      keys[layer][row].narrow(1, 0, length).copy_(prefix->keys[layer]);
      values[layer][row].narrow(1, 0, length).copy_(prefix->values[layer]);
    }
    lengths[row] = length;
  }
  return KvCache::with_prefix(std::move(keys), std::move(values), lengths.to(model.device()), batch);
}

std::pair<KvCache, at::Tensor> prefill_batch(const Model& model,
                                             const std::vector<const GenerationRequest*>& requests) {
  const int64_t batch = static_cast<int64_t>(requests.size());
  int64_t longest_prompt = 0;
  std::vector<std::shared_ptr<const KvPrefix>> prefixes;
  prefixes.reserve(requests.size());
  for (const GenerationRequest* request : requests) {
    longest_prompt = std::max<int64_t>(longest_prompt, static_cast<int64_t>(request->prompt_ids.size()));
    prefixes.push_back(request->prefix);
  }
  at::Tensor input_ids = at::zeros({batch, longest_prompt}, at::kLong);   // [B, T]
  at::Tensor token_mask = at::zeros({batch, longest_prompt}, at::kBool);  // [B, T]
  for (int64_t row = 0; row < batch; ++row) {
    const auto& prompt = requests[row]->prompt_ids;
    auto ids = input_ids.accessor<int64_t, 2>();
    for (size_t i = 0; i < prompt.size(); ++i) ids[row][static_cast<int64_t>(i)] = prompt[i];
    token_mask[row].narrow(0, 0, static_cast<int64_t>(prompt.size())).fill_(true);
  }
  KvCache cache = make_prefixed_cache(model, prefixes);
  ForwardOptions last_only;
  last_only.last_token_only = true;
  at::Tensor logits =
      model.forward(input_ids.to(model.device()), token_mask.to(model.device()), cache, last_only);
  return {std::move(cache), std::move(logits)};
}

at::Tensor decode_step(const Model& model, KvCache& cache, const std::vector<int64_t>& tokens) {
  const int64_t batch = static_cast<int64_t>(tokens.size());
  TORCH_CHECK(batch == cache.batch_size(), "decode_step: ", batch, " tokens for ", cache.batch_size(),
              " rows");
  const at::Tensor step_ids = at::tensor(tokens, at::kLong).view({batch, 1}).to(model.device());  // [B, 1]
  const at::Tensor step_mask =
      at::ones({batch, 1}, at::TensorOptions().dtype(at::kBool).device(model.device()));
  ForwardOptions last_only;
  last_only.last_token_only = true;
  return model.forward(step_ids, step_mask, cache, last_only);
}

}  // namespace cartridge
