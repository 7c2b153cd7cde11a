// CPU HySparseFullAttn (docs/ops.md "HySparseFullAttn"): causal GQA attention that also scores every
// key block and selects the top-K blocks per KV head.
//
// Flash-style: a task owns all query heads of one KV head for a tile of query positions and streams
// the key range through it in tiles of kKeyTile keys, keeping per row the running maximum, the
// running sum of exponentials and the unnormalised output (online softmax). Nothing of size T x T is
// ever built. Each K/V tile is converted/loaded once and used by every query head of the group.
// When selection outputs are requested, the per-block maximum logit of every row is kept as well;
// once the row's log-sum-exp is known, exp(block_max - LSE) is that block's largest attention
// probability, which is exactly the contract's block score.
//
// With few query tiles (decode) the key range is also split across tasks ("split-KV"): each chunk
// keeps its own partial maximum/sum/output, merged afterwards. Chunks are whole blocks, so every
// block maximum is computed by exactly one chunk.
#include "kernels/cpu/attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/tile_kernels.h"
#include "kernels/scratch_plan.h"

namespace hysparse {
namespace cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Keys per K/V tile: a float32 tile of 64 keys x 128 dims is 32 KiB, so K and V tiles of a task
// stay in L1/L2 while all its rows stream over them.
constexpr int kKeyTile = kMaxTileKeys;
// Rows taken through scores -> softmax -> P·V together (the height of the register blocks).
constexpr int kRowBlock = 4;
// Accumulator rows (query heads x positions) a task aims for: enough reuse of each K/V tile.
constexpr int64_t kTargetRows = 128;
// Cap on the per-task block maxima (rows x blocks floats, 8 MiB) for tiny block sizes.
constexpr int64_t kMaxBlockMaxima = int64_t{1} << 21;
// Split-KV: split the key range only when there are fewer tasks than this without it, aiming for
// kTargetTasks tasks of at least kMinChunk keys each. Depends on shapes only, never on the thread
// count, so results do not depend on the executor.
constexpr int64_t kMinTasksWithoutSplit = 64;
constexpr int64_t kTargetTasks = 128;
constexpr int64_t kMinChunk = 512;
// float16 caches converted to float32 once per call are kept in a scratch of at most this many
// floats (64 MiB) per calling thread; a larger call converts tile by tile instead.
constexpr int64_t kMaxConvertedCacheFloats = int64_t{1} << 24;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t RoundUp(int64_t a, int64_t multiple) { return CeilDiv(a, multiple) * multiple; }

// How one call is cut into tasks.
struct Plan {
  int64_t group = 1;            // query heads per KV head
  int64_t query_tile = 1;       // query positions per task
  int64_t num_query_tiles = 1;
  int64_t max_rows = 1;         // group * query_tile: accumulator rows of a task
  int64_t num_chunks = 1;       // key-range chunks (split-KV); 1 = no split
  int64_t chunk_len = 0;        // keys per chunk; a multiple of block_size when num_chunks > 1
  int64_t num_blocks = 0;
  int64_t past_len = 0;         // P = T - S
  bool selection = false;
  // float16 storage converted up front: [B * H_kv][T][D] float32 keys and values, else null.
  const float* converted_keys = nullptr;
  const float* converted_values = nullptr;
};

template <typename T>
Plan MakePlan(const FullAttnArgs<T>& args, const FullAttnCpuOptions& options) {
  Plan plan;
  plan.group = args.num_heads / args.kv_num_heads;
  plan.num_blocks = args.NumBlocks();
  plan.past_len = args.total_len - args.new_len;
  plan.selection = args.WantsSelection();

  int64_t tile = options.query_tile > 0 ? options.query_tile : CeilDiv(kTargetRows, plan.group);
  if (plan.selection && options.query_tile <= 0)
    tile = std::min(tile, std::max<int64_t>(1, kMaxBlockMaxima / (plan.group * plan.num_blocks)));
  plan.query_tile = std::max<int64_t>(1, std::min(tile, args.new_len));
  plan.num_query_tiles = CeilDiv(args.new_len, plan.query_tile);
  plan.max_rows = plan.group * plan.query_tile;

  const int64_t total = args.total_len;
  const int64_t base_tasks = int64_t{args.batch} * args.kv_num_heads * plan.num_query_tiles;
  int64_t chunk = total;
  if (options.kv_split > 0) {
    chunk = RoundUp(options.kv_split, args.block_size);
  } else if (options.kv_split == 0 && base_tasks < kMinTasksWithoutSplit) {
    const int64_t wanted_chunks = CeilDiv(kTargetTasks, base_tasks);
    chunk = RoundUp(std::max(CeilDiv(total, wanted_chunks), kMinChunk), args.block_size);
  }
  plan.num_chunks = chunk >= total ? 1 : CeilDiv(total, chunk);
  plan.chunk_len = plan.num_chunks == 1 ? total : chunk;
  return plan;
}

// Task i -> (batch, KV head, query tile). Query tiles are handed out heaviest first, alternating
// with the lightest (causal attention makes late tiles cost more), so that both a dynamic scheduler
// and a static split of the index range into contiguous ranges see balanced work.
struct TaskCoords {
  int64_t b, g, query_tile;
};
TaskCoords DecodeTask(int64_t index, int64_t batch_heads, int64_t kv_heads,
                      int64_t num_query_tiles) {
  const int64_t order = index / batch_heads;
  const int64_t inner = index % batch_heads;
  const int64_t tile =
      order % 2 == 0 ? num_query_tiles - 1 - order / 2 : order / 2;
  return {inner / kv_heads, inner % kv_heads, tile};
}

// Per-thread scratch, grown on demand and reused across tasks and calls: a task takes what it needs
// once at its start, nothing is allocated per tile.
HostScratch& ScratchForThisThread() {
  thread_local HostScratch scratch;
  return scratch;
}
// Pieces start on 64-byte boundaries (aligned vector loads of the prepared key tile).
constexpr size_t kScratchAlignment = 64;

// Online-softmax state of a task's rows (row r = position offset * group + head in group).
struct RowState {
  float* row_max;    // [rows]: running max logit, -inf before any valid key
  float* row_sum;    // [rows]: Σ exp(logit - row_max)
  float* acc;        // [rows][D]: Σ exp(logit - row_max) * v
  float* block_max;  // [rows][num_blocks]: max valid logit per block, or null without selection
};

// Per-task scratch of the streaming loop.
struct TileScratch {
  float* queries;  // [rows][D], pre-multiplied by scale
  float* key_tile;      // float16 keys converted
  float* key_layout;    // the key tile as dot_rows reads it (TileKernels::prepare_keys)
  float* value_tile;
  float* scores;   // [kRowBlock][kKeyTile]
  float* rescale;  // [kRowBlock]
  int64_t* last_key;  // [rows]: last valid key position of the row, -1 for a padding query
};

TileScratch TakeTileScratch(const Plan& plan, int dim, ScratchCarver& carver) {
  TileScratch s;
  s.queries = carver.Take<float>(plan.max_rows * dim);
  s.key_tile = carver.Take<float>(int64_t{kKeyTile} * dim);
  s.key_layout = carver.Take<float>(int64_t{kKeyTile} * dim);
  s.value_tile = carver.Take<float>(int64_t{kKeyTile} * dim);
  s.scores = carver.Take<float>(int64_t{kRowBlock} * kKeyTile);
  s.rescale = carver.Take<float>(kRowBlock);
  s.last_key = carver.Take<int64_t>(plan.max_rows);
  return s;
}

// Streams keys [key_begin, key_end) (a whole chunk: key_begin and, unless it is T, key_end are
// multiples of block_size) through the rows of query tile `tile` of (b, g), starting from an empty
// state. Block maxima are written for the chunk's blocks only.
template <typename T>
void AttendKeyRange(const FullAttnArgs<T>& args, const Plan& plan, const TileKernels& kernels,
                    int64_t b, int64_t g, int64_t tile, int64_t key_begin, int64_t key_end,
                    const RowState& state, const TileScratch& scratch) {
  const int dim = args.head_dim;
  const int64_t group = plan.group;
  const int64_t pos_begin = tile * plan.query_tile;
  const int64_t pos_end = std::min(args.new_len, pos_begin + plan.query_tile);
  const int64_t rows = (pos_end - pos_begin) * group;
  const int64_t nb = plan.num_blocks;
  const int64_t bs = args.block_size;
  const int64_t* mask = args.attention_mask ? args.attention_mask + b * args.total_len : nullptr;

  std::fill(state.row_max, state.row_max + rows, kNegInf);
  std::fill(state.row_sum, state.row_sum + rows, 0.f);
  std::fill(state.acc, state.acc + rows * dim, 0.f);
  if (state.block_max) {
    const int64_t block_begin = key_begin / bs;
    const int64_t block_end = CeilDiv(key_end, bs);
    for (int64_t r = 0; r < rows; ++r)
      std::fill(state.block_max + r * nb + block_begin, state.block_max + r * nb + block_end,
                kNegInf);
  }

  int64_t task_last_key = -1;
  for (int64_t s = pos_begin; s < pos_end; ++s) {
    const int64_t position = plan.past_len + s;
    const bool live = !mask || mask[position] != 0;
    if (live) task_last_key = position;
    for (int64_t hh = 0; hh < group; ++hh) {
      const int64_t r = (s - pos_begin) * group + hh;
      scratch.last_key[r] = live ? position : -1;
      const T* src = args.query + args.query_view.Offset(b, g * group + hh, s);
      LoadScaled(src, scratch.queries + r * dim, dim, args.scale, kernels);
    }
  }

  // Keys past the last live position of the tile are invalid for all its rows (all of them when
  // every position is padding).
  key_end = std::min(key_end, task_last_key + 1);
  const int64_t bg = b * args.kv_num_heads + g;
  const T* key_cache = args.key_cache + bg * args.cache_capacity * dim;
  const T* value_cache = args.value_cache + bg * args.cache_capacity * dim;
  const int64_t converted_offset = bg * args.total_len * dim;

  for (int64_t k0 = key_begin; k0 < key_end; k0 += kKeyTile) {
    const int num_keys = static_cast<int>(std::min<int64_t>(kKeyTile, key_end - k0));
    const int64_t tile_elems = int64_t{num_keys} * dim;
    const float* key_rows =
        plan.converted_keys
            ? plan.converted_keys + converted_offset + k0 * dim
            : AsFloats(key_cache + k0 * dim, tile_elems, scratch.key_tile, kernels);
    const PreparedKeys keys =
        kernels.prepare_keys(key_rows, dim, num_keys, dim, rows, scratch.key_layout);
    const float* values =
        plan.converted_values
            ? plan.converted_values + converted_offset + k0 * dim
            : AsFloats(value_cache + k0 * dim, tile_elems, scratch.value_tile, kernels);
    bool tile_has_padding = false;
    if (mask)
      for (int c = 0; c < num_keys; ++c) tile_has_padding |= mask[k0 + c] == 0;

    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
      const int block_rows = static_cast<int>(std::min<int64_t>(kRowBlock, rows - r0));
      int64_t block_last_key = -1;
      for (int i = 0; i < block_rows; ++i)
        block_last_key = std::max(block_last_key, scratch.last_key[r0 + i]);
      const int cols = static_cast<int>(std::min<int64_t>(num_keys, block_last_key - k0 + 1));
      if (cols <= 0) continue;  // every key of the tile is in these rows' future

      float* scores = scratch.scores;
      kernels.dot_rows(scratch.queries + r0 * dim, dim, block_rows, keys, cols, dim, scores,
                       kKeyTile);
      for (int i = 0; i < block_rows; ++i) {
        const int64_t r = r0 + i;
        float* row = scores + i * kKeyTile;
        const int valid_cols = static_cast<int>(
            std::clamp<int64_t>(scratch.last_key[r] - k0 + 1, 0, cols));
        std::fill(row + valid_cols, row + cols, kNegInf);
        if (tile_has_padding)
          for (int c = 0; c < valid_cols; ++c)
            if (mask[k0 + c] == 0) row[c] = kNegInf;

        float tile_max = kNegInf;
        if (state.block_max) {
          float* block_max = state.block_max + r * nb;
          for (int c = 0; c < valid_cols;) {
            const int64_t block = (k0 + c) / bs;
            const int end = static_cast<int>(std::min<int64_t>(valid_cols, (block + 1) * bs - k0));
            const float segment_max = kernels.max(row + c, end - c);
            block_max[block] = std::max(block_max[block], segment_max);
            tile_max = std::max(tile_max, segment_max);
            c = end;
          }
        } else {
          tile_max = kernels.max(row, valid_cols);
        }
        const float old_max = state.row_max[r];
        const float new_max = std::max(old_max, tile_max);
        // With no valid key yet every weight is exp(-inf) = 0; shift by 0 to avoid -inf - -inf.
        const float shift = new_max == kNegInf ? 0.f : new_max;
        scratch.rescale[i] = std::exp(old_max - shift);
        state.row_sum[r] =
            state.row_sum[r] * scratch.rescale[i] + kernels.exp_shift_sum(row, cols, shift);
        state.row_max[r] = new_max;
      }
      kernels.accumulate_pv(scores, kKeyTile, block_rows, scratch.rescale, values, dim, cols, dim,
                            state.acc + r0 * dim, dim);
    }
  }
}

// Scratch of Finish.
struct FinishScratch {
  float* out_row;      // [D]
  float* head_scores;  // [num_blocks]
  float* group_scores; // [num_blocks]
  int64_t* chosen;     // [num_blocks]
};

FinishScratch TakeFinishScratch(const Plan& plan, int dim, ScratchCarver& carver) {
  FinishScratch s{carver.Take<float>(dim), nullptr, nullptr, nullptr};
  if (!plan.selection) return s;
  s.head_scores = carver.Take<float>(plan.num_blocks);
  s.group_scores = carver.Take<float>(plan.num_blocks);
  s.chosen = carver.Take<int64_t>(plan.num_blocks);
  return s;
}

// A task's own online-softmax rows; the block maxima are the caller's to place.
RowState TakeRowState(const Plan& plan, int dim, ScratchCarver& carver, float* block_max) {
  const int64_t rows = plan.max_rows;
  return RowState{carver.Take<float>(rows), carver.Take<float>(rows), carver.Take<float>(rows * dim), block_max};
}

// Picks the token's blocks: the min(K, eligible) eligible blocks with the highest group score
// (lower index on equal scores), returned in ascending order in chosen[0..count).
int64_t SelectBlocks(const float* group_scores, const int64_t* first_valid_key, int64_t num_blocks,
                     int64_t position, int64_t top_k, int64_t* chosen) {
  int64_t eligible = 0;
  for (int64_t i = 0; i < num_blocks; ++i)
    if (first_valid_key[i] <= position) chosen[eligible++] = i;
  if (eligible <= top_k) return eligible;
  const auto better = [group_scores](int64_t a, int64_t c) {
    return group_scores[a] > group_scores[c] || (group_scores[a] == group_scores[c] && a < c);
  };
  std::nth_element(chosen, chosen + top_k, chosen + eligible, better);
  std::sort(chosen, chosen + top_k);
  return top_k;
}

// Turns a task's final state into its outputs: the attention rows, and for each position the group
// block scores, the chosen blocks and the gathered key/value rows.
template <typename T>
void Finish(const FullAttnArgs<T>& args, const Plan& plan, const TileKernels& kernels,
            const int64_t* first_valid_key, int64_t b, int64_t g, int64_t tile,
            const RowState& state, const FinishScratch& scratch) {
  const int dim = args.head_dim;
  const int64_t group = plan.group;
  const int64_t nb = plan.num_blocks;
  const int64_t bs = args.block_size;
  const int64_t top_k = args.top_k;
  const int64_t pos_begin = tile * plan.query_tile;
  const int64_t pos_end = std::min(args.new_len, pos_begin + plan.query_tile);
  const int64_t* mask = args.attention_mask ? args.attention_mask + b * args.total_len : nullptr;
  const int64_t bg = b * args.kv_num_heads + g;

  for (int64_t s = pos_begin; s < pos_end; ++s) {
    const int64_t position = plan.past_len + s;
    const bool live = !mask || mask[position] != 0;
    for (int64_t hh = 0; hh < group; ++hh) {
      const int64_t r = (s - pos_begin) * group + hh;
      const float sum = state.row_sum[r];
      const float inv = live && sum > 0.f ? 1.f / sum : 0.f;
      for (int d = 0; d < dim; ++d) scratch.out_row[d] = state.acc[r * dim + d] * inv;
      StoreFloats(scratch.out_row, args.output + args.output_view.Offset(b, g * group + hh, s), dim,
                 kernels);
    }
    if (!plan.selection) continue;

    float* group_scores = scratch.group_scores;
    std::fill(group_scores, group_scores + nb, 0.f);
    if (live) {
      for (int64_t hh = 0; hh < group; ++hh) {
        const int64_t r = (s - pos_begin) * group + hh;
        // A live row always has its own key, so row_sum >= exp(0) = 1.
        const float lse = state.row_max[r] + std::log(state.row_sum[r]);
        std::memcpy(scratch.head_scores, state.block_max + r * nb, sizeof(float) * nb);
        kernels.exp_shift_sum(scratch.head_scores, nb, lse);
        for (int64_t i = 0; i < nb; ++i)
          group_scores[i] = std::max(group_scores[i], scratch.head_scores[i]);
      }
    }
    const int64_t row_index = bg * args.new_len + s;
    if (args.block_scores)
      std::memcpy(args.block_scores + row_index * nb, group_scores, sizeof(float) * nb);

    if (!args.block_indices && !args.selected_key && !args.selected_value) continue;
    const int64_t count =
        live ? SelectBlocks(group_scores, first_valid_key + b * nb, nb, position, top_k,
                            scratch.chosen)
             : 0;
    if (args.block_indices) {
      int32_t* out = args.block_indices + row_index * top_k;
      for (int64_t k = 0; k < top_k; ++k)
        out[k] = k < count ? static_cast<int32_t>(scratch.chosen[k]) : -1;
    }
    const int64_t slot_elems = bs * dim;
    const int64_t cache_base = bg * args.cache_capacity * dim;
    for (int p = 0; p < 2; ++p) {
      T* gathered = p == 0 ? args.selected_key : args.selected_value;
      if (!gathered) continue;
      const T* cache = (p == 0 ? args.key_cache : args.value_cache) + cache_base;
      T* out = gathered + row_index * top_k * slot_elems;
      for (int64_t k = 0; k < top_k; ++k) {
        T* slot = out + k * slot_elems;
        int64_t copied_rows = 0;
        if (k < count) {
          const int64_t first = scratch.chosen[k] * bs;
          copied_rows = std::min(bs, args.total_len - first);
          std::memcpy(slot, cache + first * dim, sizeof(T) * copied_rows * dim);
        }
        std::memset(slot + copied_rows * dim, 0, sizeof(T) * (bs - copied_rows) * dim);
      }
    }
  }
}

// first_valid_key[b * nb + i]: the first valid key position of block i in batch row b, or
// INT64_MAX when it has none. Block i is eligible for the token at position t iff this is <= t.
template <typename T>
std::vector<int64_t> FirstValidKeys(const FullAttnArgs<T>& args, int64_t nb) {
  std::vector<int64_t> first(static_cast<size_t>(args.batch * nb),
                             std::numeric_limits<int64_t>::max());
  for (int64_t b = 0; b < args.batch; ++b) {
    const int64_t* mask = args.attention_mask ? args.attention_mask + b * args.total_len : nullptr;
    for (int64_t j = args.total_len - 1; j >= 0; --j)
      if (!mask || mask[j] != 0) first[b * nb + j / args.block_size] = j;
  }
  return first;
}

template <typename T>
void RunSingleChunk(const FullAttnArgs<T>& args, const Executor& exec, const Plan& plan,
                    const TileKernels& kernels, const int64_t* first_valid_key) {
  const int64_t batch_heads = int64_t{args.batch} * args.kv_num_heads;
  const int dim = args.head_dim;
  exec.ParallelFor(static_cast<size_t>(batch_heads * plan.num_query_tiles), [&](size_t index) {
    const TaskCoords t =
        DecodeTask(static_cast<int64_t>(index), batch_heads, args.kv_num_heads, plan.num_query_tiles);
    struct TaskScratch {
      RowState state;
      TileScratch tile;
      FinishScratch finish;
    };
    const TaskScratch s = CarveHostScratch(ScratchForThisThread(), kScratchAlignment, [&](ScratchCarver& c) {
      RowState state = TakeRowState(plan, dim, c, nullptr);
      if (plan.selection) state.block_max = c.Take<float>(plan.max_rows * plan.num_blocks);
      const TileScratch tile = TakeTileScratch(plan, dim, c);
      return TaskScratch{state, tile, TakeFinishScratch(plan, dim, c)};
    });
    AttendKeyRange(args, plan, kernels, t.b, t.g, t.query_tile, 0, args.total_len, s.state, s.tile);
    Finish(args, plan, kernels, first_valid_key, t.b, t.g, t.query_tile, s.state, s.finish);
  });
}

// Split-KV: one task per (batch, KV head, query tile, chunk) writes a partial state, then one task
// per (batch, KV head, query tile) merges the chunks and finishes.
template <typename T>
void RunSplitChunks(const FullAttnArgs<T>& args, const Executor& exec, const Plan& plan,
                    const TileKernels& kernels, const int64_t* first_valid_key) {
  const int64_t batch_heads = int64_t{args.batch} * args.kv_num_heads;
  const int dim = args.head_dim;
  const int64_t rows = plan.max_rows;
  const int64_t nc = plan.num_chunks;
  const int64_t tasks = batch_heads * plan.num_query_tiles;
  // Partial state per (task, chunk): row_max[rows], row_sum[rows], acc[rows * D].
  const int64_t partial_stride = rows * (dim + 2);
  std::vector<float> partials(static_cast<size_t>(tasks * nc * partial_stride));
  // Block maxima per task; each chunk fills its own blocks' columns.
  const int64_t block_stride = plan.selection ? rows * plan.num_blocks : 0;
  std::vector<float> block_maxima(static_cast<size_t>(tasks * block_stride));
  const auto task_index = [&](const TaskCoords& t) {
    return (t.b * args.kv_num_heads + t.g) * plan.num_query_tiles + t.query_tile;
  };
  const auto partial_state = [&](int64_t task, int64_t chunk) {
    float* base = partials.data() + (task * nc + chunk) * partial_stride;
    return RowState{base, base + rows, base + 2 * rows,
                    plan.selection ? block_maxima.data() + task * block_stride : nullptr};
  };

  exec.ParallelFor(static_cast<size_t>(tasks * nc), [&](size_t index) {
    const int64_t chunk = static_cast<int64_t>(index) % nc;
    const TaskCoords t = DecodeTask(static_cast<int64_t>(index) / nc, batch_heads,
                                    args.kv_num_heads, plan.num_query_tiles);
    const TileScratch tile_scratch = CarveHostScratch(
        ScratchForThisThread(), kScratchAlignment, [&](ScratchCarver& c) { return TakeTileScratch(plan, dim, c); });
    const int64_t key_begin = chunk * plan.chunk_len;
    const int64_t key_end = std::min(args.total_len, key_begin + plan.chunk_len);
    AttendKeyRange(args, plan, kernels, t.b, t.g, t.query_tile, key_begin, key_end,
                   partial_state(task_index(t), chunk), tile_scratch);
  });

  exec.ParallelFor(static_cast<size_t>(tasks), [&](size_t index) {
    const TaskCoords t =
        DecodeTask(static_cast<int64_t>(index), batch_heads, args.kv_num_heads, plan.num_query_tiles);
    const int64_t task = task_index(t);
    float* const block_max = plan.selection ? block_maxima.data() + task * block_stride : nullptr;
    struct MergeScratch {
      RowState merged;
      FinishScratch finish;
    };
    const MergeScratch s = CarveHostScratch(ScratchForThisThread(), kScratchAlignment, [&](ScratchCarver& c) {
      const RowState merged = TakeRowState(plan, dim, c, block_max);
      return MergeScratch{merged, TakeFinishScratch(plan, dim, c)};
    });
    const RowState& merged = s.merged;
    const FinishScratch& finish_scratch = s.finish;
    for (int64_t r = 0; r < rows; ++r) {
      float max = kNegInf;
      for (int64_t c = 0; c < nc; ++c) max = std::max(max, partial_state(task, c).row_max[r]);
      merged.row_max[r] = max;
      float sum = 0.f;
      float* acc = merged.acc + r * dim;
      std::fill(acc, acc + dim, 0.f);
      if (max != kNegInf) {
        for (int64_t c = 0; c < nc; ++c) {
          const RowState part = partial_state(task, c);
          if (part.row_max[r] == kNegInf) continue;
          const float weight = std::exp(part.row_max[r] - max);
          sum += part.row_sum[r] * weight;
          const float* part_acc = part.acc + r * dim;
          for (int d = 0; d < dim; ++d) acc[d] += part_acc[d] * weight;
        }
      }
      merged.row_sum[r] = sum;
    }
    Finish(args, plan, kernels, first_valid_key, t.b, t.g, t.query_tile, merged, finish_scratch);
  });
}

// Float32 copy of a float16 cache, kept per calling thread so that prefill after prefill reuses it.
std::vector<float>& ConvertedCacheStorage() {
  thread_local std::vector<float> storage;
  return storage;
}

// float16 storage: converts rows [0, T) of every (batch, KV head) of the key and value caches into
// the kept scratch, in parallel, and points the plan at them, when options.convert_cache asks for it
// (or, on 0, when each key tile is read by several query tiles and the copy fits the scratch).
// Converting a tile up front or when a task reads it gives the same floats, so this changes speed,
// never results.
void ConvertCacheOnce(const FullAttnArgs<float>&, const Executor&, const FullAttnCpuOptions&,
                      const TileKernels&, Plan&) {}
void ConvertCacheOnce(const FullAttnArgs<Half>& args, const Executor& exec,
                      const FullAttnCpuOptions& options, const TileKernels& kernels, Plan& plan) {
  const int64_t dim = args.head_dim;
  const int64_t heads = int64_t{args.batch} * args.kv_num_heads;
  const int64_t floats = 2 * heads * args.total_len * dim;
  const bool wanted = options.convert_cache > 0 ||
                      (options.convert_cache == 0 && plan.num_query_tiles > 1 &&
                       floats <= kMaxConvertedCacheFloats);
  if (!wanted) return;
  std::vector<float>& storage = ConvertedCacheStorage();
  if (static_cast<int64_t>(storage.size()) < floats) storage.resize(static_cast<size_t>(floats));
  float* keys = storage.data();
  float* values = keys + heads * args.total_len * dim;
  // Pieces of kKeyTile rows of one head: enough tasks to share the work, each a contiguous run.
  const int64_t pieces_per_head = CeilDiv(args.total_len, kKeyTile);
  exec.ParallelFor(static_cast<size_t>(heads * pieces_per_head), [&](size_t index) {
    const int64_t bg = static_cast<int64_t>(index) / pieces_per_head;
    const int64_t first = static_cast<int64_t>(index) % pieces_per_head * kKeyTile;
    const int64_t count = std::min<int64_t>(kKeyTile, args.total_len - first);
    const int64_t from = (bg * args.cache_capacity + first) * dim;
    const int64_t to = (bg * args.total_len + first) * dim;
    kernels.half_to_float(args.key_cache + from, keys + to, count * dim);
    kernels.half_to_float(args.value_cache + from, values + to, count * dim);
  });
  plan.converted_keys = keys;
  plan.converted_values = values;
}

}  // namespace

template <typename T>
void RunFullAttnCpu(const FullAttnArgs<T>& args, const Executor& exec,
                    const FullAttnCpuOptions& options) {
  if (args.batch == 0 || args.new_len == 0) return;
  const TileKernels& kernels = options.kernels ? *options.kernels : BestTileKernels();
  Plan plan = MakePlan(args, options);
  ConvertCacheOnce(args, exec, options, kernels, plan);
  std::vector<int64_t> first_valid_key;
  if (plan.selection) first_valid_key = FirstValidKeys(args, plan.num_blocks);
  if (plan.num_chunks == 1)
    RunSingleChunk(args, exec, plan, kernels, first_valid_key.data());
  else
    RunSplitChunks(args, exec, plan, kernels, first_valid_key.data());
}

template void RunFullAttnCpu<float>(const FullAttnArgs<float>&, const Executor&,
                                    const FullAttnCpuOptions&);
template void RunFullAttnCpu<Half>(const FullAttnArgs<Half>&, const Executor&,
                                   const FullAttnCpuOptions&);

}  // namespace cpu
}  // namespace hysparse
