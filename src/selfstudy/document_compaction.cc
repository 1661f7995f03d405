#include "selfstudy/document_compaction.h"

#include <algorithm>
#include <chrono>

#include <ATen/ATen.h>

#include "cartridge/prompt_embeddings.h"
#include "model/rope.h"
#include "util/error.h"
#include "util/progress.h"

namespace cartridge {

namespace {

at::Tensor token_tensor(const std::vector<int32_t>& ids, at::Device device) {
  return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::TensorOptions().dtype(at::kLong))
      .unsqueeze(0)
      .to(device);  // [1, T]
}

void check_context(const Model& model, int64_t positions, const std::string& what) {
  const int64_t context = model.config().max_position_embeddings;
  if (context > 0 && positions > context) {
    throw UnsupportedError(what + " needs " + std::to_string(positions) +
                           " positions and the model's context is " + std::to_string(context) +
                           " tokens (attention matching of longer documents is not implemented: use the "
                           "first-p initialisation or a shorter document)");
  }
}

}  // namespace

Cartridge compact_document_tokens(const Model& model, const std::vector<int32_t>& document_ids,
                                  const std::vector<int32_t>& reference_ids,
                                  const AttentionMatchingOptions& options, bool show_progress,
                                  CompactionStats* stats) {
  const auto started = std::chrono::steady_clock::now();
  const int64_t document_tokens = static_cast<int64_t>(document_ids.size());
  const int64_t reference_tokens = static_cast<int64_t>(reference_ids.size());
  const int64_t rows = options.num_virtual_tokens;
  if (document_tokens < rows) {
    throw InvalidArgumentError("the document has " + std::to_string(document_tokens) +
                               " tokens, fewer than the cartridge's " + std::to_string(rows) +
                               " (use a smaller --tokens)");
  }
  if (reference_tokens == 0) throw InvalidArgumentError("attention matching needs reference tokens");
  check_context(model, document_tokens, "the document");
  check_context(model, rows + reference_tokens, "the reference tokens after the cartridge");
  const int64_t layers = model.config().num_layers;
  c10::NoGradGuard no_grad;
  ProgressBar progress("compacting", layers + 1, "layers", show_progress);

  // 1. The document's cache, keys moved so that slot t sits at t - (N - p): a reference token at p + i then
  //    sees each key at the distance N + i - t it had after the whole document.
  std::vector<at::Tensor> document_keys, document_values;  // per layer [H_kv, N, D]
  {
    KvCache cache = model.new_cache(1);
    const at::Tensor ids = token_tensor(document_ids, model.device());
    ForwardOptions prefill;
    prefill.last_token_only = true;  // the logits are not needed; [1, N, V] would be large
    model.forward(ids, at::ones_like(ids, at::kBool), cache, prefill);
    for (int64_t layer = 0; layer < layers; ++layer) {
      document_keys.push_back(
          rotate_positions(cache.keys(layer)[0], rows - document_tokens, model.inverse_frequencies()));
      document_values.push_back(cache.values(layer)[0]);
    }
  }
  progress.advance();

  // 2. The reference tokens through the layers; each layer's attention step fits that layer's rows first.
  KvPrefix compacted;
  compacted.keys.resize(layers);
  compacted.values.resize(layers);
  ForwardKernels kernels;
  kernels.attention = [&](const AttentionInputs& inputs) {
    const int64_t layer = inputs.layer;
    const CompactLayer fit = fit_compact_layer(document_keys[layer], document_values[layer], inputs.query[0],
                                               inputs.scale, options);
    compacted.keys[layer] = fit.keys;
    compacted.values[layer] = fit.values;
    const int64_t tokens = inputs.query.size(2);
    // Each reference token sees every compacted row and the reference tokens up to itself.
    const at::TensorOptions flags = at::TensorOptions().dtype(at::kBool).device(inputs.query.device());
    AttentionInputs attend = inputs;
    attend.keys = at::cat({fit.keys.to(inputs.keys.options()).unsqueeze(0), inputs.keys}, 2);
    attend.values = at::cat({fit.values.to(inputs.values.options()).unsqueeze(0), inputs.values}, 2);
    attend.mask.allowed =
        at::cat({at::ones({tokens, rows}, flags), at::ones({tokens, tokens}, flags).tril()}, 1)
            .view({1, 1, tokens, rows + tokens});
    attend.mask.causal = false;
    progress.advance();
    return sdpa_attention(attend);
  };
  {
    KvCache cache = model.new_cache(1);
    const at::Tensor ids = token_tensor(reference_ids, model.device());
    ForwardOptions reference;
    reference.last_token_only = true;
    reference.kernels = &kernels;
    reference.positions = at::arange(rows, rows + reference_tokens, at::TensorOptions().dtype(at::kLong))
                              .unsqueeze(0);  // [1, T]
    model.forward(ids, at::ones_like(ids, at::kBool), cache, reference);
  }
  progress.finish();

  if (stats != nullptr) {
    stats->document_tokens = document_tokens;
    stats->reference_tokens = reference_tokens;
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }
  return Cartridge::from_prompt_embeddings(CartridgeShape::of_model(model.config()),
                                           prompt_embeddings_from_kv_prefix(compacted),
                                           options.num_exact_rows);
}

namespace {

// The reference tokens: the repeat request asked in the document's conversation, then the document.
std::vector<int32_t> reference_token_ids(const LoadedModel& model, const std::string& document) {
  std::vector<int32_t> ids = model.encode_chat_after_cartridge(
      {ChatMessage{"user", kRepeatRequest}}, Framing::kSystemTurn, /*add_generation_prompt=*/true);
  const std::vector<int32_t> repeated = model.tokenizer->encode(document, /*add_special_tokens=*/false);
  ids.insert(ids.end(), repeated.begin(), repeated.end());
  return ids;
}

}  // namespace

Cartridge compact_document(const LoadedModel& model, const std::string& document,
                           const AttentionMatchingOptions& options, bool show_progress,
                           CompactionStats* stats) {
  return compact_document_tokens(*model.model, model.encode_document_turn(document),
                                 reference_token_ids(model, document), options, show_progress, stats);
}

bool can_compact_document(const LoadedModel& model, const std::string& document, int64_t num_virtual_tokens) {
  if (!model.chat_template) return false;
  const int64_t document_tokens = static_cast<int64_t>(model.encode_document_turn(document).size());
  const int64_t after =
      num_virtual_tokens + static_cast<int64_t>(reference_token_ids(model, document).size());
  const int64_t context = model.model->config().max_position_embeddings;
  return document_tokens >= num_virtual_tokens &&
         (context <= 0 || std::max(document_tokens, after) <= context);
}

}  // namespace cartridge
