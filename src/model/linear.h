// The matrix multiplication step, y = x W^T + b, for a weight stored in any of the forms the model keeps
// (after ggml's per-type traits table): linear() looks up the kernel of the weight's storage in one table.
// A weight is a dense tensor in the model's compute dtype, or rows of GGUF quantised blocks multiplied
// with float32 activations (float_block_kernels.h) or with activations rounded to 8 bits by ggml's kernels
// (quantized_kernels.h); each fast kernel is tested against naive_linear.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace cartridge {

class QuantizedKernels;

// How a weight matrix is held in memory.
enum class WeightStorage {
  kDense,  // a [out, in] tensor in the model's compute dtype (fp32, bf16 or fp16)
  // `out` rows of `in` values in a GGUF block type (Q4_1, Q8_0, ...), as the file stores them, times
  // float32 activations: fp32's products up to summation order (float_block_kernels.h).
  kGgmlBlocks,
  // The same blocks times activations rounded to 8-bit blocks, as llama.cpp computes (quantized_kernels.h).
  kGgmlBlocksInt8,
};

// "dense", "ggml blocks" or "ggml blocks, int8 activations", for messages and benchmark tables.
const char* weight_storage_name(WeightStorage storage);

struct LinearWeight {
  WeightStorage storage = WeightStorage::kDense;
  at::Tensor weight;  // kDense: [out, in]; kGgmlBlocks: [out, bytes per row] uint8 on the CPU
  at::Tensor bias;    // [out], or undefined when the layer has none
  // kGgmlBlocks and kGgmlBlocksInt8: the GGUF type number of the blocks and the values per row.
  uint32_t ggml_type = 0;
  int64_t columns = 0;
  const QuantizedKernels* int8_kernels = nullptr;  // kGgmlBlocksInt8: ggml's kernels for this CPU

  int64_t out_features() const;
  int64_t in_features() const;
};

// A weight of `columns` values per row from `rows` [out, bytes per row] uint8 in GGUF type `ggml_type`:
// kGgmlBlocks, or kGgmlBlocksInt8 multiplied by `int8_kernels` when given.
LinearWeight ggml_blocks_weight(at::Tensor rows, uint32_t ggml_type, int64_t columns,
                                const QuantizedKernels* int8_kernels = nullptr);

// x [..., in] -> [..., out] in x's dtype, with the kernel registered for weight.storage. The block kinds take
// float32 x on the CPU that does not require grad (their kernels have no backward).
at::Tensor linear(const at::Tensor& x, const LinearWeight& weight);

// The same product on raw float32 CPU buffers, written into `output` [rows, out] from `x` [rows, in] (both
// contiguous), without allocating a tensor for it: the fused decode step's matrix products. x does not
// require grad; a dense weight must be float32.
void linear_rows(const LinearWeight& weight, const float* x, int64_t rows, float* output);

// The rows `ids` [...] int64 of the weight, [..., in] (an embedding lookup): in the weight's dtype for
// kDense, float32 for the block kinds.
at::Tensor weight_rows(const LinearWeight& weight, const at::Tensor& ids);

// The weight as a dense [out, in] matrix: kDense the tensor itself, the block kinds dequantised to float32.
at::Tensor dense_weight(const LinearWeight& weight);

// The reference the kernels are tested against: the weight as a dense float64 matrix, an explicit
// matrix product in float64, rounded to x's dtype at the end. Slow; for tests only.
at::Tensor naive_linear(const at::Tensor& x, const LinearWeight& weight);

}  // namespace cartridge
