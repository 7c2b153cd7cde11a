// Tiled causal GQA attention for HySparseFullAttn prefill (S > a few tokens).
//
// One CTA serves a query tile of BQ consecutive tokens times all G = H_q/H_kv query heads of one KV
// head (rows = BQ*G <= 64), so every K/V tile loaded into shared memory feeds all heads of the group.
// Per key tile: logits (scale*log2e pre-applied to Q), optional per-(row, key block) running maxima in
// global scratch for the block scores, online softmax in base 2, O += P V. Arithmetic is float32 from
// shared-memory tiles; 256 threads as 16x16, each thread owning 4 rows x (BK/16) keys for the logits
// and the same 4 rows x (D/16) dims of the output.
#include "kernels/cuda/cuda_internal.cuh"

namespace hysparse {
namespace cuda {
namespace detail {
namespace {

constexpr int kRows = 64;
constexpr int kThreads = 256;

template <typename T>
struct TiledParams : AttentionDims {
  int group;
  int tile_tokens;  // BQ
  int64_t cache_capacity;
  int64_t num_blocks;
  float scale_log2;
  const T* query;
  HeadView query_view;
  const T* key_cache;
  const T* value_cache;
  const int64_t* mask;
  const int32_t* seqlens;  // shared-buffer mode (RowOf), or null
  T* output;
  HeadView output_view;
  float* block_max;
  float* lse;
  bool vector_ok;
};

template <int kD, int kBK>
struct TiledLayout {
  static constexpr int kQStride = kD + 1;  // +1: the 16 key/row lanes of a warp hit 16 banks
  static constexpr int kKStride = kD + 1;
  static constexpr int kPStride = kBK + 1;
  static constexpr int kQFloats = kRows * kQStride;
  static constexpr int kKFloats = kBK * kKStride;  // also holds P (kRows x kPStride) once logits are done
  static constexpr int kVFloats = kBK * kD;
  static_assert(kRows * kPStride <= kKFloats, "P must fit where the K tile was");
  static constexpr size_t kBytes = sizeof(float) * (kQFloats + kKFloats + kVFloats) + sizeof(int) * (kRows + kBK);
};

template <typename T, int kD, int kBK>
__global__ void __launch_bounds__(kThreads) FullAttnTiledKernel(const TiledParams<T> p) {
  using L = TiledLayout<kD, kBK>;
  constexpr int kKeysPerThread = kBK / 16;
  constexpr int kDimsPerThread = kD / 16;
  constexpr int kChunksPerRow = kD / 8;

  extern __shared__ float smem[];
  float* sQ = smem;
  float* sK = sQ + L::kQFloats;
  float* sP = sK;
  float* sV = sK + L::kKFloats;
  int* row_pos = reinterpret_cast<int*>(sV + L::kVFloats);  // position t of the row's token, -1: no valid keys
  int* key_ok = row_pos + kRows;

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  // Heaviest (latest) query tiles first: causal work grows with the tile index.
  const int64_t tile = static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;
  const int g = blockIdx.y % p.kv_num_heads;
  const int b = blockIdx.y / p.kv_num_heads;
  const int64_t seq = p.new_len, total = p.total_len;
  // The row's new tokens sit at past + s; tokens s >= real are padding (shared-buffer mode) and, like
  // masked positions, get no keys (output 0, LSE -inf).
  const RowSpan span = RowOf(p.seqlens, b, total, seq);
  const int64_t past = span.past, real = span.real;
  const int G = p.group;
  const int rows = p.tile_tokens * G;
  const int64_t s0 = tile * p.tile_tokens;
  const int64_t s_last = min(s0 + p.tile_tokens, real) - 1;
  const int64_t key_end = s_last >= s0 ? past + s_last + 1 : 0;  // keys past the tile's last token are never valid
  const int64_t* mask = p.mask ? p.mask + static_cast<int64_t>(b) * total : nullptr;
  const T* kbase = p.key_cache + (static_cast<int64_t>(b) * p.kv_num_heads + g) * p.cache_capacity * p.head_dim;
  const T* vbase = p.value_cache + (static_cast<int64_t>(b) * p.kv_num_heads + g) * p.cache_capacity * p.head_dim;

  // Row r of the tile is token s0 + r / G, query head g*G + r % G.
  for (int r = tid; r < kRows; r += kThreads) {
    const int64_t s = s0 + r / G;
    int pos = -1;
    if (r < rows && s < real) {
      const int64_t t = past + s;
      if (!mask || mask[t] != 0) pos = static_cast<int>(t);
    }
    row_pos[r] = pos;
  }
  for (int c = tid; c < kRows * kChunksPerRow; c += kThreads) {
    const int r = c / kChunksPerRow, d0 = (c % kChunksPerRow) * 8;
    const int64_t s = s0 + r / G;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (r < rows && s < seq && d0 < p.head_dim) {
      const int h = g * G + r % G;
      Load8(p.query + ViewOffset(p.query_view, b, h, s) + d0, p.head_dim - d0, p.vector_ok, v);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sQ[r * L::kQStride + d0 + i] = v[i] * p.scale_log2;
  }

  float m[4], l[4], o[4][kDimsPerThread];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = NegInf();
    l[i] = 0.f;
#pragma unroll
    for (int j = 0; j < kDimsPerThread; ++j) o[i][j] = 0.f;
  }
  const bool want_stats = p.block_max != nullptr;

  for (int64_t k0 = 0; k0 < key_end; k0 += kBK) {
    // K/V tile (zeros past key_end, which are masked anyway).
    for (int c = tid; c < kBK * kChunksPerRow; c += kThreads) {
      const int kr = c / kChunksPerRow, d0 = (c % kChunksPerRow) * 8;
      const int64_t pos = k0 + kr;
      float kv[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      float vv[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (pos < key_end && d0 < p.head_dim) {
        Load8(kbase + pos * p.head_dim + d0, p.head_dim - d0, p.vector_ok, kv);
        Load8(vbase + pos * p.head_dim + d0, p.head_dim - d0, p.vector_ok, vv);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        sK[kr * L::kKStride + d0 + i] = kv[i];
        sV[kr * kD + d0 + i] = vv[i];
      }
    }
    for (int kr = tid; kr < kBK; kr += kThreads) {
      const int64_t pos = k0 + kr;
      key_ok[kr] = pos < key_end && (!mask || mask[pos] != 0);
    }
    __syncthreads();

    float s[4][kKeysPerThread];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < kKeysPerThread; ++j) s[i][j] = 0.f;
#pragma unroll 8
    for (int d = 0; d < kD; ++d) {
      float qv[4], kv[kKeysPerThread];
#pragma unroll
      for (int i = 0; i < 4; ++i) qv[i] = sQ[(ty + 16 * i) * L::kQStride + d];
#pragma unroll
      for (int j = 0; j < kKeysPerThread; ++j) kv[j] = sK[(tx + 16 * j) * L::kKStride + d];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < kKeysPerThread; ++j) s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int pos = row_pos[ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kKeysPerThread; ++j) {
        const int kr = tx + 16 * j;
        const bool valid = pos >= 0 && key_ok[kr] && k0 + kr <= pos;
        if (!valid) s[i][j] = NegInf();
      }
    }
    __syncthreads();  // everyone is done with sK: it now holds logits, then P

    if (want_stats) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < kKeysPerThread; ++j) sP[(ty + 16 * i) * L::kPStride + tx + 16 * j] = s[i][j];
      __syncthreads();
      // Running maximum per (row, key block) over this tile's keys. A block's first tile stores, later
      // tiles fold in; the same CTA owns the row, and __syncthreads orders its global writes.
      const int64_t tile_end = min(k0 + kBK, key_end);
      const int64_t first_block = k0 / p.block_size;
      const int64_t last_block = (tile_end - 1) / p.block_size;
      const int blocks_here = static_cast<int>(last_block - first_block + 1);
      for (int w = tid; w < kRows * blocks_here; w += kThreads) {
        const int r = w / blocks_here;
        if (row_pos[r] < 0) continue;
        const int64_t blk = first_block + w % blocks_here;
        const int64_t kb = max(blk * p.block_size, k0), ke = min((blk + 1) * p.block_size, tile_end);
        float mx = NegInf();
        for (int64_t k = kb; k < ke; ++k) mx = fmaxf(mx, sP[r * L::kPStride + static_cast<int>(k - k0)]);
        const int64_t s_row = s0 + r / G;
        const int h = g * G + r % G;
        float* dst = p.block_max + ((static_cast<int64_t>(b) * p.num_heads + h) * seq + s_row) * p.num_blocks + blk;
        *dst = blk * p.block_size >= k0 ? mx : fmaxf(*dst, mx);
      }
      __syncthreads();
    }

    // Online softmax; the 16 lanes sharing ty hold one row's keys and agree on its max.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float tile_max = s[i][0];
#pragma unroll
      for (int j = 1; j < kKeysPerThread; ++j) tile_max = fmaxf(tile_max, s[i][j]);
#pragma unroll
      for (int off = 8; off >= 1; off >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
      const float m_new = fmaxf(m[i], tile_max);
      float alpha = 1.f;
      if (m_new != NegInf()) {
        alpha = exp2f(m[i] - m_new);  // m[i] = -inf gives 0
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < kKeysPerThread; ++j) {
          s[i][j] = exp2f(s[i][j] - m_new);
          sum += s[i][j];
        }
        l[i] = l[i] * alpha + sum;
        m[i] = m_new;
      } else {
#pragma unroll
        for (int j = 0; j < kKeysPerThread; ++j) s[i][j] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < kDimsPerThread; ++j) o[i][j] *= alpha;
#pragma unroll
      for (int j = 0; j < kKeysPerThread; ++j) sP[(ty + 16 * i) * L::kPStride + tx + 16 * j] = s[i][j];
    }
    __syncthreads();

#pragma unroll 4
    for (int k = 0; k < kBK; ++k) {
      float pv[4], vv[kDimsPerThread];
#pragma unroll
      for (int i = 0; i < 4; ++i) pv[i] = sP[(ty + 16 * i) * L::kPStride + k];
#pragma unroll
      for (int j = 0; j < kDimsPerThread; ++j) vv[j] = sV[k * kD + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < kDimsPerThread; ++j) o[i][j] = fmaf(pv[i], vv[j], o[i][j]);
    }
    __syncthreads();  // before the next tile overwrites sK/sP/sV
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float total = l[i];
#pragma unroll
    for (int off = 8; off >= 1; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
    const int r = ty + 16 * i;
    const int64_t s_row = s0 + r / G;
    if (r >= rows || s_row >= seq) continue;
    const int h = g * G + r % G;
    const float inv = total > 0.f ? 1.f / total : 0.f;
    T* out = p.output + ViewOffset(p.output_view, b, h, s_row);
#pragma unroll
    for (int j = 0; j < kDimsPerThread; ++j) {
      const int d = tx + 16 * j;
      if (d < p.head_dim) out[d] = FromFloat<T>(o[i][j] * inv);
    }
    if (p.lse && tx == 0) {
      p.lse[(static_cast<int64_t>(b) * p.num_heads + h) * seq + s_row] = total > 0.f ? m[i] + log2f(total) : NegInf();
    }
  }
}

template <typename T, int kD, int kBK>
Status Launch(const TiledParams<T>& p, cudaStream_t stream) {
  using L = TiledLayout<kD, kBK>;
  auto kernel = FullAttnTiledKernel<T, kD, kBK>;
  const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(L::kBytes));
  if (attr != cudaSuccess) {
    cudaGetLastError();
    return Error(attr, std::string("HySparseFullAttn tiled kernel: cannot reserve shared memory: ") +
                           cudaGetErrorString(attr));
  }
  const int64_t tiles = CeilDiv(p.new_len, p.tile_tokens);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.batch * p.kv_num_heads));
  kernel<<<grid, kThreads, L::kBytes, stream>>>(p);
  HYSPARSE_CUDA_CHECK_LAUNCH("HySparseFullAttn tiled kernel");
  return Status::Ok();
}

}  // namespace

template <typename T>
Status LaunchFullAttnTiled(const FullAttnArgs<T>& a, const int32_t* seqlens, const TiledStats& stats, bool vector_ok,
                           cudaStream_t stream) {
  TiledParams<T> p;
  p.dims() = a.dims();
  p.group = a.num_heads / a.kv_num_heads;
  p.tile_tokens = kRows / p.group;
  p.cache_capacity = a.cache_capacity;
  p.num_blocks = a.NumBlocks();
  p.scale_log2 = a.scale * kLog2e;
  p.query = a.query;
  p.query_view = a.query_view;
  p.key_cache = a.key_cache;
  p.value_cache = a.value_cache;
  p.mask = a.attention_mask;
  p.seqlens = seqlens;
  p.output = a.output;
  p.output_view = a.output_view;
  p.block_max = stats.block_max;
  p.lse = stats.lse;
  p.vector_ok = vector_ok;
  if (a.head_dim <= 64) return Launch<T, 64, 64>(p, stream);
  if (a.head_dim <= 128) return Launch<T, 128, 64>(p, stream);
  return Launch<T, 256, 32>(p, stream);
}

template Status LaunchFullAttnTiled<float>(const FullAttnArgs<float>&, const int32_t*, const TiledStats&, bool,
                                                 cudaStream_t);
template Status LaunchFullAttnTiled<Half>(const FullAttnArgs<Half>&, const int32_t*, const TiledStats&, bool,
                                                 cudaStream_t);
template Status LaunchFullAttnTiled<BFloat16>(const FullAttnArgs<BFloat16>&, const int32_t*, const TiledStats&, bool,
                                                 cudaStream_t);

}  // namespace detail
}  // namespace cuda
}  // namespace hysparse
