// Float32 micro-kernels of the sparse attention CPU kernel (sparse_attn_cpu.cc), with a portable
// variant and, on x86, an AVX2+FMA+F16C variant picked at run time from the CPU's features. The
// sparse kernel's cost is a few dozen keys per chunk times a handful of query heads, so these work on
// small tiles: one chunk of keys against every query head of one KV group.
#pragma once

#include <cstddef>
#include <vector>

#include "kernels/attention_args.h"

namespace hysparse {
namespace cpu {

// One implementation of the micro-kernels. Rows are contiguous with `dim` floats each; tiles of
// per-head values (scores, probabilities) are row-major with leading dimension `ld`.
struct SparseMathOps {
  const char* name;

  // scores[i*ld + j] = dot(q[i*dim .. +dim), k[j*dim .. +dim)) for i < num_q, j < num_k.
  void (*score_tile)(const float* q, int num_q, const float* k, int num_k, int dim, float* scores,
                     int ld);

  // acc[i*dim + d] += sum_j p[i*ld + j] * v[j*dim + d] for i < num_q, j < num_k, d < dim.
  void (*accumulate_tile)(const float* p, int ld, int num_q, const float* v, int num_k, int dim,
                          float* acc);

  // x[j] = exp(x[j] - shift) for j < n (exp(-inf) = 0); returns the sum of the new x[j].
  float (*exp_shift_sum)(float* x, int n, float shift);

  // dst[i] = float(src[i]) for i < n.
  void (*half_to_float)(const Half* src, float* dst, size_t n);
};

// The implementation the kernel uses: the one set by ScopedSparseMathOverride if any, else the
// fastest the CPU supports.
const SparseMathOps& ActiveSparseMathOps();

// Every implementation this CPU can run, the portable one first (for tests that compare them).
std::vector<const SparseMathOps*> SupportedSparseMathOps();

// Makes ActiveSparseMathOps() return `ops` while alive, so tests can run the whole kernel on each
// variant. Not thread-safe against kernels running concurrently; meant for tests only.
class ScopedSparseMathOverride {
 public:
  explicit ScopedSparseMathOverride(const SparseMathOps* ops);
  ~ScopedSparseMathOverride();
  ScopedSparseMathOverride(const ScopedSparseMathOverride&) = delete;
  ScopedSparseMathOverride& operator=(const ScopedSparseMathOverride&) = delete;

 private:
  const SparseMathOps* previous_;
};

}  // namespace cpu
}  // namespace hysparse
