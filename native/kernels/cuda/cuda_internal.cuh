// Internal interfaces between the CUDA translation units: each kernel family's parameters and launch
// function. Launchers (launchers.cu) plan scratch and call these; tests go through cuda_kernels.h only.
#pragma once

#include "kernels/cuda/cuda_common.cuh"

namespace hysparse {
namespace cuda {
namespace detail {

// Rows of the per-head statistics are (b, h, s) flattened as (b*H_q + h)*S + s.

// Where batch row b's new tokens sit. Concatenating convention (no seqlens): at T - S + s, all real.
// Shared-buffer mode (docs/ops.md "Shared KV buffer"; `seqlens` is seqlens_k in device memory, T the
// buffer capacity): total_b = seqlens[b] + 1 clamped to [1, T] (the clamp keeps unchecked values in
// bounds), p_b = max(0, total_b - S), and tokens s >= total_b - p_b are right padding.
struct RowSpan {
  int64_t past;   // position of new token 0
  int64_t real;   // new tokens that are not padding
  int64_t total;  // valid positions of the row after this call
};
__device__ __forceinline__ RowSpan RowOf(const int32_t* seqlens, int64_t b, int64_t total_len, int64_t new_len) {
  if (seqlens == nullptr) return RowSpan{total_len - new_len, new_len, total_len};
  int64_t total = static_cast<int64_t>(seqlens[b]) + 1;
  total = total < 1 ? 1 : (total > total_len ? total_len : total);
  const int64_t past = total > new_len ? total - new_len : 0;
  return RowSpan{past, total - past, total};
}

// Tiled (prefill) HySparseFullAttn. With stats, writes each row's per-block maximum logit and its LSE.
struct TiledStats {
  float* block_max = nullptr;  // [B*H_q*S, nb], log2 units; entries for blocks past the row's position unspecified
  float* lse = nullptr;        // [B*H_q*S], log2 units; -inf for a row without valid keys
};
// `seqlens`: shared-buffer mode (RowOf), or null.
template <typename T>
Status LaunchFullAttnTiled(const FullAttnArgs<T>& args, const int32_t* seqlens, const TiledStats& stats,
                           bool vector_ok, cudaStream_t stream);

// Which key sets the split-K group kernel walks.
enum class GroupMode { kFull, kUnion, kGate };

// Split-K attention for all query heads of one KV group at one token: each CTA walks one split of
// the token's key slots and leaves a partial (max, sum, unnormalised output) per head.
template <typename T>
struct GroupAttnParams : AttentionDims {
  GroupMode mode = GroupMode::kFull;
  int group = 0;
  float scale_log2 = 0.f;  // scale * log2(e)
  int window = 1, top_k = 0;

  const T* query = nullptr;
  HeadView query_view;
  const int64_t* mask = nullptr;
  const int32_t* seqlens = nullptr;  // shared-buffer mode (RowOf), or null

  // kFull: the present cache (start 0). Sparse modes: the layer's own cache, slot k = position start + k.
  const T* key = nullptr;
  const T* value = nullptr;
  int64_t capacity = 0;
  int64_t start = 0;
  // Sparse modes: SA source, a full-length cache or the gathered rows.
  const T* sa_key = nullptr;
  const T* sa_value = nullptr;
  int64_t sa_capacity = 0;
  const T* selected_key = nullptr;
  const T* selected_value = nullptr;
  const int32_t* block_indices = nullptr;

  bool vector_ok = false;
  int head_chunks = 1;
  int num_splits = 1;
  int64_t split_len = 0;
  float2* part_ml = nullptr;  // [branches, B*H_q*S, num_splits]: (max, sum), log2 units
  float* part_o = nullptr;    // [branches, B*H_q*S, num_splits, D]
  float* key_logits = nullptr;  // kFull with stats: [B*H_q*S, T], log2 units, -inf for invalid keys
};
template <typename T>
Status LaunchGroupAttn(const GroupAttnParams<T>& params, cudaStream_t stream);
// Heads one group-kernel CTA serves (the register budget depends on D and the storage size).
int GroupHeadsPerCta(int head_dim, int element_bytes);

// Tiled HySparseSparseAttn prefill with a full-length SA source (sparse_attn_tiled.cu): per CTA a tile
// of `tile_tokens` tokens x the query heads of one KV head, the union of the tile's selected blocks
// loaded once for all of them. The split-K kernel's parameters for the same call (mode kUnion or
// kGate, the own cache as key/value, the SA source as sa_key/value, one split) plus the tile's shape;
// it leaves the same partials, for LaunchCombine.
template <typename T>
struct SparseTiledParams : GroupAttnParams<T> {
  int tile_tokens = 0;
  int list_capacity = 1;  // a power of two >= tile_tokens * top_k, at most kMaxSparseTileList
};
// Most block_indices entries (tile_tokens * top_k) one tiled CTA deduplicates; beyond it the launcher
// takes the split-K path.
constexpr int kMaxSparseTileList = 4096;
// Dynamic shared memory of the tiled sparse kernel for a head size and list capacity.
size_t SparseTiledSharedBytes(int head_dim, int list_capacity);
template <typename T>
Status LaunchSparseAttnTiled(const SparseTiledParams<T>& params, cudaStream_t stream);

// Merges the split partials of every (b, h, s) and writes the output (and the LSE for kFull).
template <typename T>
struct CombineParams : AttentionDims {
  int num_splits = 1;
  int branches = 1;  // 2 for gate: SA then SWA
  const float2* part_ml = nullptr;
  const float* part_o = nullptr;
  const T* gate = nullptr;
  bool gate_per_channel = false;
  const T* sinks = nullptr;  // [branches, H_q]
  T* output = nullptr;
  HeadView output_view;
  float* lse = nullptr;  // [B*H_q*S], log2 units, or null
};
template <typename T>
Status LaunchCombine(const CombineParams<T>& params, cudaStream_t stream);

// Block scores, group max and top-K for every (b, g, s).
struct SelectParams : AttentionDims {
  int64_t num_blocks = 0;
  int top_k = 0;
  const int64_t* mask = nullptr;
  const int32_t* seqlens = nullptr;  // shared-buffer mode (RowOf), or null
  const float* block_max = nullptr;  // [B*H_q*S, nb], log2 units, read for blocks up to the token's own
  const float* lse = nullptr;
  float* block_scores = nullptr;    // [B, H_kv, S, nb] or null
  int32_t* block_indices = nullptr;  // [B, H_kv, S, K] or null (scores only)
  float* work = nullptr;             // [B*H_kv*S, nb] when nb exceeds the shared-memory budget
};
// Split-path statistics: block_max[row, i] = max of key_logits[row, j] over block i up to the row's
// token position (rows as above, key_logits [rows, T]).
// With seqlens (shared-buffer mode) t is the row's own position and padding rows get -inf.
Status LaunchBlockMax(const float* key_logits, float* block_max, int64_t head_rows, int64_t new_len,
                      int64_t total_len, int block_size, int64_t num_blocks, const int32_t* seqlens,
                      int num_heads, cudaStream_t stream);
// Blocks whose scores fit in the selection kernel's shared memory; beyond it `work` is needed.
int64_t SelectSharedCapacity();
Status LaunchSelect(const SelectParams& params, cudaStream_t stream);

// selected_key/value rows from block_indices (docs/ops.md "Selected KV").
template <typename T>
struct GatherParams : AttentionDims {
  int64_t capacity = 0;
  int top_k = 0;
  const int32_t* seqlens = nullptr;  // shared-buffer mode: rows past the row's total_b are zero
  const int32_t* block_indices = nullptr;
  const T* key_cache = nullptr;
  const T* value_cache = nullptr;
  T* selected_key = nullptr;  // either may be null
  T* selected_value = nullptr;
  bool vector_ok = false;
};
template <typename T>
Status LaunchGather(const GatherParams<T>& params, cudaStream_t stream);

}  // namespace detail
}  // namespace cuda
}  // namespace hysparse
