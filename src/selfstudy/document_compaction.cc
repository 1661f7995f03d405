#include "selfstudy/document_compaction.h"

#include <algorithm>
#include <chrono>
#include <limits>

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
                           " positions and the model's context is " + std::to_string(context) + " tokens");
  }
}

// `rows` (float32, as the fit makes them) in the model's dtype and device, for a cache prefix.
KvPrefix in_model_dtype(const Model& model, const KvPrefix& rows) {
  KvPrefix converted;
  for (int64_t layer = 0; layer < rows.num_layers(); ++layer) {
    converted.keys.push_back(rows.keys[layer].to(model.device(), model.dtype()));
    converted.values.push_back(rows.values[layer].to(model.device(), model.dtype()));
  }
  return converted;
}

// One chunk compacted into options.num_virtual_tokens rows after `before` (the rows of the chunks before
// it, per layer [H_kv, P, D] float32; no layers for the first chunk). Returns the new rows only (float32).
KvPrefix compact_chunk(const Model& model, const CompactionChunk& chunk, const KvPrefix& before,
                       const AttentionMatchingOptions& options, ProgressBar& progress) {
  const int64_t layers = model.config().num_layers;
  const int64_t before_rows = before.length();
  const int64_t chunk_tokens = static_cast<int64_t>(chunk.prefill_ids.size());
  const int64_t reference_tokens = static_cast<int64_t>(chunk.reference_ids.size());
  const int64_t rows = options.num_virtual_tokens;
  const KvPrefix before_in_model = in_model_dtype(model, before);

  // 1. The chunk's cache after the rows so far (positions P..P+n-1), keys moved so that slot t sits at
  //    P + t - (n - rows): a reference token at P + rows + i then sees each key at the distance
  //    n + i - t it had after the whole chunk.
  std::vector<at::Tensor> chunk_keys, chunk_values;  // per layer [H_kv, n, D]
  {
    KvCache cache = model.new_cache(1, &before_in_model);
    const at::Tensor ids = token_tensor(chunk.prefill_ids, model.device());
    ForwardOptions prefill;
    prefill.last_token_only = true;  // the logits are not needed; [1, n, V] would be large
    model.forward(ids, at::ones_like(ids, at::kBool), cache, prefill);
    for (int64_t layer = 0; layer < layers; ++layer) {
      const at::Tensor keys = cache.keys(layer)[0].narrow(1, before_rows, chunk_tokens);
      chunk_keys.push_back(rotate_positions(keys, rows - chunk_tokens, model.inverse_frequencies()));
      chunk_values.push_back(cache.values(layer)[0].narrow(1, before_rows, chunk_tokens));
    }
  }
  progress.advance();

  // 2. The reference tokens through the layers after the rows so far; each layer's attention step fits
  //    this chunk's rows of that layer first.
  KvPrefix compacted;
  compacted.keys.resize(layers);
  compacted.values.resize(layers);
  ForwardKernels kernels;
  kernels.attention = [&](const AttentionInputs& inputs) {
    const int64_t layer = inputs.layer;
    const CompactLayer fit =
        fit_compact_layer(chunk_keys[layer], chunk_values[layer], inputs.query[0], inputs.scale, options);
    compacted.keys[layer] = fit.keys;
    compacted.values[layer] = fit.values;
    const int64_t tokens = inputs.query.size(2);
    const int64_t all_rows = before_rows + rows;
    // Each reference token sees every row so far and the reference tokens up to itself.
    const at::TensorOptions flags = at::TensorOptions().dtype(at::kBool).device(inputs.query.device());
    std::vector<at::Tensor> keys, values;
    if (before_rows > 0) {
      keys.push_back(before_in_model.keys[layer].to(inputs.keys.dtype()).unsqueeze(0));
      values.push_back(before_in_model.values[layer].to(inputs.values.dtype()).unsqueeze(0));
    }
    keys.push_back(fit.keys.to(inputs.keys.options()).unsqueeze(0));
    values.push_back(fit.values.to(inputs.values.options()).unsqueeze(0));
    keys.push_back(inputs.keys);
    values.push_back(inputs.values);
    AttentionInputs attend = inputs;
    attend.keys = at::cat(keys, 2);
    attend.values = at::cat(values, 2);
    attend.mask.allowed =
        at::cat({at::ones({tokens, all_rows}, flags), at::ones({tokens, tokens}, flags).tril()}, 1)
            .view({1, 1, tokens, all_rows + tokens});
    attend.mask.causal = false;
    progress.advance();
    return sdpa_attention(attend);
  };
  {
    KvCache cache = model.new_cache(1);
    const at::Tensor ids = token_tensor(chunk.reference_ids, model.device());
    ForwardOptions reference;
    reference.last_token_only = true;
    reference.kernels = &kernels;
    const int64_t first = before_rows + rows;
    reference.positions = at::arange(first, first + reference_tokens, at::TensorOptions().dtype(at::kLong))
                              .unsqueeze(0);  // [1, T]
    model.forward(ids, at::ones_like(ids, at::kBool), cache, reference);
  }
  return compacted;
}

// The rows so far with `added` appended (per layer, along the slot axis).
KvPrefix append_rows(const KvPrefix& rows, const KvPrefix& added) {
  if (rows.num_layers() == 0) return added;
  KvPrefix joined;
  for (int64_t layer = 0; layer < rows.num_layers(); ++layer) {
    joined.keys.push_back(at::cat({rows.keys[layer], added.keys[layer]}, 1));
    joined.values.push_back(at::cat({rows.values[layer], added.values[layer]}, 1));
  }
  return joined;
}

}  // namespace

Cartridge compact_document_chunks(const Model& model, const std::vector<CompactionChunk>& chunks,
                                  const AttentionMatchingOptions& options, bool show_progress,
                                  CompactionStats* stats) {
  const auto started = std::chrono::steady_clock::now();
  if (chunks.empty()) throw InvalidArgumentError("attention matching needs a document");
  int64_t total_rows = 0, document_tokens = 0, reference_tokens = 0;
  for (size_t k = 0; k < chunks.size(); ++k) {
    const CompactionChunk& chunk = chunks[k];
    const int64_t chunk_tokens = static_cast<int64_t>(chunk.prefill_ids.size());
    const std::string name = chunks.size() == 1 ? "the document" : "chunk " + std::to_string(k + 1);
    if (chunk.rows < 1 || chunk_tokens < chunk.rows) {
      throw InvalidArgumentError(name + " has " + std::to_string(chunk_tokens) + " tokens for " +
                                 std::to_string(chunk.rows) +
                                 " rows (it needs at least one row and no more "
                                 "rows than tokens: use a smaller --tokens)");
    }
    if (chunk.reference_ids.empty()) throw InvalidArgumentError("attention matching needs reference tokens");
    check_context(model, total_rows + chunk_tokens, name);
    check_context(model, total_rows + chunk.rows + static_cast<int64_t>(chunk.reference_ids.size()),
                  "the reference tokens of " + name);
    total_rows += chunk.rows;
    document_tokens += chunk_tokens;
    reference_tokens += static_cast<int64_t>(chunk.reference_ids.size());
  }
  if (total_rows != options.num_virtual_tokens) {
    throw InvalidArgumentError("the chunks' rows add up to " + std::to_string(total_rows) +
                               ", not p = " + std::to_string(options.num_virtual_tokens));
  }
  if (chunks.front().rows < options.num_exact_rows) {
    throw InvalidArgumentError("the first chunk has " + std::to_string(chunks.front().rows) +
                               " rows, fewer than the " + std::to_string(options.num_exact_rows) +
                               " exact ones");
  }
  c10::NoGradGuard no_grad;
  const int64_t layers = model.config().num_layers;
  ProgressBar progress("compacting", static_cast<int64_t>(chunks.size()) * (layers + 1), "layers",
                       show_progress);
  KvPrefix rows;  // per layer [H_kv, rows so far, D] float32
  for (size_t k = 0; k < chunks.size(); ++k) {
    AttentionMatchingOptions chunk_options = options;
    chunk_options.num_virtual_tokens = chunks[k].rows;
    chunk_options.num_exact_rows = k == 0 ? options.num_exact_rows : 0;  // the sink is the document's start
    rows = append_rows(rows, compact_chunk(model, chunks[k], rows, chunk_options, progress));
  }
  progress.finish();

  if (stats != nullptr) {
    stats->document_tokens = document_tokens;
    stats->reference_tokens = reference_tokens;
    stats->chunks = static_cast<int64_t>(chunks.size());
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }
  return Cartridge::from_prompt_embeddings(CartridgeShape::of_model(model.config()),
                                           prompt_embeddings_from_kv_prefix(rows), options.num_exact_rows);
}

std::vector<CompactionChunk> plan_document_compaction(const LoadedModel& model, const std::string& document,
                                                      int64_t num_virtual_tokens, int64_t num_exact_rows,
                                                      int64_t max_chunk_tokens) {
  if (!model.chat_template) {
    throw UnsupportedError(
        "attention matching compacts the document as the system turn of a conversation, and this model has "
        "no chat template (use the first-p initialisation)");
  }
  const int64_t rows = num_virtual_tokens;
  const int64_t context = model.model->config().max_position_embeddings;
  const std::vector<int32_t> request = model.encode_chat_after_cartridge(
      {ChatMessage{"user", kRepeatRequest}}, Framing::kSystemTurn, /*add_generation_prompt=*/true);
  const std::vector<int32_t> content = model.tokenizer->encode(document, /*add_special_tokens=*/false);
  const std::vector<int32_t> turn = model.encode_document_turn(document);
  const int64_t request_tokens = static_cast<int64_t>(request.size());
  const int64_t turn_tokens = static_cast<int64_t>(turn.size());
  if (turn_tokens < rows) {
    throw InvalidArgumentError("the document has " + std::to_string(turn_tokens) +
                               " tokens, fewer than the cartridge's " + std::to_string(rows) +
                               " (use a smaller --tokens)");
  }

  // One chunk: the whole turn, as compaction of a document that fits has always been.
  const int64_t one_chunk_positions =
      std::max(turn_tokens, rows + request_tokens + static_cast<int64_t>(content.size()));
  if ((context <= 0 || one_chunk_positions <= context) &&
      (max_chunk_tokens <= 0 || turn_tokens <= max_chunk_tokens)) {
    CompactionChunk whole{turn, request, rows};
    whole.reference_ids.insert(whole.reference_ids.end(), content.begin(), content.end());
    return {whole};
  }

  // Chunks of at most S tokens: chunk k's prefill goes after at most p - rows_k rows and its reference
  // (request + at most S tokens) after at most p rows.
  constexpr int64_t kSmallestChunk = 16;  // tokens; fewer would make a chunk mostly template
  int64_t longest = context > 0 ? context - rows - request_tokens : std::numeric_limits<int64_t>::max();
  if (max_chunk_tokens > 0) longest = std::min(longest, max_chunk_tokens);
  if (longest < kSmallestChunk) {
    throw UnsupportedError("the model's context (" + std::to_string(context) + " tokens) cannot hold " +
                           std::to_string(rows) + " rows, the repeat request and a chunk of " +
                           std::to_string(kSmallestChunk) + " document tokens (use a smaller --tokens)");
  }
  std::vector<int32_t> all = model.encode_document_turn("");  // the turn's opening
  const int64_t opening = static_cast<int64_t>(all.size());
  all.insert(all.end(), content.begin(), content.end());
  const int64_t total = static_cast<int64_t>(all.size());
  const int64_t count = (total + longest - 1) / longest;
  std::vector<CompactionChunk> chunks;
  for (int64_t k = 0; k < count; ++k) {
    const int64_t start = total * k / count, end = total * (k + 1) / count;
    CompactionChunk chunk;
    chunk.prefill_ids.assign(all.begin() + start, all.begin() + end);
    chunk.reference_ids = request;
    chunk.reference_ids.insert(chunk.reference_ids.end(), all.begin() + std::max(start, opening),
                               all.begin() + std::max(end, opening));
    chunk.rows = rows * end / total - rows * start / total;
    if (chunk.rows < 1 || (k == 0 && chunk.rows < num_exact_rows)) {
      throw UnsupportedError("the document needs " + std::to_string(count) + " chunks of at most " +
                             std::to_string(longest) + " tokens, and " + std::to_string(rows) +
                             " rows leave chunk " + std::to_string(k + 1) + " with " +
                             std::to_string(chunk.rows) + " (use a larger --tokens)");
    }
    chunks.push_back(std::move(chunk));
  }
  return chunks;
}

Cartridge compact_document(const LoadedModel& model, const std::string& document,
                           const AttentionMatchingOptions& options, int64_t max_chunk_tokens,
                           bool show_progress, CompactionStats* stats) {
  const std::vector<CompactionChunk> chunks = plan_document_compaction(
      model, document, options.num_virtual_tokens, options.num_exact_rows, max_chunk_tokens);
  return compact_document_chunks(*model.model, chunks, options, show_progress, stats);
}

bool can_compact_document(const LoadedModel& model, const std::string& document, int64_t num_virtual_tokens,
                          int64_t num_exact_rows) {
  try {
    plan_document_compaction(model, document, num_virtual_tokens, num_exact_rows);
    return true;
  } catch (const InvalidArgumentError&) {
    return false;
  } catch (const UnsupportedError&) {
    return false;
  }
}

}  // namespace cartridge
