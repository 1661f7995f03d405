// The matrix product of one weight at a time, for the decisions docs/quantized.md records: how a GGUF
// matrix kept in its block type (ggml's integer kernels through QuantizedKernels) compares with the same
// matrix dequantised to fp32 (at::linear), with our float-activation kernels (float_block_kernels.h), and
// with dequantising it on every call, for 1 to 256 rows of
// activations. Real weights: blk.0's matrices and the token embedding of the GGUF given.
//
//   linear_bench [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--rows 1,2,4,8,16,32,64,128,256]
//                [--repeats 5]
//
// Prints one markdown table: milliseconds per product (best of --repeats), at the threads libtorch uses.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <CLI/CLI.hpp>

#include "io/gguf.h"
#include "io/model_files.h"
#include "model/float_block_kernels.h"
#include "model/quantized_kernels.h"

namespace {

using Clock = std::chrono::steady_clock;

template <typename Function>
double best_milliseconds(int repeats, Function&& function) {
  double best = 1e30;
  for (int repeat = 0; repeat < repeats; ++repeat) {
    const Clock::time_point start = Clock::now();
    function();
    best = std::min(best, std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("cartridge.cpp: one quantised matrix product against fp32 (docs/quantized.md)");
  std::string model_path = cartridge::kDefaultModelPath;
  std::vector<int64_t> row_counts = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  int repeats = 5;
  app.add_option("--model", model_path, "a GGUF file");
  app.add_option("--rows", row_counts, "rows of activations (tokens)")->delimiter(',');
  app.add_option("--repeats", repeats, "best of N");
  CLI11_PARSE(app, argc, argv);

  c10::InferenceMode inference;
  const cartridge::GgufFile gguf(model_path);
  const cartridge::QuantizedKernels& kernels = cartridge::QuantizedKernels::for_this_cpu();
  std::printf("ggml kernels: %s, %d threads; milliseconds per product, best of %d\n\n",
              kernels.name().c_str(), at::get_num_threads(), repeats);
  std::printf(
      "| matrix | type | [out, in] | rows | fp32 at::linear | stored (float, or int16 for one token) | "
      "stored, int8 "
      "activations (ggml) | dequantise + at::linear |\n");
  std::printf("|---|---|---|---:|---:|---:|---:|---:|\n");
  for (const char* name :
       {"blk.0.attn_q.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "token_embd.weight"}) {
    const cartridge::GgufTensorInfo* info = gguf.find_tensor(name);
    if (info == nullptr || info->dims.size() != 2) continue;
    const uint32_t type = static_cast<uint32_t>(info->type);
    if (!kernels.supports(type)) continue;
    const int64_t columns = info->dims[0];
    const int64_t out = info->dims[1];
    const uint8_t* blocks = gguf.tensor_data(*info);
    at::Tensor dense = at::empty({out, columns}, at::kFloat);  // [out, in]
    cartridge::QuantizedKernels::dequantize(type, blocks, out, columns, dense.data_ptr<float>());
    for (int64_t rows : row_counts) {
      const at::Tensor input = at::randn({rows, columns});  // [rows, in]
      at::Tensor output = at::empty({rows, out});           // [rows, out]
      const double dense_ms = best_milliseconds(repeats, [&] { output = at::linear(input, dense); });
      double float_ms = -1.0;  // a type without float-activation kernel prints "-"
      if (cartridge::float_block_kernels::supports(type)) {
        float_ms = best_milliseconds(repeats, [&] {
          cartridge::float_block_kernels::multiply(type, blocks, out, columns, input.data_ptr<float>(), rows,
                                                   output.data_ptr<float>());
        });
      }
      const double int8_ms = best_milliseconds(repeats, [&] {
        kernels.multiply(type, blocks, out, columns, input.data_ptr<float>(), rows, output.data_ptr<float>());
      });
      const double dequantise_ms = best_milliseconds(repeats, [&] {
        at::Tensor matrix = at::empty({out, columns});
        if (cartridge::float_block_kernels::supports(type)) {
          cartridge::float_block_kernels::dequantize(type, blocks, out, columns, matrix.data_ptr<float>());
        } else {
          cartridge::QuantizedKernels::dequantize(type, blocks, out, columns, matrix.data_ptr<float>());
        }
        output = at::linear(input, matrix);
      });
      const std::string float_text = float_ms < 0 ? "-" : std::to_string(float_ms).substr(0, 6);
      std::printf("| %s | %s | [%lld, %lld] | %lld | %.3f | %s | %.3f | %.3f |\n", name,
                  cartridge::ggml_type_name(info->type).c_str(), static_cast<long long>(out),
                  static_cast<long long>(columns), static_cast<long long>(rows), dense_ms, float_text.c_str(),
                  int8_ms, dequantise_ms);
    }
  }
  return 0;
}
