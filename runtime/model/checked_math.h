// Overflow-safe unsigned arithmetic for sizes and offsets read from untrusted files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/error.h"

namespace pqvk::model {

// a * b and a + b, or a ModelError("<where>: <what> overflows") when the result does not fit.
inline uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& where) {
  uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) model_fail(where, "size overflows 64 bits");
  return r;
}
inline uint64_t checked_add(uint64_t a, uint64_t b, const std::string& where) {
  uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) model_fail(where, "offset overflows 64 bits");
  return r;
}
// The number of elements of a shape (1 for an empty shape), overflow-checked.
inline uint64_t checked_product(const std::vector<uint64_t>& shape, const std::string& where) {
  uint64_t n = 1;
  for (uint64_t d : shape) n = checked_mul(n, d, where);
  return n;
}
// True when [offset, offset + size) lies inside [0, total).
inline bool range_inside(uint64_t offset, uint64_t size, uint64_t total) {
  return offset <= total && size <= total - offset;
}
inline uint64_t round_up(uint64_t v, uint64_t m) { return (v + m - 1) / m * m; }

std::string shape_string(const std::vector<uint64_t>& shape);  // "[64, 128]"

}  // namespace pqvk::model
