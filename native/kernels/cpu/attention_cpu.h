// Tuning entry points of the CPU kernels. The public RunFullAttnCpu / RunSparseAttnCpu
// (kernels/attention_args.h) pick everything themselves (attention_cpu.cc); tests and benchmarks use
// these to force the work split and the loop implementation, since the result must not depend on
// either beyond rounding.
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
void RunFullAttnCpu(const FullAttnArgs<T>& args, const Executor& exec, const FullAttnCpuOptions& options);

// Choices of one RunSparseAttnCpu call.
struct SparseAttnCpuOptions {
  // The tile loops to use (one of AvailableTileKernels()); null picks the fastest.
  const TileKernels* kernels = nullptr;
  // Parts each task's key range is split into (each part a task of its own, merged afterwards):
  // 0 chooses from the shapes alone (split only when batch x KV heads x token tiles gives too few
  // tasks to keep many threads busy, as in decode); 1 never splits; n > 1 forces n parts.
  int kv_parts = 0;
  // Tile shape (sparse_attn_cpu.cc): 0 takes the prefill tiles for S > 1 and the token tiles for
  // decode; 1 forces the prefill tiles, -1 the token tiles (tests and benchmarks run both).
  int prefill_tiles = 0;
};
template <typename T>
void RunSparseAttnCpu(const SparseAttnArgs<T>& args, const Executor& exec, const SparseAttnCpuOptions& options);

}  // namespace cpu
}  // namespace hysparse
