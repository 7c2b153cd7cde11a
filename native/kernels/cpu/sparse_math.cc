// Portable and AVX2+FMA+F16C micro-kernels for the sparse attention CPU kernel. The library is built
// for the baseline ISA; the AVX2 functions carry their own target attribute and are only called
// after __builtin_cpu_supports says the CPU has the features.
#include "kernels/cpu/sparse_math.h"

#include <atomic>
#include <cmath>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HYSPARSE_SPARSE_X86 1
#endif

namespace hysparse {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Portable variant. Plain loops; independent partial sums in the dot so the compiler can use the
// baseline vector unit without reassociating float additions itself.

void ScoreTilePortable(const float* q, int num_q, const float* k, int num_k, int dim, float* scores,
                       int ld) {
  for (int i = 0; i < num_q; ++i) {
    const float* qi = q + static_cast<size_t>(i) * dim;
    for (int j = 0; j < num_k; ++j) {
      const float* kj = k + static_cast<size_t>(j) * dim;
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int d = 0;
      for (; d + 8 <= dim; d += 8) {
        for (int u = 0; u < 8; ++u) part[u] += qi[d + u] * kj[d + u];
      }
      float sum = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
      for (; d < dim; ++d) sum += qi[d] * kj[d];
      scores[static_cast<size_t>(i) * ld + j] = sum;
    }
  }
}

void AccumulateTilePortable(const float* p, int ld, int num_q, const float* v, int num_k, int dim,
                            float* acc) {
  for (int i = 0; i < num_q; ++i) {
    float* acc_i = acc + static_cast<size_t>(i) * dim;
    const float* p_i = p + static_cast<size_t>(i) * ld;
    for (int j = 0; j < num_k; ++j) {
      const float w = p_i[j];
      if (w == 0.f) continue;  // masked keys: skip the whole row
      const float* vj = v + static_cast<size_t>(j) * dim;
      for (int d = 0; d < dim; ++d) acc_i[d] += w * vj[d];
    }
  }
}

float ExpShiftSumPortable(float* x, int n, float shift) {
  float sum = 0.f;
  for (int j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

void HalfToFloatPortable(const Half* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

const SparseMathOps kPortableOps = {"portable", ScoreTilePortable, AccumulateTilePortable,
                                    ExpShiftSumPortable, HalfToFloatPortable};

#ifdef HYSPARSE_SPARSE_X86
// ---------------------------------------------------------------------------------------------
// AVX2 variant: 8 floats per register; the tail of a row that is not a multiple of 8 (odd head
// sizes) goes through masked loads/stores so no element past the row is touched.

#define HYSPARSE_AVX2 __attribute__((target("avx2,fma,f16c")))

HYSPARSE_AVX2 inline __m256i TailMask(int count) {  // lanes [0, count) set, count in [0, 8]
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lanes);
}

HYSPARSE_AVX2 inline float HorizontalSum(__m256 x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// NQ query rows against NK key rows at once: each key chunk is loaded once for NQ heads and the
// NQ*NK independent FMA chains hide the FMA latency.
template <int NQ, int NK>
HYSPARSE_AVX2 inline void ScoreBlockAvx2(const float* q, const float* k, int dim, float* scores,
                                         int ld) {
  __m256 acc[NQ][NK];
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < NK; ++c) acc[a][c] = _mm256_setzero_ps();
  int d = 0;
  for (; d + 8 <= dim; d += 8) {
    __m256 kv[NK];
    for (int c = 0; c < NK; ++c) kv[c] = _mm256_loadu_ps(k + static_cast<size_t>(c) * dim + d);
    for (int a = 0; a < NQ; ++a) {
      const __m256 qv = _mm256_loadu_ps(q + static_cast<size_t>(a) * dim + d);
      for (int c = 0; c < NK; ++c) acc[a][c] = _mm256_fmadd_ps(qv, kv[c], acc[a][c]);
    }
  }
  if (d < dim) {
    const __m256i mask = TailMask(dim - d);
    __m256 kv[NK];
    for (int c = 0; c < NK; ++c) kv[c] = _mm256_maskload_ps(k + static_cast<size_t>(c) * dim + d, mask);
    for (int a = 0; a < NQ; ++a) {
      const __m256 qv = _mm256_maskload_ps(q + static_cast<size_t>(a) * dim + d, mask);
      for (int c = 0; c < NK; ++c) acc[a][c] = _mm256_fmadd_ps(qv, kv[c], acc[a][c]);
    }
  }
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < NK; ++c) scores[static_cast<size_t>(a) * ld + c] = HorizontalSum(acc[a][c]);
}

template <int NQ>
HYSPARSE_AVX2 void ScoreRowsAvx2(const float* q, const float* k, int num_k, int dim, float* scores,
                                 int ld) {
  int j = 0;
  for (; j + 2 <= num_k; j += 2)
    ScoreBlockAvx2<NQ, 2>(q, k + static_cast<size_t>(j) * dim, dim, scores + j, ld);
  if (j < num_k) ScoreBlockAvx2<NQ, 1>(q, k + static_cast<size_t>(j) * dim, dim, scores + j, ld);
}

HYSPARSE_AVX2 void ScoreTileAvx2(const float* q, int num_q, const float* k, int num_k, int dim,
                                 float* scores, int ld) {
  int i = 0;
  for (; i + 4 <= num_q; i += 4)
    ScoreRowsAvx2<4>(q + static_cast<size_t>(i) * dim, k, num_k, dim, scores + static_cast<size_t>(i) * ld, ld);
  for (; i < num_q; ++i) {
    // A lone head: four keys at a time keeps four FMA chains in flight.
    const float* qi = q + static_cast<size_t>(i) * dim;
    float* si = scores + static_cast<size_t>(i) * ld;
    int j = 0;
    for (; j + 4 <= num_k; j += 4) ScoreBlockAvx2<1, 4>(qi, k + static_cast<size_t>(j) * dim, dim, si + j, ld);
    for (; j < num_k; ++j) ScoreBlockAvx2<1, 1>(qi, k + static_cast<size_t>(j) * dim, dim, si + j, ld);
  }
}

// acc rows of NQ heads for WIDTH consecutive channels stay in registers across all keys of the
// tile. kMasked: an 8-channel slice at the end of the row holding only the lanes set in `tail`.
template <int NQ, int WIDTH, bool kMasked>
HYSPARSE_AVX2 inline void AccumulateSliceAvx2(const float* p, int ld, const float* v, int num_k,
                                              int dim, float* acc, __m256i tail) {
  static_assert(!kMasked || WIDTH == 8, "only an 8-channel slice can be masked");
  constexpr int kVecs = WIDTH / 8;
  constexpr bool masked = kMasked;
  __m256 sum[NQ][kVecs];
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < kVecs; ++c) sum[a][c] = _mm256_setzero_ps();
  for (int j = 0; j < num_k; ++j) {
    const float* vj = v + static_cast<size_t>(j) * dim;
    __m256 vv[kVecs];
    if constexpr (masked) {
      vv[0] = _mm256_maskload_ps(vj, tail);
    } else {
      for (int c = 0; c < kVecs; ++c) vv[c] = _mm256_loadu_ps(vj + 8 * c);
    }
    for (int a = 0; a < NQ; ++a) {
      const __m256 w = _mm256_broadcast_ss(p + static_cast<size_t>(a) * ld + j);
      for (int c = 0; c < kVecs; ++c) sum[a][c] = _mm256_fmadd_ps(w, vv[c], sum[a][c]);
    }
  }
  for (int a = 0; a < NQ; ++a) {
    float* acc_a = acc + static_cast<size_t>(a) * dim;
    for (int c = 0; c < kVecs; ++c) {
      if constexpr (masked) {
        _mm256_maskstore_ps(acc_a, tail, _mm256_add_ps(_mm256_maskload_ps(acc_a, tail), sum[a][c]));
      } else {
        _mm256_storeu_ps(acc_a + 8 * c, _mm256_add_ps(_mm256_loadu_ps(acc_a + 8 * c), sum[a][c]));
      }
    }
  }
}

template <int NQ>
HYSPARSE_AVX2 void AccumulateRowsAvx2(const float* p, int ld, const float* v, int num_k, int dim,
                                      float* acc) {
  const __m256i all = _mm256_set1_epi32(-1);
  int d = 0;
  for (; d + 16 <= dim; d += 16) AccumulateSliceAvx2<NQ, 16, false>(p, ld, v + d, num_k, dim, acc + d, all);
  for (; d + 8 <= dim; d += 8) AccumulateSliceAvx2<NQ, 8, false>(p, ld, v + d, num_k, dim, acc + d, all);
  if (d < dim) AccumulateSliceAvx2<NQ, 8, true>(p, ld, v + d, num_k, dim, acc + d, TailMask(dim - d));
}

HYSPARSE_AVX2 void AccumulateTileAvx2(const float* p, int ld, int num_q, const float* v, int num_k,
                                      int dim, float* acc) {
  int i = 0;
  for (; i + 4 <= num_q; i += 4)
    AccumulateRowsAvx2<4>(p + static_cast<size_t>(i) * ld, ld, v, num_k, dim, acc + static_cast<size_t>(i) * dim);
  for (; i + 2 <= num_q; i += 2)
    AccumulateRowsAvx2<2>(p + static_cast<size_t>(i) * ld, ld, v, num_k, dim, acc + static_cast<size_t>(i) * dim);
  if (i < num_q)
    AccumulateRowsAvx2<1>(p + static_cast<size_t>(i) * ld, ld, v, num_k, dim, acc + static_cast<size_t>(i) * dim);
}

// exp(x) for x <= ~88: Cody-Waite reduction x = n*ln2 + r, |r| <= ln2/2, a degree-6 polynomial for
// e^r (relative error ~1e-7), and 2^n built in the exponent bits. Inputs below ln(FLT_MIN) give 0
// exactly, which is what masked scores (-inf) need.
HYSPARSE_AVX2 inline __m256 Exp8(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.33654f));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.9875691500e-4f);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.3981999507e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 er = _mm256_add_ps(_mm256_fmadd_ps(poly, r2, r), _mm256_set1_ps(1.f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(er, _mm256_castsi256_ps(bits));
  return _mm256_andnot_ps(underflow, result);
}

HYSPARSE_AVX2 float ExpShiftSumAvx2(float* x, int n, float shift) {
  const __m256 shift_v = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), shift_v));
    _mm256_storeu_ps(x + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (j < n) {
    const __m256i mask = TailMask(n - j);
    // Lanes past n read as -inf so their exp is 0 and they add nothing to the sum.
    const __m256 loaded = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(x + j, mask),
                                           _mm256_castsi256_ps(mask));
    const __m256 e = Exp8(_mm256_sub_ps(loaded, shift_v));
    _mm256_maskstore_ps(x + j, mask, e);
    sum = _mm256_add_ps(sum, e);
  }
  return HorizontalSum(sum);
}

HYSPARSE_AVX2 void HalfToFloatF16c(const Half* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

const SparseMathOps kAvx2Ops = {"avx2", ScoreTileAvx2, AccumulateTileAvx2, ExpShiftSumAvx2,
                                HalfToFloatF16c};

bool CpuHasAvx2() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return false;
  // F16C straight from CPUID (leaf 1, ECX bit 29): not every compiler's __builtin_cpu_supports
  // knows it. AVX2 above already implies the OS saves the YMM state.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
}
#endif  // HYSPARSE_SPARSE_X86

const SparseMathOps* BestSparseMathOps() {
#ifdef HYSPARSE_SPARSE_X86
  static const bool has_avx2 = CpuHasAvx2();
  if (has_avx2) return &kAvx2Ops;
#endif
  return &kPortableOps;
}

std::atomic<const SparseMathOps*> g_override{nullptr};

}  // namespace

const SparseMathOps& ActiveSparseMathOps() {
  const SparseMathOps* forced = g_override.load(std::memory_order_acquire);
  return forced ? *forced : *BestSparseMathOps();
}

std::vector<const SparseMathOps*> SupportedSparseMathOps() {
  std::vector<const SparseMathOps*> all{&kPortableOps};
  if (BestSparseMathOps() != &kPortableOps) all.push_back(BestSparseMathOps());
  return all;
}

ScopedSparseMathOverride::ScopedSparseMathOverride(const SparseMathOps* ops)
    : previous_(g_override.exchange(ops, std::memory_order_acq_rel)) {}

ScopedSparseMathOverride::~ScopedSparseMathOverride() {
  g_override.store(previous_, std::memory_order_release);
}

}  // namespace cpu
}  // namespace hysparse
