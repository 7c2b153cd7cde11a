// Tiled causal GQA attention for HySparseFullAttn prefill (S > a few tokens).
//
// One CTA serves a query tile of BQ consecutive tokens times all G = H_q/H_kv query heads of one KV
// head (rows = BQ*G <= 64), so every K/V tile loaded into shared memory feeds all heads of the group.
// Per key tile: logits (scale*log2e pre-applied to Q), optional per-(row, key block) running maxima in
// global scratch for the block scores, online softmax in base 2, O += P V (tile_math.cuh).
#include "kernels/cuda/tile_math.cuh"

namespace hysparse {
namespace cuda {
namespace detail {

// Outside the anonymous namespace: the launcher's shape-dispatch lambda captures it.
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

namespace {

constexpr int kRows = kTileRows;
constexpr int kThreads = kTileThreads;

template <int kD, int kBK>
struct TiledLayout : TileShape<kD, kBK> {
  static constexpr size_t kBytes = sizeof(float) * TileShape<kD, kBK>::kFloats + sizeof(int) * (kRows + kBK);
};

template <typename T, int kD, int kBK>
__global__ void __launch_bounds__(kThreads) FullAttnTiledKernel(const TiledParams<T> p) {
  using L = TiledLayout<kD, kBK>;
  constexpr int kKeysPerThread = L::kKeysPerThread;
  constexpr int kDimsPerThread = L::kDimsPerThread;

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

  TileRowPositions(row_pos, rows, G, s0, real, past, mask);
  LoadQueryTile<T, kD, kBK>(sQ, p.query, p.query_view, b, g, G, rows, s0, seq, p.head_dim, p.vector_ok,
                            p.scale_log2);

  TileRows<kD> acc;
  acc.Init();
  const bool want_stats = p.block_max != nullptr;

  for (int64_t k0 = 0; k0 < key_end; k0 += kBK) {
    // K/V tile (zeros past key_end, which are masked anyway).
    LoadKeyTile<T, kD, kBK>(sK, sV, kbase, vbase, p.head_dim, p.vector_ok,
                            [&](int kr) { return k0 + kr < key_end ? k0 + kr : int64_t{-1}; });
    for (int kr = tid; kr < kBK; kr += kThreads) {
      const int64_t pos = k0 + kr;
      key_ok[kr] = pos < key_end && (!mask || mask[pos] != 0);
    }
    __syncthreads();

    float s[4][kKeysPerThread];
    ScoreTile<kD, kBK>(sQ, sK, s);
    MaskTile<kBK>(s, row_pos, [&](int, int pos, int kr) { return key_ok[kr] && k0 + kr <= pos; });
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
    AccumulateTile<kD, kBK>(s, acc, sP, sV);
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float total = acc.RowSum(i);
    const int r = ty + 16 * i;
    const int64_t s_row = s0 + r / G;
    if (r >= rows || s_row >= seq) continue;
    const int h = g * G + r % G;
    const float inv = total > 0.f ? 1.f / total : 0.f;
    T* out = p.output + ViewOffset(p.output_view, b, h, s_row);
#pragma unroll
    for (int j = 0; j < kDimsPerThread; ++j) {
      const int d = tx + 16 * j;
      if (d < p.head_dim) out[d] = FromFloat<T>(acc.o[i][j] * inv);
    }
    if (p.lse && tx == 0) {
      p.lse[(static_cast<int64_t>(b) * p.num_heads + h) * seq + s_row] = total > 0.f ? acc.m[i] + log2f(total) : NegInf();
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
  return WithTileShape(a.head_dim, [&](auto d, auto bk) {
    return Launch<T, decltype(d)::value, decltype(bk)::value>(p, stream);
  });
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
