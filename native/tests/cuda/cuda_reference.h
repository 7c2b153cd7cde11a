// Test-side helpers: seeded random tensors rounded through the storage type, masks, a threaded
// executor for the CPU reference kernels, and tolerance checks against the CPU float32 results.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kernels/attention_args.h"
#include "tests/cuda/cuda_test_support.h"

namespace hysparse {
namespace cuda {
namespace testing {

enum class DType { kFloat32, kFloat16, kBFloat16 };
inline const char* DTypeName(DType t) {
  return t == DType::kFloat32 ? "f32" : t == DType::kFloat16 ? "f16" : "bf16";
}

// Largest error allowed against the CPU float32 kernel on the same (rounded) inputs, relative to the
// largest reference magnitude (issue 4: 1e-5 fp32, 2e-3 fp16, 1e-2 bf16).
template <typename T>
double OutputTolerance();
template <>
inline double OutputTolerance<float>() { return 1e-5; }
template <>
inline double OutputTolerance<Half>() { return 2e-3; }
template <>
inline double OutputTolerance<BFloat16>() { return 1e-2; }

// Runs fn over the machine's cores; the CPU reference of the long cases would take minutes serially.
class ThreadExecutor final : public Executor {
 public:
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn) const override {
    const size_t workers = std::max<size_t>(1, std::min<size_t>(std::thread::hardware_concurrency(), n));
    std::atomic<size_t> next{0};
    std::vector<std::thread> threads;
    for (size_t w = 0; w < workers; ++w) {
      threads.emplace_back([&] {
        for (size_t i; (i = next.fetch_add(1)) < n;) fn(i);
      });
    }
    for (auto& t : threads) t.join();
  }
};

// A tensor in its storage type plus the exact float32 values of that storage (the reference input).
template <typename T>
struct HostTensor {
  std::vector<T> storage;
  std::vector<float> values;

  void Resize(size_t n) {
    storage.assign(n, ToStorage<T>(0.f));
    values.assign(n, 0.f);
  }
  void Set(size_t i, float x) {
    storage[i] = ToStorage<T>(x);
    values[i] = FromStorage(storage[i]);
  }
  void FillUniform(std::mt19937& rng, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    for (size_t i = 0; i < storage.size(); ++i) Set(i, dist(rng));
  }
};

// Random [planes, capacity, D] key and value caches whose rows from `valid` on hold 1000: rows a
// kernel must never read, made loud so a read of one shows in its output.
template <typename T>
void FillCachePair(HostTensor<T>& key, HostTensor<T>& value, int64_t planes, int64_t capacity, int64_t valid,
                   int head_dim, std::mt19937& rng) {
  key.Resize(static_cast<size_t>(planes * capacity * head_dim));
  value.Resize(key.storage.size());
  key.FillUniform(rng, -1.f, 1.f);
  value.FillUniform(rng, -1.f, 1.f);
  for (int64_t plane = 0; plane < planes; ++plane) {
    for (int64_t row = valid; row < capacity; ++row) {
      for (int d = 0; d < head_dim; ++d) {
        key.Set((plane * capacity + row) * head_dim + d, 1000.f);
        value.Set((plane * capacity + row) * head_dim + d, 1000.f);
      }
    }
  }
}

enum class MaskKind { kNone, kLeftPad, kHoles };

// [B, T] 0/1. kLeftPad: batch row b > 0 starts with 5 + 11*b padding positions (a padded decode
// batch); kHoles: about 15% of positions masked anywhere, the query's own included.
inline std::vector<int64_t> MakeMask(MaskKind kind, int batch, int64_t total, std::mt19937& rng) {
  std::vector<int64_t> mask;
  if (kind == MaskKind::kNone) return mask;
  mask.assign(static_cast<size_t>(batch) * total, 1);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < total; ++j) {
      int64_t& m = mask[b * total + j];
      if (kind == MaskKind::kLeftPad) {
        m = (b > 0 && j < std::min<int64_t>(total - 1, 5 + 11 * b)) ? 0 : 1;
      } else {
        m = u(rng) < 0.15f ? 0 : 1;
      }
    }
  }
  return mask;
}

// max |gpu - ref| over max |ref|; any non-finite GPU value (a poisoned, unwritten element) fails.
template <typename T>
void ExpectClose(const std::vector<T>& gpu, const std::vector<float>& ref, double tolerance, const std::string& what) {
  ASSERT_EQ(gpu.size(), ref.size()) << what;
  double max_err = 0, max_ref = 0;
  size_t worst = 0, nonfinite = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = FromStorage(gpu[i]);
    if (!std::isfinite(g)) {
      ++nonfinite;
      continue;
    }
    const double err = std::fabs(g - ref[i]);
    if (err > max_err) {
      max_err = err;
      worst = i;
    }
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
  }
  EXPECT_EQ(nonfinite, 0u) << what << ": non-finite (unwritten?) elements";
  const double rel = max_err / std::max(max_ref, 1e-6);
  EXPECT_LE(rel, tolerance) << what << ": max error " << max_err << " at element " << worst << " (gpu "
                            << FromStorage(gpu[worst]) << ", ref " << ref[worst] << "), max |ref| " << max_ref;
}

// Checks one block_indices row: ascending valid blocks then -1, as many as the CPU chose, and where
// the chosen set differs, only between blocks whose CPU scores tie with the K-th score up to float
// rounding of two different summation orders.
inline void CheckIndexRow(const int32_t* gpu, const int32_t* cpu, const float* cpu_scores, int top_k,
                          int64_t num_blocks, const std::string& where) {
  int gpu_count = 0, cpu_count = 0;
  for (int k = 0; k < top_k; ++k) {
    if (gpu[k] >= 0) {
      ASSERT_EQ(gpu_count, k) << where << ": a block after -1";
      ASSERT_LT(gpu[k], num_blocks) << where;
      if (k > 0) {
        ASSERT_GT(gpu[k], gpu[k - 1]) << where << ": not ascending";
      }
      ++gpu_count;
    } else {
      ASSERT_EQ(gpu[k], -1) << where << ": padding must be -1";
    }
    if (cpu[k] >= 0) ++cpu_count;
  }
  ASSERT_EQ(gpu_count, cpu_count) << where;
  const std::set<int32_t> g(gpu, gpu + gpu_count), c(cpu, cpu + cpu_count);
  if (g == c) return;
  float kth = 1e30f;
  for (int32_t i : c) kth = std::min(kth, cpu_scores[i]);
  const float slack = 1e-5f + 1e-4f * kth;
  for (int32_t i : g) {
    if (!c.count(i)) {
      EXPECT_GE(cpu_scores[i], kth - slack) << where << ": GPU chose block " << i << " below the K-th score";
    }
  }
  for (int32_t i : c) {
    if (!g.count(i)) {
      EXPECT_LE(cpu_scores[i], kth + slack) << where << ": GPU dropped block " << i << " above the K-th score";
    }
  }
}

constexpr const char* kNoGpuMessage = "no CUDA device: CUDA kernel test skipped (tests/gpu/run.sh runs it on a GPU)";

// Parameterised kernel test (Param has a case `c` with a `name`, and a `dtype`) that skips, with a
// message, on a machine without a CUDA device.
template <typename Param>
class CudaKernelTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << kNoGpuMessage;
  }
};

// Calls fn with a value of the storage type `dtype` names.
template <typename Fn>
void ForDType(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(float{}); break;
    case DType::kFloat16: fn(Half{}); break;
    case DType::kBFloat16: fn(BFloat16{}); break;
  }
}

// Every case in every storage type.
template <typename Param, typename Case>
std::vector<Param> InAllDTypes(const std::vector<Case>& cases) {
  std::vector<Param> params;
  for (const Case& c : cases) {
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) params.push_back({c, t});
  }
  return params;
}

template <typename Param>
std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return info.param.c.name + "_" + DTypeName(info.param.dtype);
}

}  // namespace testing
}  // namespace cuda
}  // namespace hysparse
