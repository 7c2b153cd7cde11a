// Tests of the CPU HySparseFullAttn kernel against a naive float64 implementation of the contract
// (docs/ops.md "HySparseFullAttn"), written here from the formulas, independent of the kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/cpu/tile_kernels.h"
#include "test_support.h"

namespace hysparse {
namespace {

using cpu::FullAttnCpuOptions;
using namespace test;

// ---------------------------------------------------------------------------------------------
// Problems.

enum class MaskKind { kNone, kLeftPad, kRightPad, kScattered };

struct Shape {
  int batch = 1;
  int heads = 1;
  int kv_heads = 1;
  int dim = 64;
  int64_t past = 0;
  int64_t fresh = 1;
  int block_size = 16;
  int top_k = 4;
  bool bnsh = false;       // 4-D [B, H, S, D] query/output instead of 3-D [B, S, H*D]
  int64_t gap = 0;         // extra elements between rows of the query/output views (0 = dense)
  MaskKind mask = MaskKind::kNone;
  float scale = 0.f;       // 0: 1/sqrt(D)
  int64_t spare_capacity = 3;  // cache slots past T (filled with NaN: must never be read)

  int64_t total() const { return past + fresh; }
  int64_t blocks() const { return (total() + block_size - 1) / block_size; }
  int64_t capacity() const { return total() + spare_capacity; }
  float resolved_scale() const { return scale != 0.f ? scale : 1.f / std::sqrt(float(dim)); }
  AttentionDims Dims() const { return {batch, heads, kv_heads, dim, fresh, total(), resolved_scale(), block_size}; }
  std::string Describe() const {
    return "B=" + std::to_string(batch) + " Hq=" + std::to_string(heads) +
           " Hkv=" + std::to_string(kv_heads) + " D=" + std::to_string(dim) +
           " P=" + std::to_string(past) + " S=" + std::to_string(fresh) +
           " bs=" + std::to_string(block_size) + " K=" + std::to_string(top_k) +
           (bnsh ? " BNSH" : " BSNH") + " gap=" + std::to_string(gap) +
           " mask=" + std::to_string(static_cast<int>(mask));
  }
};

// A shape with the given sizes and defaults for everything else.
Shape MakeShape(int batch, int heads, int kv_heads, int dim, int64_t past, int64_t fresh,
                int block_size, int top_k) {
  Shape sh;
  sh.batch = batch;
  sh.heads = heads;
  sh.kv_heads = kv_heads;
  sh.dim = dim;
  sh.past = past;
  sh.fresh = fresh;
  sh.block_size = block_size;
  sh.top_k = top_k;
  return sh;
}

// A query/output view over `heads` heads of shape: rows `gap` elements apart beyond the dense
// layout, so that a kernel writing outside its view shows up in the gaps.
HeadView MakeView(const Shape& shape, int heads) {
  HeadView v;
  if (shape.bnsh) {
    v.token_stride = shape.dim + shape.gap;
    v.head_stride = shape.fresh * v.token_stride + shape.gap;
    v.batch_stride = heads * v.head_stride + shape.gap;
  } else {
    v.head_stride = shape.dim;
    v.token_stride = int64_t{heads} * shape.dim + shape.gap;
    v.batch_stride = shape.fresh * v.token_stride + shape.gap;
  }
  return v;
}

template <typename T>
struct Problem {
  Shape shape;
  HeadView query_view;
  std::vector<T> query;
  std::vector<T> key_cache;    // [B, Hkv, capacity, D]
  std::vector<T> value_cache;
  std::vector<int64_t> mask;   // [B, T] or empty

  double Q(int64_t b, int64_t h, int64_t s, int64_t d) const {
    return FromStorage(query[query_view.Offset(b, h, s) + d]);
  }
  int64_t CacheIndex(int64_t b, int64_t g, int64_t j) const {
    return ((b * shape.kv_heads + g) * shape.capacity() + j) * shape.dim;
  }
  double K(int64_t b, int64_t g, int64_t j, int64_t d) const {
    return FromStorage(key_cache[CacheIndex(b, g, j) + d]);
  }
  double V(int64_t b, int64_t g, int64_t j, int64_t d) const {
    return FromStorage(value_cache[CacheIndex(b, g, j) + d]);
  }
  bool KeyOn(int64_t b, int64_t j) const { return mask.empty() || mask[b * shape.total() + j] != 0; }
};

std::vector<int64_t> MakeMask(const Shape& shape, std::mt19937& rng) {
  if (shape.mask == MaskKind::kNone) return {};
  const int64_t total = shape.total();
  std::vector<int64_t> mask(shape.batch * total, 1);
  for (int b = 0; b < shape.batch; ++b) {
    int64_t* row = mask.data() + b * total;
    // Row 0 stays unpadded so every batch has a row with all keys; the others pad up to 60%.
    const int64_t pad = b == 0 ? 0 : std::uniform_int_distribution<int64_t>(1, total * 3 / 5 + 1)(rng);
    switch (shape.mask) {
      case MaskKind::kLeftPad:
        std::fill(row, row + std::min(pad, total), 0);
        break;
      case MaskKind::kRightPad:
        std::fill(row + total - std::min(pad, total), row + total, 0);
        break;
      case MaskKind::kScattered:
        for (int64_t j = 0; j < total; ++j) row[j] = (rng() % 4 == 0) ? 0 : 1;
        break;
      case MaskKind::kNone:
        break;
    }
  }
  return mask;
}

template <typename T>
Problem<T> MakeProblem(const Shape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Problem<T> p;
  p.shape = shape;
  p.query_view = MakeView(shape, shape.heads);
  // Query gaps hold NaN: reading them would poison the output.
  p.query.assign(shape.batch * p.query_view.batch_stride, PoisonValue<T>());
  for (int b = 0; b < shape.batch; ++b)
    for (int h = 0; h < shape.heads; ++h)
      for (int64_t s = 0; s < shape.fresh; ++s)
        for (int d = 0; d < shape.dim; ++d)
          // Wider than unit variance so that softmax rows and block scores are far from uniform.
          p.query[p.query_view.Offset(b, h, s) + d] = ToStorage<T>(2.0 * normal(rng));
  const size_t cache_size = size_t(shape.batch) * shape.kv_heads * shape.capacity() * shape.dim;
  p.key_cache.assign(cache_size, PoisonValue<T>());
  p.value_cache.assign(cache_size, PoisonValue<T>());
  for (int b = 0; b < shape.batch; ++b)
    for (int g = 0; g < shape.kv_heads; ++g)
      for (int64_t j = 0; j < shape.total(); ++j)
        for (int d = 0; d < shape.dim; ++d) {
          p.key_cache[p.CacheIndex(b, g, j) + d] = ToStorage<T>(normal(rng));
          p.value_cache[p.CacheIndex(b, g, j) + d] = ToStorage<T>(normal(rng));
        }
  p.mask = MakeMask(shape, rng);
  return p;
}

// ---------------------------------------------------------------------------------------------
// The float64 reference, straight from docs/ops.md.

struct Reference {
  std::vector<double> output;        // [B, Hq, S, D]
  std::vector<double> group_scores;  // [B, Hkv, S, nb]
  std::vector<char> eligible;        // [B, S, nb]
};

template <typename T>
Reference ComputeReference(const Problem<T>& p) {
  const Shape& sh = p.shape;
  const int64_t T_len = sh.total(), S = sh.fresh, P = sh.past, nb = sh.blocks(), D = sh.dim;
  const int64_t group = sh.heads / sh.kv_heads;
  const double scale = sh.resolved_scale();
  Reference ref;
  ref.output.assign(sh.batch * sh.heads * S * D, 0.0);
  ref.group_scores.assign(sh.batch * sh.kv_heads * S * nb, 0.0);
  ref.eligible.assign(sh.batch * S * nb, 0);
  std::vector<double> logits(T_len);
  for (int64_t b = 0; b < sh.batch; ++b) {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = P + s;
      const bool query_on = p.KeyOn(b, t);
      for (int64_t h = 0; h < sh.heads; ++h) {
        const int64_t g = h / group;
        if (!query_on) continue;  // padding token: output 0, scores 0
        double max_logit = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          if (!p.KeyOn(b, j)) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += p.Q(b, h, s, d) * p.K(b, g, j, d);
          logits[j] = scale * dot;
          max_logit = std::max(max_logit, logits[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= t; ++j)
          if (p.KeyOn(b, j)) sum += std::exp(logits[j] - max_logit);
        const double lse = max_logit + std::log(sum);
        double* out = &ref.output[((b * sh.heads + h) * S + s) * D];
        double* scores = &ref.group_scores[((b * sh.kv_heads + g) * S + s) * nb];
        for (int64_t j = 0; j <= t; ++j) {
          if (!p.KeyOn(b, j)) continue;
          const double prob = std::exp(logits[j] - lse);
          for (int64_t d = 0; d < D; ++d) out[d] += prob * p.V(b, g, j, d);
          double& block_score = scores[j / sh.block_size];
          block_score = std::max(block_score, prob);
          ref.eligible[(b * S + s) * nb + j / sh.block_size] = 1;
        }
      }
    }
  }
  return ref;
}

// ---------------------------------------------------------------------------------------------
// Running the kernel.

struct Requests {
  bool indices = true;
  bool scores = true;
  bool selected_key = true;
  bool selected_value = true;
};

template <typename T>
struct Outputs {
  std::vector<T> output;
  std::vector<int32_t> indices;
  std::vector<float> scores;
  std::vector<T> selected_key;
  std::vector<T> selected_value;
};

constexpr int32_t kIndexPoison = -7;

template <typename T>
Outputs<T> RunKernel(const Problem<T>& p, const Executor& exec, const Requests& want = {},
               const FullAttnCpuOptions& options = {}) {
  const Shape& sh = p.shape;
  FullAttnArgs<T> args;
  args.dims() = sh.Dims();
  args.top_k = sh.top_k;
  args.query = p.query.data();
  args.query_view = p.query_view;
  args.key_cache = p.key_cache.data();
  args.value_cache = p.value_cache.data();
  args.cache_capacity = sh.capacity();
  args.attention_mask = p.mask.empty() ? nullptr : p.mask.data();

  Outputs<T> out;
  args.output_view = MakeView(sh, sh.heads);
  out.output.assign(sh.batch * args.output_view.batch_stride, PoisonValue<T>());
  args.output = out.output.data();
  const size_t rows = size_t(sh.batch) * sh.kv_heads * sh.fresh;
  if (want.indices) {
    out.indices.assign(rows * sh.top_k, kIndexPoison);
    args.block_indices = out.indices.data();
  }
  if (want.scores) {
    out.scores.assign(rows * sh.blocks(), std::numeric_limits<float>::quiet_NaN());
    args.block_scores = out.scores.data();
  }
  const size_t gathered = rows * sh.top_k * sh.block_size * sh.dim;
  if (want.selected_key) {
    out.selected_key.assign(gathered, PoisonValue<T>());
    args.selected_key = out.selected_key.data();
  }
  if (want.selected_value) {
    out.selected_value.assign(gathered, PoisonValue<T>());
    args.selected_value = out.selected_value.data();
  }
  cpu::RunFullAttnCpu(args, exec, options);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Checks.

struct Tolerances {
  double output_abs, output_rel;
  double score_abs, score_rel;
};
constexpr Tolerances kFloatTolerances{2e-5, 2e-5, 1e-6, 2e-5};
// float16 storage: the output is rounded to half (relative spacing 2^-10) after float32 arithmetic.
constexpr Tolerances kHalfTolerances{1e-3, 2e-3, 1e-6, 2e-5};

template <typename T>
void CheckOutput(const Problem<T>& p, const Outputs<T>& out, const Reference& ref,
                 const Tolerances& tol) {
  const Shape& sh = p.shape;
  const HeadView view = MakeView(sh, sh.heads);
  int failures = 0;
  for (int64_t b = 0; b < sh.batch; ++b)
    for (int64_t h = 0; h < sh.heads; ++h)
      for (int64_t s = 0; s < sh.fresh; ++s)
        for (int64_t d = 0; d < sh.dim; ++d) {
          const double got = FromStorage(out.output[view.Offset(b, h, s) + d]);
          const double want = ref.output[((b * sh.heads + h) * sh.fresh + s) * sh.dim + d];
          if (!(std::fabs(got - want) <= tol.output_abs + tol.output_rel * std::fabs(want)) &&
              failures++ < 5)
            ADD_FAILURE() << sh.Describe() << ": output (b=" << b << ", h=" << h << ", s=" << s
                          << ", d=" << d << ") = " << got << ", reference " << want;
        }
  if (sh.gap > 0) {
    // Everything outside the view must still hold the poison.
    std::vector<char> covered(out.output.size(), 0);
    for (int64_t b = 0; b < sh.batch; ++b)
      for (int64_t h = 0; h < sh.heads; ++h)
        for (int64_t s = 0; s < sh.fresh; ++s)
          std::fill_n(covered.begin() + view.Offset(b, h, s), sh.dim, 1);
    for (size_t i = 0; i < out.output.size(); ++i)
      if (!covered[i] && !IsPoison(out.output[i]) && failures++ < 5)
        ADD_FAILURE() << sh.Describe() << ": output element " << i << " outside the view was written";
  }
}

// Checks block_indices against the contract: for each token, min(K, eligible) eligible blocks in
// strictly ascending order then -1; the set is a top-K under the reference scores (up to the
// float32 error of near-ties) and exactly the contract's choice under the kernel's own float32
// scores (when those were requested), ties going to the lower block.
template <typename T>
void CheckSelection(const Problem<T>& p, const Outputs<T>& out, const Reference& ref,
                    const Tolerances& tol) {
  const Shape& sh = p.shape;
  const int64_t S = sh.fresh, nb = sh.blocks(), K = sh.top_k;
  int failures = 0;
  const auto fail = [&](const std::string& what) {
    if (failures++ < 5) ADD_FAILURE() << sh.Describe() << ": " << what;
  };
  for (int64_t b = 0; b < sh.batch; ++b)
    for (int64_t g = 0; g < sh.kv_heads; ++g)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t row = (b * sh.kv_heads + g) * S + s;
        const std::string where =
            "(b=" + std::to_string(b) + ", g=" + std::to_string(g) + ", s=" + std::to_string(s) + ")";
        const double* ref_scores = &ref.group_scores[row * nb];
        const char* eligible = &ref.eligible[(b * S + s) * nb];
        if (!out.scores.empty()) {
          for (int64_t i = 0; i < nb; ++i) {
            const double got = out.scores[row * nb + i];
            if (!(std::fabs(got - ref_scores[i]) <= tol.score_abs + tol.score_rel * ref_scores[i]))
              fail("block_scores" + where + "[" + std::to_string(i) + "] = " + std::to_string(got) +
                   ", reference " + std::to_string(ref_scores[i]));
          }
        }
        if (out.indices.empty()) continue;
        const int32_t* idx = &out.indices[row * K];
        const int64_t num_eligible = std::count(eligible, eligible + nb, 1);
        const int64_t expected_count = std::min<int64_t>(K, num_eligible);
        std::vector<char> chosen(nb, 0);
        for (int64_t k = 0; k < K; ++k) {
          if (k >= expected_count) {
            if (idx[k] != -1) fail("block_indices" + where + " slot " + std::to_string(k) + " = " + std::to_string(idx[k]) + ", want -1");
            continue;
          }
          if (idx[k] < 0 || idx[k] >= nb || !eligible[idx[k]] || (k > 0 && idx[k] <= idx[k - 1])) {
            fail("block_indices" + where + " slot " + std::to_string(k) + " = " + std::to_string(idx[k]) +
                 " is not an eligible block in ascending order");
            continue;
          }
          chosen[idx[k]] = 1;
        }
        if (expected_count == 0) continue;
        double worst_chosen = INFINITY, best_left = -INFINITY;
        for (int64_t i = 0; i < nb; ++i) {
          if (!eligible[i]) continue;
          if (chosen[i]) worst_chosen = std::min(worst_chosen, ref_scores[i]);
          else best_left = std::max(best_left, ref_scores[i]);
        }
        if (best_left > worst_chosen + tol.score_abs + tol.score_rel * best_left)
          fail("block_indices" + where + " is not a top-K: a chosen block scores " +
               std::to_string(worst_chosen) + ", an unchosen one " + std::to_string(best_left));
        if (!out.scores.empty()) {
          // Exact rule on the kernel's own scores: rank eligible blocks by (score desc, index asc).
          std::vector<int64_t> order;
          for (int64_t i = 0; i < nb; ++i)
            if (eligible[i]) order.push_back(i);
          const float* got_scores = &out.scores[row * nb];
          std::stable_sort(order.begin(), order.end(),
                           [&](int64_t a, int64_t c) { return got_scores[a] > got_scores[c]; });
          order.resize(expected_count);
          std::sort(order.begin(), order.end());
          for (int64_t k = 0; k < expected_count; ++k)
            if (order[k] != idx[k])
              fail("block_indices" + where + " slot " + std::to_string(k) + " = " +
                   std::to_string(idx[k]) + " but the kernel's own scores rank block " +
                   std::to_string(order[k]) + " there");
        }
      }
}

// selected_key/value hold exactly the cache rows of the chosen blocks (zero past T and for -1 slots).
template <typename T>
void CheckGathered(const Problem<T>& p, const std::vector<int32_t>& indices,
                   const std::vector<T>& gathered, const std::vector<T>& cache, const char* name) {
  const Shape& sh = p.shape;
  const int64_t K = sh.top_k, bs = sh.block_size, D = sh.dim;
  int failures = 0;
  for (int64_t b = 0; b < sh.batch; ++b)
    for (int64_t g = 0; g < sh.kv_heads; ++g)
      for (int64_t s = 0; s < sh.fresh; ++s) {
        const int64_t row = (b * sh.kv_heads + g) * sh.fresh + s;
        for (int64_t k = 0; k < K; ++k) {
          const int32_t block = indices[row * K + k];
          for (int64_t r = 0; r < bs; ++r) {
            const int64_t position = int64_t{block} * bs + r;
            const bool copied = block >= 0 && position < sh.total();
            const T* got = &gathered[((row * K + k) * bs + r) * D];
            for (int64_t d = 0; d < D; ++d) {
              const T want = copied ? cache[p.CacheIndex(b, g, position) + d] : ToStorage<T>(0.0);
              if (std::memcmp(&got[d], &want, sizeof(T)) != 0 && failures++ < 5)
                ADD_FAILURE() << sh.Describe() << ": " << name << " (b=" << b << ", g=" << g
                              << ", s=" << s << ", slot " << k << ", row " << r << ", d=" << d
                              << ") = " << FromStorage(got[d]) << ", want "
                              << FromStorage(want);
            }
          }
        }
      }
}

template <typename T>
void CheckAll(const Problem<T>& p, const Outputs<T>& out, const Reference& ref,
              const Tolerances& tol) {
  CheckOutput(p, out, ref, tol);
  CheckSelection(p, out, ref, tol);
  if (!out.selected_key.empty()) CheckGathered(p, out.indices, out.selected_key, p.key_cache, "selected_key");
  if (!out.selected_value.empty()) CheckGathered(p, out.indices, out.selected_value, p.value_cache, "selected_value");
}

template <typename V>
void ExpectBitwiseEqual(const std::vector<V>& a, const std::vector<V>& b, const char* name) {
  ASSERT_EQ(a.size(), b.size()) << name;
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(V))) << name << " differs";
}

template <typename T>
void ExpectIdentical(const Outputs<T>& a, const Outputs<T>& b) {
  ExpectBitwiseEqual(a.output, b.output, "output");
  ExpectBitwiseEqual(a.indices, b.indices, "block_indices");
  ExpectBitwiseEqual(a.scores, b.scores, "block_scores");
  ExpectBitwiseEqual(a.selected_key, b.selected_key, "selected_key");
  ExpectBitwiseEqual(a.selected_value, b.selected_value, "selected_value");
}

// ---------------------------------------------------------------------------------------------
// Shape sweep: every head ratio from {1,2,4,8}, D in {64, 128, odd}, both layouts (dense and
// gapped), all mask kinds, P = 0 and P > 0, decode and prefill, T off block boundaries, block
// sizes from 1 up, top_k from 1 to beyond the block count.

std::vector<Shape> SweepShapes(int count, uint32_t seed) {
  static const int kHeadPairs[][2] = {{1, 1}, {2, 1}, {2, 2}, {4, 1}, {4, 2},
                                      {4, 4}, {8, 1}, {8, 2}, {8, 4}, {8, 8}};
  static const int kDims[] = {64, 128, 37};
  static const int kBlockSizes[] = {16, 7, 32, 1, 64, 5};
  static const MaskKind kMasks[] = {MaskKind::kNone, MaskKind::kLeftPad, MaskKind::kRightPad,
                                    MaskKind::kScattered};
  std::mt19937 rng(seed);
  std::vector<Shape> shapes;
  for (int i = 0; i < count; ++i) {
    Shape sh;
    sh.heads = kHeadPairs[i % 10][0];
    sh.kv_heads = kHeadPairs[i % 10][1];
    sh.dim = kDims[i % 3];
    sh.mask = kMasks[(i / 2) % 4];
    sh.bnsh = i % 2 == 1;
    sh.gap = (i % 5 == 2) ? 3 : 0;
    sh.batch = 1 + static_cast<int>(rng() % 3);
    sh.past = (i % 4 == 0) ? 0 : static_cast<int64_t>(rng() % 150);
    sh.fresh = (i % 3 == 1) ? 1 : 1 + static_cast<int64_t>(rng() % 70);
    sh.block_size = kBlockSizes[i % 6];
    const int64_t nb = sh.blocks();
    switch (i % 4) {
      case 0: sh.top_k = 1; break;
      case 1: sh.top_k = static_cast<int>(nb + rng() % 3); break;  // K >= nb
      case 2: sh.top_k = 3; break;
      default: sh.top_k = static_cast<int>(1 + rng() % std::max<int64_t>(1, nb)); break;
    }
    sh.scale = (i % 7 == 3) ? 0.05f : 0.f;
    shapes.push_back(sh);
  }
  return shapes;
}

template <typename T>
void RunSweep(int count, uint32_t seed, const Tolerances& tol, const FullAttnCpuOptions& options) {
  const SerialExecutor serial;
  const ThreadedExecutor threaded(3);
  for (const Shape& sh : SweepShapes(count, seed)) {
    SCOPED_TRACE(sh.Describe());
    const Problem<T> p = MakeProblem<T>(sh, seed + static_cast<uint32_t>(sh.past * 131 + sh.fresh));
    const Reference ref = ComputeReference(p);
    const Outputs<T> out = RunKernel(p, serial, {}, options);
    CheckAll(p, out, ref, tol);
    // Work is cut by shape alone, so any thread count or task order gives identical bits.
    ExpectIdentical(out, RunKernel(p, threaded, {}, options));
    if (::testing::Test::HasFailure()) return;
  }
}

TEST(FullAttnCpu, MatchesReferenceFloat) { RunSweep<float>(60, 11, kFloatTolerances, {}); }

TEST(FullAttnCpu, MatchesReferenceHalf) { RunSweep<Half>(30, 23, kHalfTolerances, {}); }

TEST(FullAttnCpu, EveryTileLoopBuildMatchesReference) {
  for (const cpu::TileKernels* kernels : cpu::AvailableTileKernels()) {
    SCOPED_TRACE(kernels->name);
    FullAttnCpuOptions options;
    options.kernels = kernels;
    RunSweep<float>(20, 37, kFloatTolerances, options);
    RunSweep<Half>(8, 41, kHalfTolerances, options);
  }
}

TEST(FullAttnCpu, SmallQueryTilesAndForcedKeySplitsMatchReference) {
  // One position per task, and key chunks of a couple of blocks: exercises rows of several positions
  // per register block, chunks entirely in a tile's future, and the chunk merge for prefill.
  for (const int64_t query_tile : {1, 3}) {
    for (const int64_t split : {int64_t{-1}, int64_t{20}}) {
      FullAttnCpuOptions options;
      options.query_tile = query_tile;
      options.kv_split = split;
      RunSweep<float>(20, 53 + static_cast<uint32_t>(query_tile), kFloatTolerances, options);
    }
  }
}

// float16 caches converted to float32 once per call (prefill) or tile by tile: same floats, so the
// same bits, and both right.
TEST(FullAttnCpu, HalfCacheConvertedOnceEqualsPerTileConversion) {
  std::vector<Shape> shapes = SweepShapes(24, 29);
  Shape prefill = MakeShape(2, 8, 2, 64, 45, 150, 16, 4);  // 5 query tiles of 32 positions
  prefill.mask = MaskKind::kScattered;
  shapes.push_back(prefill);
  FullAttnCpuOptions once, per_tile;
  once.convert_cache = 1;
  per_tile.convert_cache = -1;
  const SerialExecutor serial;
  for (const Shape& sh : shapes) {
    SCOPED_TRACE(sh.Describe());
    const Problem<Half> p = MakeProblem<Half>(sh, 71 + static_cast<uint32_t>(sh.fresh));
    const Outputs<Half> converted = RunKernel(p, ThreadedExecutor(3), {}, once);
    CheckAll(p, converted, ComputeReference(p), kHalfTolerances);
    ExpectIdentical(converted, RunKernel(p, serial, {}, per_tile));
    if (::testing::Test::HasFailure()) return;
  }
}

// ---------------------------------------------------------------------------------------------
// Split-KV decode.

TEST(FullAttnCpu, SplitKvDecodeMatchesUnsplit) {
  Shape sh = MakeShape(2, 8, 2, 128, 3000, 1, 64, 8);
  sh.mask = MaskKind::kLeftPad;
  const Problem<float> p = MakeProblem<float>(sh, 97);
  const SerialExecutor serial;
  FullAttnCpuOptions unsplit;
  unsplit.kv_split = -1;
  const Outputs<float> whole = RunKernel(p, serial, {}, unsplit);
  CheckAll(p, whole, ComputeReference(p), kFloatTolerances);
  FullAttnCpuOptions forced;
  forced.kv_split = 300;  // rounded up to 320: chunks of 5 blocks, the last one short
  for (const FullAttnCpuOptions& options : {FullAttnCpuOptions{}, forced}) {
    const Outputs<float> split = RunKernel(p, ThreadedExecutor(2), {}, options);
    for (size_t i = 0; i < whole.output.size(); ++i)
      ASSERT_NEAR(split.output[i], whole.output[i], 1e-6 + 1e-6 * std::fabs(whole.output[i])) << i;
    for (size_t i = 0; i < whole.scores.size(); ++i)
      ASSERT_NEAR(split.scores[i], whole.scores[i], 1e-6 * whole.scores[i] + 1e-9) << i;
    EXPECT_EQ(split.indices, whole.indices);
    ExpectBitwiseEqual(split.selected_key, whole.selected_key, "selected_key");
    ExpectBitwiseEqual(split.selected_value, whole.selected_value, "selected_value");
  }
}

// ---------------------------------------------------------------------------------------------
// Optional outputs.

TEST(FullAttnCpu, EachSelectionOutputIsIndependent) {
  Shape sh = MakeShape(2, 4, 2, 64, 40, 30, 8, 3);
  sh.mask = MaskKind::kRightPad;
  const Problem<float> p = MakeProblem<float>(sh, 5);
  const SerialExecutor serial;
  const Outputs<float> all = RunKernel(p, serial);
  CheckAll(p, all, ComputeReference(p), kFloatTolerances);

  Requests none{false, false, false, false};
  const Outputs<float> bare = RunKernel(p, serial, none);
  ExpectBitwiseEqual(bare.output, all.output, "output without selection");
  EXPECT_TRUE(bare.indices.empty() && bare.scores.empty() && bare.selected_key.empty() &&
              bare.selected_value.empty());

  for (int which = 0; which < 4; ++which) {
    Requests one{which == 0, which == 1, which == 2, which == 3};
    const Outputs<float> part = RunKernel(p, serial, one);
    ExpectBitwiseEqual(part.output, all.output, "output");
    if (one.indices) ExpectBitwiseEqual(part.indices, all.indices, "block_indices alone");
    if (one.scores) ExpectBitwiseEqual(part.scores, all.scores, "block_scores alone");
    if (one.selected_key) ExpectBitwiseEqual(part.selected_key, all.selected_key, "selected_key alone");
    if (one.selected_value)
      ExpectBitwiseEqual(part.selected_value, all.selected_value, "selected_value alone");
  }
}

// ---------------------------------------------------------------------------------------------
// Selection rules on constructed data.

// All keys equal: every eligible block of a token has the same score, so the lowest eligible blocks
// win; the mask removes some blocks from eligibility.
TEST(FullAttnCpu, EqualScoresPickLowestEligibleBlocks) {
  Shape sh = MakeShape(2, 4, 2, 40, 50, 9, 6, 4);
  sh.spare_capacity = 0;
  Problem<float> p = MakeProblem<float>(sh, 77);
  for (int64_t b = 0; b < sh.batch; ++b)
    for (int64_t g = 0; g < sh.kv_heads; ++g)
      for (int64_t j = 0; j < sh.total(); ++j)
        for (int64_t d = 0; d < sh.dim; ++d)
          p.key_cache[p.CacheIndex(b, g, j) + d] = p.key_cache[p.CacheIndex(b, g, 0) + d];
  // Batch row 1: blocks 0 and 2 entirely padding.
  p.mask.assign(sh.batch * sh.total(), 1);
  for (int64_t j = 0; j < sh.block_size; ++j) {
    p.mask[sh.total() + j] = 0;
    p.mask[sh.total() + 2 * sh.block_size + j] = 0;
  }
  for (const cpu::TileKernels* kernels : cpu::AvailableTileKernels()) {
    SCOPED_TRACE(kernels->name);
    FullAttnCpuOptions options;
    options.kernels = kernels;
    const Outputs<float> out = RunKernel(p, SerialExecutor(), {}, options);
    CheckAll(p, out, ComputeReference(p), kFloatTolerances);
    const std::vector<int32_t> want_row0 = {0, 1, 2, 3};
    const std::vector<int32_t> want_row1 = {1, 3, 4, 5};
    for (int64_t b = 0; b < sh.batch; ++b)
      for (int64_t g = 0; g < sh.kv_heads; ++g)
        for (int64_t s = 0; s < sh.fresh; ++s) {
          const int32_t* idx = &out.indices[((b * sh.kv_heads + g) * sh.fresh + s) * sh.top_k];
          EXPECT_EQ(std::vector<int32_t>(idx, idx + sh.top_k), b == 0 ? want_row0 : want_row1)
              << "b=" << b << " g=" << g << " s=" << s;
        }
  }
}

// One dominant key makes every other probability underflow to 0 in float32: blocks scoring exactly 0
// are still eligible and fill the remaining slots (lowest first); ineligible ones never do.
TEST(FullAttnCpu, ZeroScoreBlocksStayEligible) {
  Shape sh = MakeShape(1, 1, 1, 4, 0, 8, 2, 3);
  sh.scale = 1.f;
  Problem<float> p = MakeProblem<float>(sh, 3);
  for (int64_t s = 0; s < sh.fresh; ++s)
    for (int d = 0; d < sh.dim; ++d) p.query[p.query_view.Offset(0, 0, s) + d] = d == 0 ? 1.f : 0.f;
  for (int64_t j = 0; j < sh.total(); ++j)
    for (int d = 0; d < sh.dim; ++d) p.key_cache[p.CacheIndex(0, 0, j) + d] = (j == 0 && d == 0) ? 200.f : 0.f;
  p.mask.assign(sh.total(), 1);
  p.mask[2] = p.mask[3] = 0;  // block 1 has no valid key
  const Outputs<float> out = RunKernel(p, SerialExecutor());
  CheckAll(p, out, ComputeReference(p), kFloatTolerances);
  // Token 7 (position 7): eligible blocks 0, 2, 3; block 0 scores 1, the others 0.
  const int32_t* idx = &out.indices[7 * sh.top_k];
  EXPECT_EQ(std::vector<int32_t>(idx, idx + 3), (std::vector<int32_t>{0, 2, 3}));
  EXPECT_EQ(out.scores[7 * sh.blocks() + 0], 1.f);
  EXPECT_EQ(out.scores[7 * sh.blocks() + 2], 0.f);
  // Token 2 is padding: no output, no blocks.
  for (int d = 0; d < sh.dim; ++d) EXPECT_EQ(out.output[p.query_view.Offset(0, 0, 2) + d], 0.f);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(out.indices[2 * sh.top_k + k], -1);
}

}  // namespace
}  // namespace hysparse
