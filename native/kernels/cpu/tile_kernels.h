// Inner loops of the CPU attention kernels, over float32 tiles.
//
// The attention kernels spend nearly all their time in the few loops below (q·k dot products, the
// softmax exponentials and the P·V accumulation), so these come in two builds: a portable one that
// any x86-64 (or other) CPU runs, and an AVX2+FMA+F16C one chosen at run time when the CPU has those
// features. The library itself is compiled for the baseline ISA; only the functions behind these
// pointers use the wider instructions.
#pragma once

#include <cstdint>

#include "kernels/attention_args.h"

namespace hysparse {
namespace cpu {

// One implementation of the tile loops. Every pointer is non-null. Row-major matrices are given by
// their first element and their leading dimension (elements between consecutive rows).
struct TileKernels {
  // scores[r*ld_scores + j] = Σ_d q[r*ld_q + d] * k[j*ld_k + d] for r < num_rows, j < num_keys,
  // d < dim. For one (q row, k row) pair the result does not depend on r or j, so equal inputs give
  // bit-identical scores (the block selection's tie rule relies on it).
  void (*dot_rows)(const float* q, int64_t ld_q, int num_rows, const float* k, int64_t ld_k,
                   int num_keys, int dim, float* scores, int64_t ld_scores);

  // acc[r] = acc[r] * rescale[r] + Σ_j p[r*ld_p + j] * v[j*ld_v + 0..dim) for r < num_rows: the
  // online-softmax update of the output accumulators (rescale is exp(old_max - new_max)).
  void (*accumulate_pv)(const float* p, int64_t ld_p, int num_rows, const float* rescale,
                        const float* v, int64_t ld_v, int num_keys, int dim, float* acc,
                        int64_t ld_acc);

  // max of x[0..n); -inf when n == 0.
  float (*max)(const float* x, int64_t n);

  // x[i] = exp(x[i] - shift) in place for i < n, returning the sum. exp(-inf) is exactly 0; shift
  // must be finite.
  float (*exp_shift_sum)(float* x, int64_t n, float shift);

  void (*half_to_float)(const Half* src, float* dst, int64_t n);
  void (*float_to_half)(const float* src, Half* dst, int64_t n);

  const char* name;
};

// Plain C++ loops; correct everywhere.
const TileKernels& PortableTileKernels();

// The fastest implementation this CPU supports (decided once per process).
const TileKernels& BestTileKernels();

}  // namespace cpu
}  // namespace hysparse
