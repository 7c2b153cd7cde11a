// Every TileKernels implementation the CPU can run (portable, AVX2, AVX-512) against float64 loops
// written here, on the tile shapes of both attention kernels, and the choice of implementation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cpu/tile_kernels.h"

namespace hysparse {
namespace {

// A kMaxTileKeys x dim scratch for prepare_keys on a 64-byte boundary, as the kernels provide it.
class KeyLayoutScratch {
 public:
  explicit KeyLayoutScratch(int dim) : storage_(static_cast<size_t>(cpu::kMaxTileKeys) * dim + 16) {}
  float* get() {
    const uintptr_t misalignment = reinterpret_cast<uintptr_t>(storage_.data()) % 64;
    return storage_.data() + (64 - misalignment) % 64 / sizeof(float);
  }

 private:
  std::vector<float> storage_;
};

TEST(TileKernels, PortableFirstAndTheFastestChosen) {
  const std::vector<const cpu::TileKernels*> all = cpu::AvailableTileKernels();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.front(), &cpu::PortableTileKernels());
  EXPECT_STREQ(all.front()->name, "portable");
  EXPECT_EQ(&cpu::BestTileKernels(), all.back()) << "the kernels must run the fastest build";
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  __builtin_cpu_init();
  const auto has = [&](const char* name) {
    return std::any_of(all.begin(), all.end(),
                       [&](const cpu::TileKernels* k) { return std::strcmp(k->name, name) == 0; });
  };
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) EXPECT_TRUE(has("avx2"));
  if (__builtin_cpu_supports("avx512f")) EXPECT_STREQ(cpu::BestTileKernels().name, "avx512");
#endif
}

// General shapes: strided rows, up to kMaxTileKeys keys, rescaled accumulators (the full kernel's
// tiles), plus the exponentials, maxima and half conversions.
TEST(TileKernels, MatchFloat64) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (const cpu::TileKernels* k : cpu::AvailableTileKernels()) {
    SCOPED_TRACE(k->name);
    for (const int dim : {1, 7, 8, 13, 64, 128, 131}) {
      for (const int rows : {1, 2, 3, 4, 5, 9}) {
        const int keys = 1 + static_cast<int>(rng() % cpu::kMaxTileKeys);
        const int64_t ld_q = dim + 2, ld_k = dim + 1, ld_s = keys + 3, ld_v = dim + 5, ld_acc = dim + 1;
        std::vector<float> q(rows * ld_q), kk(keys * ld_k), v(keys * ld_v), acc(rows * ld_acc);
        std::vector<float> p(rows * ld_s), rescale(rows);
        for (float& x : q) x = normal(rng);
        for (float& x : kk) x = normal(rng);
        for (float& x : v) x = normal(rng);
        for (float& x : acc) x = normal(rng);
        for (float& x : p) x = std::fabs(normal(rng));
        for (float& x : rescale) x = std::fabs(normal(rng));
        KeyLayoutScratch layout(dim);
        // Few query rows and many: some builds lay the keys out differently for each.
        for (const int64_t query_rows : {int64_t{rows}, int64_t{64}}) {
          std::vector<float> scores(rows * ld_s, -5.f);
          const cpu::PreparedKeys prepared =
              k->prepare_keys(kk.data(), ld_k, keys, dim, query_rows, layout.get());
          k->dot_rows(q.data(), ld_q, rows, prepared, keys, dim, scores.data(), ld_s);
          for (int r = 0; r < rows; ++r)
            for (int j = 0; j < ld_s; ++j) {
              if (j >= keys) {
                EXPECT_EQ(scores[r * ld_s + j], -5.f) << "written past num_keys";
                continue;
              }
              double want = 0;
              for (int d = 0; d < dim; ++d) want += double(q[r * ld_q + d]) * kk[j * ld_k + d];
              EXPECT_NEAR(scores[r * ld_s + j], want, 1e-5 * (1 + std::sqrt(double(dim))))
                  << "query_rows " << query_rows;
            }
        }
        std::vector<float> updated = acc;
        k->accumulate_pv(p.data(), ld_s, rows, rescale.data(), v.data(), ld_v, keys, dim,
                         updated.data(), ld_acc);
        for (int r = 0; r < rows; ++r)
          for (int d = 0; d < ld_acc; ++d) {
            if (d >= dim) {
              EXPECT_EQ(updated[r * ld_acc + d], acc[r * ld_acc + d]) << "written past dim";
              continue;
            }
            double want = double(acc[r * ld_acc + d]) * rescale[r];
            for (int j = 0; j < keys; ++j) want += double(p[r * ld_s + j]) * v[j * ld_v + d];
            EXPECT_NEAR(updated[r * ld_acc + d], want, 1e-5 * (1 + std::fabs(want)));
          }
      }
    }
    for (const int n : {0, 1, 5, 8, 17, 64, 100}) {
      std::vector<float> x(n);
      for (float& e : x) e = normal(rng) * 30.f;
      if (n > 3) x[2] = -std::numeric_limits<float>::infinity();
      if (n > 4) x[n - 1] = -200.f;  // underflows
      const float shift = n > 0 ? *std::max_element(x.begin(), x.end()) : 0.f;
      EXPECT_EQ(k->max(x.data(), n), n > 0 ? shift : -std::numeric_limits<float>::infinity());
      std::vector<float> e = x;
      const float sum = k->exp_shift_sum(e.data(), n, shift);
      double want_sum = 0;
      for (int i = 0; i < n; ++i) {
        // The difference is taken in float32 (as the kernel does); the exponential itself must be
        // accurate to a few ulp.
        const double want = std::exp(double(x[i] - shift));
        want_sum += want;
        EXPECT_NEAR(e[i], want, 3e-7 * want + 1e-37) << "x=" << x[i];
      }
      EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
    }
    // Half conversion agrees bit for bit with the software conversion, for every half value and a
    // spread of floats (normals, subnormals, overflow, ties).
    std::vector<Half> halves(65536);
    for (int i = 0; i < 65536; ++i) halves[i] = Half{static_cast<uint16_t>(i)};
    std::vector<float> widened(65536);
    k->half_to_float(halves.data(), widened.data(), 65536);
    for (int i = 0; i < 65536; ++i) {
      const float want = HalfToFloat(halves[i]);
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(widened[i])) << i;
      } else {
        EXPECT_EQ(std::memcmp(&widened[i], &want, sizeof(float)), 0) << i;
      }
    }
    std::vector<float> floats(4099);
    for (size_t i = 0; i < floats.size(); ++i) {
      const int kind = static_cast<int>(i % 4);
      floats[i] = kind == 0 ? normal(rng) * 1000.f
                : kind == 1 ? normal(rng) * 1e-6f
                : kind == 2 ? normal(rng) * 1e5f
                            : HalfToFloat(Half{static_cast<uint16_t>(rng() & 0x7BFF)}) * (1.f + 1.f / 2048);
    }
    std::vector<Half> narrowed(floats.size());
    k->float_to_half(floats.data(), narrowed.data(), static_cast<int64_t>(floats.size()));
    for (size_t i = 0; i < floats.size(); ++i)
      EXPECT_EQ(narrowed[i].bits, FloatToHalf(floats[i]).bits) << floats[i];
  }
}


// The sparse kernel's tiles: contiguous query and key/value rows (leading dimension = dim), chunks
// of up to 32 keys, scores in rows of a wider tile, accumulators updated without rescaling.
TEST(TileKernels, SparseChunkShapesMatchFloat64) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (const cpu::TileKernels* kernels : cpu::AvailableTileKernels()) {
    SCOPED_TRACE(kernels->name);
    for (int dim : {1, 5, 8, 13, 64, 67, 128}) {
      KeyLayoutScratch layout(dim);
      for (int num_q : {1, 2, 3, 4, 5, 8}) {
        for (int num_k : {1, 2, 7, 32}) {
          const int ld = num_k + 3;
          std::vector<float> q(static_cast<size_t>(num_q) * dim), k(static_cast<size_t>(num_k) * dim);
          for (float& x : q) x = dist(rng);
          for (float& x : k) x = dist(rng);
          std::vector<float> scores(static_cast<size_t>(num_q) * ld, 123.f);
          const cpu::PreparedKeys keys = kernels->prepare_keys(k.data(), dim, num_k, dim, num_q, layout.get());
          kernels->dot_rows(q.data(), dim, num_q, keys, num_k, dim, scores.data(), ld);
          for (int i = 0; i < num_q; ++i)
            for (int j = 0; j < ld; ++j) {
              if (j >= num_k) {
                EXPECT_EQ(scores[i * ld + j], 123.f) << "wrote past num_k";
                continue;
              }
              double want = 0, magnitude = 0;  // float32 rounding is relative to sum |terms|
              for (int d = 0; d < dim; ++d) {
                want += static_cast<double>(q[i * dim + d]) * k[j * dim + d];
                magnitude += std::fabs(static_cast<double>(q[i * dim + d]) * k[j * dim + d]);
              }
              EXPECT_NEAR(scores[i * ld + j], want, 1e-6 * magnitude + 1e-7) << dim << " " << num_q << " " << num_k;
            }

          std::vector<float> acc(static_cast<size_t>(num_q) * dim);
          for (float& x : acc) x = dist(rng);
          std::vector<double> want_acc(acc.begin(), acc.end()), magnitude(acc.size());
          for (size_t e = 0; e < acc.size(); ++e) magnitude[e] = std::fabs(acc[e]);
          for (int i = 0; i < num_q; ++i)
            for (int j = 0; j < num_k; ++j)
              for (int d = 0; d < dim; ++d) {
                const double term = static_cast<double>(scores[i * ld + j]) * k[j * dim + d];
                want_acc[i * dim + d] += term;
                magnitude[i * dim + d] += std::fabs(term);
              }
          const std::vector<float> unscaled(num_q, 1.f);
          kernels->accumulate_pv(scores.data(), ld, num_q, unscaled.data(), k.data(), dim, num_k, dim,
                                 acc.data(), dim);
          for (size_t e = 0; e < acc.size(); ++e) EXPECT_NEAR(acc[e], want_acc[e], 1e-6 * magnitude[e] + 1e-7);
        }
      }
    }
    for (int n : {1, 7, 8, 9, 32}) {
      std::vector<float> x(n + 1, 55.f);
      for (int j = 0; j < n; ++j) x[j] = j % 5 == 2 ? -INFINITY : 40.f * dist(rng) - 20.f;
      const std::vector<float> in = x;
      const float shift = 3.25f;
      const float sum = kernels->exp_shift_sum(x.data(), n, shift);
      double want_sum = 0;
      for (int j = 0; j < n; ++j) {
        // The shift is subtracted in float32, as the kernel does; the test is about the exp.
        const float shifted = in[j] - shift;
        const double want = std::exp(static_cast<double>(shifted));
        want_sum += want;
        EXPECT_NEAR(x[j], want, 4e-7 * want) << in[j];
      }
      EXPECT_EQ(x[n], 55.f) << "wrote past n";
      EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
    }
    std::vector<Half> h(37);
    for (size_t i = 0; i < h.size(); ++i) h[i] = Half{static_cast<uint16_t>(rng())};
    std::vector<float> f(h.size() + 1, 7.f);
    kernels->half_to_float(h.data(), f.data(), static_cast<int64_t>(h.size()));
    for (size_t i = 0; i < h.size(); ++i) {
      const float want = HalfToFloat(h[i]);
      if (std::isnan(want)) EXPECT_TRUE(std::isnan(f[i]));
      else EXPECT_EQ(f[i], want);
    }
    EXPECT_EQ(f[h.size()], 7.f);
  }
}

}  // namespace
}  // namespace hysparse
