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
template <typename T>
Status LaunchFullAttn(const FullAttnArgs<T>& args, cudaStream_t stream, ScratchAllocator& scratch);

// HySparseSparseAttn: the SA (selected blocks) and SWA (window) branches, combined by union or gate.
template <typename T>
Status LaunchSparseAttn(const SparseAttnArgs<T>& args, cudaStream_t stream, ScratchAllocator& scratch);

// Copies tokens [0, len) of a [B, H, len, D] tensor seen through `src_view` (BSNH or BNSH, as the op
// inputs) into cache rows [dst_start, dst_start + len) of a [B, H, dst_capacity, D] cache. The glue
// uses it to build present_key/value from past_* and the new key/value (past_* are BNSH with
// token stride D). Source and destination must not overlap.
template <typename T>
Status LaunchCopyToCache(const T* src, HeadView src_view, int batch, int heads, int64_t len, int head_dim,
                         T* dst, int64_t dst_capacity, int64_t dst_start, cudaStream_t stream);


}  // namespace cuda
}  // namespace hysparse

namespace hysparse {
namespace cuda {

// What LaunchCheckSparseValues found: kind 0 = nothing wrong. The ORT glue copies this struct to the
// host and turns it into the same error the CPU glue raises (docs/ops.md "Block indices").
struct ValueProblem {
  int64_t kind = 0;   // 0 none, 1 mask value not 0/1, 2 index < -1, 3 index >= num_blocks,
                      // 4 block after a -1, 5 not strictly ascending
  int64_t where = 0;  // mask element, or block_indices row
  int64_t slot = 0;   // position in the row (indices)
  int64_t value = 0;  // the offending value
  int64_t previous = 0;  // the entry before it (kind 5)
};

// Scans the attention mask (may be null) and every block_indices row on the device and writes the
// first problem (lowest row/element) into *problem (device memory, reset by the launcher). Lets the
// CUDA ops refuse malformed inputs as the CPU ops do, instead of reading past a cache.
Status LaunchCheckSparseValues(const int32_t* block_indices, int64_t rows, int top_k, int64_t num_blocks,
                               const int64_t* mask, int64_t mask_elements, ValueProblem* problem,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace hysparse
