#include "kernels/cpu/tile_kernels.h"

#include <cmath>
#include <limits>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HYSPARSE_HAVE_AVX2_VARIANT 1
#include <immintrin.h>
#endif

namespace hysparse {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Portable loops. Written so that a compiler can vectorise them for the baseline ISA.

void DotRowsPortable(const float* q, int64_t ld_q, int num_rows, const float* k, int64_t ld_k,
                     int num_keys, int dim, float* scores, int64_t ld_scores) {
  for (int r = 0; r < num_rows; ++r) {
    const float* q_row = q + r * ld_q;
    for (int j = 0; j < num_keys; ++j) {
      const float* k_row = k + j * ld_k;
      float sum = 0.f;
      for (int d = 0; d < dim; ++d) sum += q_row[d] * k_row[d];
      scores[r * ld_scores + j] = sum;
    }
  }
}

void AccumulatePvPortable(const float* p, int64_t ld_p, int num_rows, const float* rescale,
                          const float* v, int64_t ld_v, int num_keys, int dim, float* acc,
                          int64_t ld_acc) {
  for (int r = 0; r < num_rows; ++r) {
    float* acc_row = acc + r * ld_acc;
    const float factor = rescale[r];
    for (int d = 0; d < dim; ++d) acc_row[d] *= factor;
    const float* p_row = p + r * ld_p;
    for (int j = 0; j < num_keys; ++j) {
      const float weight = p_row[j];
      if (weight == 0.f) continue;
      const float* v_row = v + j * ld_v;
      for (int d = 0; d < dim; ++d) acc_row[d] += weight * v_row[d];
    }
  }
}

float MaxPortable(const float* x, int64_t n) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) best = x[i] > best ? x[i] : best;
  return best;
}

float ExpShiftSumPortable(float* x, int64_t n, float shift) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

void HalfToFloatPortable(const Half* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

void FloatToHalfPortable(const float* src, Half* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = FloatToHalf(src[i]);
}

constexpr TileKernels kPortable = {DotRowsPortable,     AccumulatePvPortable, MaxPortable,
                                   ExpShiftSumPortable, HalfToFloatPortable,  FloatToHalfPortable,
                                   "portable"};

#ifdef HYSPARSE_HAVE_AVX2_VARIANT
// ---------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C. Every function carries the target attribute itself (rather than compiling the
// file with -mavx2) so that no inline function shared with the rest of the library is ever emitted
// with AVX2 instructions: the library must keep running on CPUs without them.
#define HYSPARSE_AVX2 __attribute__((target("avx2,fma,f16c")))

HYSPARSE_AVX2 inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

HYSPARSE_AVX2 inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// {Σa, Σb, Σc, Σd}: the lanes of each input summed pairwise, ((0+1)+(2+3)) + ((4+5)+(6+7)).
HYSPARSE_AVX2 inline __m128 SumEach(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1));
}

// exp(x) for x <= 88.37 (Cephes-style: x = n·ln2 + r, |r| <= ln2/2, degree-7 polynomial for e^r,
// about 1 ulp). Inputs below -87.3 (including -inf) give exactly 0: that flushes results in the
// float32 subnormal range, far below anything a softmax weight can resolve.
HYSPARSE_AVX2 inline __m256 Exp(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.37626f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i pow2n = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
  return _mm256_andnot_ps(underflow, y);
}

// MR query rows against NR key rows. The MR x NR accumulators plus NR key vectors and one query
// vector fill the 16 ymm registers at MR = 4, NR = 3; each loaded key vector serves MR rows and
// each query vector NR keys.
template <int MR, int NR>
HYSPARSE_AVX2 inline void DotBlock(const float* q, int64_t ld_q, const float* k, int64_t ld_k,
                                   int dim, float* scores, int64_t ld_scores) {
  __m256 acc[MR][NR];
  _Pragma("GCC unroll 8")
  for (int m = 0; m < MR; ++m)
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  int d = 0;
  for (; d + 8 <= dim; d += 8) {
    __m256 kv[NR];
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NR; ++n) kv[n] = _mm256_loadu_ps(k + n * ld_k + d);
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; ++m) {
      const __m256 qv = _mm256_loadu_ps(q + m * ld_q + d);
      _Pragma("GCC unroll 8")
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_fmadd_ps(qv, kv[n], acc[m][n]);
    }
  }
  _Pragma("GCC unroll 8")
  for (int m = 0; m < MR; ++m) {
    // The same addition tree for every accumulator, whatever NR and its slot: a (q, k) pair gives
    // the same bits wherever it lands in a block.
    alignas(16) float sums[4];
    _mm_store_ps(sums, SumEach(acc[m][0], acc[m][NR > 1 ? 1 : 0], acc[m][NR > 2 ? 2 : 0],
                               acc[m][NR > 2 ? 2 : 0]));
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NR; ++n) {
      float tail = 0.f;
      for (int t = d; t < dim; ++t) tail += q[m * ld_q + t] * k[n * ld_k + t];
      scores[m * ld_scores + n] = sums[n] + tail;
    }
  }
}

template <int MR>
HYSPARSE_AVX2 inline void DotRowBlock(const float* q, int64_t ld_q, const float* k, int64_t ld_k,
                                      int num_keys, int dim, float* scores, int64_t ld_scores) {
  int j = 0;
  for (; j + 3 <= num_keys; j += 3)
    DotBlock<MR, 3>(q, ld_q, k + j * ld_k, ld_k, dim, scores + j, ld_scores);
  if (num_keys - j == 2) DotBlock<MR, 2>(q, ld_q, k + j * ld_k, ld_k, dim, scores + j, ld_scores);
  if (num_keys - j == 1) DotBlock<MR, 1>(q, ld_q, k + j * ld_k, ld_k, dim, scores + j, ld_scores);
}

HYSPARSE_AVX2 void DotRowsAvx2(const float* q, int64_t ld_q, int num_rows, const float* k,
                               int64_t ld_k, int num_keys, int dim, float* scores,
                               int64_t ld_scores) {
  int r = 0;
  for (; r + 4 <= num_rows; r += 4)
    DotRowBlock<4>(q + r * ld_q, ld_q, k, ld_k, num_keys, dim, scores + r * ld_scores, ld_scores);
  switch (num_rows - r) {
    case 3:
      DotRowBlock<3>(q + r * ld_q, ld_q, k, ld_k, num_keys, dim, scores + r * ld_scores, ld_scores);
      break;
    case 2:
      DotRowBlock<2>(q + r * ld_q, ld_q, k, ld_k, num_keys, dim, scores + r * ld_scores, ld_scores);
      break;
    case 1:
      DotRowBlock<1>(q + r * ld_q, ld_q, k, ld_k, num_keys, dim, scores + r * ld_scores, ld_scores);
      break;
    default:
      break;
  }
}

// MR accumulator rows x NV vectors (8 columns each) of the output, over all keys: each loaded value
// vector serves MR rows, each broadcast weight NV vectors.
template <int MR, int NV>
HYSPARSE_AVX2 inline void PvBlock(const float* p, int64_t ld_p, const float* rescale,
                                  const float* v, int64_t ld_v, int num_keys, float* acc,
                                  int64_t ld_acc) {
  __m256 out[MR][NV];
  _Pragma("GCC unroll 8")
  for (int m = 0; m < MR; ++m) {
    const __m256 factor = _mm256_set1_ps(rescale[m]);
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NV; ++n)
      out[m][n] = _mm256_mul_ps(_mm256_loadu_ps(acc + m * ld_acc + 8 * n), factor);
  }
  for (int j = 0; j < num_keys; ++j) {
    __m256 vv[NV];
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NV; ++n) vv[n] = _mm256_loadu_ps(v + j * ld_v + 8 * n);
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; ++m) {
      const __m256 weight = _mm256_broadcast_ss(p + m * ld_p + j);
      _Pragma("GCC unroll 8")
      for (int n = 0; n < NV; ++n) out[m][n] = _mm256_fmadd_ps(weight, vv[n], out[m][n]);
    }
  }
  _Pragma("GCC unroll 8")
  for (int m = 0; m < MR; ++m)
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NV; ++n) _mm256_storeu_ps(acc + m * ld_acc + 8 * n, out[m][n]);
}

template <int MR>
HYSPARSE_AVX2 inline void PvRowBlock(const float* p, int64_t ld_p, const float* rescale,
                                     const float* v, int64_t ld_v, int num_keys, int dim,
                                     float* acc, int64_t ld_acc) {
  const int vectors = dim / 8;
  // Blocks of 3 vectors, ending in 2 + 2 rather than 3 + 1 where possible: a lone vector leaves
  // only MR independent FMA chains, too few to cover the FMA latency.
  const int triples = vectors % 3 == 1 && vectors >= 4 ? vectors / 3 - 1 : vectors / 3;
  int n = 0;
  for (; n < 3 * triples; n += 3)
    PvBlock<MR, 3>(p, ld_p, rescale, v + 8 * n, ld_v, num_keys, acc + 8 * n, ld_acc);
  for (; n + 2 <= vectors; n += 2)
    PvBlock<MR, 2>(p, ld_p, rescale, v + 8 * n, ld_v, num_keys, acc + 8 * n, ld_acc);
  if (n < vectors) PvBlock<MR, 1>(p, ld_p, rescale, v + 8 * n, ld_v, num_keys, acc + 8 * n, ld_acc);
  // Columns past the last full vector (odd head sizes).
  _Pragma("GCC unroll 8")
  for (int m = 0; m < MR; ++m) {
    float* acc_row = acc + m * ld_acc;
    for (int d = vectors * 8; d < dim; ++d) {
      float sum = acc_row[d] * rescale[m];
      for (int j = 0; j < num_keys; ++j) sum += p[m * ld_p + j] * v[j * ld_v + d];
      acc_row[d] = sum;
    }
  }
}

HYSPARSE_AVX2 void AccumulatePvAvx2(const float* p, int64_t ld_p, int num_rows,
                                    const float* rescale, const float* v, int64_t ld_v,
                                    int num_keys, int dim, float* acc, int64_t ld_acc) {
  int r = 0;
  for (; r + 4 <= num_rows; r += 4)
    PvRowBlock<4>(p + r * ld_p, ld_p, rescale + r, v, ld_v, num_keys, dim, acc + r * ld_acc, ld_acc);
  switch (num_rows - r) {
    case 3:
      PvRowBlock<3>(p + r * ld_p, ld_p, rescale + r, v, ld_v, num_keys, dim, acc + r * ld_acc, ld_acc);
      break;
    case 2:
      PvRowBlock<2>(p + r * ld_p, ld_p, rescale + r, v, ld_v, num_keys, dim, acc + r * ld_acc, ld_acc);
      break;
    case 1:
      PvRowBlock<1>(p + r * ld_p, ld_p, rescale + r, v, ld_v, num_keys, dim, acc + r * ld_acc, ld_acc);
      break;
    default:
      break;
  }
}

HYSPARSE_AVX2 float MaxAvx2(const float* x, int64_t n) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  if (n >= 8) {
    __m256 acc = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) acc = _mm256_max_ps(acc, _mm256_loadu_ps(x + i));
    best = HorizontalMax(acc);
  }
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  return best;
}

HYSPARSE_AVX2 float ExpShiftSumAvx2(float* x, int64_t n, float shift) {
  const __m256 shift_v = _mm256_set1_ps(shift);
  __m256 sum_v = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), shift_v));
    _mm256_storeu_ps(x + i, e);
    sum_v = _mm256_add_ps(sum_v, e);
  }
  if (i < n) {
    // The tail goes through the same vector exp (padded with -inf, which gives 0) so that a value
    // gets the same exponential wherever it sits in the row.
    alignas(32) float tail[8];
    for (int t = 0; t < 8; ++t) tail[t] = i + t < n ? x[i + t] : -std::numeric_limits<float>::infinity();
    const __m256 e = Exp(_mm256_sub_ps(_mm256_load_ps(tail), shift_v));
    _mm256_store_ps(tail, e);
    for (int t = 0; i + t < n; ++t) x[i + t] = tail[t];
    sum_v = _mm256_add_ps(sum_v, e);
  }
  return HorizontalSum(sum_v);
}

HYSPARSE_AVX2 void HalfToFloatAvx2(const Half* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

HYSPARSE_AVX2 void FloatToHalfAvx2(const float* src, Half* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = FloatToHalf(src[i]);
}

constexpr TileKernels kAvx2 = {DotRowsAvx2,     AccumulatePvAvx2, MaxAvx2, ExpShiftSumAvx2,
                               HalfToFloatAvx2, FloatToHalfAvx2,  "avx2"};

bool CpuHasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
#endif  // HYSPARSE_HAVE_AVX2_VARIANT

}  // namespace

const TileKernels& PortableTileKernels() { return kPortable; }

const TileKernels& BestTileKernels() {
#ifdef HYSPARSE_HAVE_AVX2_VARIANT
  static const TileKernels& best = CpuHasAvx2() ? kAvx2 : kPortable;
  return best;
#else
  return kPortable;
#endif
}

}  // namespace cpu
}  // namespace hysparse
