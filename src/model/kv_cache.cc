#include "model/kv_cache.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

namespace cartridge {
namespace {

// Capacity of a fresh growth buffer for `needed` slots: doubling keeps the number of reallocations
// logarithmic in the generated length.
int64_t grown_capacity(int64_t current, int64_t needed) {
  int64_t capacity = std::max<int64_t>(current, 16);
  while (capacity < needed) capacity *= 2;
  return capacity;
}

// True when `view` is exactly the first `used` slots of `buffer` (so appending in place is safe).
bool is_prefix_view(const at::Tensor& view, const at::Tensor& buffer, int64_t used) {
  return view.defined() && buffer.defined() && view.data_ptr() == buffer.data_ptr() && view.size(2) == used &&
         view.strides() == buffer.strides() && view.sizes()[0] == buffer.sizes()[0];
}

}  // namespace

int64_t KvCache::batch_size() const { return slot_mask.defined() ? slot_mask.size(0) : 0; }

int64_t KvCache::length() const { return slot_mask.defined() ? slot_mask.size(1) : 0; }

KvCache KvCache::empty(const ModelConfig& config, int64_t batch_size, at::ScalarType dtype,
                       at::Device device) {
  TORCH_CHECK(batch_size >= 0, "KvCache::empty: negative batch size");
  KvCache cache;
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    cache.keys.push_back(at::empty({batch_size, config.num_key_value_heads, 0, config.head_dim}, options));
    cache.values.push_back(at::empty({batch_size, config.num_key_value_heads, 0, config.head_dim}, options));
  }
  cache.growth_buffers.resize(config.num_layers);
  cache.slot_mask = at::empty({batch_size, 0}, at::TensorOptions().dtype(at::kBool).device(device));
  cache.next_positions = at::zeros({batch_size}, at::TensorOptions().dtype(at::kLong).device(device));
  return cache;
}

KvCache KvCache::with_prefix(std::vector<at::Tensor> prefix_keys, std::vector<at::Tensor> prefix_values,
                             at::Tensor prefix_lengths, int64_t batch_size) {
  TORCH_CHECK(!prefix_keys.empty() && prefix_keys.size() == prefix_values.size(),
              "KvCache::with_prefix: need the same non-zero number of key and value layers");
  KvCache cache;
  const at::Tensor& first = prefix_keys.front();
  TORCH_CHECK(first.dim() == 4, "KvCache::with_prefix: prefix keys must be [B, H_kv, P, D]");
  const int64_t prefix_slots = first.size(2);
  for (size_t layer = 0; layer < prefix_keys.size(); ++layer) {
    at::Tensor keys = prefix_keys[layer];
    at::Tensor values = prefix_values[layer];
    TORCH_CHECK(keys.dim() == 4 && values.sizes() == keys.sizes() && keys.size(2) == prefix_slots,
                "KvCache::with_prefix: layer ", layer, " keys ", keys.sizes(), " values ", values.sizes(),
                " (expected matching [B, H_kv, ", prefix_slots, ", D])");
    TORCH_CHECK(keys.size(0) == batch_size || keys.size(0) == 1, "KvCache::with_prefix: prefix batch ",
                keys.size(0), " is neither 1 nor ", batch_size);
    if (keys.size(0) != batch_size) {
      // A view, not a copy: the forward concatenates onto it anyway.
      keys = keys.expand({batch_size, -1, -1, -1});
      values = values.expand({batch_size, -1, -1, -1});
    }
    cache.keys.push_back(keys);
    cache.values.push_back(values);
  }
  cache.growth_buffers.resize(cache.keys.size());
  const at::Device device = first.device();
  prefix_lengths = prefix_lengths.to(at::TensorOptions().dtype(at::kLong).device(device));
  TORCH_CHECK(prefix_lengths.dim() == 1 && prefix_lengths.size(0) == batch_size,
              "KvCache::with_prefix: prefix_lengths must be [", batch_size, "], got ",
              prefix_lengths.sizes());
  const at::Tensor slot_index = at::arange(prefix_slots, at::TensorOptions().dtype(at::kLong).device(device));
  cache.slot_mask = slot_index.unsqueeze(0) < prefix_lengths.unsqueeze(1);  // [B, P]
  cache.next_positions = prefix_lengths.clone();
  return cache;
}

KvCache KvCache::select_rows(const at::Tensor& row_indices) const {
  KvCache out;
  const at::Tensor indices = row_indices.to(at::TensorOptions().dtype(at::kLong).device(slot_mask.device()));
  for (size_t layer = 0; layer < keys.size(); ++layer) {
    out.keys.push_back(keys[layer].index_select(0, indices));
    out.values.push_back(values[layer].index_select(0, indices));
  }
  out.growth_buffers.resize(keys.size());
  out.slot_mask = slot_mask.index_select(0, indices);
  out.next_positions = next_positions.index_select(0, indices);
  return out;
}

KvCache KvCache::concat_rows(const std::vector<KvCache>& caches) {
  TORCH_CHECK(!caches.empty(), "KvCache::concat_rows: no caches");
  const size_t num_layers = caches.front().keys.size();
  int64_t longest = 0;
  for (const KvCache& cache : caches) {
    TORCH_CHECK(cache.keys.size() == num_layers, "KvCache::concat_rows: caches have different layer counts");
    longest = std::max(longest, cache.length());
  }
  // Right-pads a [B, ..., S, ...] tensor along `dim` to `longest` slots.
  auto pad_to = [longest](const at::Tensor& tensor, int64_t dim) {
    const int64_t missing = longest - tensor.size(dim);
    if (missing == 0) return tensor;
    std::vector<int64_t> shape = tensor.sizes().vec();
    shape[dim] = missing;
    return at::cat({tensor, at::zeros(shape, tensor.options())}, dim);
  };
  KvCache out;
  for (size_t layer = 0; layer < num_layers; ++layer) {
    std::vector<at::Tensor> layer_keys, layer_values;
    for (const KvCache& cache : caches) {
      layer_keys.push_back(pad_to(cache.keys[layer], 2));
      layer_values.push_back(pad_to(cache.values[layer], 2));
    }
    out.keys.push_back(at::cat(layer_keys, 0));
    out.values.push_back(at::cat(layer_values, 0));
  }
  out.growth_buffers.resize(num_layers);
  std::vector<at::Tensor> masks, positions;
  for (const KvCache& cache : caches) {
    masks.push_back(pad_to(cache.slot_mask, 1));
    positions.push_back(cache.next_positions);
  }
  out.slot_mask = at::cat(masks, 0);
  out.next_positions = at::cat(positions, 0);
  return out;
}

void KvCache::drop_padding_columns() {
  if (length() == 0) return;
  const at::Tensor used_columns = slot_mask.any(0);  // [S]
  if (used_columns.all().item<bool>()) return;
  const at::Tensor columns = used_columns.nonzero().squeeze(1);  // [S']
  for (size_t layer = 0; layer < keys.size(); ++layer) {
    keys[layer] = keys[layer].index_select(2, columns);
    values[layer] = values[layer].index_select(2, columns);
    if (layer < growth_buffers.size()) growth_buffers[layer].reset();
  }
  slot_mask = slot_mask.index_select(1, columns);
}

KvCache KvCache::clone() const {
  KvCache out;
  for (size_t layer = 0; layer < keys.size(); ++layer) {
    out.keys.push_back(keys[layer].detach().clone());
    out.values.push_back(values[layer].detach().clone());
  }
  out.growth_buffers.resize(keys.size());
  out.slot_mask = slot_mask.clone();
  out.next_positions = next_positions.clone();
  return out;
}

void KvCache::reserve(int64_t slots) {
  if (c10::GradMode::is_enabled()) {
    for (const at::Tensor& tensor : keys) {
      if (tensor.requires_grad()) return;
    }
  }
  growth_buffers.resize(keys.size());
  for (size_t layer = 0; layer < keys.size(); ++layer) {
    const at::Tensor& current_keys = keys[layer];
    const int64_t used = current_keys.size(2);
    const int64_t needed = used + slots;
    std::shared_ptr<GrowthBuffer>& buffer = growth_buffers[layer];
    if (buffer && (!buffer->keys.is_inference() || c10::InferenceMode::is_enabled()) &&
        is_prefix_view(current_keys, buffer->keys, buffer->used) && buffer->keys.size(2) >= needed) {
      continue;
    }
    auto fresh = std::make_shared<GrowthBuffer>();
    std::vector<int64_t> shape = current_keys.sizes().vec();
    shape[2] = needed;
    fresh->keys = at::empty(shape, current_keys.options());
    fresh->values = at::empty(shape, values[layer].options());
    fresh->keys.narrow(2, 0, used).copy_(current_keys);
    fresh->values.narrow(2, 0, used).copy_(values[layer]);
    fresh->used = used;
    keys[layer] = fresh->keys.narrow(2, 0, used);
    values[layer] = fresh->values.narrow(2, 0, used);
    buffer = std::move(fresh);
  }
}

void KvCache::append_layer(int64_t layer, const at::Tensor& new_keys, const at::Tensor& new_values) {
  TORCH_CHECK(layer >= 0 && layer < num_layers(), "KvCache::append_layer: layer ", layer, " out of range");
  at::Tensor& current_keys = keys[layer];
  at::Tensor& current_values = values[layer];
  if (growth_buffers.size() != keys.size()) growth_buffers.resize(keys.size());
  std::shared_ptr<GrowthBuffer>& buffer = growth_buffers[layer];

  const bool autograd =
      c10::GradMode::is_enabled() && (current_keys.requires_grad() || current_values.requires_grad() ||
                                      new_keys.requires_grad() || new_values.requires_grad());
  if (autograd) {
    // In-place writes would invalidate tensors saved for backward; concatenate instead.
    current_keys = at::cat({current_keys, new_keys}, 2);
    current_values = at::cat({current_values, new_values}, 2);
    buffer.reset();
    return;
  }
  const int64_t used = current_keys.size(2);
  const int64_t added = new_keys.size(2);
  const int64_t needed = used + added;
  // A buffer made under c10::InferenceMode can only be written in place inside InferenceMode.
  const bool writable = buffer && (!buffer->keys.is_inference() || c10::InferenceMode::is_enabled());
  const bool can_write_in_place = writable && is_prefix_view(current_keys, buffer->keys, buffer->used) &&
                                  is_prefix_view(current_values, buffer->values, buffer->used) &&
                                  buffer->keys.size(2) >= needed;
  if (!can_write_in_place) {
    auto fresh = std::make_shared<GrowthBuffer>();
    std::vector<int64_t> shape = new_keys.sizes().vec();
    shape[2] = grown_capacity(buffer ? buffer->keys.size(2) : 0, needed);
    // A first append (prefill) gets exactly what it needs: most caches are never decoded into (teacher
    // passes, scoring), and decode loops call reserve() or grow by doubling from here.
    if (!buffer && used == 0) shape[2] = needed;
    fresh->keys = at::empty(shape, new_keys.options());
    fresh->values = at::empty(shape, new_values.options());
    if (used > 0) {
      fresh->keys.narrow(2, 0, used).copy_(current_keys);
      fresh->values.narrow(2, 0, used).copy_(current_values);
    }
    fresh->used = used;
    buffer = std::move(fresh);
  }
  buffer->keys.narrow(2, used, added).copy_(new_keys);
  buffer->values.narrow(2, used, added).copy_(new_values);
  buffer->used = needed;
  current_keys = buffer->keys.narrow(2, 0, needed);
  current_values = buffer->values.narrow(2, 0, needed);
}

}  // namespace cartridge
