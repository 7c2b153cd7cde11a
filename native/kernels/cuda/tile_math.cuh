// The arithmetic of the tiled prefill kernels of both ops (full_attn_tiled.cu, sparse_attn_tiled.cu):
// a CTA of 256 threads owns a query tile of 64 rows (tokens x the query heads of one KV group), walks
// key tiles of kBK keys through shared memory, and keeps an online softmax per row in registers.
// The threads form a 16 x 16 grid: thread (ty, tx) owns rows ty + 16i (i < 4), keys tx + 16j of each
// key tile for the logits, and dims tx + 16j of each of its rows' outputs. What differs between the
// kernels — which keys a tile holds and which (row, key) pairs are valid — stays in the kernels.
#pragma once

#include <type_traits>

#include "kernels/cuda/cuda_internal.cuh"

namespace hysparse {
namespace cuda {
namespace detail {

constexpr int kTileRows = 64;
constexpr int kTileThreads = 256;

template <int kD, int kBK>
struct TileShape {
  static constexpr int kQStride = kD + 1;  // +1: the 16 key/row lanes of a warp hit 16 banks
  static constexpr int kKStride = kD + 1;
  static constexpr int kPStride = kBK + 1;
  static constexpr int kQFloats = kTileRows * kQStride;
  static constexpr int kKFloats = kBK * kKStride;  // also holds P (kTileRows x kPStride) once logits are done
  static constexpr int kVFloats = kBK * kD;
  static constexpr int kFloats = kQFloats + kKFloats + kVFloats;
  static constexpr int kKeysPerThread = kBK / 16;
  static constexpr int kDimsPerThread = kD / 16;
  static constexpr int kChunksPerRow = kD / 8;
  static_assert(kTileRows * kPStride <= kKFloats, "P must fit where the K tile was");
};

// Online-softmax state of a thread's 4 rows: running max (shared by the 16 lanes of a row), its
// lanes' partial sum, and its slice of the unnormalised output.
template <int kD>
struct TileRows {
  float m[4], l[4], o[4][kD / 16];

  __device__ __forceinline__ void Init() {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      m[i] = NegInf();
      l[i] = 0.f;
#pragma unroll
      for (int j = 0; j < kD / 16; ++j) o[i][j] = 0.f;
    }
  }
  // The row's whole sum: the 16 lanes sharing ty each hold the sum over their keys. Every lane of
  // the warp must call it.
  __device__ __forceinline__ float RowSum(int i) const {
    float total = l[i];
#pragma unroll
    for (int off = 8; off >= 1; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
    return total;
  }
};

// Calls f(kD, kBK) (std::integral_constant) with the tile shape serving head_dim <= 256: 64-key tiles
// up to D = 128, 32-key tiles beyond (shared memory).
template <typename F>
auto WithTileShape(int head_dim, F&& f) {
  if (head_dim <= 64) return f(std::integral_constant<int, 64>{}, std::integral_constant<int, 64>{});
  if (head_dim <= 128) return f(std::integral_constant<int, 128>{}, std::integral_constant<int, 64>{});
  return f(std::integral_constant<int, 256>{}, std::integral_constant<int, 32>{});
}

// row_pos[r] = position past + s of row r's token s = s0 + r / G, or -1 when the row has no valid keys
// (r >= rows, a padding token s >= real, or a masked position).
__device__ __forceinline__ void TileRowPositions(int* row_pos, int rows, int G, int64_t s0, int64_t real,
                                                 int64_t past, const int64_t* mask) {
  for (int r = threadIdx.x; r < kTileRows; r += kTileThreads) {
    const int64_t s = s0 + r / G;
    int pos = -1;
    if (r < rows && s < real) {
      const int64_t t = past + s;
      if (!mask || mask[t] != 0) pos = static_cast<int>(t);
    }
    row_pos[r] = pos;
  }
}

// Row r of the tile is token s0 + r / G and query head g*G + r % G; rows past `rows` or tokens past
// `seq` are zero. Queries are pre-scaled by scale*log2(e).
template <typename T, int kD, int kBK>
__device__ __forceinline__ void LoadQueryTile(float* sQ, const T* query, const HeadView& view, int b, int g, int G,
                                              int rows, int64_t s0, int64_t seq, int head_dim, bool vector_ok,
                                              float scale_log2) {
  using L = TileShape<kD, kBK>;
  for (int c = threadIdx.x; c < kTileRows * L::kChunksPerRow; c += kTileThreads) {
    const int r = c / L::kChunksPerRow, d0 = (c % L::kChunksPerRow) * 8;
    const int64_t s = s0 + r / G;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (r < rows && s < seq && d0 < head_dim) {
      Load8(query + ViewOffset(view, b, g * G + r % G, s) + d0, head_dim - d0, vector_ok, v);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sQ[r * L::kQStride + d0 + i] = v[i] * scale_log2;
  }
}

// Key row kr of the tile is row_of(kr) of the (b, KV head) planes `kbase`/`vbase` (rows of head_dim
// elements), or zeros when row_of returns a negative number.
template <typename T, int kD, int kBK, typename RowOf>
__device__ __forceinline__ void LoadKeyTile(float* sK, float* sV, const T* kbase, const T* vbase, int head_dim,
                                            bool vector_ok, RowOf row_of) {
  using L = TileShape<kD, kBK>;
  for (int c = threadIdx.x; c < kBK * L::kChunksPerRow; c += kTileThreads) {
    const int kr = c / L::kChunksPerRow, d0 = (c % L::kChunksPerRow) * 8;
    const int64_t row = row_of(kr);
    float kv[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    float vv[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (row >= 0 && d0 < head_dim) {
      Load8(kbase + row * head_dim + d0, head_dim - d0, vector_ok, kv);
      Load8(vbase + row * head_dim + d0, head_dim - d0, vector_ok, vv);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      sK[kr * L::kKStride + d0 + i] = kv[i];
      sV[kr * kD + d0 + i] = vv[i];
    }
  }
}

// s[i][j] = logit of row ty + 16i against key tx + 16j (log2 units).
template <int kD, int kBK>
__device__ __forceinline__ void ScoreTile(const float* sQ, const float* sK, float (&s)[4][kBK / 16]) {
  using L = TileShape<kD, kBK>;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < L::kKeysPerThread; ++j) s[i][j] = 0.f;
#pragma unroll 8
  for (int d = 0; d < kD; ++d) {
    float qv[4], kv[L::kKeysPerThread];
#pragma unroll
    for (int i = 0; i < 4; ++i) qv[i] = sQ[(ty + 16 * i) * L::kQStride + d];
#pragma unroll
    for (int j = 0; j < L::kKeysPerThread; ++j) kv[j] = sK[(tx + 16 * j) * L::kKStride + d];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < L::kKeysPerThread; ++j) s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
  }
}

// Sets the logit of row ty + 16i against key tx + 16j to -inf (not a key of the row) when the row has
// no valid keys (row_pos < 0) or keep(r, pos, kr) is false for row r at position pos and key kr.
template <int kBK, typename Keep>
__device__ __forceinline__ void MaskTile(float (&s)[4][kBK / 16], const int* row_pos, Keep keep) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i;
    const int pos = row_pos[r];
#pragma unroll
    for (int j = 0; j < kBK / 16; ++j) {
      const int kr = tx + 16 * j;
      if (pos < 0 || !keep(r, pos, kr)) s[i][j] = NegInf();
    }
  }
}

// Folds the masked logits (-inf: not a key of the row) into the rows' online softmax and adds P V.
// The caller has synchronised after the last read of sK (P overwrites it); returns synchronised, so
// the next key tile may be loaded.
template <int kD, int kBK>
__device__ __forceinline__ void AccumulateTile(float (&s)[4][kBK / 16], TileRows<kD>& rows, float* sP,
                                               const float* sV) {
  using L = TileShape<kD, kBK>;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  // The 16 lanes sharing ty hold one row's keys and agree on its max.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float tile_max = s[i][0];
#pragma unroll
    for (int j = 1; j < L::kKeysPerThread; ++j) tile_max = fmaxf(tile_max, s[i][j]);
#pragma unroll
    for (int off = 8; off >= 1; off >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
    const float m_new = fmaxf(rows.m[i], tile_max);
    float alpha = 1.f;
    if (m_new != NegInf()) {
      alpha = exp2f(rows.m[i] - m_new);  // m = -inf gives 0
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < L::kKeysPerThread; ++j) {
        s[i][j] = exp2f(s[i][j] - m_new);
        sum += s[i][j];
      }
      rows.l[i] = rows.l[i] * alpha + sum;
      rows.m[i] = m_new;
    } else {
#pragma unroll
      for (int j = 0; j < L::kKeysPerThread; ++j) s[i][j] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < L::kDimsPerThread; ++j) rows.o[i][j] *= alpha;
#pragma unroll
    for (int j = 0; j < L::kKeysPerThread; ++j) sP[(ty + 16 * i) * L::kPStride + tx + 16 * j] = s[i][j];
  }
  __syncthreads();

#pragma unroll 4
  for (int k = 0; k < kBK; ++k) {
    float pv[4], vv[L::kDimsPerThread];
#pragma unroll
    for (int i = 0; i < 4; ++i) pv[i] = sP[(ty + 16 * i) * L::kPStride + k];
#pragma unroll
    for (int j = 0; j < L::kDimsPerThread; ++j) vv[j] = sV[k * kD + tx + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < L::kDimsPerThread; ++j) rows.o[i][j] = fmaf(pv[i], vv[j], rows.o[i][j]);
  }
  __syncthreads();  // before the next tile overwrites sK/sP/sV
}

}  // namespace detail
}  // namespace cuda
}  // namespace hysparse
