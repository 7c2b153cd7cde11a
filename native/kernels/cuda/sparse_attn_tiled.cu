// Tiled HySparseSparseAttn prefill (S > a few tokens) with a full-length SA source (retrofit or KV
// sharing): neighbouring tokens select overlapping blocks, so a CTA serving a query tile of BQ tokens
// x the G query heads of one KV head (64 rows, as the full op's tiled kernel) loads each block that
// any of its tokens selected once, for all of them, instead of once per token as the split-K kernel
// does; the window is one band of keys for the whole tile.
//
// Per CTA: (1) the tile's block_indices rows go to shared memory, and their union (blocks that can
// hold a valid key for some row of the tile) is sorted and deduplicated there; (2) the union's keys
// are walked in key tiles, each (row, key) pair kept only when the row's token selected the key's
// block (a 64-bit membership mask per block, one bit per token), the key is at or before the token and,
// in union mode, outside the token's window; (3) the window band [t_first - w + 1, t_last] of the own
// cache, each row keeping its own w keys. Union mode folds (2) and (3) into one softmax; gate mode runs
// (2) and (3) as two CTAs (blockIdx.z = branch). Every row leaves (max, sum, unnormalised output) in
// the split-K kernel's partial layout with one split, and LaunchCombine applies the sinks and gates
// and writes the output, exactly as for the split-K path (group_attn.cu).
#include <climits>

#include "kernels/cuda/tile_math.cuh"

namespace hysparse {
namespace cuda {
namespace detail {
namespace {

constexpr int kNoBlock = INT_MAX;  // sorts after every block

// Shared memory of a CTA beyond the tile arithmetic's: row and key bookkeeping, the scan of the
// deduplication, the tile's block_indices rows and the block union (each `list_capacity` ints).
template <int kD, int kBK>
struct SparseTiledLayout : TileShape<kD, kBK> {
  static_assert(TileShape<kD, kBK>::kFloats % 2 == 0, "the membership masks need 8-byte alignment");
  static size_t Bytes(int list_capacity) {
    return sizeof(float) * TileShape<kD, kBK>::kFloats + sizeof(unsigned long long) * kBK +
           sizeof(int) * (kTileRows + 2 * kBK + kTileThreads + 1 + 2 * static_cast<size_t>(list_capacity));
  }
};

// True when the ascending, -1-padded block_indices row `row` (k entries) holds `block`.
__device__ __forceinline__ bool RowSelects(const int* row, int k, int block) {
  int lo = 0, hi = k;  // first entry >= block, with -1 read as past every block
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const int v = row[mid] < 0 ? kNoBlock : row[mid];
    if (v < block) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < k && row[lo] == block;
}

template <typename T, int kD, int kBK>
__global__ void __launch_bounds__(kTileThreads) SparseAttnTiledKernel(const SparseTiledParams<T> p) {
  using L = SparseTiledLayout<kD, kBK>;
  constexpr int kKeysPerThread = L::kKeysPerThread;
  constexpr int kMaxEntriesPerThread = kMaxSparseTileList / kTileThreads;

  extern __shared__ float smem[];
  float* sQ = smem;
  float* sK = sQ + L::kQFloats;
  float* sP = sK;
  float* sV = sK + L::kKFloats;
  unsigned long long* member = reinterpret_cast<unsigned long long*>(sV + L::kVFloats);  // per block of a key tile
  int* row_pos = reinterpret_cast<int*>(member + kBK);  // position t of the row's token, -1: no valid keys
  int* key_pos = row_pos + kTileRows;                   // position of the key, -1: no key
  int* key_unit = key_pos + kBK;                        // its block's entry in `member`
  int* scan = key_unit + kBK;
  int* unit_count = scan + kTileThreads;
  int* token_blocks = unit_count + 1;                   // [BQ, K] block_indices rows, -1 for invalid tokens
  int* blocks = token_blocks + p.list_capacity;         // the union, ascending

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  const int warp = tid / 32, lane = tid % 32;
  const int branch = blockIdx.z;  // gate: 0 = SA, 1 = window; union: 0 = both
  const bool gate = p.mode == GroupMode::kGate;
  const bool sa_part = !gate || branch == 0;
  const bool window_part = !gate || branch == 1;
  const int64_t tile = blockIdx.x;
  const int g = blockIdx.y % p.kv_num_heads;
  const int b = blockIdx.y / p.kv_num_heads;
  const int64_t seq = p.new_len, total = p.total_len;
  const RowSpan span = RowOf(p.seqlens, b, total, seq);
  const int64_t past = span.past, real = span.real;
  const int G = p.group, BQ = p.tile_tokens, K = p.top_k, bs = p.block_size, w = p.window;
  const int rows = BQ * G;
  const int64_t s0 = tile * BQ;
  const int64_t s_last = min(s0 + BQ, real) - 1;  // last real token of the tile (< s0: none)
  const int64_t t_last = past + s_last;
  const int64_t* mask = p.mask ? p.mask + static_cast<int64_t>(b) * total : nullptr;
  const int64_t plane = static_cast<int64_t>(b) * p.kv_num_heads + g;

  TileRowPositions(row_pos, rows, G, s0, real, past, mask);
  LoadQueryTile<T, kD, kBK>(sQ, p.query, p.query_view, b, g, G, rows, s0, seq, p.head_dim, p.vector_ok,
                            p.scale_log2);
  __syncthreads();  // row_pos is read by every thread below

  TileRows<kD> acc;
  acc.Init();

  if (sa_part && K > 0 && p.block_indices && s_last >= s0) {
    // (1) The tile's selections and their union. A block can hold a valid key for some row only if it
    // starts at or before t_last and, in union mode, before the latest row's window (positions the
    // window covers count there).
    const int64_t sa_end = gate ? t_last + 1 : max(t_last - w + 1, p.start);
    const int entries = BQ * K;
    for (int i = tid; i < p.list_capacity; i += kTileThreads) {
      int block = -1;
      if (i < entries) {
        const int q = i / K;
        const int64_t s = s0 + q;
        if (s <= s_last && row_pos[q * G] >= 0) block = p.block_indices[(plane * seq + s) * K + i % K];
      }
      if (i < entries) token_blocks[i] = block;
      const bool useful = block >= 0 && static_cast<int64_t>(block) * bs < min(sa_end, total);
      blocks[i] = useful ? block : kNoBlock;
    }
    __syncthreads();
    // Bitonic sort of blocks[0, list_capacity) (a power of two).
    for (int k = 2; k <= p.list_capacity; k <<= 1) {
      for (int j = k >> 1; j > 0; j >>= 1) {
        for (int i = tid; i < p.list_capacity; i += kTileThreads) {
          const int partner = i ^ j;
          if (partner > i) {
            const int a = blocks[i], c = blocks[partner];
            if ((a > c) == ((i & k) == 0)) {
              blocks[i] = c;
              blocks[partner] = a;
            }
          }
        }
        __syncthreads();
      }
    }
    // Deduplicate in place: each thread keeps the first entries of runs in its contiguous share, an
    // inclusive scan of the counts gives where they go. Every read happens before the first barrier.
    const int share = max(1, p.list_capacity / kTileThreads);
    int kept[kMaxEntriesPerThread];
    int n = 0;
    for (int e = 0; e < share; ++e) {
      const int i = tid * share + e;
      if (i >= p.list_capacity) break;
      const int v = blocks[i];
      if (v != kNoBlock && (i == 0 || blocks[i - 1] != v)) kept[n++] = v;
    }
    scan[tid] = n;
    __syncthreads();
    for (int off = 1; off < kTileThreads; off <<= 1) {
      const int add = tid >= off ? scan[tid - off] : 0;
      __syncthreads();
      scan[tid] += add;
      __syncthreads();
    }
    for (int e = 0; e < n; ++e) blocks[scan[tid] - n + e] = kept[e];
    if (tid == kTileThreads - 1) *unit_count = scan[tid];
    __syncthreads();

    // (2) The union's keys, kBK at a time: key e is position blocks[e / bs] * bs + e % bs.
    const T* kbase = p.sa_key + plane * p.sa_capacity * p.head_dim;
    const T* vbase = p.sa_value + plane * p.sa_capacity * p.head_dim;
    const int64_t n_keys = static_cast<int64_t>(*unit_count) * bs;
    for (int64_t k0 = 0; k0 < n_keys; k0 += kBK) {
      const int64_t u_first = k0 / bs;
      const int tile_units = static_cast<int>((min(k0 + kBK, n_keys) - 1) / bs - u_first + 1);
      for (int u = warp; u < tile_units; u += kTileThreads / 32) {
        const int block = blocks[u_first + u];
        const bool low = lane < BQ && RowSelects(token_blocks + lane * K, K, block);
        const bool high = lane + 32 < BQ && RowSelects(token_blocks + (lane + 32) * K, K, block);
        const unsigned low_mask = __ballot_sync(0xffffffffu, low);
        const unsigned high_mask = __ballot_sync(0xffffffffu, high);
        if (lane == 0) member[u] = low_mask | (static_cast<unsigned long long>(high_mask) << 32);
      }
      for (int kr = tid; kr < kBK; kr += kTileThreads) {
        const int64_t e = k0 + kr;
        int pos = -1, unit = 0;
        if (e < n_keys) {
          const int64_t u = e / bs;
          const int64_t at = static_cast<int64_t>(blocks[u]) * bs + e % bs;
          if (at < total && (!mask || mask[at] != 0)) pos = static_cast<int>(at);
          unit = static_cast<int>(u - u_first);
        }
        key_pos[kr] = pos;
        key_unit[kr] = unit;
      }
      __syncthreads();
      LoadKeyTile<T, kD, kBK>(sK, sV, kbase, vbase, p.head_dim, p.vector_ok,
                              [&](int kr) { return static_cast<int64_t>(key_pos[kr]); });
      __syncthreads();
      float s[4][kKeysPerThread];
      ScoreTile<kD, kBK>(sQ, sK, s);
      // A row keeps a key of a block its token selected, at or before the token and, in union mode,
      // before the token's window (whose positions, from t - w + 1 or the own cache's first, count there).
      MaskTile<kBK>(s, row_pos, [&](int r, int pos, int kr) {
        const int kp = key_pos[kr];
        const bool selected = (member[key_unit[kr]] >> (r / G)) & 1ull;
        return kp >= 0 && kp <= pos && selected && (gate || kp < max(pos - w + 1, static_cast<int>(p.start)));
      });
      __syncthreads();
      AccumulateTile<kD, kBK>(s, acc, sP, sV);
    }
  }

  if (window_part && s_last >= s0) {
    // (3) The window band of the own cache (slot = position - own_start).
    const int64_t lo = max(max(past + s0 - w + 1, p.start), int64_t{0});
    const T* kbase = p.key + plane * p.capacity * p.head_dim;
    const T* vbase = p.value + plane * p.capacity * p.head_dim;
    for (int64_t k0 = lo; k0 <= t_last; k0 += kBK) {
      for (int kr = tid; kr < kBK; kr += kTileThreads) {
        const int64_t at = k0 + kr;
        key_pos[kr] = at <= t_last && (!mask || mask[at] != 0) ? static_cast<int>(at) : -1;
      }
      __syncthreads();
      LoadKeyTile<T, kD, kBK>(sK, sV, kbase, vbase, p.head_dim, p.vector_ok, [&](int kr) {
        return key_pos[kr] < 0 ? int64_t{-1} : static_cast<int64_t>(key_pos[kr]) - p.start;
      });
      __syncthreads();
      float s[4][kKeysPerThread];
      ScoreTile<kD, kBK>(sQ, sK, s);
      // A row keeps its own window: positions max(t - w + 1, own start) to t.
      MaskTile<kBK>(s, row_pos, [&](int, int pos, int kr) {
        const int kp = key_pos[kr];
        return kp >= 0 && kp <= pos && kp >= max(pos - w + 1, static_cast<int>(p.start));
      });
      __syncthreads();
      AccumulateTile<kD, kBK>(s, acc, sP, sV);
    }
  }

  // The partials of this branch (one split): LaunchCombine normalises, adds sinks and gates.
  const int64_t rows_per_branch = static_cast<int64_t>(p.batch) * p.num_heads * seq;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float sum = acc.RowSum(i);
    const int r = ty + 16 * i;
    const int64_t s_row = s0 + r / G;
    if (r >= rows || s_row >= seq) continue;
    const int h = g * G + r % G;
    const int64_t part = branch * rows_per_branch + (static_cast<int64_t>(b) * p.num_heads + h) * seq + s_row;
#pragma unroll
    for (int j = 0; j < L::kDimsPerThread; ++j) {
      const int d = tx + 16 * j;
      if (d < p.head_dim) p.part_o[part * p.head_dim + d] = acc.o[i][j];
    }
    if (tx == 0) p.part_ml[part] = make_float2(acc.m[i], sum);
  }
}

template <typename T, int kD, int kBK>
Status Launch(const SparseTiledParams<T>& p, cudaStream_t stream) {
  auto kernel = SparseAttnTiledKernel<T, kD, kBK>;
  const size_t bytes = SparseTiledLayout<kD, kBK>::Bytes(p.list_capacity);
  const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (attr != cudaSuccess) {
    cudaGetLastError();
    return Error(attr, std::string("HySparseSparseAttn tiled kernel: cannot reserve shared memory: ") +
                           cudaGetErrorString(attr));
  }
  const dim3 grid(static_cast<unsigned>(CeilDiv(p.new_len, p.tile_tokens)),
                  static_cast<unsigned>(p.batch * p.kv_num_heads), p.mode == GroupMode::kGate ? 2u : 1u);
  kernel<<<grid, kTileThreads, bytes, stream>>>(p);
  HYSPARSE_CUDA_CHECK_LAUNCH("HySparseSparseAttn tiled kernel");
  return Status::Ok();
}

}  // namespace

size_t SparseTiledSharedBytes(int head_dim, int list_capacity) {
  return WithTileShape(head_dim, [&](auto d, auto bk) {
    return SparseTiledLayout<decltype(d)::value, decltype(bk)::value>::Bytes(list_capacity);
  });
}

template <typename T>
Status LaunchSparseAttnTiled(const SparseTiledParams<T>& p, cudaStream_t stream) {
  return WithTileShape(p.head_dim, [&](auto d, auto bk) {
    return Launch<T, decltype(d)::value, decltype(bk)::value>(p, stream);
  });
}

template Status LaunchSparseAttnTiled<float>(const SparseTiledParams<float>&, cudaStream_t);
template Status LaunchSparseAttnTiled<Half>(const SparseTiledParams<Half>&, cudaStream_t);
template Status LaunchSparseAttnTiled<BFloat16>(const SparseTiledParams<BFloat16>&, cudaStream_t);

}  // namespace detail
}  // namespace cuda
}  // namespace hysparse
