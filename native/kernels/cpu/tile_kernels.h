// Inner loops of the CPU attention kernels (full_attn_cpu.cc, sparse_attn_cpu.cc), over float32
// tiles, and the few storage-type adapters both kernels use around them.
//
// The attention kernels spend nearly all their time in the few loops below (q·k dot products, the
// softmax exponentials and the P·V accumulation), so these come in three builds: a portable one that
// any x86-64 (or other) CPU runs, an AVX2+FMA+F16C one chosen at run time when the CPU has those
// features, and an AVX-512 one (wider registers and twice the FMA width where the core executes
// 512-bit operations natively). The library itself is compiled for the baseline ISA; only the
// functions behind these pointers use the wider instructions.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/attention_args.h"

namespace hysparse {
namespace cpu {

// Most keys a tile (one call of prepare_keys / dot_rows / accumulate_pv) may hold.
constexpr int kMaxTileKeys = 64;

// A key tile laid out for dot_rows: either the key rows themselves (ld = their row stride) or a
// copy in scratch, in whatever layout the implementation's dot_rows reads.
struct PreparedKeys {
  const float* data;
  int64_t ld;
  bool transposed;  // data[d * ld + j] holds key j's element d
};

// The prepared tile from its key `first` on: dot_rows over it scores keys first, first + 1, ...
// with the same bits as over the whole tile (a dot product does not depend on where its key sits).
inline PreparedKeys KeysFrom(const PreparedKeys& keys, int first) {
  return {keys.data + (keys.transposed ? first : first * keys.ld), keys.ld, keys.transposed};
}

// One implementation of the tile loops. Every pointer is non-null. Row-major matrices are given by
// their first element and their leading dimension (elements between consecutive rows).
struct TileKernels {
  // Lays out num_keys <= kMaxTileKeys key rows of `dim` floats for dot_rows, using `scratch`
  // (kMaxTileKeys * dim floats, 64-byte aligned) if it needs a copy. Done once per key tile and
  // reused by all `query_rows` rows that will be scored against it (a copy only pays off for many).
  PreparedKeys (*prepare_keys)(const float* k, int64_t ld_k, int num_keys, int dim,
                               int64_t query_rows, float* scratch);

  // scores[r*ld_scores + j] = Σ_d q[r*ld_q + d] * k_j[d] for r < num_rows, j < num_keys, d < dim,
  // where k_j is key row j of the prepared tile. For one (q row, k row) pair the result does not
  // depend on r or j, so equal inputs give bit-identical scores (the block selection's tie rule
  // relies on it).
  void (*dot_rows)(const float* q, int64_t ld_q, int num_rows, const PreparedKeys& keys,
                   int num_keys, int dim, float* scores, int64_t ld_scores);

  // acc[r] = acc[r] * rescale[r] + Σ_j p[r*ld_p + j] * v[j*ld_v + 0..dim) for r < num_rows,
  // j < num_keys <= kMaxTileKeys: the online-softmax update of the output accumulators (rescale is
  // exp(old_max - new_max)).
  void (*accumulate_pv)(const float* p, int64_t ld_p, int num_rows, const float* rescale,
                        const float* v, int64_t ld_v, int num_keys, int dim, float* acc,
                        int64_t ld_acc);

  // max of x[0..n); -inf when n == 0.
  float (*max)(const float* x, int64_t n);

  // x[i] = exp(x[i] - shift) in place for i < n, returning the sum. exp(-inf) is exactly 0; shift
  // must be finite.
  float (*exp_shift_sum)(float* x, int64_t n, float shift);

  void (*half_to_float)(const Half* src, float* dst, int64_t n);
  void (*float_to_half)(const float* src, Half* dst, int64_t n);

  const char* name;
};

// Plain C++ loops; correct everywhere.
const TileKernels& PortableTileKernels();

// The fastest implementation this CPU supports (decided once per process).
const TileKernels& BestTileKernels();

// Every implementation this CPU can run, portable first (for tests and benchmarks).
std::vector<const TileKernels*> AvailableTileKernels();

// Storage adapters. Both kernels store float or float16 and compute in float32 (docs/ops.md
// "Types"); these overloads let their templates handle either storage type with the conversions of
// the chosen implementation.

inline float ToFloat(float x) { return x; }
inline float ToFloat(Half x) { return HalfToFloat(x); }

// dst[0..n) = float(src[0..n)) * scale.
inline void LoadScaled(const float* src, float* dst, int64_t n, float scale, const TileKernels&) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * scale;
}
inline void LoadScaled(const Half* src, float* dst, int64_t n, float scale, const TileKernels& k) {
  k.half_to_float(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] *= scale;
}

// dst[0..n) = float(src[0..n)).
inline void LoadFloats(const float* src, float* dst, int64_t n, const TileKernels&) {
  std::memcpy(dst, src, sizeof(float) * n);
}
inline void LoadFloats(const Half* src, float* dst, int64_t n, const TileKernels& k) {
  k.half_to_float(src, dst, n);
}

// src[0..n) as float: float data is read in place, float16 data converted into `scratch` (n floats).
inline const float* AsFloats(const float* src, int64_t, float*, const TileKernels&) { return src; }
inline const float* AsFloats(const Half* src, int64_t n, float* scratch, const TileKernels& k) {
  k.half_to_float(src, scratch, n);
  return scratch;
}

// dst[0..n) = src[0..n) in the storage type (float16: rounded to nearest even).
inline void StoreFloats(const float* src, float* dst, int64_t n, const TileKernels&) {
  std::memcpy(dst, src, sizeof(float) * n);
}
inline void StoreFloats(const float* src, Half* dst, int64_t n, const TileKernels& k) {
  k.float_to_half(src, dst, n);
}

}  // namespace cpu
}  // namespace hysparse
