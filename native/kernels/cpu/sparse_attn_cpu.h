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
};

template <typename T>
void RunSparseAttnCpu(const SparseAttnArgs<T>& args, const Executor& exec,
                      const SparseAttnCpuOptions& options);

}  // namespace cpu
}  // namespace hysparse
