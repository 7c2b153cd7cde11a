// CPU kernel of HySparseSparseAttn (docs/ops.md "HySparseSparseAttn").
//
// Cost is O(K*bs + w) keys per token, independent of the total length T: a token only visits the
// blocks in its block_indices row and its sliding window. One task serves every query head of one KV
// group for a tile of tokens, so each key/value row it reads (converted to float32 once, for float16
// storage) feeds all G = H_q/H_kv heads. Keys are consumed in chunks with an online softmax: scores
// of the chunk for all G heads, one rescale of the running accumulators per chunk, then one pass over
// the chunk's values. The float32 inner loops live in sparse_math.{h,cc} (portable + AVX2).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/sparse_math.h"

namespace hysparse {
namespace {

// Keys per online-softmax step: a chunk of float32 keys and values (2 x 32 x D floats) stays in L1
// for the head sizes that matter (D <= 128), and 32 keys amortise the per-chunk rescale.
constexpr int kChunk = 32;
// New tokens per task in prefill. Tokens of a tile select different blocks, so they are processed
// one after the other; the tile only bounds the number of tasks handed to the executor.
constexpr int64_t kTokenTile = 16;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Running softmax of one branch (or of the union) for the G query heads of a KV group:
// max[i], sum[i] = sum of exp(logit - max[i]) over the keys seen so far (sink included),
// acc[i*D ..] = sum of exp(logit - max[i]) * v.
struct SoftmaxState {
  float* max = nullptr;
  float* sum = nullptr;
  float* acc = nullptr;
};

// Per-thread working memory, grown when a call needs more and reused by every later task on the
// thread, so a task never allocates once the thread has seen the shape.
struct Scratch {
  std::vector<float> storage;

  float* Reserve(size_t floats) {
    if (storage.size() < floats) storage.resize(floats);
    return storage.data();
  }
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

float Sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Works through the tokens of one (batch row, KV head) pair.
template <typename T>
class GroupKernel {
 public:
  GroupKernel(const SparseAttnArgs<T>& args, const cpu::SparseMathOps& ops, int batch, int kv_head)
      : a_(args),
        ops_(ops),
        b_(batch),
        group_size_(args.num_heads / args.kv_num_heads),
        dim_(args.head_dim),
        first_head_(kv_head * group_size_),
        bg_(static_cast<int64_t>(batch) * args.kv_num_heads + kv_head),
        mask_(args.attention_mask ? args.attention_mask + static_cast<int64_t>(batch) * args.total_len
                                  : nullptr) {
    const size_t gd = static_cast<size_t>(group_size_) * dim_;
    const size_t g = static_cast<size_t>(group_size_);
    const size_t rows = static_cast<size_t>(kChunk) * dim_;
    float* p = ThreadScratch().Reserve(3 * gd + g * kChunk + 4 * g + 2 * rows + 3 * dim_);
    query_ = p, p += gd;
    scores_ = p, p += g * kChunk;
    primary_ = {p, p + g, p + 2 * g}, p += 2 * g + gd;
    secondary_ = {p, p + g, p + 2 * g}, p += 2 * g + gd;
    key_rows_ = p, p += rows;
    value_rows_ = p, p += rows;
    out_row_ = p, p += dim_;
    gate_sa_ = p, p += dim_;
    gate_swa_ = p;
  }

  void RunToken(int64_t s) {
    const int64_t t = a_.total_len - a_.new_len + s;
    if (mask_ && mask_[t] != 1) {  // a padding query has no valid keys: its output is zero
      std::fill(out_row_, out_row_ + dim_, 0.f);
      for (int i = 0; i < group_size_; ++i) StoreOutput(s, i, out_row_);
      return;
    }
    LoadQueries(s);
    // The own cache holds every window position (ops.md "Own cache"); the clamp only guards reads.
    const int64_t window_lo = std::max({int64_t{0}, t - a_.window + 1, a_.own_start});
    const int32_t* row = a_.block_indices + (bg_ * a_.new_len + s) * a_.top_k;

    if (a_.combine == Combine::kUnion) {
      InitState(primary_, 0);
      // Each position once: selected blocks contribute only their positions before the window,
      // the window (read from the own cache) covers the rest.
      runs_.clear();
      for (int k = 0; k < a_.top_k && row[k] >= 0; ++k) {
        const int64_t lo = static_cast<int64_t>(row[k]) * a_.block_size;
        if (lo >= window_lo) break;  // ascending rows: every later block is inside the window too
        const int64_t hi = std::min(lo + a_.block_size, window_lo);
        AddSelectedRun(s, k, lo, hi - lo, &primary_);
      }
      AddWindowRun(window_lo, t + 1 - window_lo, &primary_);
      VisitRuns();
      for (int i = 0; i < group_size_; ++i) {
        const float* acc = primary_.acc + static_cast<size_t>(i) * dim_;
        const float inv = primary_.sum[i] > 0.f ? 1.f / primary_.sum[i] : 0.f;
        for (int d = 0; d < dim_; ++d) out_row_[d] = acc[d] * inv;
        StoreOutput(s, i, out_row_);
      }
      return;
    }

    InitState(primary_, 0);    // SA branch
    InitState(secondary_, 1);  // SWA branch
    runs_.clear();
    for (int k = 0; k < a_.top_k && row[k] >= 0; ++k) {
      const int64_t lo = static_cast<int64_t>(row[k]) * a_.block_size;
      if (lo > t) break;  // blocks wholly in the future hold no valid key
      const int64_t hi = std::min(lo + a_.block_size, t + 1);
      AddSelectedRun(s, k, lo, hi - lo, &primary_);
    }
    AddWindowRun(window_lo, t + 1 - window_lo, &secondary_);
    VisitRuns();
    for (int i = 0; i < group_size_; ++i) {
      LoadGateWeights(s, first_head_ + i);
      const float* acc_sa = primary_.acc + static_cast<size_t>(i) * dim_;
      const float* acc_swa = secondary_.acc + static_cast<size_t>(i) * dim_;
      // A branch without any valid key (and no sink) has sum 0 and contributes 0.
      const float inv_sa = primary_.sum[i] > 0.f ? 1.f / primary_.sum[i] : 0.f;
      const float inv_swa = secondary_.sum[i] > 0.f ? 1.f / secondary_.sum[i] : 0.f;
      for (int d = 0; d < dim_; ++d)
        out_row_[d] = gate_sa_[d] * acc_sa[d] * inv_sa + gate_swa_[d] * acc_swa[d] * inv_swa;
      StoreOutput(s, i, out_row_);
    }
  }

 private:
  void LoadQueries(int64_t s) {
    // Folding the scale into q makes every score a plain dot product.
    for (int i = 0; i < group_size_; ++i) {
      float* q = query_ + static_cast<size_t>(i) * dim_;
      cpu::LoadRow(a_.query + a_.query_view.Offset(b_, first_head_ + i, s), q, dim_);
      for (int d = 0; d < dim_; ++d) q[d] *= a_.scale;
    }
  }

  void StoreOutput(int64_t s, int i, const float* row) {
    cpu::StoreRow(row, a_.output + a_.output_view.Offset(b_, first_head_ + i, s), dim_);
  }

  // branch 0: the union softmax or the SA branch; 1: the SWA branch (sinks row 1).
  void InitState(SoftmaxState& st, int branch) {
    for (int i = 0; i < group_size_; ++i) {
      if (a_.sinks) {
        // exp(sink) in the denominator is a key with logit `sink` and value 0.
        st.max[i] = cpu::ToFloat(a_.sinks[static_cast<int64_t>(branch) * a_.num_heads + first_head_ + i]);
        st.sum[i] = 1.f;
      } else {
        st.max[i] = kNegInf;
        st.sum[i] = 0.f;
      }
    }
    std::fill(st.acc, st.acc + static_cast<size_t>(group_size_) * dim_, 0.f);
  }

  void LoadGateWeights(int64_t s, int head) {
    if (!a_.gate) {  // absent gate: logits 0
      std::fill(gate_sa_, gate_sa_ + dim_, 0.5f);
      std::fill(gate_swa_, gate_swa_ + dim_, 0.5f);
      return;
    }
    const int64_t token = static_cast<int64_t>(b_) * a_.new_len + s;
    if (a_.gate_per_channel) {
      const int64_t width = static_cast<int64_t>(a_.num_heads) * dim_;
      const T* sa = a_.gate + token * 2 * width + static_cast<int64_t>(head) * dim_;
      cpu::LoadRow(sa, gate_sa_, dim_);
      cpu::LoadRow(sa + width, gate_swa_, dim_);
      for (int d = 0; d < dim_; ++d) {
        gate_sa_[d] = Sigmoid(gate_sa_[d]);
        gate_swa_[d] = Sigmoid(gate_swa_[d]);
      }
    } else {
      const T* logits = a_.gate + token * 2 * a_.num_heads;
      std::fill(gate_sa_, gate_sa_ + dim_, Sigmoid(cpu::ToFloat(logits[head])));
      std::fill(gate_swa_, gate_swa_ + dim_, Sigmoid(cpu::ToFloat(logits[a_.num_heads + head])));
    }
  }

  // Queues positions [lo, lo + count) of the k-th selected block of token s, from the SA source.
  void AddSelectedRun(int64_t s, int k, int64_t lo, int64_t count, SoftmaxState* st) {
    if (count <= 0) return;
    int64_t row;
    const T* keys;
    const T* values;
    if (a_.selected_key) {
      // Gathered blocks: slot k*bs + r of this token is position row[k]*bs + r, and lo is the
      // block start, so the run starts at slot k*bs.
      row = (bg_ * a_.new_len + s) * a_.top_k * a_.block_size + static_cast<int64_t>(k) * a_.block_size;
      keys = a_.selected_key;
      values = a_.selected_value;
    } else {
      row = bg_ * a_.sa_capacity + lo;
      keys = a_.sa_key;
      values = a_.sa_value;
    }
    runs_.push_back({keys + row * dim_, values + row * dim_, lo, count, st});
  }

  // Queues window positions [lo, lo + count), from the own cache (slot = position - own_start).
  void AddWindowRun(int64_t lo, int64_t count, SoftmaxState* st) {
    if (count <= 0) return;
    const int64_t row = bg_ * a_.own_capacity + (lo - a_.own_start);
    runs_.push_back({a_.own_key + row * dim_, a_.own_value + row * dim_, lo, count, st});
  }

  // Asks for the rows of the chunk after the current one (possibly in the next run) to be brought
  // into L2 while the current chunk is computed: selected blocks are scattered over a cache far
  // larger than the LLC, so in decode the kernel would otherwise wait on memory at every block.
  void PrefetchChunk(size_t run, int64_t c0) const {
#if defined(__GNUC__)
    if (c0 >= runs_[run].count) {
      if (++run == runs_.size()) return;
      c0 = 0;
    }
    const KeyRun& r = runs_[run];
    const int64_t n = std::min<int64_t>(kChunk, r.count - c0);
    const char* k = reinterpret_cast<const char*>(r.keys + c0 * dim_);
    const char* v = reinterpret_cast<const char*>(r.values + c0 * dim_);
    const int64_t bytes = n * dim_ * static_cast<int64_t>(sizeof(T));
    for (int64_t off = 0; off < bytes; off += 64) {
      __builtin_prefetch(k + off, 0, 2);
      __builtin_prefetch(v + off, 0, 2);
    }
#else
    (void)run;
    (void)c0;
#endif
  }

  void VisitRuns() {
    for (size_t r = 0; r < runs_.size(); ++r) {
      const KeyRun& run = runs_[r];
      for (int64_t c0 = 0; c0 < run.count; c0 += kChunk) {
        PrefetchChunk(r, c0 + kChunk);
        VisitChunk(run.keys + c0 * dim_, run.values + c0 * dim_, run.first + c0,
                   static_cast<int>(std::min<int64_t>(kChunk, run.count - c0)), *run.state);
      }
    }
  }

  const float* AsFloatRows(const float* rows, size_t, float*) const { return rows; }
  const float* AsFloatRows(const Half* rows, size_t n, float* buffer) const {
    ops_.half_to_float(rows, buffer, n);
    return buffer;
  }

  // Online-softmax step over n <= kChunk consecutive key/value rows holding positions
  // [first, first + n).
  void VisitChunk(const T* keys, const T* values, int64_t first, int n, SoftmaxState& st) {
    int masked = 0;
    if (mask_) {
      for (int j = 0; j < n; ++j) masked += mask_[first + j] != 1;
      if (masked == n) return;  // no valid key in this chunk: skip its loads entirely
    }
    const size_t elems = static_cast<size_t>(n) * dim_;
    const float* k = AsFloatRows(keys, elems, key_rows_);
    ops_.score_tile(query_, group_size_, k, n, dim_, scores_, kChunk);
    if (masked) {
      for (int j = 0; j < n; ++j) {
        if (mask_[first + j] == 1) continue;
        for (int i = 0; i < group_size_; ++i) scores_[static_cast<size_t>(i) * kChunk + j] = kNegInf;
      }
    }
    for (int i = 0; i < group_size_; ++i) {
      float* p = scores_ + static_cast<size_t>(i) * kChunk;
      float chunk_max = kNegInf;
      for (int j = 0; j < n; ++j) chunk_max = std::max(chunk_max, p[j]);
      const float new_max = std::max(st.max[i], chunk_max);
      if (new_max == kNegInf) {  // only -inf logits so far (overflowing inputs): nothing to add
        std::fill(p, p + n, 0.f);
        continue;
      }
      const float sum = ops_.exp_shift_sum(p, n, new_max);
      if (new_max != st.max[i]) {
        // exp(-inf) = 0 for the first keys, and acc/sum are still 0 then.
        const float alpha = std::exp(st.max[i] - new_max);
        float* acc = st.acc + static_cast<size_t>(i) * dim_;
        for (int d = 0; d < dim_; ++d) acc[d] *= alpha;
        st.sum[i] *= alpha;
        st.max[i] = new_max;
      }
      st.sum[i] += sum;
    }
    const float* v = AsFloatRows(values, elems, value_rows_);
    ops_.accumulate_tile(scores_, kChunk, group_size_, v, n, dim_, st.acc);
  }

  const SparseAttnArgs<T>& a_;
  const cpu::SparseMathOps& ops_;
  const int b_;
  const int group_size_;
  const int dim_;
  const int first_head_;
  const int64_t bg_;  // b * H_kv + g: the (batch, KV head) index into every [B, H_kv, ...] tensor
  const int64_t* const mask_;  // this batch row of the attention mask, or null

  // Contiguous rows of one source (a selected block, or the window) and the softmax they feed.
  struct KeyRun {
    const T* keys;
    const T* values;
    int64_t first;  // position of the first row
    int64_t count;
    SoftmaxState* state;
  };

  // This thread's run list, reused across tokens and tasks (at most top_k + 1 runs per token).
  static std::vector<KeyRun>& ThreadRuns() {
    thread_local std::vector<KeyRun> runs;
    return runs;
  }

  std::vector<KeyRun>& runs_ = ThreadRuns();
  float* query_;
  float* scores_;
  SoftmaxState primary_;
  SoftmaxState secondary_;
  float* key_rows_;
  float* value_rows_;
  float* out_row_;
  float* gate_sa_;
  float* gate_swa_;
};

}  // namespace

template <typename T>
void RunSparseAttnCpu(const SparseAttnArgs<T>& args, const Executor& exec) {
  if (args.batch <= 0 || args.new_len <= 0) return;
  const cpu::SparseMathOps& ops = cpu::ActiveSparseMathOps();
  const int64_t tiles = (args.new_len + kTokenTile - 1) / kTokenTile;
  const size_t tasks = static_cast<size_t>(args.batch) * args.kv_num_heads * tiles;
  exec.ParallelFor(tasks, [&](size_t task) {
    const int64_t tile = static_cast<int64_t>(task) % tiles;
    const int64_t bg = static_cast<int64_t>(task) / tiles;
    GroupKernel<T> kernel(args, ops, static_cast<int>(bg / args.kv_num_heads),
                          static_cast<int>(bg % args.kv_num_heads));
    const int64_t end = std::min(args.new_len, (tile + 1) * kTokenTile);
    for (int64_t s = tile * kTokenTile; s < end; ++s) kernel.RunToken(s);
  });
}

template void RunSparseAttnCpu<float>(const SparseAttnArgs<float>&, const Executor&);
template void RunSparseAttnCpu<Half>(const SparseAttnArgs<Half>&, const Executor&);

}  // namespace hysparse
