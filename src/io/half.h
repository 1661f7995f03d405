// IEEE 754 half precision (the scales of GGUF's quantised blocks) to float32, inline for the kernels that
// read one or two per block of 32 values.
#pragma once

#include <cstdint>
#include <cstring>

namespace cartridge {

// Exact for every input: zeros, subnormals, infinities, NaN payloads kept as numpy keeps them.
inline float half_to_float(uint16_t half) {
  auto from_bits = [](uint32_t bits) {
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  };
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  const uint32_t exponent = (half >> 10) & 0x1F;
  const uint32_t mantissa = half & 0x3FF;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    const float magnitude = static_cast<float>(mantissa) * from_bits(0x33800000);  // 2^-24
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1F) return from_bits(sign | 0x7F800000 | (mantissa << 13));
  return from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

// The little-endian half at `bytes`.
inline float load_half(const uint8_t* bytes) {
  return half_to_float(static_cast<uint16_t>(bytes[0] | (bytes[1] << 8)));
}

}  // namespace cartridge
