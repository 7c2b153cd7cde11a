// HySparseFullAttn on CUDA against the CPU kernel (float32 on the same rounded inputs): output,
// block scores, top-K indices and gathered KV, over both kernel paths (split-K for S <= 4, tiled
// beyond), GQA group sizes 1..8, head sizes 36..256, masks, layouts and long contexts.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <set>
#include <sstream>

#include "kernels/attention_args.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/cuda/cuda_reference.h"
#include "tests/cuda/cuda_test_support.h"

namespace hysparse {
namespace cuda {
namespace testing {
namespace {

enum class Outputs { kAll, kNone, kIndicesOnly, kScoresOnly, kSelectedOnly };

struct FullCase {
  std::string name;
  int batch, heads, kv_heads, dim;
  int64_t new_len, past;
  int block, top_k;
  bool bnsh;
  MaskKind mask;
  Outputs outputs;
};

struct FullParam {
  FullCase c;
  DType dtype;
};

template <typename T>
void RunFullCase(const FullCase& c) {
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>()(c.name)));
  const int64_t S = c.new_len, total = c.past + c.new_len, cap = total + 5;
  const int B = c.batch, H = c.heads, Hkv = c.kv_heads, D = c.dim, bs = c.block, K = c.top_k;
  const int64_t nb = (total + bs - 1) / bs;
  const HeadView qview = c.bnsh ? HeadView::Bnsh(S, H, D) : HeadView::Bsnh(S, H, D);

  HostTensor<T> q, kc, vc;
  q.Resize(static_cast<size_t>(B) * H * S * D);
  q.FillUniform(rng, -2.f, 2.f);
  FillCachePair(kc, vc, static_cast<int64_t>(B) * Hkv, cap, total, D, rng);  // rows past total_len: loud
  const std::vector<int64_t> mask = MakeMask(c.mask, B, total, rng);

  // CPU reference: float32, every output.
  const size_t out_n = q.values.size();
  const size_t idx_n = static_cast<size_t>(B) * Hkv * S * K;
  const size_t score_n = static_cast<size_t>(B) * Hkv * S * nb;
  const size_t sel_n = idx_n * bs * D;
  std::vector<float> ref_out(out_n), ref_scores(score_n), ref_selk(sel_n), ref_selv(sel_n);
  std::vector<int32_t> ref_idx(idx_n);
  // Fills the fields both runs share; pointers are set per side.
  auto common = [&](auto& a) {
    a.dims() = {B, H, Hkv, D, S, total, 1.f / std::sqrt(static_cast<float>(D)), bs};
    a.top_k = K;
    a.query_view = qview;
    a.output_view = qview;
    a.cache_capacity = cap;
  };
  FullAttnArgs<float> ra;
  common(ra);
  ra.query = q.values.data();
  ra.key_cache = kc.values.data();
  ra.value_cache = vc.values.data();
  ra.attention_mask = mask.empty() ? nullptr : mask.data();
  ra.output = ref_out.data();
  ra.block_indices = ref_idx.data();
  ra.block_scores = ref_scores.data();
  ra.selected_key = ref_selk.data();
  ra.selected_value = ref_selv.data();
  RunFullAttnCpu<float>(ra, ThreadExecutor());

  // GPU: the outputs this case asks for, poisoned.
  const bool want_idx = c.outputs == Outputs::kAll || c.outputs == Outputs::kIndicesOnly;
  const bool want_scores = c.outputs == Outputs::kAll || c.outputs == Outputs::kScoresOnly;
  const bool want_sel = c.outputs == Outputs::kAll || c.outputs == Outputs::kSelectedOnly;
  DeviceArray<T> d_q(q.storage), d_k(kc.storage), d_v(vc.storage);
  DeviceArray<int64_t> d_mask(mask);
  const FullAttnDeviceOutputs<T> dev(out_n, want_idx ? idx_n : 0, want_scores ? score_n : 0, want_sel ? sel_n : 0);

  FullAttnArgs<T> ga;
  common(ga);
  ga.query = d_q.get();
  ga.key_cache = d_k.get();
  ga.value_cache = d_v.get();
  ga.attention_mask = mask.empty() ? nullptr : d_mask.get();
  dev.Bind(ga);
  Stream stream;
  ScratchUse use;
  const Status st = LaunchAndWait(stream, &use, [&](MallocScratch& s) { return LaunchFullAttn<T>(ga, stream.get(), s); });
  ASSERT_TRUE(st.ok()) << st.message;
  EXPECT_LE(use.calls, 1);
  if (c.outputs == Outputs::kNone) {
    EXPECT_LE(use.bytes, 1u << 24) << "no selection: no statistics kept";
  }

  ExpectClose(dev.output.Download(), ref_out, OutputTolerance<T>(), "output");

  if (want_scores) {
    const std::vector<float> scores = dev.scores.Download();
    size_t bad = 0, worst = 0;
    double worst_err = 0;
    for (size_t i = 0; i < score_n; ++i) {
      const double err = std::fabs(static_cast<double>(scores[i]) - ref_scores[i]);
      if (!(err <= 1e-5 + 1e-4 * std::fabs(ref_scores[i]))) {
        ++bad;
        if (!(err <= worst_err)) {
          worst_err = err;
          worst = i;
        }
      }
    }
    EXPECT_EQ(bad, 0u) << "block_scores: " << bad << " mismatches, worst at " << worst << " gpu " << scores[worst]
                       << " ref " << ref_scores[worst];
  }
  std::vector<int32_t> idx;
  if (want_idx) {
    idx = dev.indices.Download();
    for (size_t row = 0; row < idx_n / K; ++row) {
      std::ostringstream where;
      where << "block_indices row " << row;
      CheckIndexRow(&idx[row * K], &ref_idx[row * K], &ref_scores[(row)*nb], K, nb, where.str());
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  if (want_sel) {
    // With the indices at hand, check the gathered rows bit for bit against the cache; without them,
    // against the CPU gather (same indices unless scores tie, which these random inputs avoid).
    const std::vector<T> selk = dev.selected_key.Download(), selv = dev.selected_value.Download();
    size_t mismatches = 0;
    for (size_t slot = 0; slot < idx_n; ++slot) {
      const int64_t token_row = static_cast<int64_t>(slot) / K;
      const int64_t plane = token_row / S;
      for (int r = 0; r < bs; ++r) {
        for (int d = 0; d < D; ++d) {
          const size_t at = (slot * bs + r) * D + d;
          if (want_idx) {
            const int32_t block = idx[slot];
            const int64_t pos = static_cast<int64_t>(block) * bs + r;
            T expect_k = ToStorage<T>(0.f), expect_v = ToStorage<T>(0.f);
            if (block >= 0 && pos < total) {
              expect_k = kc.storage[(plane * cap + pos) * D + d];
              expect_v = vc.storage[(plane * cap + pos) * D + d];
            }
            if (std::memcmp(&selk[at], &expect_k, sizeof(T)) || std::memcmp(&selv[at], &expect_v, sizeof(T))) {
              ++mismatches;
            }
          } else if (FromStorage(selk[at]) != ref_selk[at] || FromStorage(selv[at]) != ref_selv[at]) {
            ++mismatches;
          }
        }
      }
    }
    EXPECT_EQ(mismatches, 0u) << "selected_key/value elements differing from the gathered cache rows";
  }
}

using FullAttnCudaTest = CudaKernelTest<FullParam>;

TEST_P(FullAttnCudaTest, MatchesCpuKernel) {
  const FullParam& p = GetParam();
  ForDType(p.dtype, [&](auto storage) { RunFullCase<decltype(storage)>(p.c); });
}

std::vector<FullParam> FullParams() {
  const std::vector<FullCase> cases = {
      // Split-K path (S <= 4).
      {"decode_tiny", 1, 4, 2, 64, 1, 37, 8, 3, false, MaskKind::kNone, Outputs::kAll},
      {"decode_leftpad", 2, 8, 2, 128, 1, 700, 16, 8, false, MaskKind::kLeftPad, Outputs::kAll},
      {"decode_holes_bnsh", 2, 8, 8, 64, 1, 300, 32, 4, true, MaskKind::kHoles, Outputs::kAll},
      {"chunk3_d96_blocks7", 2, 6, 3, 96, 3, 45, 7, 5, true, MaskKind::kHoles, Outputs::kAll},
      {"chunk4_d36_scalar", 1, 2, 1, 36, 4, 60, 4, 3, false, MaskKind::kNone, Outputs::kAll},
      {"decode_d256", 1, 4, 1, 256, 1, 500, 16, 6, false, MaskKind::kNone, Outputs::kAll},
      {"decode_16k_7b_shape", 1, 32, 8, 128, 1, 16383, 64, 16, false, MaskKind::kNone, Outputs::kAll},
      {"decode_bs1_many_blocks", 1, 2, 1, 64, 1, 19999, 1, 16, false, MaskKind::kNone, Outputs::kIndicesOnly},
      {"decode_output_only", 2, 8, 2, 128, 1, 4000, 64, 16, false, MaskKind::kLeftPad, Outputs::kNone},
      {"decode_selected_only", 1, 8, 2, 64, 1, 1000, 64, 4, false, MaskKind::kNone, Outputs::kSelectedOnly},
      // Tiled path.
      {"prefill_leftpad", 2, 8, 2, 64, 130, 0, 16, 4, false, MaskKind::kLeftPad, Outputs::kAll},
      {"prefill_past_mha_bnsh", 1, 4, 4, 128, 77, 200, 32, 40, true, MaskKind::kNone, Outputs::kAll},
      {"prefill_group8_holes", 1, 8, 1, 128, 257, 31, 64, 2, false, MaskKind::kHoles, Outputs::kAll},
      {"prefill_group3_d96", 1, 6, 2, 96, 50, 20, 8, 5, true, MaskKind::kNone, Outputs::kAll},
      {"prefill_d36_scalar", 1, 2, 1, 36, 20, 5, 4, 3, false, MaskKind::kHoles, Outputs::kAll},
      {"prefill_d256", 1, 4, 1, 256, 70, 10, 16, 4, false, MaskKind::kNone, Outputs::kAll},
      {"prefill_block1", 1, 2, 2, 64, 40, 0, 1, 7, false, MaskKind::kNone, Outputs::kAll},
      {"prefill_scores_only", 1, 4, 2, 64, 100, 28, 16, 4, false, MaskKind::kNone, Outputs::kScoresOnly},
      {"prefill_output_only", 2, 4, 2, 128, 90, 10, 16, 4, true, MaskKind::kHoles, Outputs::kNone},
      {"prefill_1k_past_1k_7b_heads", 1, 32, 8, 128, 1024, 1024, 64, 16, false, MaskKind::kNone, Outputs::kAll},
  };
  return InAllDTypes<FullParam>(cases);
}

INSTANTIATE_TEST_SUITE_P(Cases, FullAttnCudaTest, ::testing::ValuesIn(FullParams()), ParamName<FullParam>);

// Limits of this back end are reported, not run into (no GPU needed).
TEST(CudaBackendLimits, SupportsShapeNamesTheLimit) {
  std::string why;
  EXPECT_TRUE(SupportsShape(128, 32, 8, &why));
  EXPECT_TRUE(why.empty());
  EXPECT_TRUE(SupportsShape(256, 64, 1, &why));
  EXPECT_FALSE(SupportsShape(257, 8, 8, &why));
  EXPECT_NE(why.find("head size 257"), std::string::npos) << why;
  EXPECT_FALSE(SupportsShape(64, 128, 1, &why));
  EXPECT_NE(why.find("128"), std::string::npos) << why;
  EXPECT_FALSE(SupportsShape(64, 6, 4, &why));
}

TEST(CudaBackendLimits, RefusesTheDefaultStream) {
  FullAttnArgs<Half> full;
  full.batch = 1;
  full.num_heads = full.kv_num_heads = 1;
  full.head_dim = 64;
  full.new_len = full.total_len = 1;
  MallocScratch scratch;
  const Status st = LaunchFullAttn<Half>(full, nullptr, scratch);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message.find("default stream"), std::string::npos) << st.message;
  SparseAttnArgs<float> sparse;
  sparse.batch = 1;
  sparse.num_heads = sparse.kv_num_heads = 1;
  sparse.head_dim = 64;
  EXPECT_FALSE(LaunchSparseAttn<float>(sparse, nullptr, scratch).ok());
  EXPECT_EQ(scratch.calls(), 0);
}

}  // namespace
}  // namespace testing
}  // namespace cuda
}  // namespace hysparse
