// Matrix products with weights kept in GGUF's block-quantised types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the
// K-quants Q2_K..Q6_K), by ggml's CPU kernels: llama.cpp's tensor library, built as a dependency by
// scripts/build_ggml.sh (docs/quantized.md). ggml builds one shared library per instruction-set level
// ("x64", "sse42", "sandybridge", "haswell", "skylakex", "icelake", "alderlake", "sapphirerapids"); we load
// the best one this CPU runs, or the one CARTRIDGE_CPU_ISA names, and call its kernels from libtorch's
// thread pool.
//
// How a product is computed, as llama.cpp does it: each row of activations is rounded to 8-bit blocks
// (the weight type's "dot type": Q8_0, Q8_1 or Q8_K, one scale per 32 or 256 values), and every output is
// one integer dot product of a weight row with an activation row per block, scaled and summed in float.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cartridge {

class QuantizedKernels {
 public:
  // The kernels this process uses: the variant CARTRIDGE_CPU_ISA names when it is set, else the
  // highest-ranked variant this CPU can run. Loaded on first use, then shared (thread-safe). Throws
  // UnsupportedError when ggml's libraries are missing or CARTRIDGE_CPU_ISA names one this CPU cannot run.
  static const QuantizedKernels& for_this_cpu();
  // The variant called `name` ("haswell", ...); throws UnsupportedError when it is not installed or this
  // CPU cannot run it.
  static const QuantizedKernels& variant(const std::string& name);
  // The installed variants this CPU can run, lowest level first (tests run each).
  static std::vector<std::string> runnable_variants();
  // The folder the variants are loaded from (CARTRIDGE_GGML_LIB_DIR, else where the build found them).
  static std::string library_folder();

  const std::string& name() const { return name_; }

  // Whether weights of GGUF type number `ggml_type` multiply here (a quantised type with a kernel).
  bool supports(uint32_t ggml_type) const;
  // Bytes of one row of `columns` values in `ggml_type` (columns a multiple of the type's block size).
  static int64_t row_bytes(uint32_t ggml_type, int64_t columns);

  // output [tokens, rows] float32 = input [tokens, columns] float32 · weight^T, where weight is `rows`
  // rows of `columns` values in `ggml_type` blocks, row after row. Parallel over rows (libtorch's threads).
  void multiply(uint32_t ggml_type, const uint8_t* weight, int64_t rows, int64_t columns, const float* input,
                int64_t tokens, float* output) const;
  // `rows` rows of `ggml_type` blocks -> float32 [rows, columns].
  static void dequantize(uint32_t ggml_type, const uint8_t* weight, int64_t rows, int64_t columns,
                         float* output);

  QuantizedKernels(const QuantizedKernels&) = delete;
  QuantizedKernels& operator=(const QuantizedKernels&) = delete;

 private:
  struct Library;  // the dlopen'ed variant and its per-type function table
  explicit QuantizedKernels(std::string name, Library* library) : name_(std::move(name)), library_(library) {}

  std::string name_;
  Library* library_;  // owned by the process-wide table of loaded variants; never unloaded
};

}  // namespace cartridge
