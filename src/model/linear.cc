#include "model/linear.h"

#include <ATen/ATen.h>

namespace cartridge {
namespace {

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

constexpr WeightStorageTraits kWeightStorageTraits[] = {
    {WeightStorage::kDense, "dense", &dense_multiply, &dense_matrix},
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

int64_t LinearWeight::in_features() const { return weight.size(1); }

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
