#include "kernels/cpu/tile_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HYSPARSE_HAVE_AVX2_VARIANT 1
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace hysparse {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Portable loops. Written so that a compiler can vectorise them for the baseline ISA.

// The portable and AVX2 dot products read the key rows where they are.
PreparedKeys KeysInPlace(const float* k, int64_t ld_k, int, int, int64_t, float*) {
  return {k, ld_k, false};
}

void DotRowsPortable(const float* q, int64_t ld_q, int num_rows, const PreparedKeys& keys,
                     int num_keys, int dim, float* scores, int64_t ld_scores) {
  const float* k = keys.data;
  const int64_t ld_k = keys.ld;
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

constexpr TileKernels kPortable = {KeysInPlace, DotRowsPortable,     AccumulatePvPortable, MaxPortable,
                                   ExpShiftSumPortable, HalfToFloatPortable,  FloatToHalfPortable,
                                   "portable"};

#ifdef HYSPARSE_HAVE_AVX2_VARIANT
// ---------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C. Every function carries the target attribute itself (rather than compiling the
// file with -mavx2) so that no inline function shared with the rest of the library is ever emitted
// with AVX2 instructions: the library must keep running on CPUs without them.
#define HYSPARSE_AVX2 __attribute__((target("avx2,fma,f16c")))

// Runs Kernel::Rows<MR>(r, args...) for row blocks r of MR = 4 rows and then the 1-3 rows left:
// register blocks are sized at compile time. Plain (baseline ISA) code: it only makes calls.
template <typename Kernel, typename... Args>
void ForRowBlocks(int num_rows, const Args&... args) {
  int r = 0;
  for (; r + 4 <= num_rows; r += 4) Kernel::template Rows<4>(r, args...);
  switch (num_rows - r) {
    case 3: Kernel::template Rows<3>(r, args...); break;
    case 2: Kernel::template Rows<2>(r, args...); break;
    case 1: Kernel::template Rows<1>(r, args...); break;
    default: break;
  }
}

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
// about 1 ulp). Inputs below kExpMin (including -inf) give exactly 0: that flushes results in the
// float32 subnormal range, far below anything a softmax weight can resolve. Shared by the 8- and
// 16-lane versions.
constexpr float kExpMin = -87.33654f;
constexpr float kExpMax = 88.37626f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2High = 0.693359375f;  // ln 2 = kLn2High + kLn2Low, the first part exact
constexpr float kLn2Low = -2.12194440e-4f;
// e^r ≈ 1 + r + r²·P(r), P's coefficients from the highest power down.
constexpr float kExpPoly[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                              4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

HYSPARSE_AVX2 inline __m256 Exp(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpMin)), _mm256_set1_ps(kExpMax));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Low),
                                    _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2High), x));
  __m256 y = _mm256_setzero_ps();
  for (const float c : kExpPoly) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i pow2n = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n)));
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

struct DotRowsAvx2Block {
  template <int MR>
  HYSPARSE_AVX2 static void Rows(int r, const float* q, int64_t ld_q, const float* k, int64_t ld_k,
                                 int num_keys, int dim, float* scores, int64_t ld_scores) {
    DotRowBlock<MR>(q + r * ld_q, ld_q, k, ld_k, num_keys, dim, scores + r * ld_scores, ld_scores);
  }
};

void DotRowsAvx2(const float* q, int64_t ld_q, int num_rows, const PreparedKeys& keys,
                 int num_keys, int dim, float* scores, int64_t ld_scores) {
  ForRowBlocks<DotRowsAvx2Block>(num_rows, q, ld_q, keys.data, keys.ld, num_keys, dim, scores,
                                 ld_scores);
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

struct PvAvx2Block {
  template <int MR>
  HYSPARSE_AVX2 static void Rows(int r, const float* p, int64_t ld_p, const float* rescale,
                                 const float* v, int64_t ld_v, int num_keys, int dim, float* acc,
                                 int64_t ld_acc) {
    PvRowBlock<MR>(p + r * ld_p, ld_p, rescale + r, v, ld_v, num_keys, dim, acc + r * ld_acc, ld_acc);
  }
};

void AccumulatePvAvx2(const float* p, int64_t ld_p, int num_rows, const float* rescale,
                      const float* v, int64_t ld_v, int num_keys, int dim, float* acc,
                      int64_t ld_acc) {
  ForRowBlocks<PvAvx2Block>(num_rows, p, ld_p, rescale, v, ld_v, num_keys, dim, acc, ld_acc);
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

constexpr TileKernels kAvx2 = {KeysInPlace, DotRowsAvx2,     AccumulatePvAvx2, MaxAvx2, ExpShiftSumAvx2,
                               HalfToFloatAvx2, FloatToHalfAvx2,  "avx2"};

// ---------------------------------------------------------------------------------------------
// AVX-512F. The dot products work in outer-product form over a transposed key tile: each key is a
// lane, so there are no horizontal sums (with D = 128 a 16-wide dot product would spend about as
// much on reducing its accumulators as on its FMAs), and the 32 registers hold 4 rows x 64 keys.
#define HYSPARSE_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

HYSPARSE_AVX512 inline void Transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

constexpr int64_t kMinRowsToTranspose = 8;

// kt[d * kMaxTileKeys + j] = k[j * ld_k + d], in 8 x 8 register transposes; key lanes up to the
// next multiple of 16 are zeroed so that the (unstored) padding lanes never compute on garbage.
HYSPARSE_AVX512 PreparedKeys TransposeKeys512(const float* k, int64_t ld_k, int num_keys, int dim,
                                              int64_t query_rows, float* kt) {
  // With few query rows (decode) the transposition would cost as much as the products it speeds
  // up; those tiles are read in place by the 8-lane dot product instead.
  if (query_rows < kMinRowsToTranspose) return {k, ld_k, false};
  constexpr int64_t ld_t = kMaxTileKeys;
  const int full_keys = num_keys / 8 * 8;
  const int full_dims = dim / 8 * 8;
  for (int j0 = 0; j0 < full_keys; j0 += 8) {
    for (int d0 = 0; d0 < full_dims; d0 += 8) {
      __m256 rows[8];
      _Pragma("GCC unroll 8")
      for (int i = 0; i < 8; ++i) rows[i] = _mm256_loadu_ps(k + (j0 + i) * ld_k + d0);
      Transpose8x8(rows);
      _Pragma("GCC unroll 8")
      for (int i = 0; i < 8; ++i) _mm256_store_ps(kt + (d0 + i) * ld_t + j0, rows[i]);
    }
    for (int d = full_dims; d < dim; ++d)
      for (int i = 0; i < 8; ++i) kt[d * ld_t + j0 + i] = k[(j0 + i) * ld_k + d];
  }
  const int padded_keys = (num_keys + 15) / 16 * 16;
  for (int d = 0; d < dim; ++d) {
    for (int j = full_keys; j < num_keys; ++j) kt[d * ld_t + j] = k[j * ld_k + d];
    for (int j = num_keys; j < padded_keys; ++j) kt[d * ld_t + j] = 0.f;
  }
  return {kt, ld_t, true};
}

// out[m][n] += Σ_{i < steps} a[m*ld_a + i] * b[i*ld_b + 16n .. +16): MR x NV rank-1 updates, one
// broadcast of `a` per row and one load of `b` per vector and step; the last vector loads only the
// lanes in `last`. Both the dot products (a = queries, b = transposed keys) and the P·V update
// (a = weights, b = values) are this loop.
template <int MR, int NV>
HYSPARSE_AVX512 inline void RankUpdates512(const float* a, int64_t ld_a, const float* b,
                                           int64_t ld_b, int steps, __mmask16 last,
                                           __m512 (&out)[MR][NV]) {
  for (int i = 0; i < steps; ++i) {
    __m512 bv[NV];
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NV; ++n)
      bv[n] = _mm512_maskz_loadu_ps(n == NV - 1 ? last : __mmask16(0xFFFF), b + i * ld_b + 16 * n);
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; ++m) {
      const __m512 av = _mm512_set1_ps(a[m * ld_a + i]);
      _Pragma("GCC unroll 8")
      for (int n = 0; n < NV; ++n) out[m][n] = _mm512_fmadd_ps(av, bv[n], out[m][n]);
    }
  }
}

template <int MR, int NV>
HYSPARSE_AVX512 inline void StoreBlock512(const __m512 (&out)[MR][NV], float* dst, int64_t ld,
                                          __mmask16 last) {
  _Pragma("GCC unroll 8")
  for (int m = 0; m < MR; ++m)
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NV; ++n)
      _mm512_mask_storeu_ps(dst + m * ld + 16 * n, n == NV - 1 ? last : __mmask16(0xFFFF),
                            out[m][n]);
}

// MR rows x NJ vectors of 16 keys; the last vector stores only the lanes in `last`.
template <int MR, int NJ>
HYSPARSE_AVX512 inline void DotBlock512(const float* q, int64_t ld_q, const float* kt, int dim,
                                        float* scores, int64_t ld_scores, __mmask16 last) {
  __m512 acc[MR][NJ];
  _Pragma("GCC unroll 8")
  for (int m = 0; m < MR; ++m)
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NJ; ++n) acc[m][n] = _mm512_setzero_ps();
  RankUpdates512<MR, NJ>(q, ld_q, kt, kMaxTileKeys, dim, last, acc);
  StoreBlock512<MR, NJ>(acc, scores, ld_scores, last);
}

template <int NJ>
struct DotRows512Block {
  template <int MR>
  HYSPARSE_AVX512 static void Rows(int r, const float* q, int64_t ld_q, const float* kt, int dim,
                                   float* scores, int64_t ld_scores, __mmask16 last) {
    DotBlock512<MR, NJ>(q + r * ld_q, ld_q, kt, dim, scores + r * ld_scores, ld_scores, last);
  }
};

void DotRowsAvx512(const float* q, int64_t ld_q, int num_rows, const PreparedKeys& keys,
                   int num_keys, int dim, float* scores, int64_t ld_scores) {
  if (!keys.transposed) {
    DotRowsAvx2(q, ld_q, num_rows, keys, num_keys, dim, scores, ld_scores);
    return;
  }
  const __mmask16 last =
      num_keys % 16 == 0 ? __mmask16(0xFFFF) : __mmask16((1u << (num_keys % 16)) - 1);
  switch ((num_keys + 15) / 16) {
    case 1: ForRowBlocks<DotRows512Block<1>>(num_rows, q, ld_q, keys.data, dim, scores, ld_scores, last); break;
    case 2: ForRowBlocks<DotRows512Block<2>>(num_rows, q, ld_q, keys.data, dim, scores, ld_scores, last); break;
    case 3: ForRowBlocks<DotRows512Block<3>>(num_rows, q, ld_q, keys.data, dim, scores, ld_scores, last); break;
    default: ForRowBlocks<DotRows512Block<4>>(num_rows, q, ld_q, keys.data, dim, scores, ld_scores, last); break;
  }
}

// MR accumulator rows x NV vectors of 16 columns; the last vector covers only the lanes in `last`.
template <int MR, int NV>
HYSPARSE_AVX512 inline void PvBlock512(const float* p, int64_t ld_p, const float* rescale,
                                       const float* v, int64_t ld_v, int num_keys, float* acc,
                                       int64_t ld_acc, __mmask16 last) {
  __m512 out[MR][NV];
  _Pragma("GCC unroll 8")
  for (int m = 0; m < MR; ++m) {
    const __m512 factor = _mm512_set1_ps(rescale[m]);
    _Pragma("GCC unroll 8")
    for (int n = 0; n < NV; ++n)
      out[m][n] = _mm512_mul_ps(
          _mm512_maskz_loadu_ps(n == NV - 1 ? last : __mmask16(0xFFFF), acc + m * ld_acc + 16 * n),
          factor);
  }
  RankUpdates512<MR, NV>(p, ld_p, v, ld_v, num_keys, last, out);
  StoreBlock512<MR, NV>(out, acc, ld_acc, last);
}

template <int MR>
HYSPARSE_AVX512 inline void PvRowBlock512(const float* p, int64_t ld_p, const float* rescale,
                                          const float* v, int64_t ld_v, int num_keys, int dim,
                                          float* acc, int64_t ld_acc) {
  const int vectors = (dim + 15) / 16;
  const __mmask16 tail = dim % 16 == 0 ? __mmask16(0xFFFF) : __mmask16((1u << (dim % 16)) - 1);
  for (int n = 0; n < vectors; n += 4) {
    const int count = std::min(4, vectors - n);
    const __mmask16 last = n + count == vectors ? tail : __mmask16(0xFFFF);
    const float* v_n = v + 16 * n;
    float* acc_n = acc + 16 * n;
    switch (count) {
      case 4: PvBlock512<MR, 4>(p, ld_p, rescale, v_n, ld_v, num_keys, acc_n, ld_acc, last); break;
      case 3: PvBlock512<MR, 3>(p, ld_p, rescale, v_n, ld_v, num_keys, acc_n, ld_acc, last); break;
      case 2: PvBlock512<MR, 2>(p, ld_p, rescale, v_n, ld_v, num_keys, acc_n, ld_acc, last); break;
      default: PvBlock512<MR, 1>(p, ld_p, rescale, v_n, ld_v, num_keys, acc_n, ld_acc, last); break;
    }
  }
}

struct Pv512Block {
  template <int MR>
  HYSPARSE_AVX512 static void Rows(int r, const float* p, int64_t ld_p, const float* rescale,
                                   const float* v, int64_t ld_v, int num_keys, int dim, float* acc,
                                   int64_t ld_acc) {
    PvRowBlock512<MR>(p + r * ld_p, ld_p, rescale + r, v, ld_v, num_keys, dim, acc + r * ld_acc,
                      ld_acc);
  }
};

void AccumulatePvAvx512(const float* p, int64_t ld_p, int num_rows, const float* rescale,
                        const float* v, int64_t ld_v, int num_keys, int dim, float* acc,
                        int64_t ld_acc) {
  ForRowBlocks<Pv512Block>(num_rows, p, ld_p, rescale, v, ld_v, num_keys, dim, acc, ld_acc);
}

// The masked forms of the intrinsics below take an explicit pass-through operand: GCC 12's headers
// give the unmasked ones an undefined one and then warn about it (-Wmaybe-uninitialized).
constexpr __mmask16 kAllLanes = 0xFFFF;

template <bool kMax>
HYSPARSE_AVX512 inline __m512 Fold512(__m512 a, __m512 b) {
  return kMax ? _mm512_mask_max_ps(a, kAllLanes, a, b) : _mm512_add_ps(a, b);
}

// Adds (or takes the max of) the 16 lanes: halves folded onto each other down to one lane.
template <bool kMax>
HYSPARSE_AVX512 inline float Reduce512(__m512 v) {
  v = Fold512<kMax>(v, _mm512_mask_shuffle_f32x4(v, kAllLanes, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = Fold512<kMax>(v, _mm512_mask_shuffle_f32x4(v, kAllLanes, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  __m128 s = _mm512_mask_extractf32x4_ps(_mm_setzero_ps(), 0xF, v, 0);
  s = kMax ? _mm_max_ps(s, _mm_movehl_ps(s, s)) : _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = kMax ? _mm_max_ss(s, _mm_movehdup_ps(s)) : _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Exp above on 16 lanes; the 2^n factor through scalef.
HYSPARSE_AVX512 inline __m512 Exp512(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpMin), _CMP_GE_OQ);
  x = _mm512_mask_max_ps(x, kAllLanes, x, _mm512_set1_ps(kExpMin));
  x = _mm512_mask_min_ps(x, kAllLanes, x, _mm512_set1_ps(kExpMax));
  const __m512 scaled = _mm512_mul_ps(x, _mm512_set1_ps(kLog2e));
  const __m512 n = _mm512_mask_roundscale_ps(scaled, kAllLanes, scaled,
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Low),
                                    _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2High), x));
  __m512 y = _mm512_setzero_ps();
  for (const float c : kExpPoly) y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_scalef_ps(keep, y, n);
}

HYSPARSE_AVX512 float ExpShiftSumAvx512(float* x, int64_t n, float shift) {
  const __m512 shift_v = _mm512_set1_ps(shift);
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 sum_v = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    // The tail is padded with -inf (exp 0) and goes through the same vector code, so a value gets
    // the same exponential wherever it sits in the row.
    const __mmask16 lanes = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 e = Exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(minus_inf, lanes, x + i), shift_v));
    _mm512_mask_storeu_ps(x + i, lanes, e);
    sum_v = _mm512_add_ps(sum_v, e);
  }
  return Reduce512<false>(sum_v);
}

HYSPARSE_AVX512 float MaxAvx512(const float* x, int64_t n) {
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 best = minus_inf;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    best = _mm512_mask_max_ps(best, kAllLanes, best, _mm512_mask_loadu_ps(minus_inf, lanes, x + i));
  }
  return Reduce512<true>(best);
}

// The conversions are a small share of the time; they stay 256-bit.
constexpr TileKernels kAvx512 = {TransposeKeys512,  DotRowsAvx512,   AccumulatePvAvx512,
                                 MaxAvx512,         ExpShiftSumAvx512, HalfToFloatAvx2,
                                 FloatToHalfAvx2,   "avx512"};

bool CpuHasAvx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

bool CpuHasAvx2() {
  __builtin_cpu_init();
  // Not every compiler's __builtin_cpu_supports knows "f16c"; CPUID leaf 1 tells directly.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
}
#endif  // HYSPARSE_HAVE_AVX2_VARIANT

}  // namespace

const TileKernels& PortableTileKernels() { return kPortable; }

std::vector<const TileKernels*> AvailableTileKernels() {
  std::vector<const TileKernels*> available = {&kPortable};
#ifdef HYSPARSE_HAVE_AVX2_VARIANT
  if (CpuHasAvx2()) {
    available.push_back(&kAvx2);
    if (CpuHasAvx512()) available.push_back(&kAvx512);
  }
#endif
  return available;
}

const TileKernels& BestTileKernels() {
  static const TileKernels& best = *AvailableTileKernels().back();
  return best;
}

}  // namespace cpu
}  // namespace hysparse
