// CPU kernel of HySparseSparseAttn (docs/ops.md "HySparseSparseAttn").
//
// Cost is O(K*bs + w) keys per token, independent of the total length T: a token only visits the
// blocks in its block_indices row and its sliding window. One task serves every query head of one
// KV group for a tile of consecutive tokens. The task lists the key *runs* its tokens need (each
// selected block once, however many tokens of the tile selected it, and one window run covering
// every token's window) and walks them in chunks; a chunk's key/value rows are read (and converted
// to float32, for float16 storage) once and feed every query row of the tile that uses them, each
// with its own online softmax. In decode (one token) that is G = H_q/H_kv rows per key read; in
// prefill neighbouring tokens share most blocks and their windows, so the tile multiplies the reuse.
// The float32 inner loops are the TileKernels of tile_kernels.h, shared with the full kernel.
//
// Two tile shapes: decode's token tiles (16 tokens, 32-key chunks, each run of consecutive taking
// tokens scored against the whole chunk) and, from S = 2 on, prefill tiles (32 tokens, 64-key
// chunks, rows taken kRowBlock at a time through scores -> softmax -> P·V over just the columns
// they take, like the full kernel's AttendKeyRange). Both give the reference's result to rounding;
// the prefill tiles do less masked work per key and feed each key load to more rows.
//
// Decode has one task per (batch row, KV head): fewer than a large machine has threads. Then each
// task's key chunks are split into parts, each part a task with its own partial softmax state; the
// part that finishes last merges them (in part order, so the bits do not depend on which thread
// merges) and writes the outputs. The split depends on the shapes only, never on the thread count.
#include "kernels/cpu/attention_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cpu/tile_kernels.h"
#include "kernels/scratch_plan.h"

namespace hysparse {
namespace {

// Keys per online-softmax step: a chunk of float32 keys and values (2 x 32 x D floats) stays in L1
// for the head sizes that matter (D <= 128), and 32 keys amortise the per-chunk rescale.
constexpr int kChunk = 32;
static_assert(kChunk <= cpu::kMaxTileKeys, "a chunk is one TileKernels key tile");
// New tokens per task. Bounds the tile's query rows (16*G) so its scores and accumulators stay in
// L2, and the window run (w + 15 positions) wastes at most 15 positions per token.
constexpr int64_t kTokenTile = 16;

// Prefill tiles (RowBlockVisit below): more tokens per task and a whole TileKernels key tile (one
// 64-key block) per step, so that each key tile's load and transpose feed twice the rows, and rows
// go through scores -> softmax -> P·V kRowBlock at a time, each block of rows over just the keys its
// tokens take (a band row scores its own window, not the tile's span), as the full kernel's tiles
// do. 32 tokens measured faster than 16 and as fast as 64. They measured faster than the token tiles
// at every S from 1 to 128, both layer shapes, f32 and f16 (docs/performance.md "Sparse prefill"), so
// every call with S >= 2 takes them; decode keeps the token tiles, on which the decode tables and the
// key-range split were measured, until those are measured again.
constexpr int64_t kPrefillTokenTile = 32;
constexpr int kPrefillChunk = cpu::kMaxTileKeys;
constexpr int kRowBlock = 4;
constexpr int64_t kMinPrefillTokens = 2;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Key-range split: split when there are fewer than kMinTasksWithoutSplit tasks, aiming for
// kTargetTasks tasks, with at least kMinKeysPerPart keys (a token's K*bs + w) per part.
constexpr int64_t kMinTasksWithoutSplit = 16;
constexpr int64_t kTargetTasks = 32;
constexpr int64_t kMinKeysPerPart = 256;

// Where the parts of split tasks leave their partial softmax states, and how many have finished.
struct SplitShare {
  int parts = 1;
  int branches = 1;     // 2 with combine = gate (SA and SWA states)
  int64_t stride = 0;   // floats per (task, part, branch): max[rows], sum[rows], acc[rows * D]
  float* partials = nullptr;
  std::atomic<int>* finished = nullptr;  // per task
};

float Sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Running softmax of one branch (or of the union) for every query row of the tile (row r = token *
// G + head-in-group): max[r]; sum[r] = sum of exp(logit - max[r]) over the keys seen so far (sink
// included); acc[r*D ..] = sum of exp(logit - max[r]) * v.
struct SoftmaxState {
  float* max = nullptr;
  float* sum = nullptr;
  float* acc = nullptr;
};

// Positions [lo, hi) that one token takes from one run (empty when lo >= hi).
struct PositionRange {
  int64_t lo = 0;
  int64_t hi = 0;
};

struct TokenInfo {
  int64_t position;   // t
  int64_t window_lo;  // first window position
  const int32_t* row; // block_indices row
  bool padding;       // query masked out: no valid keys, zero output
};

// Processes the tokens [s_begin, s_end) of one (batch row, KV head) pair.
template <typename T>
class TileTask {
 public:
  // Part `part` of task `task` when `split` is given (its chunks only; the last part to finish
  // writes the outputs), else the whole task.
  TileTask(const SparseAttnArgs<T>& args, const cpu::TileKernels& kernels, bool row_blocks, int batch,
           int kv_head, int64_t s_begin, int64_t s_end, const SplitShare* split = nullptr,
           int64_t task = 0, int part = 0)
      : a_(args),
        kernels_(kernels),
        b_(batch),
        group_size_(args.num_heads / args.kv_num_heads),
        dim_(args.head_dim),
        first_head_(kv_head * group_size_),
        bg_(static_cast<int64_t>(batch) * args.kv_num_heads + kv_head),
        s_begin_(s_begin),
        num_tokens_(static_cast<int>(s_end - s_begin)),
        rows_(num_tokens_ * group_size_),
        mask_(args.attention_mask ? args.attention_mask + static_cast<int64_t>(batch) * args.total_len
                                  : nullptr),
        scratch_(ThreadScratch()),
        split_(split),
        task_(task),
        part_(part),
        row_blocks_(row_blocks),
        chunk_(row_blocks ? kPrefillChunk : kChunk) {
    // prepare_keys wants its scratch on a 64-byte boundary; every piece starts on one.
    CarveHostScratch(scratch_.floats, 64, [this](ScratchCarver& c) { TakeFloatScratch(c); });
  }

  void Run() {
    PrepareTokens();
    InitState(state_[0], 0);
    if (a_.combine == Combine::kGate) InitState(state_[1], 1);
    PlanRuns();
    scratch_.take.resize(2 * static_cast<size_t>(num_tokens_));
    // Chunks are numbered over all runs in order; a part visits its contiguous share of them.
    const int parts = split_ ? split_->parts : 1;
    int64_t chunks = 0;
    for (const KeyRun& run : scratch_.runs) chunks += (run.count + chunk_ - 1) / chunk_;
    const int64_t first = part_ * chunks / parts, end = (part_ + 1) * chunks / parts;
    int64_t index = 0;
    for (size_t r = 0; r < scratch_.runs.size() && index < end; ++r) {
      const KeyRun& run = scratch_.runs[r];
      for (int64_t c0 = 0; c0 < run.count && index < end; c0 += chunk_, ++index) {
        if (index < first) continue;
        PrefetchNextChunk(r, c0 + chunk_);
        VisitChunk(run, c0, static_cast<int>(std::min<int64_t>(chunk_, run.count - c0)));
      }
    }
    if (split_ && !MergeIfLast()) return;
    WriteOutputs();
  }

 private:
  // Contiguous key/value rows of one source (a selected block, or the window span of the tile),
  // the branch they feed, and, in ranges[tok], the positions each token of the tile takes from them.
  struct KeyRun {
    const T* keys;
    const T* values;
    int64_t first;  // position of the first row
    int64_t count;
    int branch;     // 0: union / SA, 1: SWA
    size_t ranges;  // offset of this run's num_tokens_ ranges in Scratch::ranges
  };

  // Per-thread working memory, grown when a task needs more and reused by every later task on the
  // thread, so tasks do not allocate once the thread has seen the shape.
  struct Scratch {
    HostScratch floats;
    std::vector<TokenInfo> tokens;
    std::vector<KeyRun> runs;
    std::vector<PositionRange> ranges;
    std::vector<int32_t> blocks;
    std::vector<int> cursors;  // per token: position in its block_indices row, while planning
    std::vector<int> take;     // per token: first and end chunk row it takes, while visiting
  };

  static Scratch& ThreadScratch() {
    thread_local Scratch scratch;
    return scratch;
  }

  void TakeFloatScratch(ScratchCarver& c) {
    const int64_t rd = int64_t{rows_} * dim_;
    const int64_t chunk_rows = int64_t{chunk_} * dim_;
    key_layout_ = c.Take<float>(int64_t{cpu::kMaxTileKeys} * dim_);
    query_ = c.Take<float>(rd);
    scores_ = c.Take<float>(int64_t{rows_} * chunk_);
    rescale_ = c.Take<float>(rows_);
    for (SoftmaxState& state : state_) state = {c.Take<float>(rows_), c.Take<float>(rows_), c.Take<float>(rd)};
    key_rows_ = c.Take<float>(chunk_rows);
    value_rows_ = c.Take<float>(chunk_rows);
    out_row_ = c.Take<float>(dim_);
    gate_sa_ = c.Take<float>(dim_);
    gate_swa_ = c.Take<float>(dim_);
  }

  void PrepareTokens() {
    scratch_.tokens.resize(num_tokens_);
    for (int tok = 0; tok < num_tokens_; ++tok) {
      const int64_t s = s_begin_ + tok;
      TokenInfo& info = scratch_.tokens[tok];
      info.position = a_.total_len - a_.new_len + s;
      // The own cache holds every window position (ops.md "Own cache"); the clamp only guards reads.
      info.window_lo = std::max({int64_t{0}, info.position - a_.window + 1, a_.own_start});
      info.row = a_.block_indices + (bg_ * a_.new_len + s) * a_.top_k;
      info.padding = mask_ && mask_[info.position] != 1;
      for (int i = 0; i < group_size_; ++i) {
        float* q = query_ + (static_cast<size_t>(tok) * group_size_ + i) * dim_;
        if (info.padding) {
          std::fill(q, q + dim_, 0.f);  // never used for a softmax; keeps the tile's scores finite
          continue;
        }
        // Folding the scale into q makes every score a plain dot product.
        cpu::LoadScaled(a_.query + a_.query_view.Offset(b_, first_head_ + i, s), q, dim_, a_.scale, kernels_);
      }
    }
  }

  // Leaves this part's state in the shared partials; returns true in the part that finished last,
  // with the merged state of all parts in state_ (merged in part order: the same bits whichever
  // thread ran which part).
  bool MergeIfLast() {
    const size_t rows = static_cast<size_t>(rows_), rd = rows * dim_;
    const auto slot = [&](int part, int branch) {
      return split_->partials + ((task_ * split_->parts + part) * split_->branches + branch) * split_->stride;
    };
    for (int br = 0; br < split_->branches; ++br) {
      float* out = slot(part_, br);
      std::copy(state_[br].max, state_[br].max + rows, out);
      std::copy(state_[br].sum, state_[br].sum + rows, out + rows);
      std::copy(state_[br].acc, state_[br].acc + rd, out + 2 * rows);
    }
    // acq_rel: the last part sees every other part's partials (their release precedes its acquire).
    if (split_->finished[task_].fetch_add(1, std::memory_order_acq_rel) != split_->parts - 1) return false;
    for (int br = 0; br < split_->branches; ++br) {
      SoftmaxState& st = state_[br];
      for (size_t r = 0; r < rows; ++r) {
        float max = kNegInf;
        for (int p = 0; p < split_->parts; ++p) max = std::max(max, slot(p, br)[r]);
        float sum = 0.f;
        float* acc = st.acc + r * dim_;
        std::fill(acc, acc + dim_, 0.f);
        if (max != kNegInf) {
          for (int p = 0; p < split_->parts; ++p) {
            const float* part = slot(p, br);
            if (part[r] == kNegInf) continue;  // no key (nor sink) in this part
            const float weight = std::exp(part[r] - max);
            sum += part[rows + r] * weight;
            const float* part_acc = part + 2 * rows + r * dim_;
            for (int d = 0; d < dim_; ++d) acc[d] += part_acc[d] * weight;
          }
        }
        st.max[r] = max;
        st.sum[r] = sum;
      }
    }
    return true;
  }

  // branch 0: the union softmax or the SA branch; 1: the SWA branch (sinks row 1). A split task's
  // sink enters through part 0 only, so the merge counts it once.
  void InitState(SoftmaxState& st, int branch) {
    for (int tok = 0; tok < num_tokens_; ++tok) {
      for (int i = 0; i < group_size_; ++i) {
        const int r = tok * group_size_ + i;
        if (a_.sinks && part_ == 0) {
          // exp(sink) in the denominator is a key with logit `sink` and value 0.
          st.max[r] = cpu::ToFloat(a_.sinks[static_cast<int64_t>(branch) * a_.num_heads + first_head_ + i]);
          st.sum[r] = 1.f;
        } else {
          st.max[r] = kNegInf;
          st.sum[r] = 0.f;
        }
      }
    }
    std::fill(st.acc, st.acc + static_cast<size_t>(rows_) * dim_, 0.f);
  }

  // Positions of block `block` that token `info` takes for the SA side: union mode leaves the
  // window's positions to the window run (each position once), gate mode stops at the token.
  PositionRange SelectedRange(const TokenInfo& info, int64_t block) const {
    const int64_t lo = block * a_.block_size;
    const int64_t end = a_.combine == Combine::kUnion ? info.window_lo : info.position + 1;
    return {lo, std::min(lo + a_.block_size, end)};
  }

  KeyRun& AddRun(const T* keys, const T* values, int64_t first, int branch) {
    scratch_.runs.push_back({keys, values, first, 0, branch, scratch_.ranges.size()});
    scratch_.ranges.resize(scratch_.ranges.size() + num_tokens_);
    return scratch_.runs.back();
  }

  void PlanRuns() {
    scratch_.runs.clear();
    scratch_.ranges.clear();
    if (a_.selected_key) {
      PlanGatheredRuns();
    } else {
      PlanSharedBlockRuns();
    }
    // One window run over the span of every token's window, from the own cache.
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
    for (const TokenInfo& info : scratch_.tokens) {
      if (info.padding) continue;
      lo = std::min(lo, info.window_lo);
      hi = std::max(hi, info.position + 1);
    }
    if (lo >= hi) return;
    const int64_t row = bg_ * a_.own_capacity + (lo - a_.own_start);
    KeyRun& run = AddRun(a_.own_key + row * dim_, a_.own_value + row * dim_, lo,
                         a_.combine == Combine::kUnion ? 0 : 1);
    run.count = hi - lo;
    for (int tok = 0; tok < num_tokens_; ++tok) {
      const TokenInfo& info = scratch_.tokens[tok];
      if (!info.padding) scratch_.ranges[run.ranges + tok] = {info.window_lo, info.position + 1};
    }
  }

  // SA source = a full-length cache: a block is the same rows for every token, so each block
  // selected by any token of the tile becomes one run.
  void PlanSharedBlockRuns() {
    std::vector<int32_t>& blocks = scratch_.blocks;
    blocks.clear();
    for (const TokenInfo& info : scratch_.tokens) {
      if (info.padding) continue;
      for (int k = 0; k < a_.top_k && info.row[k] >= 0; ++k) {
        const PositionRange range = SelectedRange(info, info.row[k]);
        if (range.lo >= range.hi) break;  // ascending rows: later blocks contribute nothing either
        blocks.push_back(info.row[k]);
      }
    }
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
    // Rows are ascending, so one cursor per token walks them alongside the ascending union.
    scratch_.cursors.assign(num_tokens_, 0);
    for (const int32_t block : blocks) {
      const int64_t first = static_cast<int64_t>(block) * a_.block_size;
      const int64_t row = bg_ * a_.sa_capacity + first;
      KeyRun& run = AddRun(a_.sa_key + row * dim_, a_.sa_value + row * dim_, first, 0);
      int64_t end = first;
      for (int tok = 0; tok < num_tokens_; ++tok) {
        const TokenInfo& info = scratch_.tokens[tok];
        if (info.padding) continue;
        int& k = scratch_.cursors[tok];
        while (k < a_.top_k && info.row[k] >= 0 && info.row[k] < block) ++k;
        if (k == a_.top_k || info.row[k] != block) continue;
        const PositionRange range = SelectedRange(info, block);
        if (range.lo >= range.hi) continue;
        scratch_.ranges[run.ranges + tok] = range;
        end = std::max(end, range.hi);
      }
      run.count = end - first;
    }
  }

  // SA source = gathered blocks: every token has its own copy (slot k*bs + r is position
  // row[k]*bs + r), so each (token, block) is a run of its own.
  void PlanGatheredRuns() {
    for (int tok = 0; tok < num_tokens_; ++tok) {
      const TokenInfo& info = scratch_.tokens[tok];
      if (info.padding) continue;
      for (int k = 0; k < a_.top_k && info.row[k] >= 0; ++k) {
        const PositionRange range = SelectedRange(info, info.row[k]);
        if (range.lo >= range.hi) break;
        const int64_t slot = ((bg_ * a_.new_len + s_begin_ + tok) * a_.top_k + k) * a_.block_size;
        KeyRun& run = AddRun(a_.selected_key + slot * dim_, a_.selected_value + slot * dim_, range.lo, 0);
        run.count = range.hi - range.lo;
        scratch_.ranges[run.ranges + tok] = range;
      }
    }
  }

  // Hints that `bytes` from `rows` are about to be read: kLocality 3 brings them to L1, 2 to L2.
  template <int kLocality>
  static void PrefetchRows(const T* rows, int64_t bytes) {
#if defined(__GNUC__)
    const char* p = reinterpret_cast<const char*>(rows);
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, kLocality);
#else
    (void)rows;
    (void)bytes;
#endif
  }

  // Brings the chunk after the current one (possibly in the next run) towards L2 while the current
  // chunk is computed: selected blocks are scattered over a cache far larger than the LLC, and each
  // block start is a new stream for the hardware prefetcher.
  void PrefetchNextChunk(size_t run, int64_t c0) const {
    if (c0 >= scratch_.runs[run].count) {
      if (++run == scratch_.runs.size()) return;
      c0 = 0;
    }
    const KeyRun& r = scratch_.runs[run];
    const int64_t bytes = std::min<int64_t>(chunk_, r.count - c0) * dim_ * static_cast<int64_t>(sizeof(T));
    PrefetchRows<2>(r.keys + c0 * dim_, bytes);
    PrefetchRows<2>(r.values + c0 * dim_, bytes);
  }

  // Online-softmax step for rows [c0, c0 + n) of `run` (positions first + c0 ...). The chunk's keys
  // and values are read (converted, laid out for dot_rows) once; each maximal group of consecutive
  // tokens that take some of its positions gets one dot_rows and one accumulate_pv call, which find
  // the rows in L1 after the first group. Within a token's rows, positions it does not take score
  // -inf.
  void VisitChunk(const KeyRun& run, int64_t c0, int n) {
    const int64_t p0 = run.first + c0, p1 = p0 + n;
    const PositionRange* ranges = &scratch_.ranges[run.ranges];
    int* take_lo = scratch_.take.data();  // per token: first and end row it takes, in [0, n]
    int* take_hi = take_lo + num_tokens_;
    int takers = 0;
    for (int tok = 0; tok < num_tokens_; ++tok) {
      take_lo[tok] = static_cast<int>(std::clamp(ranges[tok].lo, p0, p1) - p0);
      take_hi[tok] = static_cast<int>(std::clamp(ranges[tok].hi, p0, p1) - p0);
      takers += take_lo[tok] < take_hi[tok];
    }
    if (takers == 0) return;
    int masked = 0;
    if (mask_) {
      for (int j = 0; j < n; ++j) masked += mask_[p0 + j] != 1;
      if (masked == n) return;  // no valid key in this chunk: skip its loads entirely
    }
    if (row_blocks_) {
      RowBlockVisit(run, c0, n, takers, masked != 0);
      return;
    }

    const size_t elems = static_cast<size_t>(n) * dim_;
    const size_t head_rows = static_cast<size_t>(group_size_);
    // accumulate_pv reads the values in column slices, a few cache lines per row at a time; having
    // the whole chunk on its way to L1 during the scores was faster in DRAM-bound decode runs.
    PrefetchRows<3>(run.values + c0 * dim_, static_cast<int64_t>(elems * sizeof(T)));
    const float* k = cpu::AsFloats(run.keys + c0 * dim_, elems, key_rows_, kernels_);
    const cpu::PreparedKeys keys =
        kernels_.prepare_keys(k, dim_, n, dim_, int64_t{takers} * group_size_, key_layout_);
    auto for_each_group = [&](auto&& fn) {  // fn(first token, end token) per group of takers
      for (int tok = 0; tok < num_tokens_;) {
        if (take_lo[tok] >= take_hi[tok]) {
          ++tok;
          continue;
        }
        int end = tok + 1;
        while (end < num_tokens_ && take_lo[end] < take_hi[end]) ++end;
        fn(tok, end);
        tok = end;
      }
    };
    for_each_group([&](int first, int end) {
      const int rows = static_cast<int>((end - first) * head_rows);
      kernels_.dot_rows(query_ + first * head_rows * dim_, dim_, rows, keys, n, dim_,
                        scores_ + first * head_rows * chunk_, chunk_);
    });

    SoftmaxState& st = state_[run.branch];
    for (int tok = 0; tok < num_tokens_; ++tok) {
      const int lo = take_lo[tok], hi = take_hi[tok];
      if (lo >= hi) continue;
      for (int i = 0; i < group_size_; ++i) {
        const size_t r = tok * head_rows + i;
        rescale_[r] = SoftmaxStep(st, r, scores_ + r * chunk_, n, lo, hi, masked ? mask_ + p0 : nullptr);
      }
    }
    const float* v = cpu::AsFloats(run.values + c0 * dim_, elems, value_rows_, kernels_);
    for_each_group([&](int first, int end) {
      const int rows = static_cast<int>((end - first) * head_rows);
      kernels_.accumulate_pv(scores_ + first * head_rows * chunk_, chunk_, rows, rescale_ + first * head_rows, v,
                             dim_, n, dim_, st.acc + first * head_rows * dim_, dim_);
    });
  }

  // Online-softmax step of row r over the scores p[0, n) of keys it was scored against, of which it
  // takes [lo, hi) (and of those only the ones mask[j] == 1 allows, when mask is given): the rest
  // become -inf, p becomes the weights exp(logit - new max), and the returned factor is what
  // accumulate_pv must scale the row's acc by (exactly 1 leaves it as it is).
  float SoftmaxStep(SoftmaxState& st, size_t r, float* p, int n, int lo, int hi, const int64_t* mask) {
    std::fill(p, p + lo, kNegInf);
    std::fill(p + hi, p + n, kNegInf);
    if (mask) {
      for (int j = lo; j < hi; ++j)
        if (mask[j] != 1) p[j] = kNegInf;
    }
    const float new_max = std::max(st.max[r], kernels_.max(p + lo, hi - lo));
    if (new_max == kNegInf) {  // nothing valid here (or -inf logits): nothing to add
      std::fill(p, p + n, 0.f);
      return 1.f;
    }
    const float sum = kernels_.exp_shift_sum(p, n, new_max);
    float rescale = 1.f;
    if (new_max != st.max[r]) {
      // exp(-inf) = 0 for the first keys, and acc/sum are still 0 then.
      rescale = std::exp(st.max[r] - new_max);
      st.sum[r] *= rescale;
      st.max[r] = new_max;
    }
    st.sum[r] += sum;
    return rescale;
  }

  // VisitChunk of the prefill tiles: the chunk's keys are laid out once for all takers, then every
  // block of kRowBlock rows is scored against the columns [lo, hi) its tokens take (one token's
  // when G is a multiple of kRowBlock: a band row skips the rest of the band), its softmax state
  // updated, and its P·V accumulated while the scores are still in L1. take_lo/take_hi are set.
  void RowBlockVisit(const KeyRun& run, int64_t c0, int n, int takers, bool masked) {
    const int64_t p0 = run.first + c0;
    const int* take_lo = scratch_.take.data();
    const int* take_hi = take_lo + num_tokens_;
    const size_t elems = static_cast<size_t>(n) * dim_;
    const float* k = cpu::AsFloats(run.keys + c0 * dim_, elems, key_rows_, kernels_);
    const cpu::PreparedKeys keys =
        kernels_.prepare_keys(k, dim_, n, dim_, int64_t{takers} * group_size_, key_layout_);
    const float* v = cpu::AsFloats(run.values + c0 * dim_, elems, value_rows_, kernels_);
    SoftmaxState& st = state_[run.branch];
    float* scores = scores_;  // [kRowBlock][chunk_]
    for (int r0 = 0; r0 < rows_; r0 += kRowBlock) {
      const int block_rows = std::min(kRowBlock, rows_ - r0);
      int lo = n, hi = 0;
      for (int tok = r0 / group_size_; tok <= (r0 + block_rows - 1) / group_size_; ++tok) {
        if (take_lo[tok] >= take_hi[tok]) continue;
        lo = std::min(lo, take_lo[tok]);
        hi = std::max(hi, take_hi[tok]);
      }
      if (lo >= hi) continue;
      const int cols = hi - lo;
      kernels_.dot_rows(query_ + static_cast<size_t>(r0) * dim_, dim_, block_rows, cpu::KeysFrom(keys, lo), cols,
                        dim_, scores, chunk_);
      for (int i = 0; i < block_rows; ++i) {
        const int r = r0 + i, tok = r / group_size_;
        // A row of another token of the block (G < kRowBlock) may take nothing here: all -inf.
        const int row_lo = std::clamp(take_lo[tok], lo, hi) - lo;
        const int row_hi = std::max(std::clamp(take_hi[tok], lo, hi) - lo, row_lo);
        rescale_[i] = SoftmaxStep(st, r, scores + static_cast<size_t>(i) * chunk_, cols, row_lo, row_hi,
                                  masked ? mask_ + p0 + lo : nullptr);
      }
      kernels_.accumulate_pv(scores, chunk_, block_rows, rescale_, v + static_cast<size_t>(lo) * dim_, dim_, cols,
                             dim_, st.acc + static_cast<size_t>(r0) * dim_, dim_);
    }
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
      cpu::LoadFloats(sa, gate_sa_, dim_, kernels_);
      cpu::LoadFloats(sa + width, gate_swa_, dim_, kernels_);
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

  void WriteOutputs() {
    for (int tok = 0; tok < num_tokens_; ++tok) {
      const int64_t s = s_begin_ + tok;
      for (int i = 0; i < group_size_; ++i) {
        const int r = tok * group_size_ + i;
        const int head = first_head_ + i;
        T* out = a_.output + a_.output_view.Offset(b_, head, s);
        if (scratch_.tokens[tok].padding) {  // a padding query has no valid keys: zero row
          std::fill(out_row_, out_row_ + dim_, 0.f);
          cpu::StoreFloats(out_row_, out, dim_, kernels_);
          continue;
        }
        // A softmax without any valid key (and no sink) has sum 0 and contributes 0.
        const float* acc = state_[0].acc + static_cast<size_t>(r) * dim_;
        const float inv = state_[0].sum[r] > 0.f ? 1.f / state_[0].sum[r] : 0.f;
        if (a_.combine == Combine::kUnion) {
          for (int d = 0; d < dim_; ++d) out_row_[d] = acc[d] * inv;
        } else {
          LoadGateWeights(s, head);
          const float* acc_swa = state_[1].acc + static_cast<size_t>(r) * dim_;
          const float inv_swa = state_[1].sum[r] > 0.f ? 1.f / state_[1].sum[r] : 0.f;
          for (int d = 0; d < dim_; ++d)
            out_row_[d] = gate_sa_[d] * acc[d] * inv + gate_swa_[d] * acc_swa[d] * inv_swa;
        }
        cpu::StoreFloats(out_row_, out, dim_, kernels_);
      }
    }
  }

  const SparseAttnArgs<T>& a_;
  const cpu::TileKernels& kernels_;
  const int b_;
  const int group_size_;
  const int dim_;
  const int first_head_;
  const int64_t bg_;  // b * H_kv + g: the (batch, KV head) index into every [B, H_kv, ...] tensor
  const int64_t s_begin_;
  const int num_tokens_;
  const int rows_;             // num_tokens_ * group_size_ query rows
  const int64_t* const mask_;  // this batch row of the attention mask, or null
  Scratch& scratch_;
  const SplitShare* const split_;  // null when the task is not split
  const int64_t task_;             // index of the (batch, KV head, token tile) task
  const int part_;
  const bool row_blocks_;  // prefill tiles: VisitChunk goes through RowBlockVisit
  const int chunk_;        // keys per online-softmax step

  float* query_;       // [rows_][D], scaled
  float* scores_;      // [rows_][chunk_]
  float* rescale_;     // [rows_]: exp(old max - new max) of the chunk being visited
  float* key_layout_;  // the chunk's keys as dot_rows reads them (TileKernels::prepare_keys)
  SoftmaxState state_[2];
  float* key_rows_;    // float16 storage: the chunk's keys as float32
  float* value_rows_;
  float* out_row_;
  float* gate_sa_;     // sigmoid of the gate logits of one head, per channel
  float* gate_swa_;
};

}  // namespace

namespace cpu {

namespace {

// Parts per task: shapes only, so every executor gives the same bits.
template <typename T>
int ChooseKvParts(const SparseAttnArgs<T>& args, int64_t tasks, const SparseAttnCpuOptions& options) {
  if (options.kv_parts > 0) return options.kv_parts;
  if (tasks >= kMinTasksWithoutSplit) return 1;
  // Keys a token attends at most: its selected blocks and its window.
  const int64_t keys = std::min<int64_t>(
      args.total_len, int64_t{args.top_k} * args.block_size + args.window);
  const int64_t by_work = std::max<int64_t>(1, keys / kMinKeysPerPart);
  const int64_t by_tasks = (kTargetTasks + tasks - 1) / tasks;
  return static_cast<int>(std::min(by_work, by_tasks));
}

// The split tasks' shared state, kept per calling thread so a decode loop does not allocate.
struct SplitStorage {
  std::vector<float> partials;
  std::unique_ptr<std::atomic<int>[]> finished;
  size_t finished_size = 0;
};
SplitStorage& SplitStorageForThisThread() {
  thread_local SplitStorage storage;
  return storage;
}

}  // namespace

template <typename T>
void RunSparseAttnCpu(const SparseAttnArgs<T>& args, const Executor& exec,
                      const SparseAttnCpuOptions& options) {
  if (args.batch <= 0 || args.new_len <= 0) return;
  const TileKernels& kernels = options.kernels ? *options.kernels : BestTileKernels();
  const bool row_blocks = options.prefill_tiles > 0 || (options.prefill_tiles == 0 && args.new_len >= kMinPrefillTokens);
  const int64_t token_tile = row_blocks ? kPrefillTokenTile : kTokenTile;
  const int64_t tiles = (args.new_len + token_tile - 1) / token_tile;
  const int64_t tasks = int64_t{args.batch} * args.kv_num_heads * tiles;
  const auto run_task = [&](int64_t task, const SplitShare* split, int part) {
    const int64_t tile = task % tiles;
    const int64_t bg = task / tiles;
    TileTask<T>(args, kernels, row_blocks, static_cast<int>(bg / args.kv_num_heads),
                static_cast<int>(bg % args.kv_num_heads), tile * token_tile,
                std::min(args.new_len, (tile + 1) * token_tile), split, task, part)
        .Run();
  };
  const int parts = ChooseKvParts(args, tasks, options);
  if (parts == 1) {
    exec.ParallelFor(static_cast<size_t>(tasks), [&](size_t task) {
      run_task(static_cast<int64_t>(task), nullptr, 0);
    });
    return;
  }
  SplitStorage& storage = SplitStorageForThisThread();
  SplitShare share;
  share.parts = parts;
  share.branches = args.combine == Combine::kGate ? 2 : 1;
  const int64_t max_rows =
      std::min<int64_t>(token_tile, args.new_len) * (args.num_heads / args.kv_num_heads);
  share.stride = max_rows * (args.head_dim + 2);
  const size_t floats = static_cast<size_t>(tasks * parts * share.branches * share.stride);
  if (storage.partials.size() < floats) storage.partials.resize(floats);
  if (storage.finished_size < static_cast<size_t>(tasks)) {
    storage.finished.reset(new std::atomic<int>[tasks]);
    storage.finished_size = static_cast<size_t>(tasks);
  }
  for (int64_t t = 0; t < tasks; ++t) storage.finished[t].store(0, std::memory_order_relaxed);
  share.partials = storage.partials.data();
  share.finished = storage.finished.get();
  exec.ParallelFor(static_cast<size_t>(tasks * parts), [&](size_t index) {
    run_task(static_cast<int64_t>(index) / parts, &share, static_cast<int>(index % parts));
  });
}

template void RunSparseAttnCpu<float>(const SparseAttnArgs<float>&, const Executor&,
                                      const SparseAttnCpuOptions&);
template void RunSparseAttnCpu<Half>(const SparseAttnArgs<Half>&, const Executor&,
                                     const SparseAttnCpuOptions&);

}  // namespace cpu
}  // namespace hysparse
