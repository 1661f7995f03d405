// The matrix multiplication step, y = x W^T + b, for a weight stored in any of the forms the model keeps
// (after ggml's per-type traits table): linear() looks up the kernel of the weight's storage in one table.
// A weight is a dense tensor in the model's compute dtype, or rows of GGUF quantised blocks multiplied by
// ggml's kernels (quantized_kernels.h); each fast kernel is tested against naive_linear.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace cartridge {

class QuantizedKernels;

// How a weight matrix is held in memory.
enum class WeightStorage {
  kDense,       // a [out, in] tensor in the model's compute dtype (fp32, bf16 or fp16)
  kGgmlBlocks,  // `out` rows of `in` values in a GGUF block type (Q4_1, Q8_0, ...), as the file stores them
};

// "dense" or "ggml blocks", for messages and benchmark tables.
const char* weight_storage_name(WeightStorage storage);

struct LinearWeight {
  WeightStorage storage = WeightStorage::kDense;
  at::Tensor weight;  // kDense: [out, in]; kGgmlBlocks: [out, bytes per row] uint8 on the CPU
  at::Tensor bias;    // [out], or undefined when the layer has none
  // kGgmlBlocks only: the GGUF type number of the blocks, the values per row, and the kernels to use.
  uint32_t ggml_type = 0;
  int64_t columns = 0;
  const QuantizedKernels* kernels = nullptr;

  int64_t out_features() const;
  int64_t in_features() const;
};

// A kGgmlBlocks weight of `columns` values per row from `rows` [out, bytes per row] uint8.
LinearWeight ggml_blocks_weight(at::Tensor rows, uint32_t ggml_type, int64_t columns,
                                const QuantizedKernels& kernels);

// x [..., in] -> [..., out] in x's dtype, with the kernel registered for weight.storage. kGgmlBlocks takes
// float32 x on the CPU that does not require grad (the kernels have no backward).
at::Tensor linear(const at::Tensor& x, const LinearWeight& weight);

// The rows `ids` [...] int64 of the weight, [..., in] (an embedding lookup): in the weight's dtype for
// kDense, float32 for kGgmlBlocks.
at::Tensor weight_rows(const LinearWeight& weight, const at::Tensor& ids);

// The weight as a dense [out, in] matrix: kDense the tensor itself, kGgmlBlocks dequantised to float32.
at::Tensor dense_weight(const LinearWeight& weight);

// The reference the kernels are tested against: the weight as a dense float64 matrix, an explicit
// matrix product in float64, rounded to x's dtype at the end. Slow; for tests only.
at::Tensor naive_linear(const at::Tensor& x, const LinearWeight& weight);

}  // namespace cartridge
