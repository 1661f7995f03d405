// Overflow-checked arithmetic on the sizes read from files: a corrupt shape or count must produce an error,
// never a wrapped-around size that passes a bounds check.
#pragma once

#include <cstdint>

namespace cartridge {

// Sets *result = left * right and returns true, or returns false (leaving *result alone) on overflow.
inline bool checked_multiply(uint64_t left, uint64_t right, uint64_t* result) {
  uint64_t product = 0;
  if (__builtin_mul_overflow(left, right, &product)) return false;
  *result = product;
  return true;
}

// Sets *result = left + right and returns true, or returns false (leaving *result alone) on overflow.
inline bool checked_add(uint64_t left, uint64_t right, uint64_t* result) {
  uint64_t sum = 0;
  if (__builtin_add_overflow(left, right, &sum)) return false;
  *result = sum;
  return true;
}

}  // namespace cartridge
