// CUDA back end of the HySparse attention kernels: host launchers over device pointers.
//
// The launchers take the same argument structs as the CPU kernels (kernels/attention_args.h), with
// every pointer a device pointer, and enqueue their work on the caller's stream (ORT's compute
// stream in the ORT glue). They never synchronise, never allocate device memory themselves (scratch
// comes from the caller's ScratchAllocator) and never touch the legacy default stream. Like the CPU
// kernels they trust their arguments: validation happens in native/ops/ before they are called.
// The only checks made here are the limits of this back end (head size, group size), reported as a
// status, so the glue can turn them into an ORT error.
//
// This header includes only the CUDA runtime API header, so plain C++ translation units (the ORT
// glue) can call the launchers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/attention_args.h"
#include "kernels/cuda/bfloat16.h"

namespace hysparse {
namespace cuda {

// Device scratch memory for one launcher call. The ORT glue implements it with the kernel context's
// allocator, tests with cudaMalloc. A launcher asks at most once per call, for one region holding
// all its temporaries; the region must stay allocated until the work enqueued on the stream has run
// (stream-ordered reuse, as ORT's CUDA allocator provides, is enough).
class ScratchAllocator {
 public:
  virtual ~ScratchAllocator() = default;
  // Returns at least `bytes` of device memory aligned to 256 bytes, or null on failure.
  virtual void* Allocate(size_t bytes) = 0;
};

// Outcome of a launcher: cudaSuccess, or the CUDA error and a message naming what failed.
struct Status {
  cudaError_t code = cudaSuccess;
  std::string message;

  bool ok() const { return code == cudaSuccess; }
  static Status Ok() { return {}; }
};

// Largest head size (D) the CUDA kernels serve; the CPU kernels go further (docs/ops.md: D <= 512).
constexpr int kMaxHeadDim = 256;
// Largest H_q / H_kv the tiled prefill kernel serves (its query tile holds whole KV groups).
constexpr int kMaxGroupSize = 64;

// True when this back end can run a node with these sizes; otherwise `why` says which limit is hit.
bool SupportsShape(int head_dim, int num_heads, int kv_num_heads, std::string* why);

// HySparseFullAttn: causal GQA attention over key_cache/value_cache positions [0, total_len), plus the
// block statistics, top-K selection and gather that the optional outputs ask for. The caches must
// already hold past ++ new (LaunchCopyToCache builds them). T is float, Half or BFloat16.
//
// Shared-buffer mode (docs/ops.md "Shared KV buffer") when `seqlens_k` (int32 [B], device memory) is
// given: total_len and cache_capacity are the buffer capacity C, attention_mask is null, and the
// caches are the buffers after LaunchWriteNewTokens. Each row b is computed as a batch of one with
// total_b = seqlens_k[b] + 1 (clamped to [1, C]) and its real new tokens at [max(0, total_b - S), total_b);
// padding tokens get zero output, -1 indices, 0 scores and zero selected rows; blocks at or after
// ceil(total_b / block_size) score 0. The lengths are read on the device only: grids, scratch sizes and
// kernel arguments depend on the shapes alone, so the same launches serve every decode step.
template <typename T>
Status LaunchFullAttn(const FullAttnArgs<T>& args, cudaStream_t stream, ScratchAllocator& scratch,
                      const int32_t* seqlens_k = nullptr);

// Which kernel a HySparseSparseAttn call takes. kAuto: the tiled kernel for prefill (S > 4) with a
// full-length SA source when it can serve the call, split-K otherwise. kSplitK: split-K always, so
// benchmarks and tests can compare the two on the same call.
enum class SparsePath { kAuto, kSplitK };

// HySparseSparseAttn: the SA (selected blocks) and SWA (window) branches, combined by union or gate.
// Shared-buffer mode as above when `seqlens_k` is given: total_len = own_capacity = own_len = C,
// own_start 0, the own cache (and sa_key/value, sa_capacity C, when KV is shared) the buffers.
template <typename T>
Status LaunchSparseAttn(const SparseAttnArgs<T>& args, cudaStream_t stream, ScratchAllocator& scratch,
                        const int32_t* seqlens_k = nullptr, SparsePath path = SparsePath::kAuto);

// Copies tokens [0, len) of a [B, H, len, D] tensor seen through `src_view` (BSNH or BNSH, as the op
// inputs) into cache rows [dst_start, dst_start + len) of a [B, H, dst_capacity, D] cache. The glue
// uses it to build present_key/value from past_* and the new key/value (past_* are BNSH with
// token stride D). Source and destination must not overlap.
template <typename T>
Status LaunchCopyToCache(const T* src, HeadView src_view, int batch, int heads, int64_t len, int head_dim,
                         T* dst, int64_t dst_capacity, int64_t dst_start, cudaStream_t stream);

// Shared-buffer mode: writes the real new tokens of every row b of a [B, H, new_len, D] tensor seen
// through `src_view` into rows [p_b, total_b) of the [B, H, capacity, D] `buffer` (total_b and p_b from
// the device-resident `seqlens_k` as for LaunchFullAttn); padding tokens are not written. The grid
// depends on the shapes only. Source and buffer must not overlap.
template <typename T>
Status LaunchWriteNewTokens(const T* src, HeadView src_view, int batch, int heads, int64_t new_len, int head_dim,
                            T* buffer, int64_t capacity, const int32_t* seqlens_k, cudaStream_t stream);

}  // namespace cuda
}  // namespace hysparse

namespace hysparse {
namespace cuda {

// What the device-side value checks found. One enum for the kernels that write it and the ORT glue
// that turns it into the CPU op's error (docs/ops.md "Block indices", "Shared KV buffer"); int64_t
// underneath so the struct's layout is the same on device and host.
enum class ValueProblemKind : int64_t {
  kNone = 0,
  kMaskValue = 1,            // attention_mask element not 0/1 (where: element, value)
  kIndexBelowMinusOne = 2,   // block_indices entry < -1 (where: row, slot, value, previous)
  kIndexPastLastBlock = 3,   // entry >= the row's block count (row_total in shared-buffer mode)
  kIndexAfterPadding = 4,    // a block after a -1
  kIndexNotAscending = 5,    // not strictly ascending (previous: the entry before)
  kSeqlensNegative = 6,      // shared-buffer mode: seqlens_k[where] < 0
  kSeqlensPastCapacity = 7,  // seqlens_k[where] + 1 > the buffer's capacity
  kTotalLengthMismatch = 8,  // total_sequence_length (value) != max(seqlens_k) + 1 (previous)
};

struct ValueProblem {
  ValueProblemKind kind = ValueProblemKind::kNone;
  int64_t where = 0;  // mask element, block_indices row or batch row
  int64_t slot = 0;   // position in the row (indices)
  int64_t value = 0;  // the offending value
  int64_t previous = 0;  // the entry before it (kIndexNotAscending); max(seqlens_k) + 1 (kTotalLengthMismatch)
  int64_t row_total = 0;  // shared-buffer mode, kIndexPastLastBlock: the batch row's total length
};
// Shared-buffer problems (LaunchCheckSharedBufferValues) are reported before any block index problem.

// Scans the attention mask (may be null) and every block_indices row on the device and writes the
// first problem (lowest row/element) into *problem (device memory, reset by the launcher). Lets the
// CUDA ops refuse malformed inputs as the CPU ops do, instead of reading past a cache.
Status LaunchCheckSparseValues(const int32_t* block_indices, int64_t rows, int top_k, int64_t num_blocks,
                               const int64_t* mask, int64_t mask_elements, ValueProblem* problem,
                               cudaStream_t stream);

// Shared-buffer mode: checks seqlens_k (device, int32 [batch]: every row 0 <= seqlens_k[b] < capacity,
// and total_sequence_length, a host value, equal to max(seqlens_k) + 1), then, when block_indices is
// given ([batch, rows_per_batch, top_k] on the device), every row against its own block count
// ceil(total_b / block_size). Writes the first problem as LaunchCheckSparseValues does.
Status LaunchCheckSharedBufferValues(const int32_t* seqlens_k, int batch, int64_t capacity,
                                     int64_t total_sequence_length, const int32_t* block_indices,
                                     int64_t rows_per_batch, int top_k, int block_size, ValueProblem* problem,
                                     cudaStream_t stream);

}  // namespace cuda
}  // namespace hysparse
