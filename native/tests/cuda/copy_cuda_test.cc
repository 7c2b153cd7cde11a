// LaunchCopyToCache: every (b, h, s) row of a BSNH or BNSH tensor lands at cache row dst_start + s,
// bit for bit, and no other cache row changes.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kernels/cuda/cuda_kernels.h"
#include "tests/cuda/cuda_reference.h"
#include "tests/cuda/cuda_test_support.h"

namespace hysparse {
namespace cuda {
namespace testing {
namespace {

template <typename T>
void RunCopy(bool bnsh, int head_dim) {
  const int B = 2, H = 3;
  const int64_t len = 7, cap = 20, start = 9;
  std::mt19937 rng(1234 + head_dim);
  HostTensor<T> src, cache;
  src.Resize(static_cast<size_t>(B) * H * len * head_dim);
  src.FillUniform(rng, -4.f, 4.f);
  cache.Resize(static_cast<size_t>(B) * H * cap * head_dim);
  cache.FillUniform(rng, -4.f, 4.f);
  const HeadView view = bnsh ? HeadView::Bnsh(len, H, head_dim) : HeadView::Bsnh(len, H, head_dim);
  DeviceArray<T> d_src(src.storage), d_cache(cache.storage);
  Stream stream;
  const Status st = LaunchCopyToCache<T>(d_src.get(), view, B, H, len, head_dim, d_cache.get(), cap, start, stream.get());
  ASSERT_TRUE(st.ok()) << st.message;
  stream.Sync();
  const std::vector<T> got = d_cache.Download();
  size_t wrong = 0;
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int64_t pos = 0; pos < cap; ++pos) {
        for (int d = 0; d < head_dim; ++d) {
          const size_t at = ((static_cast<size_t>(b) * H + h) * cap + pos) * head_dim + d;
          const bool copied = pos >= start && pos < start + len;
          const T& expect = copied ? src.storage[view.Offset(b, h, pos - start) + d] : cache.storage[at];
          if (std::memcmp(&got[at], &expect, sizeof(T)) != 0) ++wrong;
        }
      }
    }
  }
  EXPECT_EQ(wrong, 0u);
}

class CopyToCacheCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << kNoGpuMessage;
  }
};

TEST_F(CopyToCacheCudaTest, BsnhAndBnshAllTypes) {
  for (bool bnsh : {false, true}) {
    RunCopy<float>(bnsh, 64);
    RunCopy<Half>(bnsh, 128);
    RunCopy<BFloat16>(bnsh, 64);
    RunCopy<Half>(bnsh, 36);  // scalar path
  }
}

}  // namespace
}  // namespace testing
}  // namespace cuda
}  // namespace hysparse
