#include "model/kv_cache.h"

#include <algorithm>
#include <functional>

#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include "util/error.h"

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

// The rows of `shared` as a tensor [n] int64 on `device` (rebuilt whenever the rows change).
void set_row_index(KvCache::SharedPrefix& shared, at::Device device) {
  shared.row_index = at::tensor(shared.rows, at::kLong).to(device);
}

// Throws MismatchError when a row's prefix was made for a model with another layer count.
void check_prefix_layers(const KvPrefix& prefix, const ModelConfig& config) {
  if (prefix.num_layers() != config.num_layers) {
    throw MismatchError("a cartridge has " + std::to_string(prefix.num_layers()) +
                        " layers but the model has " + std::to_string(config.num_layers) +
                        " (use a cartridge made for this model)");
  }
}

// The entry of `entries` for this use of `prefix`, added (with no rows) when there is none.
KvCache::SharedPrefix& find_or_add_shared_prefix(std::vector<KvCache::SharedPrefix>& entries,
                                                 const std::shared_ptr<const KvPrefix>& prefix,
                                                 int64_t occurrence) {
  for (KvCache::SharedPrefix& entry : entries) {
    if (entry.prefix == prefix && entry.occurrence == occurrence) return entry;
  }
  entries.push_back(KvCache::SharedPrefix{prefix, occurrence, {}, {}});
  return entries.back();
}

// The entries of `entries` for the rows that remain, each row r now at new_place[r] (-1 = gone); entries
// left without rows are dropped.
std::vector<KvCache::SharedPrefix> renumbered_shared_prefixes(
    const std::vector<KvCache::SharedPrefix>& entries, const std::vector<int64_t>& new_place,
    at::Device device) {
  std::vector<KvCache::SharedPrefix> out;
  for (const KvCache::SharedPrefix& shared : entries) {
    KvCache::SharedPrefix kept{shared.prefix, shared.occurrence, {}, {}};
    for (int64_t row : shared.rows) {
      if (new_place[row] >= 0) kept.rows.push_back(new_place[row]);
    }
    if (kept.rows.empty()) continue;
    std::sort(kept.rows.begin(), kept.rows.end());
    set_row_index(kept, device);
    out.push_back(std::move(kept));
  }
  return out;
}

// Each row's real tokens in token_mask [B, T], which must come first (right padding): a row pool's row
// grows by that many slots and its padding, after them, is overwritten by the next append.
std::vector<int64_t> leading_real_tokens(const at::Tensor& token_mask) {
  const at::Tensor mask = token_mask.to(at::kCPU).to(at::kBool).contiguous();  // [B, T]
  const int64_t new_tokens = mask.size(1);
  std::vector<int64_t> counts(mask.size(0));
  for (int64_t row = 0; row < mask.size(0); ++row) {
    const bool* real = mask.data_ptr<bool>() + row * new_tokens;
    counts[row] = std::find(real, real + new_tokens, false) - real;
    TORCH_CHECK(std::find(real + counts[row], real + new_tokens, true) == real + new_tokens, "row ", row,
                " of a row pool's input has padding before a real token (a row pool takes right-padded "
                "tokens)");
  }
  return counts;
}

// Capacity for `needed` when `current` is too small: exactly `needed` the first time (a batch of one
// that never grows holds no spare row), then at least double.
int64_t doubled_capacity(int64_t current, int64_t needed) {
  if (current >= needed) return current;
  return current == 0 ? needed : std::max(needed, 2 * current);
}

}  // namespace

KvPrefix concatenate_prefixes(const std::vector<std::shared_ptr<const KvPrefix>>& parts) {
  std::vector<const KvPrefix*> present;
  for (const auto& part : parts) {
    if (part && part->length() > 0) present.push_back(part.get());
  }
  if (present.empty()) return {};
  if (present.size() == 1) return *present.front();
  const int64_t layers = present.front()->num_layers();
  for (const KvPrefix* part : present) {
    if (part->num_layers() != layers) {
      throw MismatchError("cartridges with " + std::to_string(layers) + " and " +
                          std::to_string(part->num_layers()) + " layers cannot be composed");
    }
  }
  KvPrefix composed;
  for (int64_t layer = 0; layer < layers; ++layer) {
    std::vector<at::Tensor> keys, values;  // each [H_kv, P_i, D]
    for (const KvPrefix* part : present) {
      keys.push_back(part->keys[layer]);
      values.push_back(part->values[layer]);
    }
    composed.keys.push_back(at::cat(keys, 1));      // [H_kv, sum P_i, D]
    composed.values.push_back(at::cat(values, 1));  // [H_kv, sum P_i, D]
  }
  return composed;
}

KvPrefix KvPrefix::first(int64_t slots) const {
  TORCH_CHECK(slots >= 0 && slots <= length(), "KvPrefix::first: ", slots, " of ", length(), " slots");
  KvPrefix out;
  for (size_t layer = 0; layer < keys.size(); ++layer) {
    out.keys.push_back(keys[layer].narrow(1, 0, slots));
    out.values.push_back(values[layer].narrow(1, 0, slots));
  }
  return out;
}

int64_t KvCache::batch_size() const { return slot_mask_.defined() ? slot_mask_.size(0) : 0; }

int64_t KvCache::length() const { return slot_mask_.defined() ? slot_mask_.size(1) : 0; }

const at::Tensor& KvCache::keys(int64_t layer) const {
  TORCH_CHECK(layer >= 0 && layer < num_layers(), "KvCache::keys: layer ", layer, " out of range");
  return keys_[layer];
}

const at::Tensor& KvCache::values(int64_t layer) const {
  TORCH_CHECK(layer >= 0 && layer < num_layers(), "KvCache::values: layer ", layer, " out of range");
  return values_[layer];
}

bool KvCache::requires_grad() const {
  if (row_pool_ || !c10::GradMode::is_enabled()) return false;
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    if (keys_[layer].requires_grad() || values_[layer].requires_grad()) return true;
  }
  return false;
}

int64_t KvCache::shared_prefix_bytes() const {
  int64_t total = 0;
  for (const SharedPrefix& shared : shared_prefixes_) {
    for (int64_t layer = 0; layer < shared.prefix->num_layers(); ++layer) {
      const at::Tensor& keys = shared.prefix->keys[layer];
      const at::Tensor& values = shared.prefix->values[layer];
      total += keys.numel() * keys.element_size() + values.numel() * values.element_size();
    }
  }
  return total;
}

int64_t KvCache::longest_shared_prefix() const {
  std::vector<int64_t> per_row(batch_size(), 0);  // shared slots each row reads
  for (const SharedPrefix& shared : shared_prefixes_) {
    for (int64_t row : shared.rows) per_row[row] += shared.prefix->length();
  }
  return per_row.empty() ? 0 : *std::max_element(per_row.begin(), per_row.end());
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  if (row_pool_) {
    int64_t slots = 0;  // real slots of all rows
    for (int64_t length : row_lengths_) slots += length;
    for (size_t layer = 0; layer < pool_keys_.size(); ++layer) {
      const at::Tensor& storage = pool_keys_[layer];  // [R, H_kv, C, D]; values the same
      total += 2 * slots * storage.size(1) * storage.size(3) * storage.element_size();
    }
    return total;
  }
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    total += keys_[layer].numel() * keys_[layer].element_size() +
             values_[layer].numel() * values_[layer].element_size();
  }
  return total;
}

int64_t KvCache::capacity_bytes() const {
  int64_t total = 0;
  auto tensor_bytes = [](const at::Tensor& tensor) { return tensor.numel() * tensor.element_size(); };
  if (row_pool_) {
    for (size_t layer = 0; layer < pool_keys_.size(); ++layer)
      total += tensor_bytes(pool_keys_[layer]) + tensor_bytes(pool_values_[layer]);
    return total;
  }
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    const GrowthBuffer* buffer = layer < growth_buffers_.size() ? growth_buffers_[layer].get() : nullptr;
    total += buffer != nullptr ? tensor_bytes(buffer->keys) + tensor_bytes(buffer->values)
                               : tensor_bytes(keys_[layer]) + tensor_bytes(values_[layer]);
  }
  return total;
}

KvCache KvCache::empty(const ModelConfig& config, int64_t batch_size, at::ScalarType dtype,
                       at::Device device) {
  TORCH_CHECK(batch_size >= 0, "KvCache::empty: negative batch size");
  KvCache cache;
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    cache.keys_.push_back(at::empty({batch_size, config.num_key_value_heads, 0, config.head_dim}, options));
    cache.values_.push_back(at::empty({batch_size, config.num_key_value_heads, 0, config.head_dim}, options));
  }
  cache.growth_buffers_.resize(config.num_layers);
  cache.slot_mask_ = at::empty({batch_size, 0}, at::TensorOptions().dtype(at::kBool).device(device));
  cache.next_positions_ = at::zeros({batch_size}, at::TensorOptions().dtype(at::kLong).device(device));
  return cache;
}

KvCache KvCache::from_prefix_tensors(std::vector<at::Tensor> keys, std::vector<at::Tensor> values,
                                     const at::Tensor& prefix_lengths) {
  TORCH_CHECK(!keys.empty() && keys.size() == values.size(),
              "KvCache::from_prefix_tensors: need the same non-zero number of key and value layers");
  const at::Tensor& first = keys.front();
  TORCH_CHECK(first.dim() == 4, "KvCache::from_prefix_tensors: prefix keys must be [B, H_kv, P, D]");
  const int64_t batch = first.size(0);
  const int64_t slots = first.size(2);
  for (size_t layer = 0; layer < keys.size(); ++layer) {
    TORCH_CHECK(keys[layer].dim() == 4 && values[layer].sizes() == keys[layer].sizes() &&
                    keys[layer].size(0) == batch && keys[layer].size(2) == slots,
                "KvCache::from_prefix_tensors: layer ", layer, " keys ", keys[layer].sizes(), " values ",
                values[layer].sizes(), " (expected matching [", batch, ", H_kv, ", slots, ", D])");
  }
  const at::Device device = first.device();
  const at::Tensor lengths = prefix_lengths.to(at::TensorOptions().dtype(at::kLong).device(device));
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == batch,
              "KvCache::from_prefix_tensors: prefix_lengths must be [", batch, "], got ", lengths.sizes());
  KvCache cache;
  cache.keys_ = std::move(keys);
  cache.values_ = std::move(values);
  cache.growth_buffers_.resize(cache.keys_.size());
  const at::Tensor slot_index = at::arange(slots, at::TensorOptions().dtype(at::kLong).device(device));
  cache.slot_mask_ = slot_index.unsqueeze(0) < lengths.unsqueeze(1);  // [B, P]
  cache.next_positions_ = lengths.clone();
  return cache;
}

KvCache KvCache::with_prefix(const KvPrefix& prefix, int64_t batch_size) {
  TORCH_CHECK(prefix.num_layers() > 0 && prefix.keys.size() == prefix.values.size(),
              "KvCache::with_prefix: the prefix needs the same non-zero number of key and value layers");
  std::vector<at::Tensor> keys, values;  // per layer [B, H_kv, P, D]
  for (int64_t layer = 0; layer < prefix.num_layers(); ++layer) {
    TORCH_CHECK(prefix.keys[layer].dim() == 3, "KvCache::with_prefix: layer ", layer, " keys ",
                prefix.keys[layer].sizes(), " are not [H_kv, P, D]");
    // A broadcast view, not a copy: the forward concatenates onto it, or reserve() copies it once.
    keys.push_back(prefix.keys[layer].unsqueeze(0).expand({batch_size, -1, -1, -1}));
    values.push_back(prefix.values[layer].unsqueeze(0).expand({batch_size, -1, -1, -1}));
  }
  return from_prefix_tensors(std::move(keys), std::move(values),
                             at::full({batch_size}, prefix.length(), at::kLong));
}

KvCache KvCache::with_row_prefixes(const ModelConfig& config, at::ScalarType dtype, at::Device device,
                                   const std::vector<std::shared_ptr<const KvPrefix>>& prefixes) {
  const int64_t batch = static_cast<int64_t>(prefixes.size());
  int64_t longest = 0;  // P_max, slots
  for (const auto& prefix : prefixes) longest = std::max<int64_t>(longest, prefix ? prefix->length() : 0);
  if (longest == 0) return empty(config, batch, dtype, device);

  const auto tensor_options = at::TensorOptions().dtype(dtype).device(device);
  std::vector<at::Tensor> keys, values;  // per layer [B, H_kv, P_max, D], zero where a row has no slot
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    keys.push_back(at::zeros({batch, config.num_key_value_heads, longest, config.head_dim}, tensor_options));
    values.push_back(
        at::zeros({batch, config.num_key_value_heads, longest, config.head_dim}, tensor_options));
  }
  at::Tensor lengths = at::zeros({batch}, at::kLong);  // [B] real prefix slots per row
  for (int64_t row = 0; row < batch; ++row) {
    const auto& prefix = prefixes[row];
    if (!prefix || prefix->length() == 0) continue;
    check_prefix_layers(*prefix, config);
    const int64_t length = prefix->length();
    for (int64_t layer = 0; layer < config.num_layers; ++layer) {
      keys[layer][row].narrow(1, 0, length).copy_(prefix->keys[layer]);
      values[layer][row].narrow(1, 0, length).copy_(prefix->values[layer]);
    }
    lengths[row] = length;
  }
  return from_prefix_tensors(std::move(keys), std::move(values), lengths);
}

KvCache KvCache::with_shared_prefixes(
    const ModelConfig& config, at::ScalarType dtype, at::Device device,
    const std::vector<std::vector<std::shared_ptr<const KvPrefix>>>& prefixes) {
  const int64_t batch = static_cast<int64_t>(prefixes.size());
  KvCache cache = empty(config, batch, dtype, device);
  std::vector<int64_t> lengths(batch, 0);  // [B] shared slots per row
  for (int64_t row = 0; row < batch; ++row) {
    std::vector<std::shared_ptr<const KvPrefix>> seen;  // this row's prefixes so far (to count repeats)
    for (const std::shared_ptr<const KvPrefix>& prefix : prefixes[row]) {
      if (!prefix || prefix->length() == 0) continue;
      check_prefix_layers(*prefix, config);
      const at::Tensor& first_keys = prefix->keys.front();
      TORCH_CHECK(first_keys.scalar_type() == dtype && first_keys.device() == device &&
                      first_keys.size(0) == config.num_key_value_heads &&
                      first_keys.size(2) == config.head_dim,
                  "KvCache::with_shared_prefixes: a prefix is ", first_keys.scalar_type(), " ",
                  first_keys.sizes(), " on ", first_keys.device(), ", the cache ", dtype, " [",
                  config.num_key_value_heads, ", P, ", config.head_dim, "] on ", device);
      const int64_t occurrence = std::count(seen.begin(), seen.end(), prefix);
      seen.push_back(prefix);
      find_or_add_shared_prefix(cache.shared_prefixes_, prefix, occurrence).rows.push_back(row);
      lengths[row] += prefix->length();
    }
  }
  for (SharedPrefix& shared : cache.shared_prefixes_) set_row_index(shared, device);
  cache.next_positions_ = at::tensor(lengths, at::kLong).to(device);
  return cache;
}

KvCache KvCache::row_pool(const ModelConfig& config, at::ScalarType dtype, at::Device device) {
  KvCache cache = empty(config, 0, dtype, device);
  cache.row_pool_ = true;
  cache.pool_keys_ = cache.keys_;      // per layer [0, H_kv, 0, D] until rows join
  cache.pool_values_ = cache.values_;  // per layer [0, H_kv, 0, D]
  return cache;
}

KvPrefix KvCache::row_prefix(int64_t row, int64_t slots) const {
  TORCH_CHECK(!row_pool_, "KvCache::row_prefix: not for a row pool");
  TORCH_CHECK(shared_prefixes_.empty(), "KvCache::row_prefix: not for a cache with shared prefixes");
  TORCH_CHECK(row >= 0 && row < batch_size(), "KvCache::row_prefix: row ", row, " of ", batch_size());
  TORCH_CHECK(slots >= 0 && slots <= length(), "KvCache::row_prefix: ", slots, " slots of ", length());
  KvPrefix prefix;
  for (int64_t layer = 0; layer < num_layers(); ++layer) {
    prefix.keys.push_back(keys_[layer][row].narrow(1, 0, slots));      // [H_kv, slots, D]
    prefix.values.push_back(values_[layer][row].narrow(1, 0, slots));  // [H_kv, slots, D]
  }
  return prefix;
}

KvCache KvCache::select_rows(const at::Tensor& row_indices) const {
  TORCH_CHECK(!row_pool_, "KvCache::select_rows: a row pool takes rows out with remove_rows");
  KvCache out;
  const at::Tensor indices = row_indices.to(at::TensorOptions().dtype(at::kLong).device(slot_mask_.device()));
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    out.keys_.push_back(keys_[layer].index_select(0, indices));
    out.values_.push_back(values_[layer].index_select(0, indices));
  }
  out.growth_buffers_.resize(keys_.size());
  out.slot_mask_ = slot_mask_.index_select(0, indices);
  out.next_positions_ = next_positions_.index_select(0, indices);
  if (!shared_prefixes_.empty()) {
    // Each shared prefix keeps the selected rows that read it, renumbered to their new places.
    const at::Tensor cpu_indices = indices.to(at::kCPU).contiguous();
    const int64_t* selected = cpu_indices.data_ptr<int64_t>();
    std::vector<int64_t> new_place(batch_size(), -1);  // old row -> new row
    for (int64_t index = 0; index < cpu_indices.numel(); ++index) new_place[selected[index]] = index;
    out.shared_prefixes_ = renumbered_shared_prefixes(shared_prefixes_, new_place, slot_mask_.device());
  }
  return out;
}

KvCache KvCache::concat_rows(const std::vector<KvCache>& caches) {
  TORCH_CHECK(!caches.empty(), "KvCache::concat_rows: no caches");
  const size_t num_layers = caches.front().keys_.size();
  int64_t longest = 0;
  for (const KvCache& cache : caches) {
    TORCH_CHECK(!cache.row_pool_, "KvCache::concat_rows: a row pool takes rows in with add_rows");
    TORCH_CHECK(cache.keys_.size() == num_layers, "KvCache::concat_rows: caches have different layer counts");
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
      layer_keys.push_back(pad_to(cache.keys_[layer], 2));
      layer_values.push_back(pad_to(cache.values_[layer], 2));
    }
    out.keys_.push_back(at::cat(layer_keys, 0));
    out.values_.push_back(at::cat(layer_values, 0));
  }
  out.growth_buffers_.resize(num_layers);
  std::vector<at::Tensor> masks, positions;
  for (const KvCache& cache : caches) {
    masks.push_back(pad_to(cache.slot_mask_, 1));
    positions.push_back(cache.next_positions_);
  }
  out.slot_mask_ = at::cat(masks, 0);
  out.next_positions_ = at::cat(positions, 0);
  // Shared prefixes: rows offset by the rows of the caches before; one entry per distinct prefix object.
  int64_t row_offset = 0;
  for (const KvCache& cache : caches) {
    for (const SharedPrefix& shared : cache.shared_prefixes_) {
      SharedPrefix& entry = find_or_add_shared_prefix(out.shared_prefixes_, shared.prefix, shared.occurrence);
      for (int64_t row : shared.rows) entry.rows.push_back(row_offset + row);
    }
    row_offset += cache.batch_size();
  }
  for (SharedPrefix& shared : out.shared_prefixes_) set_row_index(shared, out.slot_mask_.device());
  return out;
}

void KvCache::drop_padding_columns() {
  if (row_pool_ || length() == 0) return;             // a row pool holds no padding
  const at::Tensor used_columns = slot_mask_.any(0);  // [S]
  if (used_columns.all().item<bool>()) return;
  const at::Tensor columns = used_columns.nonzero().squeeze(1);  // [S']
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    keys_[layer] = keys_[layer].index_select(2, columns);
    values_[layer] = values_[layer].index_select(2, columns);
    growth_buffers_[layer].reset();
  }
  slot_mask_ = slot_mask_.index_select(1, columns);
}

KvCache KvCache::clone() const {
  if (row_pool_) {
    KvCache out = *this;
    for (size_t layer = 0; layer < pool_keys_.size(); ++layer) {
      out.pool_keys_[layer] = pool_keys_[layer].clone();
      out.pool_values_[layer] = pool_values_[layer].clone();
    }
    out.refresh_pool_views(length());
    return out;
  }
  KvCache out;
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    out.keys_.push_back(keys_[layer].detach().clone());
    out.values_.push_back(values_[layer].detach().clone());
  }
  out.growth_buffers_.resize(keys_.size());
  out.slot_mask_ = slot_mask_.clone();
  out.next_positions_ = next_positions_.clone();
  out.shared_prefixes_ = shared_prefixes_;  // immutable: sharing them is the point
  return out;
}

void KvCache::regrow(int64_t layer, int64_t capacity) {
  const at::Tensor& current_keys = keys_[layer];
  const at::Tensor& current_values = values_[layer];
  const int64_t used = current_keys.size(2);
  auto fresh = std::make_shared<GrowthBuffer>();
  std::vector<int64_t> shape = current_keys.sizes().vec();
  shape[2] = capacity;
  fresh->keys = at::empty(shape, current_keys.options());
  fresh->values = at::empty(shape, current_values.options());
  if (used > 0) {
    fresh->keys.narrow(2, 0, used).copy_(current_keys);
    fresh->values.narrow(2, 0, used).copy_(current_values);
  }
  fresh->used = used;
  keys_[layer] = fresh->keys.narrow(2, 0, used);
  values_[layer] = fresh->values.narrow(2, 0, used);
  growth_buffers_[layer] = std::move(fresh);
}

void KvCache::reserve(int64_t slots) {
  if (row_pool_) {
    grow_pool(batch_size(), length() + slots);
    return;
  }
  if (requires_grad()) return;
  growth_buffers_.resize(keys_.size());
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    const int64_t needed = keys_[layer].size(2) + slots;
    const std::shared_ptr<GrowthBuffer>& buffer = growth_buffers_[layer];
    // A buffer made under c10::InferenceMode can only be written in place inside InferenceMode.
    const bool writable = buffer && (!buffer->keys.is_inference() || c10::InferenceMode::is_enabled());
    if (writable && is_prefix_view(keys_[layer], buffer->keys, buffer->used) &&
        buffer->keys.size(2) >= needed) {
      continue;
    }
    regrow(static_cast<int64_t>(layer), needed);
  }
}

void KvCache::append(int64_t layer, const at::Tensor& new_keys, const at::Tensor& new_values) {
  TORCH_CHECK(layer >= 0 && layer < num_layers(), "KvCache::append: layer ", layer, " out of range");
  if (row_pool_) {
    append_to_pool(layer, new_keys, new_values);
    return;
  }
  at::Tensor& current_keys = keys_[layer];
  at::Tensor& current_values = values_[layer];
  if (growth_buffers_.size() != keys_.size()) growth_buffers_.resize(keys_.size());

  const bool autograd =
      c10::GradMode::is_enabled() && (current_keys.requires_grad() || current_values.requires_grad() ||
                                      new_keys.requires_grad() || new_values.requires_grad());
  if (autograd) {
    // In-place writes would invalidate tensors saved for backward; concatenate instead.
    current_keys = at::cat({current_keys, new_keys}, 2);
    current_values = at::cat({current_values, new_values}, 2);
    growth_buffers_[layer].reset();
    return;
  }
  const int64_t used = current_keys.size(2);
  const int64_t added = new_keys.size(2);
  const int64_t needed = used + added;
  const std::shared_ptr<GrowthBuffer>& buffer = growth_buffers_[layer];
  const bool writable = buffer && (!buffer->keys.is_inference() || c10::InferenceMode::is_enabled());
  const bool can_write_in_place = writable && is_prefix_view(current_keys, buffer->keys, buffer->used) &&
                                  is_prefix_view(current_values, buffer->values, buffer->used) &&
                                  buffer->keys.size(2) >= needed;
  if (!can_write_in_place) {
    // A first append (a prefill) gets exactly what it needs: most caches are never decoded into (teacher
    // passes, scoring), and decode loops call reserve() or grow by doubling from here.
    regrow(layer, !buffer && used == 0 ? needed : grown_capacity(buffer ? buffer->keys.size(2) : 0, needed));
  }
  GrowthBuffer& target = *growth_buffers_[layer];
  target.keys.narrow(2, used, added).copy_(new_keys);
  target.values.narrow(2, used, added).copy_(new_values);
  target.used = needed;
  current_keys = target.keys.narrow(2, 0, needed);
  current_values = target.values.narrow(2, 0, needed);
}

void KvCache::commit_tokens(const at::Tensor& token_mask, const at::Tensor& next_positions) {
  const int64_t new_slots = token_mask.size(1);
  for (int64_t layer = 0; layer < num_layers(); ++layer) {
    TORCH_CHECK(keys_[layer].size(2) == length() + new_slots, "KvCache::commit_tokens: layer ", layer,
                " holds ", keys_[layer].size(2), " slots, expected ", length() + new_slots,
                " (append every layer first)");
  }
  if (row_pool_) {
    commit_to_pool(token_mask, next_positions);
    return;
  }
  slot_mask_ = at::cat({slot_mask_.to(token_mask.device()), token_mask.to(at::kBool)}, 1);
  next_positions_ = next_positions;
}

// ---- the row pool -----------------------------------------------------------------------------------

bool KvCache::pool_lengths_equal() const {
  return std::adjacent_find(row_lengths_.begin(), row_lengths_.end(), std::not_equal_to<>()) ==
         row_lengths_.end();
}

void KvCache::refresh_pool_views(int64_t slots) {
  const int64_t batch = static_cast<int64_t>(row_lengths_.size());
  for (size_t layer = 0; layer < pool_keys_.size(); ++layer) {
    keys_[layer] = pool_keys_[layer].narrow(0, 0, batch).narrow(2, 0, slots);      // [B, H_kv, S, D]
    values_[layer] = pool_values_[layer].narrow(0, 0, batch).narrow(2, 0, slots);  // [B, H_kv, S, D]
  }
  const at::Device device = next_positions_.device();
  const auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
  const at::Tensor lengths = at::tensor(row_lengths_, at::kLong).to(device);         // [B]
  slot_mask_ = at::arange(slots, long_options).unsqueeze(0) < lengths.unsqueeze(1);  // [B, S]
}

void KvCache::grow_pool(int64_t rows, int64_t slots) {
  if (pool_keys_.empty()) return;
  const int64_t have_rows = pool_keys_.front().size(0);
  const int64_t have_slots = pool_keys_.front().size(2);
  if (have_rows >= rows && have_slots >= slots) return;
  const int64_t new_rows = doubled_capacity(have_rows, rows);
  const int64_t new_slots = doubled_capacity(have_slots, slots);
  const int64_t batch = batch_size();
  const int64_t used = length();  // no layer holds this forward's tokens yet when the first one grows it
  for (size_t layer = 0; layer < pool_keys_.size(); ++layer) {
    for (std::vector<at::Tensor>* storage : {&pool_keys_, &pool_values_}) {
      const at::Tensor& old_storage = (*storage)[layer];  // [R, H_kv, C, D]
      // Zeros, not uninitialised memory: slots past a row's length are masked, but a masked score is
      // added to -inf, and a NaN that happened to be there would survive that (NaN + -inf = NaN).
      at::Tensor fresh =
          at::zeros({new_rows, old_storage.size(1), new_slots, old_storage.size(3)}, old_storage.options());
      if (batch > 0 && used > 0) {
        fresh.narrow(0, 0, batch)
            .narrow(2, 0, used)
            .copy_(old_storage.narrow(0, 0, batch).narrow(2, 0, used));
      }
      (*storage)[layer] = std::move(fresh);
    }
  }
  refresh_pool_views(used);
}

void KvCache::add_rows(const KvCache& joining, const std::vector<int64_t>& rows, int64_t room) {
  TORCH_CHECK(row_pool_, "KvCache::add_rows: only a row pool takes rows in this way (concat_rows)");
  TORCH_CHECK(!joining.row_pool_ && joining.num_layers() == num_layers(), "KvCache::add_rows: the joining ",
              "cache must be rectangular with ", num_layers(), " layers, it has ", joining.num_layers());
  if (rows.empty()) return;
  const at::Device device = next_positions_.device();
  const at::Tensor& first_keys = joining.keys_.front();
  const at::Tensor& storage = pool_keys_.front();
  TORCH_CHECK(first_keys.scalar_type() == storage.scalar_type() && first_keys.device() == storage.device() &&
                  first_keys.size(1) == storage.size(1) && first_keys.size(3) == storage.size(3),
              "KvCache::add_rows: joining keys ", first_keys.sizes(), " ", first_keys.scalar_type(), " on ",
              first_keys.device(), ", the pool's ", storage.sizes(), " ", storage.scalar_type(), " on ",
              storage.device());

  // Each joining row's real slots; usually a leading run (a right-padded prefill after no padding).
  const at::Tensor joining_mask = joining.slot_mask_.to(at::kCPU).contiguous();  // [B_j, S_j] bool
  const int64_t joining_slots = joining_mask.size(1);
  std::vector<std::vector<int64_t>> real_columns;  // per added row
  bool all_leading = true;
  int64_t longest = 0;
  for (int64_t source : rows) {
    TORCH_CHECK(source >= 0 && source < joining.batch_size(), "KvCache::add_rows: row ", source, " of ",
                joining.batch_size());
    const bool* valid = joining_mask.data_ptr<bool>() + source * joining_slots;
    std::vector<int64_t> columns;
    for (int64_t column = 0; column < joining_slots; ++column) {
      if (valid[column]) columns.push_back(column);
    }
    all_leading =
        all_leading && (columns.empty() || columns.back() + 1 == static_cast<int64_t>(columns.size()));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(columns.size()));
    real_columns.push_back(std::move(columns));
  }

  const int64_t batch = batch_size();
  const int64_t added = static_cast<int64_t>(rows.size());
  grow_pool(batch + added, std::max(length(), longest + room));
  const at::Tensor source_rows = at::tensor(rows, at::kLong).to(device);  // [n]
  for (int64_t layer = 0; layer < num_layers(); ++layer) {
    for (const auto& [storage_of, joining_of] :
         {std::pair{&pool_keys_, &joining.keys_}, std::pair{&pool_values_, &joining.values_}}) {
      at::Tensor& target = (*storage_of)[layer];        // [R, H_kv, C, D]
      const at::Tensor& source = (*joining_of)[layer];  // [B_j, H_kv, S_j, D]
      if (all_leading) {
        // One copy for all rows: each row's first `longest` slots (past a row's length they are padding,
        // which the row's length leaves out and its appends overwrite).
        target.narrow(0, batch, added)
            .narrow(2, 0, longest)
            .copy_(source.index_select(0, source_rows).narrow(2, 0, longest));
        continue;
      }
      for (int64_t index = 0; index < added; ++index) {
        const std::vector<int64_t>& columns = real_columns[index];
        if (columns.empty()) continue;
        const at::Tensor column_index = at::tensor(columns, at::kLong).to(device);
        target[batch + index]
            .narrow(1, 0, static_cast<int64_t>(columns.size()))
            .copy_(source[rows[index]].index_select(1, column_index));
      }
    }
  }
  for (const std::vector<int64_t>& columns : real_columns)
    row_lengths_.push_back(static_cast<int64_t>(columns.size()));
  next_positions_ =
      at::cat({next_positions_, joining.next_positions_.to(device).index_select(0, source_rows)});

  // The shared prefixes the joining rows read, with those rows at their new places.
  std::vector<int64_t> new_place(joining.batch_size(), -1);
  for (int64_t index = 0; index < added; ++index) new_place[rows[index]] = batch + index;
  for (const SharedPrefix& shared : renumbered_shared_prefixes(joining.shared_prefixes_, new_place, device)) {
    SharedPrefix& entry = find_or_add_shared_prefix(shared_prefixes_, shared.prefix, shared.occurrence);
    entry.rows.insert(entry.rows.end(), shared.rows.begin(), shared.rows.end());
    set_row_index(entry, device);  // the joining rows come after every row the entry had
  }
  write_rows_ = write_columns_ = at::Tensor();
  refresh_pool_views(*std::max_element(row_lengths_.begin(), row_lengths_.end()));
}

std::vector<int64_t> KvCache::remove_rows(const std::vector<int64_t>& rows) {
  TORCH_CHECK(row_pool_, "KvCache::remove_rows: only a row pool drops rows in this way (select_rows)");
  const int64_t batch = batch_size();
  std::vector<bool> removed(batch, false);
  for (int64_t row : rows) {
    TORCH_CHECK(row >= 0 && row < batch && !removed[row], "KvCache::remove_rows: row ", row,
                " is not one of the ", batch, " rows, or is named twice");
    removed[row] = true;
  }
  const int64_t new_batch = batch - static_cast<int64_t>(rows.size());
  std::vector<int64_t> holes, movers;  // places freed below new_batch; rows kept at or above it
  for (int64_t row = 0; row < batch; ++row) {
    if (row < new_batch && removed[row]) holes.push_back(row);
    if (row >= new_batch && !removed[row]) movers.push_back(row);
  }
  std::vector<int64_t> order(new_batch);  // new row -> old row
  for (int64_t row = 0; row < new_batch; ++row) order[row] = row;
  for (size_t index = 0; index < holes.size(); ++index) order[holes[index]] = movers[index];

  if (!holes.empty()) {
    const at::Device device = next_positions_.device();
    int64_t longest = 0;  // slots of the longest moving row
    for (int64_t row : movers) longest = std::max(longest, row_lengths_[row]);
    const at::Tensor hole_index = at::tensor(holes, at::kLong).to(device);    // [m]
    const at::Tensor mover_index = at::tensor(movers, at::kLong).to(device);  // [m]
    for (size_t layer = 0; layer < pool_keys_.size(); ++layer) {
      for (at::Tensor* storage : {&pool_keys_[layer], &pool_values_[layer]}) {
        at::Tensor used = storage->narrow(2, 0, longest);  // [R, H_kv, longest, D], a view
        used.index_copy_(0, hole_index, used.index_select(0, mover_index));
      }
    }
  }
  std::vector<int64_t> lengths(new_batch);
  std::vector<int64_t> new_place(batch, -1);  // old row -> new row
  for (int64_t row = 0; row < new_batch; ++row) {
    lengths[row] = row_lengths_[order[row]];
    new_place[order[row]] = row;
  }
  row_lengths_ = std::move(lengths);
  next_positions_ =
      next_positions_.index_select(0, at::tensor(order, at::kLong).to(next_positions_.device()));
  shared_prefixes_ = renumbered_shared_prefixes(shared_prefixes_, new_place, next_positions_.device());
  write_rows_ = write_columns_ = at::Tensor();
  refresh_pool_views(row_lengths_.empty() ? 0 : *std::max_element(row_lengths_.begin(), row_lengths_.end()));
  return order;
}

AttentionMask KvCache::attention_mask_for(const at::Tensor& token_mask) const {
  if (row_pool_) leading_real_tokens(token_mask);  // refuses left padding before the cache changes
  // Rows of one length: the pool's slots are those of a rectangular cache without padding.
  if (!row_pool_ || pool_lengths_equal()) return attention_mask(slot_mask_, token_mask);
  const at::Device device = token_mask.device();
  const auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
  const int64_t new_tokens = token_mask.size(1);
  const at::Tensor lengths = at::tensor(row_lengths_, at::kLong).to(device);  // [B]
  const at::Tensor own_column =
      lengths.unsqueeze(1) + at::arange(new_tokens, long_options).unsqueeze(0);  // [B, T]
  const at::Tensor columns = at::arange(length() + new_tokens, long_options);    // [S + T]
  // Query t of row b sits at column length_b + t and sees every column up to it: the row's slots, then
  // this call's tokens before it (right-padded, so real ones; a padding query's output is never used).
  return {(columns.view({1, 1, -1}) <= own_column.unsqueeze(2)).unsqueeze(1)};  // [B, 1, T, S + T]
}

void KvCache::append_to_pool(int64_t layer, const at::Tensor& new_keys, const at::Tensor& new_values) {
  TORCH_CHECK(!(c10::GradMode::is_enabled() && (new_keys.requires_grad() || new_values.requires_grad())),
              "KvCache::append: a row pool does not record autograd (use a rectangular cache)");
  const int64_t batch = batch_size();
  const int64_t added = new_keys.size(2);
  const int64_t used = length();
  grow_pool(batch, used + added);                    // at most on the first layer of a forward
  at::Tensor& storage_keys = pool_keys_[layer];      // [R, H_kv, C, D]
  at::Tensor& storage_values = pool_values_[layer];  // [R, H_kv, C, D]
  if (pool_lengths_equal()) {
    storage_keys.narrow(0, 0, batch).narrow(2, used, added).copy_(new_keys);
    storage_values.narrow(0, 0, batch).narrow(2, used, added).copy_(new_values);
  } else {
    if (!write_columns_.defined() || write_columns_.size(1) != added) {
      const at::Device device = new_keys.device();
      const auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
      write_rows_ = at::arange(batch, long_options).unsqueeze(1);  // [B, 1]
      write_columns_ = at::tensor(row_lengths_, at::kLong).to(device).unsqueeze(1) +
                       at::arange(added, long_options).unsqueeze(0);  // [B, T]
    }
    // storage[b, :, length_b + t, :] = new[b, :, t, :]: the indexed dimensions come first, [B, T, H_kv, D].
    using at::indexing::Slice;
    using at::indexing::TensorIndex;
    storage_keys.index_put_({TensorIndex(write_rows_), Slice(), TensorIndex(write_columns_)},
                            new_keys.transpose(1, 2));
    storage_values.index_put_({TensorIndex(write_rows_), Slice(), TensorIndex(write_columns_)},
                              new_values.transpose(1, 2));
  }
  keys_[layer] = storage_keys.narrow(0, 0, batch).narrow(2, 0, used + added);      // [B, H_kv, S + T, D]
  values_[layer] = storage_values.narrow(0, 0, batch).narrow(2, 0, used + added);  // [B, H_kv, S + T, D]
}

void KvCache::commit_to_pool(const at::Tensor& token_mask, const at::Tensor& next_positions) {
  const std::vector<int64_t> counts = leading_real_tokens(token_mask);
  for (size_t row = 0; row < counts.size(); ++row) row_lengths_[row] += counts[row];
  next_positions_ = next_positions;
  write_rows_ = write_columns_ = at::Tensor();
  refresh_pool_views(*std::max_element(row_lengths_.begin(), row_lengths_.end()));
}

}  // namespace cartridge
