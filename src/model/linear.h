// The matrix multiplication step, y = x W^T + b, for a weight stored in any of the forms the model keeps
// (after ggml's per-type traits table): linear() looks up the kernel of the weight's storage in one table.
// Today every weight is a dense tensor in the model's compute dtype; packed quantised blocks add a row to
// the table and a storage kind here, and each fast kernel is tested against naive_linear.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace cartridge {

// How a weight matrix is held in memory.
enum class WeightStorage {
  kDense,  // a [out, in] tensor in the model's compute dtype (fp32, bf16 or fp16)
};

// "dense", for messages and benchmark tables.
const char* weight_storage_name(WeightStorage storage);

struct LinearWeight {
  WeightStorage storage = WeightStorage::kDense;
  at::Tensor weight;  // kDense: [out, in]
  at::Tensor bias;    // [out], or undefined when the layer has none

  int64_t out_features() const;
  int64_t in_features() const;
};

// x [..., in] -> [..., out] in x's dtype, with the kernel registered for weight.storage.
at::Tensor linear(const at::Tensor& x, const LinearWeight& weight);

// The reference the kernels are tested against: the weight as a dense float64 matrix, an explicit
// matrix product in float64, rounded to x's dtype at the end. Slow; for tests only.
at::Tensor naive_linear(const at::Tensor& x, const LinearWeight& weight);

}  // namespace cartridge
