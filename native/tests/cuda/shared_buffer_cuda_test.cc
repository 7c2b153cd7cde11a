// Shared-buffer mode (docs/ops.md "Shared KV buffer") on CUDA against the CPU kernels run the way the
// CPU glue runs them: one call per batch row with batch 1, the row's total length total_b and its real
// new tokens, over row b of the buffer (native/ops/full_attn_op.cc, sparse_attn_op.cc). On the GPU side
// the test does what the CUDA glue does (native/ops/cuda_attn_ops.cc): present = past (in place, or a
// copy when they differ), LaunchWriteNewTokens, then LaunchFullAttn / LaunchSparseAttn with seqlens_k
// in device memory and total_len = the capacity. A full layer is followed by a sparse layer that reads
// the full layer's indices and, for KV sharing, its buffer (or its gathered rows).
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <sstream>

#include "kernels/attention_args.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/cuda/cuda_reference.h"
#include "tests/cuda/cuda_test_support.h"

namespace hysparse {
namespace cuda {
namespace testing {
namespace {

enum class SaFrom { kOwn, kShared, kSelected };  // sparse layer: retrofit, KV sharing, gathered rows
enum class GateKind { kNone, kPerHead, kPerChannel };

struct SharedCase {
  std::string name;
  int batch, heads, kv_heads, dim;
  int64_t new_len, capacity;
  std::vector<int64_t> totals;  // total_b = seqlens_k[b] + 1
  int block, top_k, window;
  bool bnsh;      // query/key/value layout
  bool in_place;  // past and present one buffer (else present is separate memory: the copy path)
  SaFrom sa;
  Combine combine;
  GateKind gate;
  bool sinks;
};

struct SharedParam {
  SharedCase c;
  DType dtype;
};

// One layer's buffer before the call: rows [0, p_b) random (the row's past), every later row 1000, so
// a read of a position the row does not hold yet (or a token that was not written) shows.
template <typename T>
void FillBuffer(HostTensor<T>& buf, const SharedCase& c, const std::vector<int64_t>& past, std::mt19937& rng) {
  const int64_t C = c.capacity, D = c.dim;
  buf.Resize(static_cast<size_t>(c.batch) * c.kv_heads * C * D);
  buf.FillUniform(rng, -1.f, 1.f);
  for (int b = 0; b < c.batch; ++b) {
    for (int h = 0; h < c.kv_heads; ++h) {
      for (int64_t row = past[b]; row < C; ++row) {
        for (int64_t d = 0; d < D; ++d) buf.Set(((b * c.kv_heads + h) * C + row) * D + d, 1000.f);
      }
    }
  }
}

// The buffer after the call: the real new tokens of row b at [p_b, total_b), nothing else changed.
template <typename T>
HostTensor<T> Updated(const HostTensor<T>& buf, const HostTensor<T>& fresh, const HeadView& view, const SharedCase& c,
                      const std::vector<int64_t>& past, const std::vector<int64_t>& real) {
  HostTensor<T> out = buf;
  for (int b = 0; b < c.batch; ++b) {
    for (int h = 0; h < c.kv_heads; ++h) {
      for (int64_t s = 0; s < real[b]; ++s) {
        for (int d = 0; d < c.dim; ++d) {
          const size_t dst = ((static_cast<size_t>(b) * c.kv_heads + h) * c.capacity + past[b] + s) * c.dim + d;
          const size_t src = static_cast<size_t>(view.Offset(b, h, s)) + d;
          out.storage[dst] = fresh.storage[src];
          out.values[dst] = fresh.values[src];
        }
      }
    }
  }
  return out;
}

// [H_kv, S, width] per batch row <-> the kernel's compact [H_kv, real, width] (CPU glue's CopyHeadRows).
template <typename E>
std::vector<E> Compact(const E* node_row, int64_t heads, int64_t S, int64_t real, int64_t width) {
  std::vector<E> out(static_cast<size_t>(heads * real * width));
  for (int64_t h = 0; h < heads; ++h) {
    std::copy(node_row + h * S * width, node_row + h * S * width + real * width, out.begin() + h * real * width);
  }
  return out;
}
template <typename E>
void Spread(const std::vector<E>& compact, E* node_row, int64_t heads, int64_t S, int64_t real, int64_t width,
            int64_t compact_width) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t s = 0; s < real; ++s) {
      std::copy(compact.begin() + (h * real + s) * compact_width, compact.begin() + (h * real + s + 1) * compact_width,
                node_row + (h * S + s) * width);
    }
  }
}

template <typename T>
void ExpectBitEqual(const std::vector<T>& gpu, const std::vector<T>& want, const std::string& what) {
  ASSERT_EQ(gpu.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    if (std::memcmp(&gpu[i], &want[i], sizeof(T)) != 0) {
      if (bad++ == 0) first = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " elements differ, first at " << first;
}

// One layer's host tensors for a step: its query, the new keys/values, its buffer before the step
// (past) and what the buffer must hold after it.
template <typename T>
struct LayerStep {
  HostTensor<T> q, k_new, v_new, k_buf, v_buf, k_want, v_want;
};
template <typename T>
LayerStep<T> MakeLayerStep(const SharedCase& c, const HeadView& kv_view, const std::vector<int64_t>& past,
                           const std::vector<int64_t>& real, std::mt19937& rng) {
  LayerStep<T> l;
  l.q.Resize(static_cast<size_t>(c.batch) * c.heads * c.new_len * c.dim);
  l.q.FillUniform(rng, -2.f, 2.f);
  l.k_new.Resize(static_cast<size_t>(c.batch) * c.kv_heads * c.new_len * c.dim);
  l.v_new.Resize(l.k_new.storage.size());
  l.k_new.FillUniform(rng, -1.f, 1.f);
  l.v_new.FillUniform(rng, -1.f, 1.f);
  FillBuffer(l.k_buf, c, past, rng);
  FillBuffer(l.v_buf, c, past, rng);
  l.k_want = Updated(l.k_buf, l.k_new, kv_view, c, past, real);
  l.v_want = Updated(l.v_buf, l.v_new, kv_view, c, past, real);
  return l;
}

template <typename T>
void RunSharedCase(const SharedCase& c) {
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>()(c.name)));
  const int B = c.batch, H = c.heads, Hkv = c.kv_heads, D = c.dim, bs = c.block, K = c.top_k;
  const int64_t S = c.new_len, C = c.capacity, nb = (C + bs - 1) / bs, plane = C * D;
  ASSERT_EQ(c.totals.size(), static_cast<size_t>(B));
  std::vector<int32_t> seqlens;
  std::vector<int64_t> past, real;
  for (int64_t total : c.totals) {
    seqlens.push_back(static_cast<int32_t>(total - 1));
    past.push_back(std::max<int64_t>(0, total - S));
    real.push_back(total - past.back());
  }
  const HeadView qview = c.bnsh ? HeadView::Bnsh(S, H, D) : HeadView::Bsnh(S, H, D);
  const HeadView kvview = c.bnsh ? HeadView::Bnsh(S, Hkv, D) : HeadView::Bsnh(S, Hkv, D);
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  Stream stream;
  DeviceArray<int32_t> d_seqlens(seqlens);
  // The sizes of the GPU call (B rows of S tokens over the buffer) or of one row's CPU call.
  const auto dims = [&](int batch, int64_t new_len, int64_t total_len) {
    return AttentionDims{batch, H, Hkv, D, new_len, total_len, scale, bs};
  };
  // The fields the GPU call (whole batch) and the CPU calls (one row each) share.
  auto full_common = [&](auto& a) {
    a.cache_capacity = C;
    a.top_k = K;
    a.query_view = qview;
    a.output_view = qview;
  };
  // The CPU reference of row b (batch 1, its real tokens and total): its slice of the query and output.
  const auto reference_row = [&](auto& a, const LayerStep<T>& layer, float* output, int b) {
    a.dims() = dims(1, real[b], c.totals[b]);
    a.query = layer.q.values.data() + b * qview.batch_stride;
    a.output = output + b * qview.batch_stride;
  };
  auto sparse_common = [&](auto& a) {
    a.window = c.window;
    a.combine = c.combine;
    a.query_view = qview;
    a.output_view = qview;
    a.own_capacity = C;
    a.own_start = 0;
    a.sa_capacity = C;
    a.top_k = K;
    a.gate_per_channel = c.gate == GateKind::kPerChannel;
  };

  // ---- The full layer ----
  const LayerStep<T> full = MakeLayerStep<T>(c, kvview, past, real, rng);

  // GPU, as the CUDA glue: present = past (same memory, or a copy), the new tokens written in place.
  const size_t buf_n = full.k_buf.storage.size();
  DeviceArray<T> d_kpast(full.k_buf.storage), d_vpast(full.v_buf.storage);
  DeviceArray<T> d_kpresent(c.in_place ? 0 : buf_n), d_vpresent(c.in_place ? 0 : buf_n);
  T* kp = c.in_place ? d_kpast.get() : d_kpresent.get();
  T* vp = c.in_place ? d_vpast.get() : d_vpresent.get();
  if (!c.in_place) {
    d_kpresent.FillBytes(0xFF);
    d_vpresent.FillBytes(0xFF);
    Check(cudaMemcpyAsync(kp, d_kpast.get(), buf_n * sizeof(T), cudaMemcpyDeviceToDevice, stream.get()), "copy");
    Check(cudaMemcpyAsync(vp, d_vpast.get(), buf_n * sizeof(T), cudaMemcpyDeviceToDevice, stream.get()), "copy");
  }
  DeviceArray<T> d_knew(full.k_new.storage), d_vnew(full.v_new.storage), d_q(full.q.storage);
  for (auto [src, dst] : {std::pair<const T*, T*>{d_knew.get(), kp}, std::pair<const T*, T*>{d_vnew.get(), vp}}) {
    const Status st = LaunchWriteNewTokens<T>(src, kvview, B, Hkv, S, D, dst, C, d_seqlens.get(), stream.get());
    ASSERT_TRUE(st.ok()) << st.message;
  }

  const size_t out_n = full.q.values.size(), idx_n = static_cast<size_t>(B) * Hkv * S * K;
  const size_t score_n = static_cast<size_t>(B) * Hkv * S * nb, sel_w = static_cast<size_t>(K) * bs * D;
  const FullAttnDeviceOutputs<T> dev(out_n, idx_n, score_n, idx_n * bs * D);
  FullAttnArgs<T> ga;
  ga.dims() = dims(B, S, C);
  full_common(ga);
  ga.query = d_q.get();
  ga.key_cache = kp;
  ga.value_cache = vp;
  dev.Bind(ga);
  {
    ScratchUse use;
    const Status st = LaunchAndWait(stream, &use, [&](MallocScratch& scratch) {
      return LaunchFullAttn<T>(ga, stream.get(), scratch, d_seqlens.get());
    });
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_LE(use.calls, 1);
  }
  ExpectBitEqual((c.in_place ? d_kpast : d_kpresent).Download(), full.k_want.storage, "present_key (full layer)");
  ExpectBitEqual((c.in_place ? d_vpast : d_vpresent).Download(), full.v_want.storage, "present_value (full layer)");
  if (!c.in_place) {
    ExpectBitEqual(d_kpast.Download(), full.k_buf.storage, "past_key left untouched");
  }

  // CPU reference, row by row.
  std::vector<float> ref_out(out_n, 0.f), ref_scores(score_n, 0.f), ref_selk(idx_n * bs * D, 0.f),
      ref_selv(idx_n * bs * D, 0.f);
  std::vector<int32_t> ref_idx(idx_n, -1);
  for (int b = 0; b < B; ++b) {
    const int64_t rb = real[b], nb_b = (c.totals[b] + bs - 1) / bs;
    std::vector<int32_t> idx_c(static_cast<size_t>(Hkv * rb * K));
    std::vector<float> scores_c(static_cast<size_t>(Hkv * rb * nb_b)), selk_c(Hkv * rb * sel_w),
        selv_c(Hkv * rb * sel_w);
    FullAttnArgs<float> ra;
    reference_row(ra, full, ref_out.data(), b);
    full_common(ra);
    ra.key_cache = full.k_want.values.data() + b * Hkv * plane;
    ra.value_cache = full.v_want.values.data() + b * Hkv * plane;
    ra.block_indices = idx_c.data();
    ra.block_scores = scores_c.data();
    ra.selected_key = selk_c.data();
    ra.selected_value = selv_c.data();
    RunFullAttnCpu<float>(ra, ThreadExecutor());
    Spread(idx_c, ref_idx.data() + b * Hkv * S * K, Hkv, S, rb, K, K);
    Spread(scores_c, ref_scores.data() + b * Hkv * S * nb, Hkv, S, rb, nb, nb_b);
    Spread(selk_c, ref_selk.data() + b * Hkv * S * sel_w, Hkv, S, rb, sel_w, sel_w);
    Spread(selv_c, ref_selv.data() + b * Hkv * S * sel_w, Hkv, S, rb, sel_w, sel_w);
  }

  ExpectClose(dev.output.Download(), ref_out, OutputTolerance<T>(), "output (full layer)");
  const std::vector<float> scores = dev.scores.Download();
  size_t bad_scores = 0;
  for (size_t i = 0; i < score_n; ++i) {
    if (!(std::fabs(static_cast<double>(scores[i]) - ref_scores[i]) <= 1e-5 + 1e-4 * std::fabs(ref_scores[i]))) {
      ++bad_scores;
    }
  }
  EXPECT_EQ(bad_scores, 0u) << "block_scores differing from the CPU (padding rows and blocks past total_b: 0)";
  const std::vector<int32_t> idx = dev.indices.Download();
  for (size_t row = 0; row < idx_n / K; ++row) {
    std::ostringstream where;
    where << "block_indices row " << row;
    CheckIndexRow(&idx[row * K], &ref_idx[row * K], &ref_scores[row * nb], K, nb, where.str());
    if (::testing::Test::HasFatalFailure()) return;
  }
  // Gathered rows bit for bit: the buffer's rows of the GPU's blocks, zero past the row's total_b.
  const std::vector<T> selk = dev.selected_key.Download(), selv = dev.selected_value.Download();
  size_t sel_bad = 0;
  for (size_t slot = 0; slot < idx_n; ++slot) {
    const int64_t kv_plane = static_cast<int64_t>(slot) / K / S, b = kv_plane / Hkv;
    for (int r = 0; r < bs; ++r) {
      const int64_t pos = static_cast<int64_t>(idx[slot]) * bs + r;
      const bool inside = idx[slot] >= 0 && pos < c.totals[b];
      for (int d = 0; d < D; ++d) {
        const size_t at = (slot * bs + r) * D + d;
        const T zero = ToStorage<T>(0.f);
        const T& wk = inside ? full.k_want.storage[(kv_plane * C + pos) * D + d] : zero;
        const T& wv = inside ? full.v_want.storage[(kv_plane * C + pos) * D + d] : zero;
        if (std::memcmp(&selk[at], &wk, sizeof(T)) || std::memcmp(&selv[at], &wv, sizeof(T))) ++sel_bad;
      }
    }
  }
  EXPECT_EQ(sel_bad, 0u) << "selected_key/value elements differing from the buffer rows";

  // ---- The sparse layer: its own buffer, the full layer's indices (and buffer or gathered rows) ----
  const LayerStep<T> sparse = MakeLayerStep<T>(c, kvview, past, real, rng);
  HostTensor<T> gate, sinks;
  const int64_t gate_w = c.gate == GateKind::kPerChannel ? 2LL * H * D : 2LL * H;
  if (c.gate != GateKind::kNone) {
    gate.Resize(static_cast<size_t>(B * S * gate_w));
    gate.FillUniform(rng, -3.f, 3.f);
  }
  if (c.sinks) {
    sinks.Resize(static_cast<size_t>(c.combine == Combine::kGate ? 2 : 1) * H);
    sinks.FillUniform(rng, -1.f, 2.f);
  }
  DeviceArray<T> d_k2(sparse.k_buf.storage), d_v2(sparse.v_buf.storage), d_k2new(sparse.k_new.storage),
      d_v2new(sparse.v_new.storage), d_q2(sparse.q.storage), d_gate(gate.storage), d_sinks(sinks.storage),
      d_out2(out_n);
  d_out2.FillBytes(0xFF);
  for (auto [src, dst] : {std::pair<const T*, T*>{d_k2new.get(), d_k2.get()}, std::pair<const T*, T*>{d_v2new.get(), d_v2.get()}}) {
    const Status st = LaunchWriteNewTokens<T>(src, kvview, B, Hkv, S, D, dst, C, d_seqlens.get(), stream.get());
    ASSERT_TRUE(st.ok()) << st.message;
  }
  SparseAttnArgs<T> gs;
  gs.dims() = dims(B, S, C);
  sparse_common(gs);
  gs.query = d_q2.get();
  gs.output = d_out2.get();
  gs.own_key = d_k2.get();
  gs.own_value = d_v2.get();
  gs.own_len = C;
  if (c.sa == SaFrom::kOwn) {
    gs.sa_key = d_k2.get();
    gs.sa_value = d_v2.get();
  } else if (c.sa == SaFrom::kShared) {
    gs.sa_key = kp;
    gs.sa_value = vp;
  } else {
    gs.selected_key = dev.selected_key.get();
    gs.selected_value = dev.selected_value.get();
  }
  gs.block_indices = dev.indices.get();
  gs.gate = c.gate != GateKind::kNone ? d_gate.get() : nullptr;
  gs.sinks = c.sinks ? d_sinks.get() : nullptr;
  {
    ScratchUse use;
    const Status st = LaunchAndWait(stream, &use, [&](MallocScratch& scratch) {
      return LaunchSparseAttn<T>(gs, stream.get(), scratch, d_seqlens.get());
    });
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_LE(use.calls, 1);
  }
  ExpectBitEqual(d_k2.Download(), sparse.k_want.storage, "present_key (sparse layer)");
  ExpectBitEqual(d_v2.Download(), sparse.v_want.storage, "present_value (sparse layer)");

  std::vector<float> selk_f(selk.size()), selv_f(selv.size());
  for (size_t i = 0; i < selk.size(); ++i) {
    selk_f[i] = FromStorage(selk[i]);
    selv_f[i] = FromStorage(selv[i]);
  }
  std::vector<float> ref_out2(out_n, 0.f);
  for (int b = 0; b < B; ++b) {
    const int64_t rb = real[b];
    SparseAttnArgs<float> rs;
    reference_row(rs, sparse, ref_out2.data(), b);
    sparse_common(rs);
    rs.own_key = sparse.k_want.values.data() + b * Hkv * plane;
    rs.own_value = sparse.v_want.values.data() + b * Hkv * plane;
    rs.own_len = c.totals[b];
    std::vector<float> selk_c, selv_c;
    if (c.sa == SaFrom::kOwn) {
      rs.sa_key = rs.own_key;
      rs.sa_value = rs.own_value;
    } else if (c.sa == SaFrom::kShared) {
      rs.sa_key = full.k_want.values.data() + b * Hkv * plane;
      rs.sa_value = full.v_want.values.data() + b * Hkv * plane;
    } else {
      selk_c = Compact(selk_f.data() + b * Hkv * S * sel_w, Hkv, S, rb, sel_w);
      selv_c = Compact(selv_f.data() + b * Hkv * S * sel_w, Hkv, S, rb, sel_w);
      rs.selected_key = selk_c.data();
      rs.selected_value = selv_c.data();
    }
    const std::vector<int32_t> idx_c = Compact(idx.data() + b * Hkv * S * K, Hkv, S, rb, K);
    rs.block_indices = idx_c.data();
    rs.gate = c.gate != GateKind::kNone ? gate.values.data() + b * S * gate_w : nullptr;
    rs.sinks = c.sinks ? sinks.values.data() : nullptr;
    RunSparseAttnCpu<float>(rs, ThreadExecutor());
  }
  ExpectClose(d_out2.Download(), ref_out2, OutputTolerance<T>(), "output (sparse layer)");
}

using SharedBufferCudaTest = CudaKernelTest<SharedParam>;

TEST_P(SharedBufferCudaTest, MatchesCpuKernelsRowByRow) {
  const SharedParam& p = GetParam();
  ForDType(p.dtype, [&](auto storage) { RunSharedCase<decltype(storage)>(p.c); });
}

std::vector<SharedParam> SharedParams() {
  const Combine U = Combine::kUnion, G = Combine::kGate;
  const std::vector<SharedCase> cases = {
      // Decode (split-K path): a padded batch whose rows sit at different lengths, one of them at 1.
      {"decode_padded_batch_retrofit", 3, 4, 2, 64, 1, 96, {37, 90, 1}, 8, 3, 16, false, true, SaFrom::kOwn, U,
       GateKind::kNone, false},
      // Decode with KV sharing from the full layer's buffer, gate + sinks, present separate from past.
      {"decode_kv_sharing_gate_copy", 2, 8, 2, 64, 1, 128, {100, 61}, 16, 4, 24, true, false, SaFrom::kShared, G,
       GateKind::kPerHead, true},
      // A 3-token chunk (split-K path) beside a 2-token first prompt right-padded to 3; SA from gathered rows.
      {"chunk3_selected_d96", 2, 4, 1, 96, 3, 64, {50, 2}, 8, 3, 8, false, true, SaFrom::kSelected, U, GateKind::kNone,
       true},
      // Right-padded first prompts (tiled path): row 1 has 13 real tokens of 20; KV sharing, union.
      {"prefill_right_padded_kv_sharing", 2, 4, 2, 64, 20, 48, {20, 13}, 8, 3, 8, false, true, SaFrom::kShared, U,
       GateKind::kNone, false},
      // Chunked prefill (tiled path): 12-token chunks at different past lengths; gate without gate input.
      {"chunked_prefill_bnsh_gate", 2, 4, 2, 64, 12, 64, {40, 17}, 8, 4, 10, true, false, SaFrom::kOwn, G,
       GateKind::kNone, true},
      // Scalar path (D = 36), a padded prompt batch, per-channel gate over gathered rows.
      {"prefill_padded_d36_selected_channel_gate", 2, 2, 1, 36, 9, 24, {9, 4}, 4, 2, 4, false, true, SaFrom::kSelected,
       G, GateKind::kPerChannel, false},
  };
  return InAllDTypes<SharedParam>(cases);
}

INSTANTIATE_TEST_SUITE_P(Cases, SharedBufferCudaTest, ::testing::ValuesIn(SharedParams()), ParamName<SharedParam>);

// The shared-buffer value check: seqlens_k rows first (negative, beyond the capacity), then
// total_sequence_length, then block index rows against each batch row's own block count.
class CheckSharedBufferCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << kNoGpuMessage;
  }
  ValueProblem Run(const std::vector<int32_t>& seqlens, int64_t capacity, int64_t declared,
                   const std::vector<int32_t>& indices, int64_t rows_per_batch, int top_k, int block_size) {
    DeviceArray<int32_t> d_seqlens(seqlens), d_indices(indices);
    DeviceArray<ValueProblem> d_problem(1);
    Stream stream;
    const Status st = LaunchCheckSharedBufferValues(d_seqlens.get(), static_cast<int>(seqlens.size()), capacity,
                                                    declared, indices.empty() ? nullptr : d_indices.get(),
                                                    rows_per_batch, top_k, block_size, d_problem.get(), stream.get());
    EXPECT_TRUE(st.ok()) << st.message;
    stream.Sync();
    return d_problem.Download()[0];
  }
};

TEST_F(CheckSharedBufferCudaTest, ReportsLengthsThenRowsAgainstTheirOwnBlockCount) {
  // Two batch rows of two index rows each (H_kv * S = 2), K = 3, block 8, capacity 64: row 0 holds
  // 20 positions (3 blocks), row 1 holds 64 (8 blocks).
  const std::vector<int32_t> good = {0, 2, -1, 1, -1, -1, 7, -1, -1, 0, 3, 5};
  ValueProblem p = Run({19, 63}, 64, 64, good, 2, 3, 8);
  EXPECT_EQ(p.kind, ValueProblemKind::kNone);
  p = Run({19, 63}, 64, 64, {}, 2, 3, 8);  // the full op: lengths only
  EXPECT_EQ(p.kind, ValueProblemKind::kNone);

  std::vector<int32_t> bad = good;
  bad[1] = 3;  // block 3 of batch row 0: past its 3 blocks, although the buffer has 8
  p = Run({19, 63}, 64, 64, bad, 2, 3, 8);
  EXPECT_EQ(p.kind, ValueProblemKind::kIndexPastLastBlock);
  EXPECT_EQ(p.where, 0);
  EXPECT_EQ(p.value, 3);
  EXPECT_EQ(p.row_total, 20);

  p = Run({19, -1}, 64, 20, good, 2, 3, 8);
  EXPECT_EQ(p.kind, ValueProblemKind::kSeqlensNegative);
  EXPECT_EQ(p.where, 1);
  EXPECT_EQ(p.value, -1);
  p = Run({64, 63}, 64, 65, bad, 2, 3, 8);  // total 65 > capacity: reported before the bad index
  EXPECT_EQ(p.kind, ValueProblemKind::kSeqlensPastCapacity);
  EXPECT_EQ(p.where, 0);
  EXPECT_EQ(p.value, 64);
  p = Run({19, 40}, 64, 64, good, 2, 3, 8);
  EXPECT_EQ(p.kind, ValueProblemKind::kTotalLengthMismatch);
  EXPECT_EQ(p.value, 64);
  EXPECT_EQ(p.previous, 41);
}

}  // namespace
}  // namespace testing
}  // namespace cuda
}  // namespace hysparse
