// The glue's helper kernels: LaunchCopyToCache (every (b, h, s) row of a BSNH or BNSH tensor lands at
// cache row dst_start + s, bit for bit, and no other cache row changes) and LaunchCheckSparseValues (the
// device-side check of block_indices rows and mask values).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>
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

// What the device-side check reports for these rows and this mask (kNone: nothing wrong).
ValueProblem CheckValues(const std::vector<int32_t>& rows, int top_k, int64_t num_blocks,
                         const std::vector<int64_t>& mask = {}) {
  DeviceArray<int32_t> d_rows(rows);
  DeviceArray<int64_t> d_mask(mask.empty() ? std::vector<int64_t>{0} : mask);
  DeviceArray<ValueProblem> d_problem(std::vector<ValueProblem>(1));
  Stream stream;
  const Status st = LaunchCheckSparseValues(d_rows.get(), static_cast<int64_t>(rows.size()) / top_k, top_k, num_blocks,
                                            mask.empty() ? nullptr : d_mask.get(), static_cast<int64_t>(mask.size()),
                                            d_problem.get(), stream.get());
  if (!st.ok()) throw std::runtime_error(st.message);
  stream.Sync();
  return d_problem.Download()[0];
}

int64_t FirstBadRow(const std::vector<int32_t>& rows, int top_k, int64_t num_blocks) {
  const ValueProblem p = CheckValues(rows, top_k, num_blocks);
  return p.kind == ValueProblemKind::kNone ? std::numeric_limits<int64_t>::max() : p.where;
}

class CheckBlockIndicesCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << kNoGpuMessage;
  }
};

TEST_F(CheckBlockIndicesCudaTest, FindsTheFirstRowBreakingTheForm) {
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  const std::vector<int32_t> good = {0, 3, 9, -1, /**/ -1, -1, -1, -1, /**/ 1, 2, 3, 4, /**/ 9, -1, -1, -1};
  EXPECT_EQ(FirstBadRow(good, 4, 10), kNone);
  const std::vector<std::pair<std::vector<int32_t>, const char*>> bad_rows = {
      {{0, 3, 10, -1}, "block == num_blocks"},
      {{0, 3, 3, -1}, "repeat"},
      {{5, 3, -1, -1}, "descending"},
      {{0, -1, 4, -1}, "block after -1"},
      {{-2, -1, -1, -1}, "below -1"},
  };
  for (const auto& [bad, why] : bad_rows) {
    // Good rows around the bad one: it is row 2 of 4; a second bad row later must not win.
    std::vector<int32_t> rows = good;
    rows.insert(rows.begin() + 8, bad.begin(), bad.end());
    rows.insert(rows.end(), bad.begin(), bad.end());
    EXPECT_EQ(FirstBadRow(rows, 4, 10), 2) << why;
  }
}

TEST_F(CheckBlockIndicesCudaTest, DescribesTheProblemAndChecksTheMask) {
  using Kind = ValueProblemKind;
  struct Case { std::vector<int32_t> row; Kind kind; int64_t slot, value, previous; };
  const std::vector<Case> cases = {
      {{0, -3, -1, -1}, Kind::kIndexBelowMinusOne, 1, -3, 0}, {{0, 3, 10, -1}, Kind::kIndexPastLastBlock, 2, 10, 3},
      {{0, -1, 4, -1}, Kind::kIndexAfterPadding, 2, 4, 0}, {{2, 7, 7, -1}, Kind::kIndexNotAscending, 2, 7, 7}};
  for (const Case& c : cases) {
    const ValueProblem p = CheckValues(c.row, 4, 10);
    EXPECT_EQ(p.kind, c.kind);
    EXPECT_EQ(p.where, 0);
    EXPECT_EQ(p.slot, c.slot);
    EXPECT_EQ(p.value, c.value);
    EXPECT_EQ(p.previous, c.previous);
  }
  // Mask problems rank before index problems; the first bad element wins.
  const std::vector<int32_t> bad_row = {0, 3, 10, -1};
  const ValueProblem m = CheckValues(bad_row, 4, 10, {1, 1, 0, 2, 1, 5});
  EXPECT_EQ(m.kind, Kind::kMaskValue);
  EXPECT_EQ(m.where, 3);
  EXPECT_EQ(m.value, 2);
  EXPECT_EQ(CheckValues({0, 1, -1, -1}, 4, 10, {0, 1, 1, 0}).kind, Kind::kNone);
}

}  // namespace
}  // namespace testing
}  // namespace cuda
}  // namespace hysparse
