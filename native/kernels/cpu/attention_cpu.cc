// The public CPU entry points (kernels/attention_args.h): the tuning entry points with every choice
// left to them.
#include "kernels/cpu/attention_cpu.h"

namespace hysparse {

template <typename T>
void RunFullAttnCpu(const FullAttnArgs<T>& args, const Executor& exec) {
  cpu::RunFullAttnCpu(args, exec, cpu::FullAttnCpuOptions{});
}

template <typename T>
void RunSparseAttnCpu(const SparseAttnArgs<T>& args, const Executor& exec) {
  cpu::RunSparseAttnCpu(args, exec, cpu::SparseAttnCpuOptions{});
}

template void RunFullAttnCpu<float>(const FullAttnArgs<float>&, const Executor&);
template void RunFullAttnCpu<Half>(const FullAttnArgs<Half>&, const Executor&);
template void RunSparseAttnCpu<float>(const SparseAttnArgs<float>&, const Executor&);
template void RunSparseAttnCpu<Half>(const SparseAttnArgs<Half>&, const Executor&);

}  // namespace hysparse
