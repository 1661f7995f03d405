// Seeded random streams for synthesis. Every conversation and every chunk draws from its own stream,
// derived from (seed, kind, index), so what conversation i contains does not depend on which other
// conversations were generated in the same run: a resumed run reproduces an uninterrupted one exactly.
// The draws are computed here (not by <random> distributions, whose algorithms differ between standard
// libraries), so a seed gives the same data with any compiler.
#pragma once

#include <cstdint>

namespace cartridge {

// SplitMix64's finaliser: a bijective mix of 64 bits (Steele, Lea, Flood 2014).
inline uint64_t mix_bits(uint64_t value) {
  value += 0x9E3779B97F4A7C15ull;
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ull;
  value = (value ^ (value >> 27)) * 0x94D049BB133111EBull;
  return value ^ (value >> 31);
}

// What a stream is for; part of its seed, so the streams of chunk 3 and conversation 3 differ.
enum class RandomPurpose : uint64_t { kChunk = 1, kConversation = 2, kSampling = 3 };

class SynthesisRandom {
 public:
  SynthesisRandom(uint64_t seed, RandomPurpose purpose, uint64_t index)
      : state_(
            mix_bits(mix_bits(seed) ^ mix_bits(static_cast<uint64_t>(purpose) * 0x100000001B3ull + index))) {}

  // The next 64 random bits (SplitMix64).
  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    uint64_t value = state_;
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ull;
    value = (value ^ (value >> 27)) * 0x94D049BB133111EBull;
    return value ^ (value >> 31);
  }

  // Uniform integer in [low, high] (inclusive), without modulo bias (rejection sampling).
  int64_t uniform_int(int64_t low, int64_t high) {
    const uint64_t span = static_cast<uint64_t>(high - low) + 1;  // 0 means the full 2^64 range
    if (span == 0) return static_cast<int64_t>(next());
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;  // draws at or above it would be biased
    uint64_t value = next();
    while (value >= limit) value = next();
    return low + static_cast<int64_t>(value % span);
  }

  // Uniform index in [0, count).
  size_t pick(size_t count) { return static_cast<size_t>(uniform_int(0, static_cast<int64_t>(count) - 1)); }

 private:
  uint64_t state_;
};

}  // namespace cartridge
