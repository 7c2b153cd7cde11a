// Tuning entry point of the CPU HySparseFullAttn kernel. The public RunFullAttnCpu
// (kernels/attention_args.h) picks everything itself; tests use this one to force the work split and
// the loop implementation, since the result must not depend on either beyond rounding.
#pragma once

#include <cstdint>

#include "kernels/attention_args.h"

namespace hysparse {
namespace cpu {

struct TileKernels;

// How RunFullAttnCpu divides its work. Zero means "choose automatically".
struct FullAttnCpuOptions {
  // Query positions per task (each task covers all query heads of one KV head for these positions).
  int64_t query_tile = 0;
  // Keys per split-KV chunk, rounded up to a multiple of block_size; -1 never splits the key range.
  // The automatic choice splits only when (batch x KV head x query tile) alone gives too few tasks to
  // keep the threads busy, as in decode.
  int64_t kv_split = 0;
  // The tile loops to use (one of AvailableTileKernels()); null picks the fastest.
  const TileKernels* kernels = nullptr;
  // float16 storage only: 1 converts the call's key/value cache rows to float32 once, up front, and
  // every task reads that copy; -1 converts each K/V tile when a task reads it (once per query tile
  // that reads it); 0 chooses: up front when several query tiles read each key tile (prefill) and
  // the copy fits the kept scratch, per tile otherwise (decode reads each tile once anyway).
  int convert_cache = 0;
};

template <typename T>
void RunFullAttnCpu(const FullAttnArgs<T>& args, const Executor& exec,
                    const FullAttnCpuOptions& options);

}  // namespace cpu
}  // namespace hysparse
