// ggml tensor types: names, sizes, and dequantisation to float32.
//
// Block layouts follow ggml (ggml-common.h) and the arithmetic follows the `gguf` Python package's
// quants.py, the oracle in tests: every product and sum is one float32 operation in the same order, so the
// results are bit-identical. Fused multiply-add would change the last bit, hence the pragmas below.
#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "io/ggml_types.h"
#include "io/gguf.h"
#include "io/half.h"
#include "util/error.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace cartridge {

namespace {

constexpr int kSuperBlock = 256;  // elements in a K-quant super-block (QK_K)

// Loads a little-endian u16/u32 from unaligned bytes (hosts are little-endian: x86-64, aarch64).
inline uint16_t load_u16(const uint8_t* bytes) {
  uint16_t value;
  std::memcpy(&value, bytes, sizeof(value));
  return value;
}
inline uint32_t load_u32(const uint8_t* bytes) {
  uint32_t value;
  std::memcpy(&value, bytes, sizeof(value));
  return value;
}

inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

using BlockDequantizer = void (*)(const uint8_t* blocks, int64_t block_count, float* out);

void dequantize_f32(const uint8_t* blocks, int64_t count, float* out) {
  std::memcpy(out, blocks, static_cast<size_t>(count) * sizeof(float));
}

void dequantize_f16(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = load_half(blocks + 2 * i);
}

void dequantize_bf16(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i)
    out[i] = bits_to_float(static_cast<uint32_t>(load_u16(blocks + 2 * i)) << 16);
}

void dequantize_f64(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) {
    double value;
    std::memcpy(&value, blocks + 8 * i, sizeof(value));
    out[i] = static_cast<float>(value);
  }
}

template <typename Integer>
void dequantize_integer(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) {
    Integer value;
    std::memcpy(&value, blocks + sizeof(Integer) * i, sizeof(value));
    out[i] = static_cast<float>(value);
  }
}

// Q4_0, 18 bytes per 32 elements: half d, 16 bytes of nibbles (low nibbles are elements 0-15, high 16-31);
// x = d * (q - 8).
void dequantize_q4_0(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 18, out += 32) {
    const float d = load_half(blocks);
    const uint8_t* qs = blocks + 2;
    for (int j = 0; j < 16; ++j) {
      out[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
      out[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
    }
  }
}

// Q4_1, 20 bytes per 32: half d, half m, 16 bytes of nibbles; x = d * q + m.
void dequantize_q4_1(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 20, out += 32) {
    const float d = load_half(blocks);
    const float m = load_half(blocks + 2);
    const uint8_t* qs = blocks + 4;
    for (int j = 0; j < 16; ++j) {
      out[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
      out[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
    }
  }
}

// Q5_0, 22 bytes per 32: half d, u32 of fifth bits (bit j for element j), 16 bytes of nibbles;
// x = d * (q - 16).
void dequantize_q5_0(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 22, out += 32) {
    const float d = load_half(blocks);
    const uint32_t high_bits = load_u32(blocks + 2);
    const uint8_t* qs = blocks + 6;
    for (int j = 0; j < 16; ++j) {
      const int low = (qs[j] & 0x0F) | (((high_bits >> j) & 1) << 4);
      const int high = (qs[j] >> 4) | (((high_bits >> (j + 16)) & 1) << 4);
      out[j] = d * static_cast<float>(low - 16);
      out[j + 16] = d * static_cast<float>(high - 16);
    }
  }
}

// Q5_1, 24 bytes per 32: half d, half m, u32 of fifth bits, 16 bytes of nibbles; x = d * q + m.
void dequantize_q5_1(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 24, out += 32) {
    const float d = load_half(blocks);
    const float m = load_half(blocks + 2);
    const uint32_t high_bits = load_u32(blocks + 4);
    const uint8_t* qs = blocks + 8;
    for (int j = 0; j < 16; ++j) {
      const int low = (qs[j] & 0x0F) | (((high_bits >> j) & 1) << 4);
      const int high = (qs[j] >> 4) | (((high_bits >> (j + 16)) & 1) << 4);
      out[j] = d * static_cast<float>(low) + m;
      out[j + 16] = d * static_cast<float>(high) + m;
    }
  }
}

// Q8_0, 34 bytes per 32: half d, 32 signed bytes; x = q * d.
void dequantize_q8_0(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 34, out += 32) {
    const float d = load_half(blocks);
    const auto* qs = reinterpret_cast<const int8_t*>(blocks + 2);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(qs[j]) * d;
  }
}

// Q2_K, 84 bytes per 256: 16 scale bytes (low nibble scale, high nibble min, one per 16 elements),
// 64 bytes of 2-bit values, half d, half dmin. Value i: within each 32-byte half h, shift s picks the bit
// pair, so element h*128 + s*32 + l is (qs[h*32 + l] >> 2s) & 3; x = (d*scale) * q - (dmin*min).
void dequantize_q2_k(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 84, out += kSuperBlock) {
    const uint8_t* scales = blocks;
    const uint8_t* qs = blocks + 16;
    const float d = load_half(blocks + 80);
    const float dmin = load_half(blocks + 82);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int l = 0; l < 32; ++l) {
          const int index = h * 128 + s * 32 + l;
          const uint8_t scale = scales[index / 16];
          const float scaled_d = d * static_cast<float>(scale & 0x0F);
          const float scaled_min = dmin * static_cast<float>(scale >> 4);
          out[index] = scaled_d * static_cast<float>((qs[h * 32 + l] >> (2 * s)) & 3) - scaled_min;
        }
      }
    }
  }
}

// Q3_K, 110 bytes per 256: 32 bytes of high bits (element k*32 + l uses bit k of hmask[l]), 64 bytes of
// low bit pairs (as Q2_K), 12 bytes of 6-bit scales, half d. The high bit set means no -4 offset.
void dequantize_q3_k(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 110, out += kSuperBlock) {
    const uint8_t* hmask = blocks;
    const uint8_t* qs = blocks + 32;
    const uint8_t* packed = blocks + 96;
    const float d = load_half(blocks + 108);
    float group_scale[16];
    for (int i = 0; i < 16; ++i) {
      // Low 4 bits: bytes 0-7 (low nibbles for 0-7, high nibbles for 8-15); high 2 bits: bytes 8-11,
      // shifted by 2*(i/4).
      const int low = (i < 8 ? packed[i] : packed[i - 8] >> 4) & 0x0F;
      const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 0x03;
      group_scale[i] = d * static_cast<float>((low | (high << 4)) - 32);
    }
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int l = 0; l < 32; ++l) {
          const int index = h * 128 + s * 32 + l;
          const int low = (qs[h * 32 + l] >> (2 * s)) & 3;
          const int high_bit = (hmask[l] >> (index / 32)) & 1;
          out[index] = group_scale[index / 16] * static_cast<float>(low - ((high_bit ^ 1) << 2));
        }
      }
    }
  }
}

// The 8 (scale, min) pairs of Q4_K/Q5_K, 6 bits each, packed into 12 bytes.
inline void unpack_k_scales(const uint8_t* packed, int scale[8], int minimum[8]) {
  for (int j = 0; j < 4; ++j) {
    scale[j] = packed[j] & 0x3F;
    minimum[j] = packed[j + 4] & 0x3F;
    scale[j + 4] = (packed[j + 8] & 0x0F) | ((packed[j] >> 2) & 0x30);
    minimum[j + 4] = (packed[j + 8] >> 4) | ((packed[j + 4] >> 2) & 0x30);
  }
}

// Q4_K, 144 bytes per 256: half d, half dmin, 12 bytes of scales/mins, 128 bytes of nibbles (chunk c of 32
// bytes gives elements c*64 .. c*64+31 from low nibbles, then c*64+32 .. from high nibbles);
// x = (d*scale) * q - (dmin*min), one scale per 32 elements.
void dequantize_q4_k(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 144, out += kSuperBlock) {
    const float d = load_half(blocks);
    const float dmin = load_half(blocks + 2);
    int scale[8], minimum[8];
    unpack_k_scales(blocks + 4, scale, minimum);
    const uint8_t* qs = blocks + 16;
    for (int sub = 0; sub < 8; ++sub) {
      const float scaled_d = d * static_cast<float>(scale[sub]);
      const float scaled_min = dmin * static_cast<float>(minimum[sub]);
      const uint8_t* bytes = qs + (sub / 2) * 32;
      const int shift = (sub % 2) * 4;
      for (int l = 0; l < 32; ++l) {
        out[sub * 32 + l] = scaled_d * static_cast<float>((bytes[l] >> shift) & 0x0F) - scaled_min;
      }
    }
  }
}

// Q5_K, 176 bytes per 256: as Q4_K plus 32 bytes of fifth bits before the nibbles (element k*32 + l uses
// bit k of qh[l]).
void dequantize_q5_k(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 176, out += kSuperBlock) {
    const float d = load_half(blocks);
    const float dmin = load_half(blocks + 2);
    int scale[8], minimum[8];
    unpack_k_scales(blocks + 4, scale, minimum);
    const uint8_t* qh = blocks + 16;
    const uint8_t* qs = blocks + 48;
    for (int sub = 0; sub < 8; ++sub) {
      const float scaled_d = d * static_cast<float>(scale[sub]);
      const float scaled_min = dmin * static_cast<float>(minimum[sub]);
      const uint8_t* bytes = qs + (sub / 2) * 32;
      const int shift = (sub % 2) * 4;
      for (int l = 0; l < 32; ++l) {
        const int q = ((bytes[l] >> shift) & 0x0F) | (((qh[l] >> sub) & 1) << 4);
        out[sub * 32 + l] = scaled_d * static_cast<float>(q) - scaled_min;
      }
    }
  }
}

// Q6_K, 210 bytes per 256: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 signed scales, half d.
// In each half h of 128 elements: element h*128 + s*64 + l (l < 64) takes nibble s of ql[h*64 + l], and
// element h*128 + s*32 + l (l < 32) takes bit pair s of qh[h*32 + l]; x = (d*scale) * (q - 32).
void dequantize_q6_k(const uint8_t* blocks, int64_t count, float* out) {
  for (int64_t b = 0; b < count; ++b, blocks += 210, out += kSuperBlock) {
    const uint8_t* ql = blocks;
    const uint8_t* qh = blocks + 128;
    const auto* scales = reinterpret_cast<const int8_t*>(blocks + 192);
    const float d = load_half(blocks + 208);
    for (int h = 0; h < 2; ++h) {
      for (int within = 0; within < 128; ++within) {
        const int low = (ql[h * 64 + within % 64] >> (4 * (within / 64))) & 0x0F;
        const int high = (qh[h * 32 + within % 32] >> (2 * (within / 32))) & 0x03;
        const int index = h * 128 + within;
        const float group_scale = d * static_cast<float>(scales[index / 16]);
        out[index] = group_scale * static_cast<float>((low | (high << 4)) - 32);
      }
    }
  }
}

struct TypeEntry {
  GgmlTypeTraits traits;
  BlockDequantizer dequantizer;  // nullptr: known size, not dequantised here
};

// Sizes as in ggml (ggml.c type_traits); the numbers are the file's.
const TypeEntry kTypes[] = {
    {{0, "F32", 1, 4, true}, dequantize_f32},
    {{1, "F16", 1, 2, true}, dequantize_f16},
    {{2, "Q4_0", 32, 18, true}, dequantize_q4_0},
    {{3, "Q4_1", 32, 20, true}, dequantize_q4_1},
    {{6, "Q5_0", 32, 22, true}, dequantize_q5_0},
    {{7, "Q5_1", 32, 24, true}, dequantize_q5_1},
    {{8, "Q8_0", 32, 34, true}, dequantize_q8_0},
    {{9, "Q8_1", 32, 36, false}, nullptr},
    {{10, "Q2_K", 256, 84, true}, dequantize_q2_k},
    {{11, "Q3_K", 256, 110, true}, dequantize_q3_k},
    {{12, "Q4_K", 256, 144, true}, dequantize_q4_k},
    {{13, "Q5_K", 256, 176, true}, dequantize_q5_k},
    {{14, "Q6_K", 256, 210, true}, dequantize_q6_k},
    {{15, "Q8_K", 256, 292, false}, nullptr},
    {{16, "IQ2_XXS", 256, 66, false}, nullptr},
    {{17, "IQ2_XS", 256, 74, false}, nullptr},
    {{18, "IQ3_XXS", 256, 98, false}, nullptr},
    {{19, "IQ1_S", 256, 50, false}, nullptr},
    {{20, "IQ4_NL", 32, 18, false}, nullptr},
    {{21, "IQ3_S", 256, 110, false}, nullptr},
    {{22, "IQ2_S", 256, 82, false}, nullptr},
    {{23, "IQ4_XS", 256, 136, false}, nullptr},
    {{24, "I8", 1, 1, true}, dequantize_integer<int8_t>},
    {{25, "I16", 1, 2, true}, dequantize_integer<int16_t>},
    {{26, "I32", 1, 4, true}, dequantize_integer<int32_t>},
    {{27, "I64", 1, 8, true}, dequantize_integer<int64_t>},
    {{28, "F64", 1, 8, true}, dequantize_f64},
    {{29, "IQ1_M", 256, 56, false}, nullptr},
    {{30, "BF16", 1, 2, true}, dequantize_bf16},
    {{34, "TQ1_0", 256, 54, false}, nullptr},
    {{35, "TQ2_0", 256, 66, false}, nullptr},
    {{39, "MXFP4", 32, 17, false}, nullptr},
    {{40, "NVFP4", 64, 36, false}, nullptr},
    {{41, "Q1_0", 128, 18, false}, nullptr},
};

const TypeEntry* find_entry(uint32_t number) {
  for (const TypeEntry& entry : kTypes) {
    if (entry.traits.number == number) return &entry;
  }
  return nullptr;
}

// Below this many elements, starting threads costs more than it saves.
constexpr int64_t kElementsPerThread = 1 << 20;

}  // namespace

const GgmlTypeTraits* find_ggml_type(uint32_t number) {
  const TypeEntry* entry = find_entry(number);
  return entry != nullptr ? &entry->traits : nullptr;
}

std::string ggml_type_name(GgmlType type) {
  const GgmlTypeTraits* traits = find_ggml_type(static_cast<uint32_t>(type));
  return traits != nullptr ? traits->name : "type" + std::to_string(static_cast<uint32_t>(type));
}

uint64_t ggml_byte_size(GgmlType type, int64_t element_count) {
  const GgmlTypeTraits* traits = find_ggml_type(static_cast<uint32_t>(type));
  if (traits == nullptr) {
    throw UnsupportedError("ggml tensor type " + ggml_type_name(type) + " is not known to this program");
  }
  if (element_count < 0 || element_count % traits->block_elements != 0) {
    throw FormatError("a " + std::string(traits->name) + " tensor of " + std::to_string(element_count) +
                      " elements is not a whole number of " + std::to_string(traits->block_elements) +
                      "-element blocks");
  }
  const uint64_t blocks = static_cast<uint64_t>(element_count) / traits->block_elements;
  if (blocks > UINT64_MAX / traits->block_bytes) {
    throw FormatError("a " + std::string(traits->name) + " tensor of " + std::to_string(element_count) +
                      " elements is too large to address");
  }
  return blocks * traits->block_bytes;
}

void dequantize_ggml(GgmlType type, const uint8_t* data, int64_t element_count, float* out) {
  const TypeEntry* entry = find_entry(static_cast<uint32_t>(type));
  if (entry == nullptr || entry->dequantizer == nullptr) {
    throw UnsupportedError(
        "cannot dequantise ggml tensor type " + ggml_type_name(type) +
        " (supported: F32, F16, BF16, F64, I8, I16, I32, I64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
        "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); convert the model to one of those types");
  }
  ggml_byte_size(type, element_count);  // checks whole blocks
  const GgmlTypeTraits& traits = entry->traits;
  const int64_t block_count = element_count / traits.block_elements;
  if (block_count == 0) return;

  const int64_t hardware = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t thread_count =
      std::min<int64_t>({hardware, 16, std::max<int64_t>(1, element_count / kElementsPerThread)});
  if (thread_count <= 1) {
    entry->dequantizer(data, block_count, out);
    return;
  }
  // Contiguous ranges of whole blocks, one per thread; each writes only its own part of `out`.
  std::vector<std::thread> threads;
  const int64_t blocks_per_thread = (block_count + thread_count - 1) / thread_count;
  for (int64_t first = 0; first < block_count; first += blocks_per_thread) {
    const int64_t count = std::min(blocks_per_thread, block_count - first);
    threads.emplace_back([entry, &traits, data, out, first, count] {
      entry->dequantizer(data + first * traits.block_bytes, count, out + first * traits.block_elements);
    });
  }
  for (std::thread& thread : threads) thread.join();
}

}  // namespace cartridge
