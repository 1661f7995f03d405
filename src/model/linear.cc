#include "model/linear.h"

#include <vector>

#include <ATen/ATen.h>

#include "model/float_block_kernels.h"
#include "model/quantized_kernels.h"

namespace cartridge {
namespace {

// From this many rows of x on, a block product dequantises the weight and multiplies with BLAS (prefill):
// the block kernels win while reading the weight is the cost, BLAS once x is a matrix. Measured with
// bench/model_bench's batched decode (docs/quantized.md): float kernels at batch 32 166 tokens/s against
// 144 with BLAS, about even at 48.
constexpr int64_t kFloatKernelsBelowRows = 64;
constexpr int64_t kInt8KernelsBelowRows = 32;

// What every storage kind provides: its name, the fast product, and its weight as a dense matrix (for
// the reference path).
struct WeightStorageTraits {
  WeightStorage storage;
  const char* name;
  at::Tensor (*multiply)(const at::Tensor& x, const LinearWeight& weight);
  at::Tensor (*to_dense)(const LinearWeight& weight);  // [out, in] in any float dtype
  // The product on raw float32 buffers, x [N, in] -> output [N, out] (linear_rows).
  void (*multiply_rows)(const LinearWeight& weight, const float* x, int64_t rows, float* output);
};

at::Tensor dense_multiply(const at::Tensor& x, const LinearWeight& weight) {
  return weight.bias.defined() ? at::linear(x, weight.weight, weight.bias) : at::linear(x, weight.weight);
}

at::Tensor dense_matrix(const LinearWeight& weight) { return weight.weight; }

// `rows` rows of a block weight from `blocks` -> float32 at `output`: our vectorised dequantisation where it
// has the type, ggml's (scalar) otherwise.
void dequantize_rows(const LinearWeight& weight, const uint8_t* blocks, int64_t rows, float* output) {
  if (float_block_kernels::supports(weight.ggml_type)) {
    float_block_kernels::dequantize(weight.ggml_type, blocks, rows, weight.columns, output);
  } else {
    QuantizedKernels::dequantize(weight.ggml_type, blocks, rows, weight.columns, output);
  }
}

at::Tensor ggml_blocks_matrix(const LinearWeight& weight) {
  at::Tensor matrix = at::empty({weight.weight.size(0), weight.columns}, at::kFloat);  // [out, in]
  dequantize_rows(weight, weight.weight.data_ptr<uint8_t>(), weight.weight.size(0), matrix.data_ptr<float>());
  return matrix;
}

// output [N, out] = x [N, in] W^T (+ b) on raw float32 buffers for a block weight: `multiply_rows` (the
// kind's kernels) below `dense_from_rows` rows of x, dequantisation and at::mm from there on.
template <typename MultiplyRows>
void blocks_multiply_rows(const LinearWeight& weight, int64_t dense_from_rows, MultiplyRows&& multiply_rows,
                          const float* x, int64_t rows, float* output) {
  const int64_t out = weight.weight.size(0);
  if (rows >= dense_from_rows) {
    // The dequantised matrix lives only for this product: a buffer kept per thread spares a fresh
    // allocation, and its page faults, per call (they cost more than the dequantisation).
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(out * weight.columns));
    dequantize_rows(weight, weight.weight.data_ptr<uint8_t>(), out, scratch.data());
    at::Tensor product = at::from_blob(output, {rows, out}, at::kFloat);
    at::mm_out(product, at::from_blob(const_cast<float*>(x), {rows, weight.columns}, at::kFloat),
               at::from_blob(scratch.data(), {out, weight.columns}, at::kFloat).t());
  } else {
    multiply_rows(weight.weight.data_ptr<uint8_t>(), out, x, rows, output);
  }
  if (weight.bias.defined()) {
    const float* bias = weight.bias.data_ptr<float>();
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t index = 0; index < out; ++index) output[row * out + index] += bias[index];
    }
  }
}

void ggml_blocks_multiply_rows(const LinearWeight& weight, const float* x, int64_t rows, float* output) {
  blocks_multiply_rows(
      weight, kFloatKernelsBelowRows,
      [&](const uint8_t* blocks, int64_t out, const float* input, int64_t count, float* product) {
        float_block_kernels::multiply(weight.ggml_type, blocks, out, weight.columns, input, count, product);
      },
      x, rows, output);
}

void ggml_blocks_int8_multiply_rows(const LinearWeight& weight, const float* x, int64_t rows, float* output) {
  blocks_multiply_rows(
      weight, kInt8KernelsBelowRows,
      [&](const uint8_t* blocks, int64_t out, const float* input, int64_t count, float* product) {
        weight.int8_kernels->multiply(weight.ggml_type, blocks, out, weight.columns, input, count, product);
      },
      x, rows, output);
}

void dense_multiply_rows(const LinearWeight& weight, const float* x, int64_t rows, float* output) {
  TORCH_CHECK(weight.weight.scalar_type() == at::kFloat && weight.weight.device().is_cpu(),
              "linear_rows: a dense weight must be float32 on the CPU, got ", weight.weight.scalar_type(),
              " on ", weight.weight.device());
  at::Tensor product = at::from_blob(output, {rows, weight.weight.size(0)}, at::kFloat);  // [N, out]
  const at::Tensor input = at::from_blob(const_cast<float*>(x), {rows, weight.weight.size(1)}, at::kFloat);
  if (weight.bias.defined()) {
    at::addmm_out(product, weight.bias, input, weight.weight.t());
  } else {
    at::mm_out(product, input, weight.weight.t());
  }
}

// The product of x [..., in] with a block weight through `multiply_rows` (a *_multiply_rows above).
at::Tensor blocks_multiply(const at::Tensor& x, const LinearWeight& weight,
                           void (*multiply_rows)(const LinearWeight&, const float*, int64_t, float*)) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "linear: quantised weights multiply float32 CPU activations, got ", x.scalar_type(), " on ",
              x.device());
  TORCH_CHECK(!x.requires_grad(),
              "linear: quantised weights have no backward (load the model dense to train)");
  TORCH_CHECK(x.size(-1) == weight.columns, "linear: x has ", x.size(-1), " features, the weight ",
              weight.columns);
  const at::Tensor rows = x.reshape({-1, weight.columns}).contiguous();               // [N, in]
  at::Tensor product = at::empty({rows.size(0), weight.weight.size(0)}, at::kFloat);  // [N, out]
  multiply_rows(weight, rows.data_ptr<float>(), rows.size(0), product.data_ptr<float>());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = weight.weight.size(0);
  return product.view(shape);
}

at::Tensor ggml_blocks_multiply(const at::Tensor& x, const LinearWeight& weight) {
  return blocks_multiply(x, weight, &ggml_blocks_multiply_rows);
}

at::Tensor ggml_blocks_int8_multiply(const at::Tensor& x, const LinearWeight& weight) {
  return blocks_multiply(x, weight, &ggml_blocks_int8_multiply_rows);
}

constexpr WeightStorageTraits kWeightStorageTraits[] = {
    {WeightStorage::kDense, "dense", &dense_multiply, &dense_matrix, &dense_multiply_rows},
    {WeightStorage::kGgmlBlocks, "ggml blocks", &ggml_blocks_multiply, &ggml_blocks_matrix,
     &ggml_blocks_multiply_rows},
    {WeightStorage::kGgmlBlocksInt8, "ggml blocks, int8 activations", &ggml_blocks_int8_multiply,
     &ggml_blocks_matrix, &ggml_blocks_int8_multiply_rows},
};

const WeightStorageTraits& traits(WeightStorage storage) {
  for (const WeightStorageTraits& row : kWeightStorageTraits) {
    if (row.storage == storage) return row;
  }
  TORCH_CHECK(false, "no kernel for weight storage ", static_cast<int>(storage));
}

}  // namespace

const char* weight_storage_name(WeightStorage storage) { return traits(storage).name; }

int64_t LinearWeight::out_features() const { return weight.size(0); }

int64_t LinearWeight::in_features() const {
  return storage == WeightStorage::kDense ? weight.size(1) : columns;
}

LinearWeight ggml_blocks_weight(at::Tensor rows, uint32_t ggml_type, int64_t columns,
                                const QuantizedKernels* int8_kernels) {
  TORCH_CHECK(
      rows.dim() == 2 && rows.scalar_type() == at::kByte && rows.device().is_cpu() && rows.is_contiguous(),
      "ggml_blocks_weight: rows must be a contiguous [out, bytes per row] uint8 CPU tensor");
  TORCH_CHECK(
      int8_kernels != nullptr ? int8_kernels->supports(ggml_type) : float_block_kernels::supports(ggml_type),
      "ggml_blocks_weight: no kernel for GGUF type ", ggml_type);
  TORCH_CHECK(rows.size(1) == QuantizedKernels::row_bytes(ggml_type, columns), "ggml_blocks_weight: rows of ",
              rows.size(1), " bytes do not hold ", columns, " values of GGUF type ", ggml_type);
  LinearWeight weight;
  weight.storage = int8_kernels != nullptr ? WeightStorage::kGgmlBlocksInt8 : WeightStorage::kGgmlBlocks;
  weight.weight = std::move(rows);
  weight.ggml_type = ggml_type;
  weight.columns = columns;
  weight.int8_kernels = int8_kernels;
  return weight;
}

at::Tensor weight_rows(const LinearWeight& weight, const at::Tensor& ids) {
  if (weight.storage == WeightStorage::kDense) return at::embedding(weight.weight, ids);
  const at::Tensor flat_ids = ids.reshape({-1}).to(at::kCPU, at::kLong).contiguous();  // [N]
  at::Tensor rows = at::empty({flat_ids.size(0), weight.columns}, at::kFloat);         // [N, in]
  const int64_t bytes_per_row = weight.weight.size(1);
  const uint8_t* blocks = weight.weight.data_ptr<uint8_t>();
  const int64_t* id = flat_ids.data_ptr<int64_t>();
  for (int64_t index = 0; index < flat_ids.size(0); ++index) {
    TORCH_CHECK(id[index] >= 0 && id[index] < weight.weight.size(0), "weight_rows: id ", id[index],
                " outside [0, ", weight.weight.size(0), ")");
    dequantize_rows(weight, blocks + id[index] * bytes_per_row, 1,
                    rows.data_ptr<float>() + index * weight.columns);
  }
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(weight.columns);
  return rows.view(shape);
}

at::Tensor dense_weight(const LinearWeight& weight) { return traits(weight.storage).to_dense(weight); }

at::Tensor linear(const at::Tensor& x, const LinearWeight& weight) {
  return traits(weight.storage).multiply(x, weight);
}

void linear_rows(const LinearWeight& weight, const float* x, int64_t rows, float* output) {
  traits(weight.storage).multiply_rows(weight, x, rows, output);
}

at::Tensor naive_linear(const at::Tensor& x, const LinearWeight& weight) {
  const at::Tensor matrix = traits(weight.storage).to_dense(weight).to(at::kDouble);  // [out, in]
  at::Tensor product = at::matmul(x.to(at::kDouble), matrix.t());                     // [..., out]
  if (weight.bias.defined()) product = product + weight.bias.to(at::kDouble);
  return product.to(x.scalar_type());
}

}  // namespace cartridge
