// Device helpers shared by the CUDA kernels: storage-type conversion, 8-element row loads, launch
// checking. Arithmetic is float32 for every storage type (docs/ops.md "Types").
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/attention_args.h"
#include "kernels/cuda/bfloat16.h"
#include "kernels/cuda/cuda_kernels.h"

namespace hysparse {
namespace cuda {
namespace detail {

// Softmax runs in base 2 (exp2f is one instruction): logits are pre-multiplied by log2(e), and every
// log-sum-exp or block maximum kept in scratch is in these units. Block scores exp2(m2 - lse2) are
// the same numbers as exp(m - lse).
constexpr float kLog2e = 1.4426950408889634f;
__device__ __forceinline__ float NegInf() { return __int_as_float(static_cast<int>(0xff800000u)); }

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(Half x) {
  __half_raw raw;
  raw.x = x.bits;
  return __half2float(__half(raw));
}
__device__ __forceinline__ float ToFloat(BFloat16 x) {
  return __uint_as_float(static_cast<uint32_t>(x.bits) << 16);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ Half FromFloat<Half>(float x) {
  const __half_raw raw = static_cast<__half_raw>(__float2half_rn(x));
  return Half{raw.x};
}
template <>
__device__ __forceinline__ BFloat16 FromFloat<BFloat16>(float x) {
  const __nv_bfloat16_raw raw = static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(x));
  return BFloat16{raw.x};
}

// Eight consecutive elements at a 16-byte aligned address, widened to float.
__device__ __forceinline__ void Load8Aligned(const float* p, float (&out)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
  out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}
__device__ __forceinline__ void Load8Aligned(const Half* p, float (&out)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half_raw lo, hi;
    lo.x = static_cast<uint16_t>(words[i] & 0xFFFFu);
    hi.x = static_cast<uint16_t>(words[i] >> 16);
    out[2 * i] = __half2float(__half(lo));
    out[2 * i + 1] = __half2float(__half(hi));
  }
}
__device__ __forceinline__ void Load8Aligned(const BFloat16* p, float (&out)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}

// Elements [0, 8) of p widened to float, those at or past `count` read as 0 (and not read at all).
// `vector_ok` says p is 16-byte aligned (the launcher checks bases and strides once per call).
template <typename T>
__device__ __forceinline__ void Load8(const T* p, int count, bool vector_ok, float (&out)[8]) {
  if (vector_ok && count >= 8) {
    Load8Aligned(p, out);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = i < count ? ToFloat(p[i]) : 0.f;
  }
}

// Eight consecutive elements copied unchanged (gather and cache copies): 16 or 32 bytes.
template <typename T>
__device__ __forceinline__ void Copy8(const T* src, T* dst, int count, bool vector_ok) {
  if (vector_ok && count >= 8) {
    constexpr int kWords = sizeof(T) * 8 / 16;
#pragma unroll
    for (int i = 0; i < kWords; ++i) reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
    for (int i = 0; i < count && i < 8; ++i) dst[i] = src[i];
  }
}
template <typename T>
__device__ __forceinline__ void Zero8(T* dst, int count, bool vector_ok) {
  if (vector_ok && count >= 8) {
    constexpr int kWords = sizeof(T) * 8 / 16;
#pragma unroll
    for (int i = 0; i < kWords; ++i) reinterpret_cast<uint4*>(dst)[i] = make_uint4(0, 0, 0, 0);
  } else {
    for (int i = 0; i < count && i < 8; ++i) dst[i] = T{};
  }
}

// HeadView::Offset for device code (attention_args.h is plain C++).
__device__ __forceinline__ int64_t ViewOffset(const HeadView& v, int64_t b, int64_t h, int64_t s) {
  return b * v.batch_stride + h * v.head_stride + s * v.token_stride;
}

inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
// A row stride (in elements) that keeps 16-byte alignment from row to row.
template <typename T>
inline bool StrideAligned16(int64_t elements) {
  return (elements * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline Status LaunchError(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return Status::Ok();
  return {err, std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")"};
}
inline Status Error(cudaError_t code, const std::string& message) { return {code, message}; }

#define HYSPARSE_CUDA_CHECK_LAUNCH(what)                     \
  do {                                                       \
    ::hysparse::cuda::Status _st = ::hysparse::cuda::detail::LaunchError(what); \
    if (!_st.ok()) return _st;                               \
  } while (0)

#define HYSPARSE_CUDA_RETURN_IF(expr)   \
  do {                                  \
    ::hysparse::cuda::Status _st = (expr); \
    if (!_st.ok()) return _st;          \
  } while (0)

}  // namespace detail
}  // namespace cuda
}  // namespace hysparse
