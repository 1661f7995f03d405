// Matrix products of float32 activations with weights kept in GGUF block types (Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, and the K-quants Q4_K and Q6_K: every type a Q4_K_M file is made of), rounding the activations
// little or not at all, so that a product equals "dequantise, then at::linear" up to rounding far below
// the weights' own. That keeps greedy decoding where the fp32 path goes (docs/quantized.md) while reading
// the weights' 4.5-8.5 bits per value instead of 32. Written with Google Highway: one copy of each kernel
// per instruction set (SSE4, AVX2, AVX-512, ...), the best the CPU has chosen at run time, or the one
// CARTRIDGE_CPU_ISA caps it at.
//
// A row of blocks times x, for a block of 32 values with scale d (and minimum m, or offset -8):
//   Q8_0: d * sum(q_i x_i)                 q_i int8
//   Q4_0: d * (sum(q_i x_i) - 8 sum(x_i))   q_i in 0..15
//   Q4_1: d * sum(q_i x_i) + m * sum(x_i)   q_i in 0..15
//   Q5_0: d * (sum(q_i x_i) - 16 sum(x_i))  q_i in 0..31 (a nibble and a bit of the block's high word)
//   Q5_1: d * sum(q_i x_i) + m * sum(x_i)   q_i in 0..31
// and for a super-block of 256 values, in sub-blocks j of 32 (Q4_K) or groups g of 16 (Q6_K):
//   Q4_K: sum_j (d sc_j) sum(q_i x_i) - (dmin m_j) sum(x_i)   q_i in 0..15, sc_j and m_j 6-bit
//   Q6_K: sum_g (d sc_g) sum(q_i x_i)                          q_i in -32..31, sc_g int8
// with sum(x_i) per 32 values computed once for all rows (from the float32 x).
//
// One token (decoding): Q8_0 and Q4_K turn each block's integers into floats and multiply in float32
// (the float32 product up to summation order). Q4_0, Q4_1, Q5_0, Q5_1 and Q6_K round x once per
// product, per block of 32 values, to int16 (step = max |x| / 32767, so each value moves by at most 2^-16
// of the block's largest, where llama.cpp's 8 bits move it by 2^-8), and sum(q_i x_i) is an exact int32
// sum of int16 pair products: half the instructions of the float32 form on AVX2, where those kernels are
// bound by instructions rather than memory. Several tokens: each row is dequantised once into a buffer in
// L1 and every token's product with it is a float32 dot product.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cartridge::float_block_kernels {

// Whether weights of GGUF type number `ggml_type` multiply here.
bool supports(uint32_t ggml_type);

// output [tokens, rows] float32 = input [tokens, columns] float32 · weight^T, weight being `rows` rows of
// `columns` values in `ggml_type` blocks, row after row. Parallel over rows (libtorch's threads).
void multiply(uint32_t ggml_type, const uint8_t* weight, int64_t rows, int64_t columns, const float* input,
              int64_t tokens, float* output);

// `rows` rows of `ggml_type` blocks -> float32 [rows, columns]: d q (+ m) per value in float32, as ggml and
// the gguf package dequantise (with an FMA where the target has one: equal up to the last bit of d q + m).
void dequantize(uint32_t ggml_type, const uint8_t* weight, int64_t rows, int64_t columns, float* output);

// The instruction sets compiled in that this CPU runs, best first ("AVX2", "SSE4", ...), and the one
// multiply() uses now.
std::vector<std::string> runnable_targets();
std::string current_target();
// Makes multiply() use `target` (one of runnable_targets()) or, with "", the best again. For tests; not
// thread-safe against concurrent multiply() calls.
void use_target(const std::string& target);

}  // namespace cartridge::float_block_kernels
