// HySparseSparseAttn on CUDA against the CPU kernel (float32 on the same rounded inputs): both
// combine modes, the three SA sources (own cache = retrofit, shared cache, gathered selected rows),
// window caches that start past position 0, per-head / per-channel / absent gates, sinks, masks,
// prefill and decode, up to the 7B layer shape at 64k context.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "kernels/attention_args.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/cuda/cuda_reference.h"
#include "tests/cuda/cuda_test_support.h"

namespace hysparse {
namespace cuda {
namespace testing {
namespace {

enum class Source { kOwn, kShared, kSelected };
enum class GateKind { kNone, kPerHead, kPerChannel };

struct SparseCase {
  std::string name;
  int batch, heads, kv_heads, dim;
  int64_t new_len, total;
  int block, top_k, window;
  Combine combine;
  Source source;
  bool window_cache;
  GateKind gate;
  bool sinks;
  MaskKind mask;
  bool bnsh;
};

struct SparseParam {
  SparseCase c;
  DType dtype;
};

// Random valid block_indices rows: 0..K distinct blocks, mostly at or before the token's own block
// (some later, which the kernels must ignore), ascending, then -1.
std::vector<int32_t> MakeIndices(const SparseCase& c, std::mt19937& rng) {
  const int64_t nb = (c.total + c.block - 1) / c.block;
  std::vector<int32_t> idx(static_cast<size_t>(c.batch) * c.kv_heads * c.new_len * c.top_k, -1);
  for (int64_t row = 0; row < static_cast<int64_t>(c.batch) * c.kv_heads * c.new_len; ++row) {
    const int64_t s = row % c.new_len;
    const int64_t t = c.total - c.new_len + s;
    const int64_t range = std::min<int64_t>(nb, t / c.block + 2);
    const int64_t want = std::uniform_int_distribution<int64_t>(0, c.top_k)(rng);
    const int64_t pool = want <= range ? range : nb;
    std::vector<int32_t> picked;
    for (int64_t i = 0; i < pool; ++i) picked.push_back(static_cast<int32_t>(i));
    std::shuffle(picked.begin(), picked.end(), rng);
    picked.resize(std::min<int64_t>(want, pool));
    std::sort(picked.begin(), picked.end());
    std::copy(picked.begin(), picked.end(), idx.begin() + row * c.top_k);
  }
  return idx;
}

template <typename T>
void RunSparseCase(const SparseCase& c) {
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>()(c.name)));
  const int B = c.batch, H = c.heads, Hkv = c.kv_heads, D = c.dim, bs = c.block, K = c.top_k, w = c.window;
  const int64_t S = c.new_len, total = c.total;
  const int64_t own_start = c.window_cache ? (total - S) - std::min<int64_t>(w, total - S) : 0;
  const int64_t own_len = total - own_start, own_cap = own_len + 3;
  const int64_t shared_cap = total + 2;
  const HeadView qview = c.bnsh ? HeadView::Bnsh(S, H, D) : HeadView::Bsnh(S, H, D);

  HostTensor<T> q, own_k, own_v, sh_k, sh_v, sel_k, sel_v, gate, sinks;
  q.Resize(static_cast<size_t>(B) * H * S * D);
  q.FillUniform(rng, -2.f, 2.f);
  FillCachePair(own_k, own_v, static_cast<int64_t>(B) * Hkv, own_cap, own_len, D, rng);
  if (c.source != Source::kOwn) {
    FillCachePair(sh_k, sh_v, static_cast<int64_t>(B) * Hkv, shared_cap, total, D, rng);
  }
  const std::vector<int32_t> idx = MakeIndices(c, rng);
  if (c.source == Source::kSelected) {
    // The full layer's gather: row k*bs + r of a token is position idx*bs + r, zero where absent.
    sel_k.Resize(idx.size() * bs * D);
    sel_v.Resize(sel_k.storage.size());
    for (size_t slot = 0; slot < idx.size(); ++slot) {
      const int64_t plane = static_cast<int64_t>(slot) / K / S;
      for (int r = 0; r < bs; ++r) {
        const int64_t pos = static_cast<int64_t>(idx[slot]) * bs + r;
        if (idx[slot] < 0 || pos >= total) continue;
        for (int d = 0; d < D; ++d) {
          sel_k.Set((slot * bs + r) * D + d, sh_k.values[(plane * shared_cap + pos) * D + d]);
          sel_v.Set((slot * bs + r) * D + d, sh_v.values[(plane * shared_cap + pos) * D + d]);
        }
      }
    }
  }
  if (c.gate != GateKind::kNone) {
    gate.Resize(static_cast<size_t>(B) * S * 2 * H * (c.gate == GateKind::kPerChannel ? D : 1));
    gate.FillUniform(rng, -3.f, 3.f);
  }
  if (c.sinks) {
    sinks.Resize(static_cast<size_t>(c.combine == Combine::kGate ? 2 : 1) * H);
    sinks.FillUniform(rng, -1.f, 2.f);
  }
  const std::vector<int64_t> mask = MakeMask(c.mask, B, total, rng);

  // Fills the fields both runs share; pointers are set per side.
  auto common = [&](auto& a) {
    a.dims() = {B, H, Hkv, D, S, total, 0.75f / std::sqrt(static_cast<float>(D)), bs};
    a.window = w;
    a.combine = c.combine;
    a.query_view = qview;
    a.output_view = qview;
    a.own_capacity = own_cap;
    a.own_start = own_start;
    a.own_len = own_len;
    a.sa_capacity = c.source == Source::kOwn ? own_cap : shared_cap;
    a.top_k = K;
    a.gate_per_channel = c.gate == GateKind::kPerChannel;
  };

  std::vector<float> ref_out(q.values.size());
  SparseAttnArgs<float> ra;
  common(ra);
  ra.query = q.values.data();
  ra.own_key = own_k.values.data();
  ra.own_value = own_v.values.data();
  if (c.source == Source::kOwn) {
    ra.sa_key = ra.own_key;
    ra.sa_value = ra.own_value;
  } else if (c.source == Source::kShared) {
    ra.sa_key = sh_k.values.data();
    ra.sa_value = sh_v.values.data();
  } else {
    ra.selected_key = sel_k.values.data();
    ra.selected_value = sel_v.values.data();
  }
  ra.block_indices = idx.data();
  ra.attention_mask = mask.empty() ? nullptr : mask.data();
  ra.gate = c.gate == GateKind::kNone ? nullptr : gate.values.data();
  ra.sinks = c.sinks ? sinks.values.data() : nullptr;
  ra.output = ref_out.data();
  RunSparseAttnCpu<float>(ra, ThreadExecutor());

  DeviceArray<T> d_q(q.storage), d_ok(own_k.storage), d_ov(own_v.storage), d_sk(sh_k.storage), d_sv(sh_v.storage),
      d_selk(sel_k.storage), d_selv(sel_v.storage), d_gate(gate.storage), d_sinks(sinks.storage), d_out(ref_out.size());
  DeviceArray<int32_t> d_idx(idx);
  DeviceArray<int64_t> d_mask(mask);
  d_out.FillBytes(0xFF);
  SparseAttnArgs<T> ga;
  common(ga);
  ga.query = d_q.get();
  ga.own_key = d_ok.get();
  ga.own_value = d_ov.get();
  if (c.source == Source::kOwn) {
    ga.sa_key = ga.own_key;
    ga.sa_value = ga.own_value;
  } else if (c.source == Source::kShared) {
    ga.sa_key = d_sk.get();
    ga.sa_value = d_sv.get();
  } else {
    ga.selected_key = d_selk.get();
    ga.selected_value = d_selv.get();
  }
  ga.block_indices = d_idx.get();
  ga.attention_mask = mask.empty() ? nullptr : d_mask.get();
  ga.gate = c.gate == GateKind::kNone ? nullptr : d_gate.get();
  ga.sinks = c.sinks ? d_sinks.get() : nullptr;
  ga.output = d_out.get();
  Stream stream;
  ScratchUse use;
  const Status st = LaunchAndWait(stream, &use, [&](MallocScratch& s) { return LaunchSparseAttn<T>(ga, stream.get(), s); });
  ASSERT_TRUE(st.ok()) << st.message;
  EXPECT_EQ(use.calls, 1);
  ExpectClose(d_out.Download(), ref_out, OutputTolerance<T>(), "output");

  // Prefill with a full-length SA source takes the tiled kernel by default; the split-K kernel must
  // compute the same call too (it serves what the tiled one refuses). On a GPU only: emulated, the
  // split-K prefill of these cases takes minutes, and the emulation already runs split-K prefill in
  // the fallback and gathered-rows cases.
#ifndef HYSPARSE_CUDA_EMULATION
  if (S > 4 && c.source != Source::kSelected) {
    d_out.FillBytes(0xFF);
    ScratchUse split_use;
    const Status split = LaunchAndWait(stream, &split_use, [&](MallocScratch& s) {
      return LaunchSparseAttn<T>(ga, stream.get(), s, nullptr, SparsePath::kSplitK);
    });
    ASSERT_TRUE(split.ok()) << split.message;
    ExpectClose(d_out.Download(), ref_out, OutputTolerance<T>(), "output (split-K path)");
  }
#endif
}

using SparseAttnCudaTest = CudaKernelTest<SparseParam>;

TEST_P(SparseAttnCudaTest, MatchesCpuKernel) {
  const SparseParam& p = GetParam();
  ForDType(p.dtype, [&](auto storage) { RunSparseCase<decltype(storage)>(p.c); });
}

std::vector<SparseParam> SparseParams() {
  constexpr Combine U = Combine::kUnion, G = Combine::kGate;
  const std::vector<SparseCase> cases = {
      {"union_retrofit_decode", 1, 8, 2, 128, 1, 3000, 64, 4, 128, U, Source::kOwn, false, GateKind::kNone, false, MaskKind::kNone, false},
      {"union_retrofit_prefill_sinks", 2, 4, 2, 64, 50, 300, 16, 3, 32, U, Source::kOwn, false, GateKind::kNone, true, MaskKind::kLeftPad, true},
      {"union_retrofit_covers_all", 1, 4, 1, 64, 30, 90, 8, 12, 16, U, Source::kOwn, false, GateKind::kNone, false, MaskKind::kHoles, false},
      {"union_shared_window_cache", 1, 8, 2, 128, 1, 5000, 64, 16, 128, U, Source::kShared, true, GateKind::kNone, true, MaskKind::kNone, false},
      {"union_selected_chunk", 1, 4, 1, 64, 5, 400, 8, 6, 20, U, Source::kSelected, true, GateKind::kNone, false, MaskKind::kHoles, false},
      {"union_d36_scalar", 1, 2, 1, 36, 9, 120, 4, 5, 7, U, Source::kOwn, false, GateKind::kNone, true, MaskKind::kNone, true},
      {"gate_shared_decode_head_gate", 2, 8, 2, 128, 1, 2000, 64, 8, 128, G, Source::kShared, true, GateKind::kPerHead, true, MaskKind::kLeftPad, false},
      {"gate_selected_prefill_channel", 1, 6, 3, 96, 33, 200, 16, 4, 24, G, Source::kSelected, true, GateKind::kPerChannel, true, MaskKind::kNone, true},
      {"gate_own_no_gate_no_sinks", 1, 4, 2, 64, 20, 100, 8, 5, 10, G, Source::kOwn, false, GateKind::kNone, false, MaskKind::kHoles, false},
      {"gate_d256_head_gate", 1, 4, 2, 256, 3, 700, 32, 4, 64, G, Source::kShared, false, GateKind::kPerHead, false, MaskKind::kNone, false},
      {"gate_group8_channel", 1, 8, 1, 64, 2, 600, 64, 3, 100, G, Source::kShared, true, GateKind::kPerChannel, true, MaskKind::kNone, false},
      {"gate_prefill_7b_heads", 1, 32, 8, 128, 256, 1024, 64, 4, 128, G, Source::kShared, true, GateKind::kPerHead, true, MaskKind::kNone, false},
      {"gate_decode_64k_7b_shape", 1, 32, 8, 128, 1, 65536, 64, 16, 128, G, Source::kShared, true, GateKind::kPerHead, true, MaskKind::kNone, false},
      // Prefill on the tiled kernel (S > 4, full-length SA source): KV sharing with a window cache after a
      // past; one token per KV head row (G = 1: 64 tokens a tile, the membership masks' high bits);
      // blocks longer than a key tile; one-position blocks; the fallback to split-K when a tile's
      // block_indices entries exceed the kernel's list; D = 256 (32-key tiles); gate with padding.
      {"union_shared_prefill_window_cache_past", 1, 8, 2, 64, 70, 570, 16, 6, 40, U, Source::kShared, true, GateKind::kNone, true, MaskKind::kHoles, false},
      {"union_prefill_g1_two_tiles", 1, 2, 2, 64, 100, 700, 64, 16, 128, U, Source::kOwn, false, GateKind::kNone, false, MaskKind::kNone, false},
      {"gate_prefill_block_over_tile", 1, 4, 2, 128, 40, 900, 128, 3, 50, G, Source::kShared, false, GateKind::kPerChannel, false, MaskKind::kNone, true},
      {"union_prefill_block1", 1, 8, 1, 32, 24, 200, 1, 40, 8, U, Source::kShared, true, GateKind::kNone, false, MaskKind::kNone, false},
      {"union_prefill_list_fallback", 1, 1, 1, 32, 10, 400, 4, 80, 10, U, Source::kOwn, false, GateKind::kNone, true, MaskKind::kNone, false},
      {"gate_prefill_d256_left_pad", 2, 4, 2, 256, 20, 300, 32, 4, 64, G, Source::kOwn, false, GateKind::kPerHead, true, MaskKind::kLeftPad, false},
      {"union_decode_64k_retrofit", 1, 32, 8, 128, 1, 65536, 64, 16, 128, U, Source::kOwn, false, GateKind::kNone, false, MaskKind::kNone, false},
  };
  return InAllDTypes<SparseParam>(cases);
}

INSTANTIATE_TEST_SUITE_P(Cases, SparseAttnCudaTest, ::testing::ValuesIn(SparseParams()), ParamName<SparseParam>);

}  // namespace
}  // namespace testing
}  // namespace cuda
}  // namespace hysparse
