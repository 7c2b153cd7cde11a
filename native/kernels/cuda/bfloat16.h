// bfloat16 storage type for the CUDA kernels, usable from host code that never includes a CUDA header.
#pragma once

#include <cstdint>
#include <cstring>

namespace hysparse {

// bfloat16 stored as its 16 bits (the top half of a float32); layout-compatible with __nv_bfloat16
// and Ort::BFloat16_t, so ORT tensors of that type are passed to the kernels by reinterpret_cast.
struct BFloat16 {
  uint16_t bits;
};

// Exact: every bfloat16 is a float32 with the low 16 mantissa bits zero.
inline float BFloat16ToFloat(BFloat16 x) {
  const uint32_t wide = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

// Round to nearest, ties to even; NaN stays a (quiet) NaN, overflow goes to infinity as IEEE rounding does.
inline BFloat16 FloatToBFloat16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return {static_cast<uint16_t>((x >> 16) | 0x0040u)};
  const uint32_t rounding = 0x7FFFu + ((x >> 16) & 1u);
  return {static_cast<uint16_t>((x + rounding) >> 16)};
}

}  // namespace hysparse
