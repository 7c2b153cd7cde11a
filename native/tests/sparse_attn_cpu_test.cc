// RunSparseAttnCpu against a naive float64 reference written from docs/ops.md "HySparseSparseAttn"
// (token sets, union / gate combination, sinks, padding), plus a dense causal-attention reference for
// the case where union attention must equal dense attention. Every TileKernels implementation runs
// every case (the loops themselves are tested in tile_kernels_test.cc).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cpu/attention_cpu.h"
#include "kernels/cpu/tile_kernels.h"
#include "test_support.h"

namespace hysparse {
namespace {

using namespace test;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Tolerances against the float64 reference. Values are O(1): |v| <= 1, so |output| <= 1 in union
// mode and <= 2 in gate mode. float32: the worst error seen over all cases is ~2e-7 (float32 sums of
// up to ~1e3 terms); 5e-6 leaves room for other shapes but not for a wrong key. float16: the output
// is rounded to half, up to 4.9e-4 for |o| in [1, 2) (2.4e-4 observed); inputs are compared exactly
// as stored, so 1e-3 covers the rounding but not a wrong key.
constexpr double kFloatTolerance = 5e-6;
constexpr double kHalfTolerance = 1e-3;

enum class SaSource { kOwnCache, kSharedCache, kGathered };
enum class Padding { kNone, kLeftRight, kHoles };
enum class GateKind { kNone, kPerHead, kPerChannel };
// kCoverOutsideWindow: every row holds all blocks with a position before the token's window (plus
// random extra blocks), so union over the own cache is dense causal attention.
enum class Rows { kRandom, kCoverOutsideWindow };

struct Case {
  std::string name;
  int batch = 1;
  int num_heads = 4;
  int kv_heads = 2;
  int dim = 64;
  int64_t new_len = 1;
  int64_t total_len = 100;
  int block_size = 16;
  int window = 24;
  int top_k = 3;
  Combine combine = Combine::kUnion;
  bool bsnh = false;  // 3-D [B, S, H*D] query/output views instead of 4-D [B, H, S, D]
  SaSource source = SaSource::kOwnCache;
  bool window_cache = false;  // own cache holds only the last min(w, T-S) past tokens
  Padding padding = Padding::kNone;
  GateKind gate = GateKind::kNone;
  bool sinks = false;
  Rows rows = Rows::kRandom;
  int row_padding = 0;  // extra elements after every query/output row (strided views), poisoned
  float scale = 0.f;    // 0: 1/sqrt(D)
  uint32_t seed = 1;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string Describe(const Case& c) {
  const char* src[] = {"own", "shared", "gathered"};
  const char* pad[] = {"none", "left/right", "holes"};
  const char* gate[] = {"none", "per-head", "per-channel"};
  return c.name + " [B=" + std::to_string(c.batch) + " Hq=" + std::to_string(c.num_heads) +
         " Hkv=" + std::to_string(c.kv_heads) + " D=" + std::to_string(c.dim) +
         " S=" + std::to_string(c.new_len) + " T=" + std::to_string(c.total_len) +
         " bs=" + std::to_string(c.block_size) + " w=" + std::to_string(c.window) +
         " K=" + std::to_string(c.top_k) + (c.combine == Combine::kUnion ? " union" : " gate") +
         (c.bsnh ? " 3-D" : " 4-D") + " src=" + src[static_cast<int>(c.source)] +
         (c.window_cache ? " window_cache" : "") + " pad=" + pad[static_cast<int>(c.padding)] +
         " gate=" + gate[static_cast<int>(c.gate)] + (c.sinks ? " sinks" : "") +
         " seed=" + std::to_string(c.seed) + "]";
}

// Inputs of one call: *_ref hold exactly the stored values as double, for the reference.
template <typename T>
struct Problem {
  Case c;
  int64_t past = 0;  // T - S
  int64_t num_blocks = 0;
  int group = 0;  // H_q / H_kv

  std::vector<double> q_ref;                 // [B][Hq][S][D]
  std::vector<double> own_k_ref, own_v_ref;  // [B][Hkv][T][D], by absolute position
  std::vector<double> sa_k_ref, sa_v_ref;    // [B][Hkv][T][D], shared cache (source != own)
  std::vector<double> sel_k_ref, sel_v_ref;  // [B][Hkv][S][K*bs][D] (gathered source)
  std::vector<int64_t> mask;                 // [B][T], empty when absent
  std::vector<int32_t> indices;              // [B][Hkv][S][K]
  std::vector<double> gate_ref;              // [B][S][2*Hq] or [B][S][2*Hq*D]
  std::vector<double> sinks_ref;             // [2][Hq] (gate) or [1][Hq] (union)

  std::vector<T> query, own_k, own_v, sa_k, sa_v, sel_k, sel_v, gate, sinks, output;
  HeadView query_view, output_view;
  int64_t own_start = 0, own_len = 0, own_capacity = 0, sa_capacity = 0;

  explicit Problem(const Case& cs) : c(cs) {
    std::mt19937 rng(c.seed);
    auto uniform = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
    auto randint = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
    const int B = c.batch, Hq = c.num_heads, Hkv = c.kv_heads, D = c.dim, K = c.top_k, bs = c.block_size;
    const int64_t S = c.new_len, L = c.total_len;  // L: total length T
    past = L - S;
    num_blocks = (L + bs - 1) / bs;
    group = Hq / Hkv;

    // Stores x as T and records the stored value.
    auto store = [](double x, T* slot, double* ref) {
      *slot = ToStorage<T>(x);
      *ref = FromStorage(*slot);
    };
    auto random_kv = [&](std::vector<double>& ref, double amplitude) {
      ref.resize(static_cast<size_t>(B) * Hkv * L * D);
      for (double& x : ref) x = FromStorage(ToStorage<T>(uniform(-amplitude, amplitude)));
    };

    // Query (and output) views, optionally with poisoned gaps after each row.
    const int row = D + c.row_padding;
    query_view = c.bsnh ? HeadView::Bsnh(S, Hq, row) : HeadView::Bnsh(S, Hq, row);
    output_view = query_view;
    const size_t view_elems = static_cast<size_t>(B) * Hq * S * row;
    query.assign(view_elems, ToStorage<T>(kNaN));
    q_ref.resize(static_cast<size_t>(B) * Hq * S * D);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < Hq; ++h)
        for (int64_t s = 0; s < S; ++s)
          for (int d = 0; d < D; ++d)
            store(uniform(-2, 2), &query[query_view.Offset(b, h, s) + d], &q_ref[QIndex(b, h, s, d)]);

    // Own keys/values for every position; the own buffer holds [own_start, T) plus poisoned slack.
    random_kv(own_k_ref, 1.0);
    random_kv(own_v_ref, 1.0);
    own_start = c.window_cache ? past - std::min<int64_t>(c.window, past) : 0;
    own_len = L - own_start;
    own_capacity = own_len + 3;
    own_k.assign(static_cast<size_t>(B) * Hkv * own_capacity * D, ToStorage<T>(kNaN));
    own_v = own_k;
    for (int b = 0; b < B; ++b)
      for (int g = 0; g < Hkv; ++g)
        for (int64_t j = own_start; j < L; ++j)
          for (int d = 0; d < D; ++d) {
            const size_t slot = ((static_cast<size_t>(b) * Hkv + g) * own_capacity + (j - own_start)) * D + d;
            own_k[slot] = ToStorage<T>(own_k_ref[KvIndex(b, g, j, d)]);
            own_v[slot] = ToStorage<T>(own_v_ref[KvIndex(b, g, j, d)]);
          }

    if (c.source != SaSource::kOwnCache) {
      random_kv(sa_k_ref, 1.0);
      random_kv(sa_v_ref, 1.0);
    }
    if (c.source == SaSource::kSharedCache) {
      sa_capacity = L + 2;
      sa_k.assign(static_cast<size_t>(B) * Hkv * sa_capacity * D, ToStorage<T>(kNaN));
      sa_v = sa_k;
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < Hkv; ++g)
          for (int64_t j = 0; j < L; ++j)
            for (int d = 0; d < D; ++d) {
              const size_t slot = ((static_cast<size_t>(b) * Hkv + g) * sa_capacity + j) * D + d;
              sa_k[slot] = ToStorage<T>(sa_k_ref[KvIndex(b, g, j, d)]);
              sa_v[slot] = ToStorage<T>(sa_v_ref[KvIndex(b, g, j, d)]);
            }
    }

    // Attention mask.
    if (c.padding != Padding::kNone) {
      mask.assign(static_cast<size_t>(B) * L, 1);
      for (int b = 0; b < B; ++b) {
        int64_t* m = &mask[static_cast<size_t>(b) * L];
        if (c.padding == Padding::kHoles) {
          for (int64_t j = 0; j < L; ++j) m[j] = uniform(0, 1) < 0.25 ? 0 : 1;
        } else if (b % 2 == 0) {  // left padding
          const int64_t n = randint(1, std::max<int64_t>(1, L / 3));
          std::fill(m, m + n, 0);
        } else {  // right padding: reaches into the new tokens
          const int64_t n = randint(1, std::min<int64_t>(L, S + 2));
          std::fill(m + L - n, m + L, 0);
        }
      }
    }

    // Block index rows: strictly ascending valid blocks, then -1.
    indices.assign(static_cast<size_t>(B) * Hkv * S * K, -1);
    for (int b = 0; b < B; ++b)
      for (int g = 0; g < Hkv; ++g)
        for (int64_t s = 0; s < S; ++s) {
          std::vector<int32_t> chosen;
          std::vector<int32_t> pool;
          if (c.rows == Rows::kCoverOutsideWindow) {
            const int64_t t = past + s;
            const int64_t last_outside = t - c.window;  // last position before the window
            for (int64_t i = 0; last_outside >= 0 && i <= last_outside / bs; ++i) chosen.push_back(static_cast<int32_t>(i));
            if (static_cast<int>(chosen.size()) > K) {
              ADD_FAILURE() << "case " << c.name << " cannot cover the blocks outside the window with K=" << K;
              chosen.resize(K);
            }
            for (int64_t i = chosen.size(); i < num_blocks; ++i) pool.push_back(static_cast<int32_t>(i));
            std::shuffle(pool.begin(), pool.end(), rng);
            const int64_t extra = randint(0, std::min<int64_t>(K - chosen.size(), pool.size()));
            chosen.insert(chosen.end(), pool.begin(), pool.begin() + extra);
          } else {
            pool.resize(num_blocks);
            std::iota(pool.begin(), pool.end(), 0);
            std::shuffle(pool.begin(), pool.end(), rng);
            const int64_t most = std::min<int64_t>(K, num_blocks);
            const int64_t count = uniform(0, 1) < 0.7 ? most : randint(0, most);
            chosen.assign(pool.begin(), pool.begin() + count);
          }
          std::sort(chosen.begin(), chosen.end());
          std::copy(chosen.begin(), chosen.end(), &indices[RowIndex(b, g, s)]);
        }

    // Gathered blocks (from the shared cache): rows that hold no position (a -1 slot, or past T in
    // the last block) are NaN instead of the contract's zeros, to show the kernel never reads them.
    if (c.source == SaSource::kGathered) {
      const size_t elems = static_cast<size_t>(B) * Hkv * S * K * bs * D;
      sel_k.assign(elems, ToStorage<T>(kNaN));
      sel_v = sel_k;
      sel_k_ref.assign(elems, kNaN);
      sel_v_ref.assign(elems, kNaN);
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < Hkv; ++g)
          for (int64_t s = 0; s < S; ++s)
            for (int k = 0; k < K; ++k) {
              const int32_t idx = indices[RowIndex(b, g, s) + k];
              for (int r = 0; idx >= 0 && r < bs; ++r) {
                const int64_t j = static_cast<int64_t>(idx) * bs + r;
                if (j >= L) break;
                for (int d = 0; d < D; ++d) {
                  const size_t slot = SelIndex(b, g, s, static_cast<int64_t>(k) * bs + r, d);
                  store(sa_k_ref[KvIndex(b, g, j, d)], &sel_k[slot], &sel_k_ref[slot]);
                  store(sa_v_ref[KvIndex(b, g, j, d)], &sel_v[slot], &sel_v_ref[slot]);
                }
              }
            }
    }

    if (c.gate != GateKind::kNone) {
      const size_t width = c.gate == GateKind::kPerHead ? 2 * Hq : 2 * static_cast<size_t>(Hq) * D;
      gate.resize(static_cast<size_t>(B) * S * width);
      gate_ref.resize(gate.size());
      for (size_t i = 0; i < gate.size(); ++i) store(uniform(-3, 3), &gate[i], &gate_ref[i]);
    }
    if (c.sinks) {
      const size_t rows = c.combine == Combine::kGate ? 2 : 1;
      sinks.resize(rows * Hq);
      sinks_ref.resize(sinks.size());
      for (size_t i = 0; i < sinks.size(); ++i) store(uniform(-1, 2.5), &sinks[i], &sinks_ref[i]);
    }
    PoisonOutput();
  }

  size_t QIndex(int b, int h, int64_t s, int d) const {
    return ((static_cast<size_t>(b) * c.num_heads + h) * c.new_len + s) * c.dim + d;
  }
  size_t KvIndex(int b, int g, int64_t j, int d) const {
    return ((static_cast<size_t>(b) * c.kv_heads + g) * c.total_len + j) * c.dim + d;
  }
  size_t RowIndex(int b, int g, int64_t s) const {
    return ((static_cast<size_t>(b) * c.kv_heads + g) * c.new_len + s) * c.top_k;
  }
  size_t SelIndex(int b, int g, int64_t s, int64_t slot, int d) const {
    return (((static_cast<size_t>(b) * c.kv_heads + g) * c.new_len + s) * c.top_k * c.block_size + slot) * c.dim + d;
  }

  void PoisonOutput() { output.assign(static_cast<size_t>(c.batch) * c.num_heads * c.new_len * (c.dim + c.row_padding), PoisonValue<T>()); }

  SparseAttnArgs<T> Args() {
    SparseAttnArgs<T> a;
    const float scale = c.scale != 0.f ? c.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dim)));
    a.dims() = {c.batch, c.num_heads, c.kv_heads, c.dim, c.new_len, c.total_len, scale, c.block_size};
    a.window = c.window;
    a.combine = c.combine;
    a.query = query.data();
    a.query_view = query_view;
    a.own_key = own_k.data();
    a.own_value = own_v.data();
    a.own_capacity = own_capacity;
    a.own_start = own_start;
    a.own_len = own_len;
    if (c.source == SaSource::kOwnCache) {
      a.sa_key = own_k.data();
      a.sa_value = own_v.data();
      a.sa_capacity = own_capacity;
    } else if (c.source == SaSource::kSharedCache) {
      a.sa_key = sa_k.data();
      a.sa_value = sa_v.data();
      a.sa_capacity = sa_capacity;
    } else {
      a.selected_key = sel_k.data();
      a.selected_value = sel_v.data();
    }
    a.block_indices = indices.data();
    a.top_k = c.top_k;
    a.attention_mask = mask.empty() ? nullptr : mask.data();
    a.gate = gate.empty() ? nullptr : gate.data();
    a.gate_per_channel = c.gate == GateKind::kPerChannel;
    a.sinks = sinks.empty() ? nullptr : sinks.data();
    a.output = output.data();
    a.output_view = output_view;
    return a;
  }

  double Scale() const {
    return c.scale != 0.f ? static_cast<double>(static_cast<float>(c.scale))
                          : static_cast<double>(static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dim))));
  }
  bool Valid(int b, int64_t t, int64_t j) const {
    return j <= t && (mask.empty() || mask[static_cast<size_t>(b) * c.total_len + j] == 1);
  }
  bool QueryIsPadding(int b, int64_t t) const {
    return !mask.empty() && mask[static_cast<size_t>(b) * c.total_len + t] == 0;
  }
};

// softmax over `logits` with an optional sink in the denominator, applied to `values`: the output row.
std::vector<double> Softmax(const std::vector<double>& logits, const std::vector<const double*>& values,
                            const double* sink, int dim) {
  std::vector<double> out(dim, 0.0);
  if (logits.empty()) return out;  // no valid key: contributes 0 (with or without a sink)
  double m = sink ? *sink : -INFINITY;
  for (double l : logits) m = std::max(m, l);
  double denom = sink ? std::exp(*sink - m) : 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double p = std::exp(logits[i] - m);
    denom += p;
    for (int d = 0; d < dim; ++d) out[d] += p * values[i][d];
  }
  for (double& x : out) x /= denom;
  return out;
}

// The contract, token by token: output [B][Hq][S][D].
template <typename T>
std::vector<double> SparseReference(const Problem<T>& p) {
  const Case& c = p.c;
  const int D = c.dim, bs = c.block_size;
  std::vector<double> out(static_cast<size_t>(c.batch) * c.num_heads * c.new_len * D, 0.0);
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < c.num_heads; ++h)
      for (int64_t s = 0; s < c.new_len; ++s) {
        const int64_t t = p.past + s;
        if (p.QueryIsPadding(b, t)) continue;  // zero row
        const int g = h / p.group;
        const int32_t* row = &p.indices[p.RowIndex(b, g, s)];
        auto slot_of_block = [&](int64_t block) {  // position in the row, or -1 when not selected
          for (int k = 0; k < c.top_k; ++k)
            if (row[k] == block) return k;
          return -1;
        };
        auto own_key = [&](int64_t j) {
          EXPECT_GE(j, p.own_start) << "window position outside the own cache";
          return &p.own_k_ref[p.KvIndex(b, g, j, 0)];
        };
        auto own_value = [&](int64_t j) { return &p.own_v_ref[p.KvIndex(b, g, j, 0)]; };
        auto sa_row = [&](int64_t j, bool value) -> const double* {
          switch (c.source) {
            case SaSource::kOwnCache:
              return value ? own_value(j) : own_key(j);
            case SaSource::kSharedCache:
              return &(value ? p.sa_v_ref : p.sa_k_ref)[p.KvIndex(b, g, j, 0)];
            case SaSource::kGathered:
              return &(value ? p.sel_v_ref : p.sel_k_ref)[p.SelIndex(b, g, s, slot_of_block(j / bs) * bs + j % bs, 0)];
          }
          return nullptr;
        };
        const double* q = &p.q_ref[p.QIndex(b, h, s, 0)];
        auto logit = [&](const double* k) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += q[d] * k[d];
          return p.Scale() * dot;
        };

        std::vector<double> sel_logits, win_logits, union_logits;
        std::vector<const double*> sel_values, win_values, union_values;
        for (int64_t j = 0; j <= t; ++j) {
          if (!p.Valid(b, t, j)) continue;
          const bool selected = slot_of_block(j / bs) >= 0;
          const bool in_window = j > t - c.window;
          if (selected) {
            sel_logits.push_back(logit(sa_row(j, false)));
            sel_values.push_back(sa_row(j, true));
          }
          if (in_window) {
            win_logits.push_back(logit(own_key(j)));
            win_values.push_back(own_value(j));
          }
          if (in_window || selected) {  // union: each position once, the window from the own cache
            union_logits.push_back(in_window ? logit(own_key(j)) : logit(sa_row(j, false)));
            union_values.push_back(in_window ? own_value(j) : sa_row(j, true));
          }
        }
        double* o = &out[p.QIndex(b, h, s, 0)];
        if (c.combine == Combine::kUnion) {
          const auto r = Softmax(union_logits, union_values, c.sinks ? &p.sinks_ref[h] : nullptr, D);
          std::copy(r.begin(), r.end(), o);
          continue;
        }
        const auto o_sa = Softmax(sel_logits, sel_values, c.sinks ? &p.sinks_ref[h] : nullptr, D);
        const auto o_swa = Softmax(win_logits, win_values, c.sinks ? &p.sinks_ref[c.num_heads + h] : nullptr, D);
        for (int d = 0; d < D; ++d) {
          double g_sa = 0, g_swa = 0;
          const size_t token = static_cast<size_t>(b) * c.new_len + s;
          if (c.gate == GateKind::kPerHead) {
            g_sa = p.gate_ref[token * 2 * c.num_heads + h];
            g_swa = p.gate_ref[token * 2 * c.num_heads + c.num_heads + h];
          } else if (c.gate == GateKind::kPerChannel) {
            const size_t width = static_cast<size_t>(c.num_heads) * D;
            g_sa = p.gate_ref[token * 2 * width + static_cast<size_t>(h) * D + d];
            g_swa = p.gate_ref[token * 2 * width + width + static_cast<size_t>(h) * D + d];
          }
          o[d] = o_sa[d] / (1 + std::exp(-g_sa)) + o_swa[d] / (1 + std::exp(-g_swa));
        }
      }
  return out;
}

// Plain causal softmax attention over the own cache (no sinks): what union must equal when the rows
// cover every block outside the window.
template <typename T>
std::vector<double> DenseReference(const Problem<T>& p) {
  const Case& c = p.c;
  const int D = c.dim;
  std::vector<double> out(static_cast<size_t>(c.batch) * c.num_heads * c.new_len * D, 0.0);
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < c.num_heads; ++h)
      for (int64_t s = 0; s < c.new_len; ++s) {
        const int64_t t = p.past + s;
        if (p.QueryIsPadding(b, t)) continue;
        const double* q = &p.q_ref[p.QIndex(b, h, s, 0)];
        std::vector<double> logits;
        std::vector<const double*> values;
        for (int64_t j = 0; j <= t; ++j) {
          if (!p.Valid(b, t, j)) continue;
          const double* k = &p.own_k_ref[p.KvIndex(b, h / p.group, j, 0)];
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += q[d] * k[d];
          logits.push_back(p.Scale() * dot);
          values.push_back(&p.own_v_ref[p.KvIndex(b, h / p.group, j, 0)]);
        }
        const auto r = Softmax(logits, values, nullptr, D);
        std::copy(r.begin(), r.end(), &out[p.QIndex(b, h, s, 0)]);
      }
  return out;
}

// Every output element within `tol` of `want`; every gap element of a strided view still poisoned.
template <typename T>
void ExpectOutput(const Problem<T>& p, const std::vector<double>& want, double tol, const std::string& what) {
  const Case& c = p.c;
  int reported = 0;
  int64_t bad = 0;
  double worst = 0;
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < c.num_heads; ++h)
      for (int64_t s = 0; s < c.new_len; ++s) {
        const int64_t base = p.output_view.Offset(b, h, s);
        for (int d = 0; d < c.dim; ++d) {
          const double got = FromStorage(p.output[base + d]);
          const double w = want[p.QIndex(b, h, s, d)];
          const double err = std::fabs(got - w);
          if (!(err <= tol)) {
            ++bad;
            if (reported++ < 5)
              ADD_FAILURE() << what << " " << Describe(c) << ": output (b=" << b << ", h=" << h << ", s=" << s
                            << ", d=" << d << ") = " << got << ", want " << w;
          } else {
            worst = std::max(worst, err);
          }
        }
        for (int d = c.dim; d < c.dim + c.row_padding; ++d)
          if (!IsPoison(p.output[base + d])) {
            ++bad;
            if (reported++ < 5) ADD_FAILURE() << what << " " << Describe(c) << ": wrote the gap after row (" << b << ", " << h << ", " << s << ")";
          }
      }
  EXPECT_EQ(bad, 0) << what << " " << Describe(c) << " (largest error within tolerance " << worst << ")";
}

// Every TileKernels implementation against the reference; then a 3-thread run must equal the serial
// run bit for bit (tasks write disjoint rows and never depend on scheduling).
template <typename T>
void CheckCase(const Case& c, bool also_dense) {
  Problem<T> p(c);
  const double tol = std::is_same<T, float>::value ? kFloatTolerance : kHalfTolerance;
  const auto want = SparseReference(p);
  const auto dense = also_dense ? DenseReference(p) : std::vector<double>();
  // Both prefill paths, whatever S: the token tiles (decode, small S) and the prefill tiles.
  for (const cpu::TileKernels* kernels : cpu::AvailableTileKernels()) {
    for (const int prefill_tiles : {-1, 1}) {
      cpu::SparseAttnCpuOptions options;
      options.kernels = kernels;
      options.prefill_tiles = prefill_tiles;
      const std::string what = std::string(kernels->name) + (prefill_tiles > 0 ? " prefill tiles" : " token tiles");
      p.PoisonOutput();
      cpu::RunSparseAttnCpu(p.Args(), SerialExecutor(), options);
      ExpectOutput(p, want, tol, what);
      if (also_dense) ExpectOutput(p, dense, tol, what + " vs dense");
    }
  }
  p.PoisonOutput();
  RunSparseAttnCpu(p.Args(), SerialExecutor());
  const std::vector<T> serial = p.output;
  p.PoisonOutput();
  RunSparseAttnCpu(p.Args(), ThreadedExecutor(3));
  EXPECT_EQ(std::memcmp(serial.data(), p.output.data(), serial.size() * sizeof(T)), 0)
      << "threaded run differs from serial: " << Describe(c);
  // The key range split into parts merged afterwards (forced here; the kernel chooses it itself for
  // decode with few KV heads). 5 parts leave some parts without a chunk in the small cases.
  for (const int parts : {2, 5}) {
    cpu::SparseAttnCpuOptions split;
    split.kv_parts = parts;
    // The split with the prefill tiles too (the kernel itself splits only calls with few tasks).
    split.prefill_tiles = parts == 5 ? 1 : 0;
    const std::string what = "kv_parts=" + std::to_string(parts) + (parts == 5 ? " prefill tiles" : "");
    p.PoisonOutput();
    cpu::RunSparseAttnCpu(p.Args(), SerialExecutor(), split);
    ExpectOutput(p, want, tol, what);
    if (also_dense) ExpectOutput(p, dense, tol, what + " vs dense");
    const std::vector<T> serial_split = p.output;
    p.PoisonOutput();
    cpu::RunSparseAttnCpu(p.Args(), ThreadedExecutor(3), split);
    EXPECT_EQ(std::memcmp(serial_split.data(), p.output.data(), serial_split.size() * sizeof(T)), 0)
        << what << ": threaded run differs from serial: " << Describe(c);
  }
}

// ---------------------------------------------------------------------------------------------
// A list of cases under construction: case i gets seed first_seed + i, and every case the same rows.
class CaseList {
 public:
  explicit CaseList(uint32_t first_seed, Rows rows = Rows::kRandom) : first_seed_(first_seed), rows_(rows) {}
  void Add(Case c) {
    c.seed = first_seed_ + static_cast<uint32_t>(cases_.size());
    c.rows = rows_;
    cases_.push_back(std::move(c));
  }
  std::vector<Case> Take() { return std::move(cases_); }

 private:
  uint32_t first_seed_;
  Rows rows_;
  std::vector<Case> cases_;
};

// Named cases: each stresses one part of the contract.

std::vector<Case> NamedCases() {
  CaseList cases(1000);
  Case c;
  // Decode, 7B-like group (4 query heads per KV head), T not a multiple of bs.
  c = {};
  c.name = "DecodeUnionOwnCache";
  c.num_heads = 8, c.kv_heads = 2, c.dim = 128, c.total_len = 1000, c.block_size = 64, c.window = 128, c.top_k = 4;
  cases.Add(c);
  c.name = "DecodeUnionOwnCacheSinks", c.sinks = true;
  cases.Add(c);
  c = {};
  c.name = "DecodeGatePerHeadSinksShared";
  c.num_heads = 8, c.kv_heads = 2, c.dim = 128, c.total_len = 777, c.block_size = 64, c.window = 128, c.top_k = 4;
  c.combine = Combine::kGate, c.gate = GateKind::kPerHead, c.sinks = true, c.source = SaSource::kSharedCache;
  cases.Add(c);
  c.name = "DecodeGatePerChannelGatheredWindowCache";
  c.gate = GateKind::kPerChannel, c.sinks = false, c.source = SaSource::kGathered, c.window_cache = true;
  cases.Add(c);
  c.name = "DecodeGateNoGateTensor";
  c.gate = GateKind::kNone, c.sinks = true;
  cases.Add(c);
  c.name = "DecodeUnionSharedWindowCacheSinks";
  c.combine = Combine::kUnion, c.source = SaSource::kSharedCache;
  cases.Add(c);
  c.name = "PrefillUnionGatheredWindowCacheManyTiles";  // S spans several token tiles
  c.source = SaSource::kGathered, c.new_len = 70, c.total_len = 300, c.dim = 64, c.sinks = false;
  c.padding = Padding::kHoles;
  cases.Add(c);
  // Decode with a padded query (right padding in batch row 1) and left padding in row 0.
  c = {};
  c.name = "DecodePaddedBatch";
  c.batch = 2, c.num_heads = 4, c.kv_heads = 4, c.dim = 64, c.total_len = 90, c.padding = Padding::kLeftRight;
  cases.Add(c);
  c.name = "DecodePaddedBatchGate", c.combine = Combine::kGate, c.gate = GateKind::kPerHead, c.sinks = true;
  cases.Add(c);
  // Prefill.
  c = {};
  c.name = "PrefillUnionOwnLeftRightPadding3D";
  c.batch = 2, c.num_heads = 4, c.kv_heads = 2, c.dim = 64, c.new_len = 37, c.total_len = 150;
  c.padding = Padding::kLeftRight, c.bsnh = true;
  cases.Add(c);
  c.name = "PrefillUnionGatheredSinksHoles";
  c.source = SaSource::kGathered, c.sinks = true, c.padding = Padding::kHoles, c.bsnh = false;
  cases.Add(c);
  c = {};
  c.name = "PrefillGatePerChannelSharedWindowCache3D";
  c.batch = 3, c.num_heads = 8, c.kv_heads = 4, c.dim = 64, c.new_len = 45, c.total_len = 200, c.window = 20;
  c.combine = Combine::kGate, c.gate = GateKind::kPerChannel, c.sinks = true, c.source = SaSource::kSharedCache;
  c.window_cache = true, c.bsnh = true, c.padding = Padding::kLeftRight;
  cases.Add(c);
  c.name = "PrefillWholeSequenceWindowCache";  // P = 0: the own cache is just the new tokens
  c.new_len = c.total_len = 60, c.batch = 1, c.padding = Padding::kNone;
  cases.Add(c);
  // Odd head size, MQA and MHA groupings.
  c = {};
  c.name = "OddHeadSizeUnionShared";
  c.dim = 37, c.num_heads = 2, c.kv_heads = 1, c.new_len = 5, c.total_len = 123, c.block_size = 7, c.top_k = 5;
  c.source = SaSource::kSharedCache;
  cases.Add(c);
  c.name = "OddHeadSizeGateGathered", c.combine = Combine::kGate, c.gate = GateKind::kPerChannel;
  c.source = SaSource::kGathered;
  cases.Add(c);
  c = {};
  c.name = "MultiQueryHkv1";
  c.num_heads = 8, c.kv_heads = 1, c.dim = 64, c.new_len = 3, c.total_len = 300, c.top_k = 6;
  cases.Add(c);
  c = {};
  c.name = "SingleHead";
  c.num_heads = 1, c.kv_heads = 1, c.dim = 128, c.new_len = 2, c.total_len = 64;
  c.combine = Combine::kGate, c.source = SaSource::kGathered;
  cases.Add(c);
  // Window and block extremes.
  c = {};
  c.name = "WindowLargerThanSequence";
  c.num_heads = 4, c.kv_heads = 2, c.new_len = 6, c.total_len = 50, c.window = 500;
  c.combine = Combine::kGate, c.gate = GateKind::kPerHead, c.source = SaSource::kSharedCache;
  cases.Add(c);
  c.name = "WindowOfOne", c.window = 1, c.combine = Combine::kUnion, c.gate = GateKind::kNone;
  cases.Add(c);
  c = {};
  c.name = "BlockSizeOne";
  c.block_size = 1, c.top_k = 9, c.new_len = 4, c.total_len = 40, c.window = 5, c.padding = Padding::kHoles;
  cases.Add(c);
  c = {};
  c.name = "StridedViews";
  c.row_padding = 3, c.new_len = 4, c.total_len = 70, c.bsnh = true, c.combine = Combine::kGate;
  c.gate = GateKind::kPerChannel;
  cases.Add(c);
  c.name = "StridedViews4D", c.bsnh = false, c.combine = Combine::kUnion, c.gate = GateKind::kNone, c.scale = 0.3f;
  cases.Add(c);
  return cases.Take();
}

// Union over the own cache with every block outside the window selected (K*bs + w >= T): dense.
std::vector<Case> DenseCases() {
  CaseList cases(2000, Rows::kCoverOutsideWindow);
  Case c;
  c.name = "DenseDecode";
  c.num_heads = 8, c.kv_heads = 2, c.dim = 128, c.total_len = 300, c.block_size = 32, c.window = 64, c.top_k = 8;
  cases.Add(c);
  c = {};
  c.name = "DensePrefillPadded";
  c.batch = 2, c.num_heads = 4, c.kv_heads = 4, c.dim = 64, c.new_len = 50, c.total_len = 200, c.block_size = 16;
  c.window = 40, c.top_k = 10, c.padding = Padding::kLeftRight, c.bsnh = true;
  cases.Add(c);
  c = {};
  c.name = "DenseWindowCoversAll";
  c.num_heads = 2, c.kv_heads = 1, c.dim = 37, c.new_len = 7, c.total_len = 45, c.window = 64, c.top_k = 1;
  cases.Add(c);
  c = {};
  c.name = "DenseOnlyBlocks";  // window of one: the blocks do all the work
  c.num_heads = 4, c.kv_heads = 2, c.new_len = 9, c.total_len = 100, c.block_size = 8, c.window = 1, c.top_k = 13;
  c.padding = Padding::kHoles;
  cases.Add(c);
  return cases.Take();
}

// Prefill shapes: S >= 64 new tokens, so that the prefill tiles (32 tokens) have several tiles, a
// partial last tile, tiles that start after a past, and (G < kRowBlock) row blocks that span tokens
// with different selections. CheckCase runs each on both tile shapes, split and threaded.
std::vector<Case> PrefillCases() {
  CaseList cases(3000);
  Case c;
  c.name = "PrefillUnionNoPast";  // tiles 0-31, 32-63, 64-95, 96-99
  c.num_heads = 8, c.kv_heads = 2, c.dim = 64, c.new_len = 100, c.total_len = 100, c.block_size = 16;
  c.window = 24, c.top_k = 4;
  cases.Add(c);
  c.name = "PrefillUnionAfterPastSinks";
  c.new_len = 70, c.total_len = 333, c.window = 40, c.top_k = 5, c.sinks = true;
  cases.Add(c);
  c = {};
  c.name = "PrefillGatePerChannelSinks";
  c.num_heads = 4, c.kv_heads = 2, c.dim = 64, c.new_len = 65, c.total_len = 200, c.block_size = 16;
  c.window = 30, c.top_k = 3, c.combine = Combine::kGate, c.gate = GateKind::kPerChannel, c.sinks = true;
  cases.Add(c);
  c.name = "PrefillGatePerHeadNoGateSinks";
  c.gate = GateKind::kPerHead, c.sinks = false, c.new_len = 96, c.total_len = 96;
  cases.Add(c);
  c = {};
  c.name = "PrefillPaddedBatch3D";  // left and right padding, poisoned gaps after every row
  c.batch = 3, c.num_heads = 6, c.kv_heads = 2, c.dim = 37, c.new_len = 96, c.total_len = 160, c.block_size = 8;
  c.window = 17, c.top_k = 6, c.padding = Padding::kLeftRight, c.bsnh = true, c.row_padding = 2;
  cases.Add(c);
  c.name = "PrefillPaddedBatchGate", c.combine = Combine::kGate, c.gate = GateKind::kPerHead;
  cases.Add(c);
  c = {};
  c.name = "PrefillHolesMha";  // G = 1: every row block spans four tokens
  c.batch = 2, c.num_heads = 3, c.kv_heads = 3, c.dim = 32, c.new_len = 80, c.total_len = 80, c.block_size = 8;
  c.window = 12, c.top_k = 5, c.padding = Padding::kHoles;
  cases.Add(c);
  c = {};
  c.name = "PrefillKvSharingWindowCache";  // SA from the shared cache, window from the own window cache
  c.num_heads = 8, c.kv_heads = 2, c.dim = 64, c.new_len = 64, c.total_len = 400, c.block_size = 32;
  c.window = 48, c.top_k = 4, c.source = SaSource::kSharedCache, c.window_cache = true;
  cases.Add(c);
  c.name = "PrefillKvSharingFullOwnCacheGate";
  c.window_cache = false, c.combine = Combine::kGate, c.gate = GateKind::kPerChannel, c.sinks = true;
  cases.Add(c);
  c = {};
  c.name = "PrefillGatheredWindowCache";
  c.num_heads = 4, c.kv_heads = 2, c.dim = 64, c.new_len = 64, c.total_len = 150, c.block_size = 16;
  c.window = 20, c.top_k = 3, c.source = SaSource::kGathered, c.window_cache = true, c.padding = Padding::kLeftRight;
  c.batch = 2;
  cases.Add(c);
  c = {};
  c.name = "PrefillLayerShape";  // the benchmark's block and window: K 16 x 64 + w 128
  c.num_heads = 8, c.kv_heads = 2, c.dim = 64, c.new_len = 129, c.total_len = 1500, c.block_size = 64;
  c.window = 128, c.top_k = 16;
  cases.Add(c);
  return cases.Take();
}

// Union over the own cache with every block outside the window selected, at prefill lengths.
std::vector<Case> DensePrefillCases() {
  std::vector<Case> cases;
  Case c;
  c.name = "DensePrefillTiles";
  c.num_heads = 8, c.kv_heads = 2, c.dim = 64, c.new_len = 96, c.total_len = 200, c.block_size = 16;
  c.window = 40, c.top_k = 13, c.rows = Rows::kCoverOutsideWindow, c.seed = 3100;
  cases.push_back(c);
  c.name = "DensePrefillTilesPaddedMha", c.num_heads = 2, c.kv_heads = 2, c.batch = 2, c.padding = Padding::kLeftRight;
  c.seed = 3101;
  cases.push_back(c);
  return cases;
}

// Random shapes from a fixed seed, covering combinations the named cases do not.
std::vector<Case> RandomCases() {
  std::vector<Case> cases;
  std::mt19937 rng(4242);
  auto pick = [&](std::initializer_list<int> v) { return *(v.begin() + rng() % v.size()); };
  auto randint = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (int i = 0; i < 24; ++i) {
    Case c;
    c.name = "Random" + std::to_string(i);
    c.batch = pick({1, 2, 3});
    c.num_heads = pick({1, 2, 4, 8});
    do c.kv_heads = pick({1, 2, 4, 8});
    while (c.num_heads % c.kv_heads != 0);
    c.dim = pick({64, 128, 37, 8});
    c.block_size = pick({1, 5, 16, 32, 64});
    c.total_len = randint(1, 260);
    c.new_len = rng() % 2 ? 1 : randint(1, std::min<int64_t>(c.total_len, 24));
    c.window = rng() % 4 == 0 ? static_cast<int>(c.total_len + randint(0, 50)) : static_cast<int>(randint(1, 80));
    c.top_k = static_cast<int>(randint(1, 8));
    c.combine = rng() % 2 ? Combine::kUnion : Combine::kGate;
    c.source = static_cast<SaSource>(rng() % 3);
    c.window_cache = c.source != SaSource::kOwnCache && rng() % 2;
    c.padding = static_cast<Padding>(rng() % 3);
    c.gate = c.combine == Combine::kGate ? static_cast<GateKind>(rng() % 3) : GateKind::kNone;
    c.sinks = rng() % 2;
    c.bsnh = rng() % 2;
    c.row_padding = rng() % 4 == 0 ? 2 : 0;
    c.seed = 3000 + i;
    cases.push_back(c);
  }
  return cases;
}

std::string CaseName(const testing::TestParamInfo<Case>& info) { return info.param.name; }

// A parametrised suite over `cases`, each case run in float32 and in float16 against the sparse
// reference, or (dense) against dense attention.
#define SPARSE_CPU_SUITE(Suite, cases, Float32Test, Float16Test, dense)  \
  class Suite : public testing::TestWithParam<Case> {};                 \
  TEST_P(Suite, Float32Test) { CheckCase<float>(GetParam(), dense); }   \
  TEST_P(Suite, Float16Test) { CheckCase<Half>(GetParam(), dense); }    \
  INSTANTIATE_TEST_SUITE_P(Sparse, Suite, testing::ValuesIn(cases()), CaseName)

SPARSE_CPU_SUITE(SparseAttnCpuNamed, NamedCases, Float32MatchesReference, Float16MatchesReference, false);
SPARSE_CPU_SUITE(SparseAttnCpuDense, DenseCases, Float32UnionEqualsDenseAttention, Float16UnionEqualsDenseAttention,
                 true);
SPARSE_CPU_SUITE(SparseAttnCpuPrefill, PrefillCases, Float32MatchesReference, Float16MatchesReference, false);
SPARSE_CPU_SUITE(SparseAttnCpuDensePrefill, DensePrefillCases, Float32UnionEqualsDenseAttention,
                 Float16UnionEqualsDenseAttention, true);
SPARSE_CPU_SUITE(SparseAttnCpuRandom, RandomCases, Float32MatchesReference, Float16MatchesReference, false);
#undef SPARSE_CPU_SUITE

// The reference itself must see the cases it claims to: a padded decode query gives a zero row, and
// the sparse result differs from dense attention when rows leave blocks out (else the comparisons
// above could pass with a kernel that ignores block_indices).
// Decode with fewer (batch, KV head) tasks than a big machine's threads: the kernel splits each
// task's key range by itself. Right for every source and combine mode, and the same bits on 1 to 8
// threads (the split depends on the shapes only).
TEST(SparseAttnCpu, DecodeWithFewKvHeadsSplitsKeyRangeAndStaysExact) {
  for (const SaSource source : {SaSource::kOwnCache, SaSource::kSharedCache, SaSource::kGathered}) {
    for (const Combine combine : {Combine::kUnion, Combine::kGate}) {
      Case c;
      c.name = "SplitDecode";
      c.num_heads = 8, c.kv_heads = 2, c.dim = 128, c.total_len = 4000, c.block_size = 64, c.window = 128;
      c.top_k = 16, c.source = source, c.combine = combine, c.sinks = true;
      c.gate = combine == Combine::kGate ? GateKind::kPerHead : GateKind::kNone;
      c.window_cache = source != SaSource::kOwnCache;
      c.seed = 77;
      Problem<float> p(c);
      const auto want = SparseReference(p);
      p.PoisonOutput();
      RunSparseAttnCpu(p.Args(), SerialExecutor());
      ExpectOutput(p, want, kFloatTolerance, "automatic split");
      const std::vector<float> serial = p.output;
      // The split really happens: forcing one part takes another summation order.
      cpu::SparseAttnCpuOptions whole;
      whole.kv_parts = 1;
      p.PoisonOutput();
      cpu::RunSparseAttnCpu(p.Args(), SerialExecutor(), whole);
      ExpectOutput(p, want, kFloatTolerance, "unsplit");
      EXPECT_NE(std::memcmp(serial.data(), p.output.data(), serial.size() * sizeof(float)), 0)
          << "unsplit run is bit-identical: the automatic split did not happen? " << Describe(c);
      for (const int threads : {2, 3, 8}) {
        p.PoisonOutput();
        RunSparseAttnCpu(p.Args(), ThreadedExecutor(threads));
        EXPECT_EQ(std::memcmp(serial.data(), p.output.data(), serial.size() * sizeof(float)), 0)
            << threads << " threads differ from serial: " << Describe(c);
      }
    }
  }
}

// A decode case of 4 query heads over 2 KV heads in blocks of 16, for the tests below.
Case GroupedDecode(const char* name, int64_t total_len, int window, int top_k, uint32_t seed) {
  Case c;
  c.name = name;
  c.num_heads = 4, c.kv_heads = 2, c.total_len = total_len, c.block_size = 16, c.window = window, c.top_k = top_k;
  c.seed = seed;
  return c;
}

TEST(SparseAttnCpu, SparseDiffersFromDenseWhenBlocksAreLeftOut) {
  const Case c = GroupedDecode("LeftOut", 400, 16, 2, 77);
  Problem<float> p(c);
  const auto sparse = SparseReference(p);
  const auto dense = DenseReference(p);
  double diff = 0;
  for (size_t i = 0; i < sparse.size(); ++i) diff = std::max(diff, std::fabs(sparse[i] - dense[i]));
  EXPECT_GT(diff, 1e-2);
  RunSparseAttnCpu(p.Args(), SerialExecutor());
  ExpectOutput(p, sparse, kFloatTolerance, "default");
}

TEST(SparseAttnCpu, PaddedQueryRowIsZero) {
  Case c;
  c.name = "PaddedQuery";
  c.batch = 2, c.padding = Padding::kLeftRight, c.sinks = true, c.combine = Combine::kGate, c.seed = 5;
  Problem<float> p(c);
  ASSERT_TRUE(p.QueryIsPadding(1, c.total_len - 1));
  RunSparseAttnCpu(p.Args(), SerialExecutor());
  for (int h = 0; h < c.num_heads; ++h)
    for (int d = 0; d < c.dim; ++d) EXPECT_EQ(p.output[p.output_view.Offset(1, h, 0) + d], 0.f);
}

// The kernel runs the implementation it is given: a portable build that counts its calls sees
// every score tile and P·V update of a call.
std::atomic<int> g_counted_dot_rows{0};
std::atomic<int> g_counted_accumulate_pv{0};

void CountedDotRows(const float* q, int64_t ld_q, int num_rows, const cpu::PreparedKeys& keys,
                    int num_keys, int dim, float* scores, int64_t ld_scores) {
  ++g_counted_dot_rows;
  cpu::PortableTileKernels().dot_rows(q, ld_q, num_rows, keys, num_keys, dim, scores, ld_scores);
}

void CountedAccumulatePv(const float* p, int64_t ld_p, int num_rows, const float* rescale,
                         const float* v, int64_t ld_v, int num_keys, int dim, float* acc,
                         int64_t ld_acc) {
  ++g_counted_accumulate_pv;
  cpu::PortableTileKernels().accumulate_pv(p, ld_p, num_rows, rescale, v, ld_v, num_keys, dim, acc,
                                           ld_acc);
}

TEST(SparseAttnCpu, RunsTheGivenTileKernels) {
  const Case c = GroupedDecode("Counted", 200, 40, 3, 31);
  Problem<float> p(c);
  cpu::TileKernels counted = cpu::PortableTileKernels();
  counted.dot_rows = CountedDotRows;
  counted.accumulate_pv = CountedAccumulatePv;
  counted.name = "counted portable";
  cpu::SparseAttnCpuOptions options;
  options.kernels = &counted;
  g_counted_dot_rows = 0;
  g_counted_accumulate_pv = 0;
  cpu::RunSparseAttnCpu(p.Args(), SerialExecutor(), options);
  // One KV head group per task, decode: at least one chunk (the window) per KV head.
  EXPECT_GE(g_counted_dot_rows.load(), c.kv_heads);
  EXPECT_EQ(g_counted_dot_rows.load(), g_counted_accumulate_pv.load());
  ExpectOutput(p, SparseReference(p), kFloatTolerance, counted.name);
}

}  // namespace
}  // namespace hysparse
