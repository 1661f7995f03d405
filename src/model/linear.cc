#include "model/linear.h"

#include <vector>

#include <ATen/ATen.h>

#include "model/quantized_kernels.h"

namespace cartridge {
namespace {

// From this many rows of x on, a kGgmlBlocks product dequantises the weight and multiplies in float32
// (prefill): the integer dot products win while reading the weight is the cost, BLAS once x is a matrix.
// Measured with bench/linear_bench (docs/quantized.md).
constexpr int64_t kDenseFromRows = 32;

// What every storage kind provides: its name, the fast product, and its weight as a dense matrix (for
// the reference path).
struct WeightStorageTraits {
  WeightStorage storage;
  const char* name;
  at::Tensor (*multiply)(const at::Tensor& x, const LinearWeight& weight);
  at::Tensor (*to_dense)(const LinearWeight& weight);  // [out, in] in any float dtype
};

at::Tensor dense_multiply(const at::Tensor& x, const LinearWeight& weight) {
  return weight.bias.defined() ? at::linear(x, weight.weight, weight.bias) : at::linear(x, weight.weight);
}

at::Tensor dense_matrix(const LinearWeight& weight) { return weight.weight; }

at::Tensor ggml_blocks_matrix(const LinearWeight& weight) {
  at::Tensor matrix = at::empty({weight.weight.size(0), weight.columns}, at::kFloat);  // [out, in]
  QuantizedKernels::dequantize(weight.ggml_type, weight.weight.data_ptr<uint8_t>(), weight.weight.size(0),
                               weight.columns, matrix.data_ptr<float>());
  return matrix;
}

at::Tensor ggml_blocks_multiply(const at::Tensor& x, const LinearWeight& weight) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "linear: quantised weights multiply float32 CPU activations, got ", x.scalar_type(), " on ",
              x.device());
  TORCH_CHECK(!x.requires_grad(),
              "linear: quantised weights have no backward (load the model dense to train)");
  TORCH_CHECK(x.size(-1) == weight.columns, "linear: x has ", x.size(-1), " features, the weight ",
              weight.columns);
  const at::Tensor rows = x.reshape({-1, weight.columns}).contiguous();  // [N, in]
  const int64_t out = weight.weight.size(0);
  at::Tensor product;  // [N, out]
  if (rows.size(0) >= kDenseFromRows) {
    product = at::linear(rows, ggml_blocks_matrix(weight));
  } else {
    product = at::empty({rows.size(0), out}, at::kFloat);
    weight.kernels->multiply(weight.ggml_type, weight.weight.data_ptr<uint8_t>(), out, weight.columns,
                             rows.data_ptr<float>(), rows.size(0), product.data_ptr<float>());
  }
  if (weight.bias.defined()) product.add_(weight.bias);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return product.view(shape);
}

constexpr WeightStorageTraits kWeightStorageTraits[] = {
    {WeightStorage::kDense, "dense", &dense_multiply, &dense_matrix},
    {WeightStorage::kGgmlBlocks, "ggml blocks", &ggml_blocks_multiply, &ggml_blocks_matrix},
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
  return storage == WeightStorage::kGgmlBlocks ? columns : weight.size(1);
}

LinearWeight ggml_blocks_weight(at::Tensor rows, uint32_t ggml_type, int64_t columns,
                                const QuantizedKernels& kernels) {
  TORCH_CHECK(
      rows.dim() == 2 && rows.scalar_type() == at::kByte && rows.device().is_cpu() && rows.is_contiguous(),
      "ggml_blocks_weight: rows must be a contiguous [out, bytes per row] uint8 CPU tensor");
  TORCH_CHECK(kernels.supports(ggml_type), "ggml_blocks_weight: no kernel for GGUF type ", ggml_type);
  TORCH_CHECK(rows.size(1) == QuantizedKernels::row_bytes(ggml_type, columns), "ggml_blocks_weight: rows of ",
              rows.size(1), " bytes do not hold ", columns, " values of GGUF type ", ggml_type);
  LinearWeight weight;
  weight.storage = WeightStorage::kGgmlBlocks;
  weight.weight = std::move(rows);
  weight.ggml_type = ggml_type;
  weight.columns = columns;
  weight.kernels = &kernels;
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
    QuantizedKernels::dequantize(weight.ggml_type, blocks + id[index] * bytes_per_row, 1, weight.columns,
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

at::Tensor naive_linear(const at::Tensor& x, const LinearWeight& weight) {
  const at::Tensor matrix = traits(weight.storage).to_dense(weight).to(at::kDouble);  // [out, in]
  at::Tensor product = at::matmul(x.to(at::kDouble), matrix.t());                     // [..., out]
  if (weight.bias.defined()) product = product + weight.bias.to(at::kDouble);
  return product.to(x.scalar_type());
}

}  // namespace cartridge
