// Small float32 building blocks shared by the CPU attention kernels. Every kernel converts its
// K/V/Q rows to float32 tiles first (float16 storage, float32 arithmetic: docs/ops.md "Types"),
// so the inner loops below only ever see float.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/attention_args.h"

namespace hysparse {
namespace cpu {

inline float ToFloat(float x) { return x; }
inline float ToFloat(Half x) { return HalfToFloat(x); }
template <typename T>
T FromFloat(float x);
template <>
inline float FromFloat<float>(float x) { return x; }
template <>
inline Half FromFloat<Half>(float x) { return FloatToHalf(x); }

// dst[0..n) = float(src[0..n))
inline void LoadRow(const float* src, float* dst, int n) { std::memcpy(dst, src, sizeof(float) * n); }
inline void LoadRow(const Half* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

// dst[0..n) = T(src[0..n))
inline void StoreRow(const float* src, float* dst, int n) { std::memcpy(dst, src, sizeof(float) * n); }
inline void StoreRow(const float* src, Half* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = FloatToHalf(src[i]);
}

}  // namespace cpu
}  // namespace hysparse
