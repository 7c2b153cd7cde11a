// Tuning entry point of the CPU HySparseSparseAttn kernel. The public RunSparseAttnCpu
// (kernels/attention_args.h) runs the fastest tile loops the CPU supports; tests use this one to
// run the kernel on each implementation, as they do the full kernel (full_attn_cpu.h).
#pragma once

#include "kernels/attention_args.h"

namespace hysparse {
namespace cpu {

struct TileKernels;

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
void RunSparseAttnCpu(const SparseAttnArgs<T>& args, const Executor& exec,
                      const SparseAttnCpuOptions& options);

}  // namespace cpu
}  // namespace hysparse
