#include "model/decode_step.h"

#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "model/decode_kernels.h"

namespace cartridge {
namespace {

// The step's intermediate vectors, kept per thread so a decode step allocates nothing after the first.
struct DecodeBuffers {
  std::vector<float> normed;     // [B, hidden]
  std::vector<float> qkv;        // [B, (H + 2 H_kv) D]: q, k, v of each row; q and k rotated in place
  std::vector<float> attended;   // [B, H D]
  std::vector<float> projected;  // [B, hidden]: a block's output before the residual add
  std::vector<float> gate_up;    // [B, 2 I]
  std::vector<float> activated;  // [B, I]
};

float* sized(std::vector<float>& buffer, int64_t count) {
  buffer.resize(static_cast<size_t>(count));
  return buffer.data();
}

// RMSNorm of `count` floats (transformers' LlamaRMSNorm in float32): x / sqrt(mean(x^2) + eps) * weight.
void rms_norm_row(const float* x, const float* weight, int64_t count, double epsilon, float* output) {
  double sum_of_squares = 0.0;  // in double: no rounding worth speaking of over a few thousand terms
  for (int64_t i = 0; i < count; ++i) sum_of_squares += static_cast<double>(x[i]) * x[i];
  const float inverse_rms = static_cast<float>(1.0 / std::sqrt(sum_of_squares / count + epsilon));
  for (int64_t i = 0; i < count; ++i) output[i] = x[i] * inverse_rms * weight[i];
}

// RoPE of one head in place: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] (rope.h).
void rotate_head(float* x, const float* cos, const float* sin, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float first = x[i];
    const float second = x[i + half];
    x[i] = first * cos[i] + (-second) * sin[i];
    x[i + half] = second * cos[i + half] + first * sin[i + half];
  }
}

void add_into(float* hidden, const float* block_output, int64_t count) {
  for (int64_t i = 0; i < count; ++i) hidden[i] += block_output[i];
}

// The fused step reads a shared prefix once per row; the ATen layer's shared_prefix_attention reads it once
// for all its rows, as matrix products. Measured with bench/model_bench --cartridge-tokens 512 (a prefix of
// 512 slots, blocks as stored, alternating --decode-step fused|layers; tokens/s): 2 rows 133-143 against
// 111-126, 4 rows 199-203 against 182-210, 8 rows 211-219 against 231-238, 32 rows 214-230 against 264-266.
constexpr int64_t kFusedMostRowsPerSharedPrefix = 4;

// Whether the loops below can read `prefix` in place: float32 on the CPU, every layer's keys and values
// [H_kv, P, D] with contiguous head vectors and the same strides (a prefix made by first() is a view).
bool shared_prefix_readable(const KvPrefix& prefix) {
  for (int64_t layer = 0; layer < prefix.num_layers(); ++layer) {
    const at::Tensor& keys = prefix.keys[layer];
    const at::Tensor& values = prefix.values[layer];
    if (keys.scalar_type() != at::kFloat || !keys.is_cpu() || keys.dim() != 3 || keys.stride(2) != 1 ||
        values.scalar_type() != at::kFloat || !values.is_cpu() || values.strides() != keys.strides()) {
      return false;
    }
  }
  return true;
}

// One layer's keys and values of a prefix that rows read before their own slots, [H_kv, P, D].
struct PrefixLayer {
  const float* keys;
  const float* values;
  int64_t head_stride;
  int64_t slot_stride;
  int64_t slots;
};

// For each row, the layer's prefixes it reads (every occurrence), in the cache's order of shared prefixes.
// The order does not matter: keys carry their positions (post-RoPE) and one softmax runs over all slots.
std::vector<std::vector<PrefixLayer>> prefixes_by_row(const KvCache& cache, int64_t layer, int64_t batch) {
  std::vector<std::vector<PrefixLayer>> by_row(static_cast<size_t>(batch));
  for (const KvCache::SharedPrefix& shared : cache.shared_prefixes()) {
    const at::Tensor& keys = shared.prefix->keys[layer];  // [H_kv, P, D]
    const PrefixLayer part{keys.data_ptr<float>(), shared.prefix->values[layer].data_ptr<float>(),
                           keys.stride(0), keys.stride(1), keys.size(1)};
    for (const int64_t row : shared.rows) by_row[static_cast<size_t>(row)].push_back(part);
  }
  return by_row;
}

}  // namespace

bool fused_decode_applies(int64_t new_tokens, at::ScalarType dtype, at::Device device, const KvCache& cache) {
  if (new_tokens != 1 || dtype != at::kFloat || !device.is_cpu() || cache.requires_grad()) return false;
  for (const KvCache::SharedPrefix& shared : cache.shared_prefixes()) {
    if (static_cast<int64_t>(shared.rows.size()) > kFusedMostRowsPerSharedPrefix ||
        !shared_prefix_readable(*shared.prefix)) {
      return false;
    }
  }
  return true;
}

void fused_decode_layer(const LayerConfig& config, const LayerWeights& weights, at::Tensor& hidden,
                        const LayerInputs& inputs, KvCache& cache) {
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(1) == 1 && hidden.scalar_type() == at::kFloat &&
                  hidden.is_contiguous() && hidden.is_cpu(),
              "fused_decode_layer: hidden must be contiguous float32 [B, 1, hidden] on the CPU, got ",
              hidden.sizes());
  const int64_t batch = hidden.size(0);
  const int64_t width = hidden.size(2);  // hidden size
  const int64_t heads = config.query_heads;
  const int64_t kv_heads = config.kv_heads;
  const int64_t head_dim = config.head_dim;
  const int64_t group = heads / kv_heads;  // query heads per KV head
  const int64_t qkv_width = (heads + 2 * kv_heads) * head_dim;
  const int64_t mlp_width = config.mlp_width;
  thread_local DecodeBuffers buffers;
  float* x = hidden.data_ptr<float>();  // [B, hidden]

  // Attention block: norm, q/k/v, q/k norm, RoPE.
  float* normed = sized(buffers.normed, batch * width);
  for (int64_t row = 0; row < batch; ++row) {
    rms_norm_row(x + row * width, weights.input_norm.data_ptr<float>(), width, config.norm_epsilon,
                 normed + row * width);
  }
  float* qkv = sized(buffers.qkv, batch * qkv_width);
  linear_rows(weights.qkv, normed, batch, qkv);
  const at::Tensor& cos = inputs.rope_cos;  // [B, 1, 1, D], contiguous
  const at::Tensor& sin = inputs.rope_sin;  // [B, 1, 1, D], contiguous
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous(),
              "fused_decode_layer: the RoPE tables must be contiguous");
  for (int64_t row = 0; row < batch; ++row) {
    const float* row_cos = cos.data_ptr<float>() + row * head_dim;
    const float* row_sin = sin.data_ptr<float>() + row * head_dim;
    float* row_qkv = qkv + row * qkv_width;
    for (int64_t head = 0; head < heads + kv_heads; ++head) {  // the query heads, then the key heads
      float* vector = row_qkv + head * head_dim;
      if (config.qk_norm) {
        const at::Tensor& norm = head < heads ? weights.q_norm : weights.k_norm;
        rms_norm_row(vector, norm.data_ptr<float>(), head_dim, config.norm_epsilon, vector);
      }
      rotate_head(vector, row_cos, row_sin, head_dim);
    }
  }

  // The cache append: views of the rows' keys and values in `qkv`, [B, H_kv, 1, D], copied by the cache.
  const auto view = [&](int64_t offset) {
    return at::from_blob(qkv + offset, {batch, kv_heads, 1, head_dim}, {qkv_width, head_dim, head_dim, 1},
                         at::kFloat);
  };
  cache.append(config.index, view(heads * head_dim), view((heads + kv_heads) * head_dim));
  const at::Tensor& keys = cache.keys(config.index);      // [B, H_kv, S, D]
  const at::Tensor& values = cache.values(config.index);  // [B, H_kv, S, D]
  TORCH_CHECK(keys.stride(3) == 1 && values.strides() == keys.strides(),
              "fused_decode_layer: the cache's keys and values must share strides with contiguous heads");
  const int64_t slots = keys.size(2);
  const at::Tensor& allowed = inputs.mask.allowed;  // [B or 1, 1, 1, S] bool, contiguous; or every slot
  TORCH_CHECK(!allowed.defined() || (allowed.is_contiguous() && allowed.size(-1) == slots),
              "fused_decode_layer: the mask must be contiguous [B or 1, 1, 1, ", slots, "], got ",
              allowed.sizes());
  TORCH_CHECK(allowed.defined() || !inputs.mask.causal || slots == 1,
              "fused_decode_layer: a causal mask over ", slots, " slots is not a decode step's");

  // Attention: one task per (row, KV head), run in parallel only when they are worth a thread each. A
  // row reads its shared prefixes (if any) in place, then its own slots.
  const std::vector<std::vector<PrefixLayer>> row_prefixes = prefixes_by_row(cache, config.index, batch);
  float* attended = sized(buffers.attended, batch * heads * head_dim);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const int64_t multiply_adds_per_task = 2 * group * (cache.longest_shared_prefix() + slots) * head_dim;
  constexpr int64_t kMultiplyAddsPerThread = 1 << 16;
  const int64_t grain =
      std::max<int64_t>(1, kMultiplyAddsPerThread / std::max<int64_t>(1, multiply_adds_per_task));
  const float* key_data = keys.data_ptr<float>();
  const float* value_data = values.data_ptr<float>();
  at::parallel_for(0, batch * kv_heads, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / kv_heads;
      const int64_t kv_head = task % kv_heads;
      const int64_t offset = row * keys.stride(0) + kv_head * keys.stride(1);
      const bool* row_allowed =
          allowed.defined() ? allowed.data_ptr<bool>() + (allowed.size(0) == 1 ? 0 : row * slots) : nullptr;
      const int64_t first_head = kv_head * group;  // query head h reads KV head h / group
      thread_local std::vector<decode_kernels::KeyValueSlots> parts;
      parts.clear();
      for (const PrefixLayer& prefix : row_prefixes[static_cast<size_t>(row)]) {
        const int64_t head_offset = kv_head * prefix.head_stride;
        parts.push_back({prefix.keys + head_offset, prefix.values + head_offset, prefix.slot_stride,
                         prefix.slots, nullptr});
      }
      parts.push_back({key_data + offset, value_data + offset, keys.stride(2), slots, row_allowed});
      decode_kernels::attend_one_token(qkv + row * qkv_width + first_head * head_dim, group, head_dim,
                                       parts.data(), static_cast<int64_t>(parts.size()), scale,
                                       attended + (row * heads + first_head) * head_dim);
    }
  });
  float* projected = sized(buffers.projected, batch * width);
  linear_rows(weights.output, attended, batch, projected);
  add_into(x, projected, batch * width);

  // MLP block: norm, gate and up, SiLU(gate) * up, down.
  for (int64_t row = 0; row < batch; ++row) {
    rms_norm_row(x + row * width, weights.post_norm.data_ptr<float>(), width, config.norm_epsilon,
                 normed + row * width);
  }
  float* gate_up = sized(buffers.gate_up, batch * 2 * mlp_width);
  linear_rows(weights.gate_up, normed, batch, gate_up);
  float* activated = sized(buffers.activated, batch * mlp_width);
  for (int64_t row = 0; row < batch; ++row) {
    const float* row_gate_up = gate_up + row * 2 * mlp_width;
    decode_kernels::silu_times_up(row_gate_up, row_gate_up + mlp_width, mlp_width,
                                  activated + row * mlp_width);
  }
  linear_rows(weights.down, activated, batch, projected);
  add_into(x, projected, batch * width);
}

}  // namespace cartridge
