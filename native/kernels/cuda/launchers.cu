// Host launchers: choose the path, plan the one scratch allocation, enqueue the kernels on the
// caller's stream. No synchronisation and no allocation besides the ScratchAllocator call.
#include <algorithm>
#include <optional>
#include <string>

#include "kernels/cuda/tile_math.cuh"
#include "kernels/scratch_plan.h"

namespace hysparse {
namespace cuda {

namespace detail {
namespace {

// HySparseFullAttn calls with at most this many new tokens take the split-K path (decode, short
// chunks): the tiled kernel would start only B*H_kv CTAs for them, too few to fill the GPU on long
// contexts. Past it, per-token split-K would re-read K/V once per token.
constexpr int64_t kSplitPathMaxTokens = 4;
// Slots one split walks at the least (4 per lane group): fewer would make the partials cost more than
// they save; more leaves short (sparse) decodes latency-bound on a few long chains of dependent loads.
constexpr int64_t kMinSplitSlots = 64;

struct SplitPlan {
  int num_splits = 1;
  int64_t split_len = 1;
};

// An attribute of the current device.
Status DeviceAttribute(cudaDeviceAttr attribute, int* value) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(value, attribute, device);
  if (err != cudaSuccess) return Error(err, std::string("cannot query the device: ") + cudaGetErrorString(err));
  return Status::Ok();
}

// Enough CTAs for a few waves over the GPU, splits of at least kMinSplitSlots and a multiple of the
// 16 lane groups of a CTA.
Status PlanSplits(int64_t row_ctas, int64_t max_slots, SplitPlan* plan) {
  int sms = 0;
  HYSPARSE_CUDA_RETURN_IF(DeviceAttribute(cudaDevAttrMultiProcessorCount, &sms));
  const int64_t target_ctas = 4LL * sms;
  int64_t splits = CeilDiv(target_ctas, std::max<int64_t>(row_ctas, 1));
  splits = std::min(splits, std::max<int64_t>(1, CeilDiv(max_slots, kMinSplitSlots)));
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
  int64_t len = CeilDiv(std::max<int64_t>(max_slots, 1), splits);
  len = CeilDiv(len, 16) * 16;
  plan->split_len = len;
  plan->num_splits = static_cast<int>(CeilDiv(std::max<int64_t>(max_slots, 1), len));
  return Status::Ok();
}

template <typename T>
bool ViewAligned(const T* base, const HeadView& v) {
  return Aligned16(base) && StrideAligned16<T>(v.batch_stride) && StrideAligned16<T>(v.head_stride) &&
         StrideAligned16<T>(v.token_stride);
}

template <typename T>
bool RowsAligned(const T* base, int head_dim) {
  return base == nullptr || (Aligned16(base) && StrideAligned16<T>(head_dim));
}

// The fields of the split-K parameters both ops fill the same way (Args: FullAttnArgs or SparseAttnArgs).
template <typename T, template <typename> class Args>
GroupAttnParams<T> CommonGroupParams(const Args<T>& a, GroupMode mode, const SplitPlan& splits, int head_chunks,
                                     float2* part_ml, float* part_o) {
  GroupAttnParams<T> p;
  p.dims() = a.dims();
  p.mode = mode;
  p.group = a.num_heads / a.kv_num_heads;
  p.scale_log2 = a.scale * kLog2e;
  p.query = a.query;
  p.query_view = a.query_view;
  p.mask = a.attention_mask;
  p.head_chunks = head_chunks;
  p.num_splits = splits.num_splits;
  p.split_len = splits.split_len;
  p.part_ml = part_ml;
  p.part_o = part_o;
  return p;
}

template <typename T, template <typename> class Args>
CombineParams<T> CommonCombineParams(const Args<T>& a, const GroupAttnParams<T>& g, int branches) {
  CombineParams<T> c;
  c.dims() = a.dims();
  c.num_splits = g.num_splits;
  c.branches = branches;
  c.part_ml = g.part_ml;
  c.part_o = g.part_o;
  c.output = a.output;
  c.output_view = a.output_view;
  return c;
}

// Scratch regions start on 256-byte boundaries, as the allocator's base does.
constexpr size_t kScratchAlignment = 256;

// Sizes `layout(ScratchCarver&)`, makes the one ScratchAllocator call, and fills *regions with what
// `layout` hands out over that allocation.
template <typename Regions, typename Layout>
Status CarveDeviceScratch(ScratchAllocator& scratch, const char* op, Layout&& layout, Regions* regions) {
  ScratchCarver sizing = ScratchCarver::Sizing(kScratchAlignment);
  layout(sizing);
  const size_t bytes = sizing.bytes();
  void* base = bytes == 0 ? nullptr : scratch.Allocate(bytes);
  if (bytes != 0 && base == nullptr) {
    return Error(cudaErrorMemoryAllocation,
                 std::string(op) + ": the scratch allocator could not provide " + std::to_string(bytes) + " bytes");
  }
  ScratchCarver carver(kScratchAlignment, base);
  *regions = layout(carver);
  return Status::Ok();
}

}  // namespace
}  // namespace detail

bool SupportsShape(int head_dim, int num_heads, int kv_num_heads, std::string* why) {
  std::string reason;
  if (head_dim < 1 || head_dim > kMaxHeadDim) {
    reason = "head size " + std::to_string(head_dim) + " is outside the CUDA kernels' range [1, " +
             std::to_string(kMaxHeadDim) + "]";
  } else if (kv_num_heads < 1 || num_heads < 1 || num_heads % kv_num_heads != 0) {
    reason = "num_heads " + std::to_string(num_heads) + " is not a multiple of kv_num_heads " +
             std::to_string(kv_num_heads);
  } else if (num_heads / kv_num_heads > kMaxGroupSize) {
    reason = "num_heads / kv_num_heads = " + std::to_string(num_heads / kv_num_heads) +
             " exceeds the CUDA kernels' group limit " + std::to_string(kMaxGroupSize);
  }
  if (why) *why = reason;
  return reason.empty();
}

namespace detail {
namespace {

// How a launcher call ends before anything is planned, if it does: refused (the legacy default
// stream would serialise with every other stream; a shape the kernels do not cover), or done at once
// (no rows). Empty when there is work to launch.
std::optional<Status> EndBeforeLaunch(const char* op, const AttentionDims& a, cudaStream_t stream) {
  if (stream == nullptr) return Error(cudaErrorInvalidValue, std::string(op) + ": refusing the legacy default stream");
  std::string why;
  if (!SupportsShape(a.head_dim, a.num_heads, a.kv_num_heads, &why)) {
    return Error(cudaErrorNotSupported, std::string(op) + ": " + why);
  }
  if (a.batch == 0 || a.new_len == 0) return Status::Ok();
  return std::nullopt;
}

}  // namespace
}  // namespace detail

template <typename T>
Status LaunchFullAttn(const FullAttnArgs<T>& a, cudaStream_t stream, ScratchAllocator& scratch,
                      const int32_t* seqlens_k) {
  using namespace detail;
  if (const std::optional<Status> end = EndBeforeLaunch("HySparseFullAttn", a, stream)) return *end;

  const int group = a.num_heads / a.kv_num_heads;
  const int64_t nb = a.NumBlocks();
  const bool want_stats = a.WantsSelection();
  const bool want_indices = a.block_indices || a.selected_key || a.selected_value;
  const int64_t head_rows = static_cast<int64_t>(a.batch) * a.num_heads * a.new_len;
  const int64_t kv_rows = static_cast<int64_t>(a.batch) * a.kv_num_heads * a.new_len;
  const bool vector_ok = a.head_dim % 8 == 0 && ViewAligned(a.query, a.query_view) &&
                         RowsAligned(a.key_cache, a.head_dim) && RowsAligned(a.value_cache, a.head_dim);
  const bool split_path = a.new_len <= kSplitPathMaxTokens;

  SplitPlan splits;
  const int heads_per_cta = GroupHeadsPerCta(a.head_dim, static_cast<int>(sizeof(T)));
  const int head_chunks = static_cast<int>(CeilDiv(group, heads_per_cta));
  if (split_path) HYSPARSE_CUDA_RETURN_IF(PlanSplits(kv_rows * head_chunks, a.total_len, &splits));
  // Regions a path does not use stay null.
  struct Regions {
    float2* part_ml = nullptr;
    float* part_o = nullptr;
    float* logits = nullptr;
    float* block_max = nullptr;
    float* lse = nullptr;
    int32_t* indices = nullptr;
    float* work = nullptr;
  } r;
  const int64_t partials = head_rows * splits.num_splits;
  HYSPARSE_CUDA_RETURN_IF(CarveDeviceScratch(scratch, "HySparseFullAttn", [&](ScratchCarver& c) {
    Regions t;
    if (split_path) {
      t.part_ml = c.Take<float2>(partials);
      t.part_o = c.Take<float>(partials * a.head_dim);
      if (want_stats) t.logits = c.Take<float>(head_rows * a.total_len);
    }
    if (want_stats) {
      t.block_max = c.Take<float>(head_rows * nb);
      t.lse = c.Take<float>(head_rows);
      if (want_indices && !a.block_indices) t.indices = c.Take<int32_t>(kv_rows * a.top_k);
      if (nb > SelectSharedCapacity()) t.work = c.Take<float>(kv_rows * nb);
    }
    return t;
  }, &r));

  if (split_path) {
    GroupAttnParams<T> p = CommonGroupParams(a, GroupMode::kFull, splits, head_chunks, r.part_ml, r.part_o);
    p.key = a.key_cache;
    p.value = a.value_cache;
    p.capacity = a.cache_capacity;
    p.vector_ok = vector_ok;
    p.key_logits = r.logits;
    p.seqlens = seqlens_k;
    HYSPARSE_CUDA_RETURN_IF(LaunchGroupAttn(p, stream));

    CombineParams<T> c = CommonCombineParams(a, p, 1);
    c.lse = r.lse;
    HYSPARSE_CUDA_RETURN_IF(LaunchCombine(c, stream));
  } else {
    TiledStats stats;
    if (want_stats) {
      stats.block_max = r.block_max;
      stats.lse = r.lse;
    }
    HYSPARSE_CUDA_RETURN_IF(LaunchFullAttnTiled(a, seqlens_k, stats, vector_ok, stream));
  }
  if (!want_stats) return Status::Ok();
  if (split_path) {
    HYSPARSE_CUDA_RETURN_IF(LaunchBlockMax(r.logits, r.block_max, head_rows, a.new_len, a.total_len, a.block_size,
                                           nb, seqlens_k, a.num_heads, stream));
  }

  int32_t* indices = a.block_indices ? a.block_indices : r.indices;
  SelectParams s;
  s.dims() = a.dims();
  s.num_blocks = nb;
  s.top_k = a.top_k;
  s.mask = a.attention_mask;
  s.seqlens = seqlens_k;
  s.block_max = r.block_max;
  s.lse = r.lse;
  s.block_scores = a.block_scores;
  s.block_indices = indices;
  s.work = r.work;
  HYSPARSE_CUDA_RETURN_IF(LaunchSelect(s, stream));

  if (a.selected_key || a.selected_value) {
    GatherParams<T> g;
    g.dims() = a.dims();
    g.capacity = a.cache_capacity;
    g.top_k = a.top_k;
    g.seqlens = seqlens_k;
    g.block_indices = indices;
    g.key_cache = a.key_cache;
    g.value_cache = a.value_cache;
    g.selected_key = a.selected_key;
    g.selected_value = a.selected_value;
    g.vector_ok = a.head_dim % 8 == 0 && RowsAligned(a.key_cache, a.head_dim) &&
                  RowsAligned(a.value_cache, a.head_dim) && RowsAligned(a.selected_key, a.head_dim) &&
                  RowsAligned(a.selected_value, a.head_dim);
    HYSPARSE_CUDA_RETURN_IF(LaunchGather(g, stream));
  }
  return Status::Ok();
}

template <typename T>
Status LaunchSparseAttn(const SparseAttnArgs<T>& a, cudaStream_t stream, ScratchAllocator& scratch,
                        const int32_t* seqlens_k, SparsePath path) {
  using namespace detail;
  if (const std::optional<Status> end = EndBeforeLaunch("HySparseSparseAttn", a, stream)) return *end;

  const bool gate = a.combine == Combine::kGate;
  const int branches = gate ? 2 : 1;
  const int group = a.num_heads / a.kv_num_heads;
  const int64_t selected_slots = static_cast<int64_t>(a.top_k) * a.block_size;
  const int64_t max_slots = gate ? std::max<int64_t>(selected_slots, a.window) : selected_slots + a.window;
  const int64_t head_rows = static_cast<int64_t>(a.batch) * a.num_heads * a.new_len;
  const int64_t kv_rows = static_cast<int64_t>(a.batch) * a.kv_num_heads * a.new_len;
  const int heads_per_cta = GroupHeadsPerCta(a.head_dim, static_cast<int>(sizeof(T)));
  const int head_chunks = static_cast<int>(CeilDiv(group, heads_per_cta));

  // Prefill with a full-length SA source takes the tiled kernel (one load of each selected block per
  // query tile), unless the tile's block_indices entries or its shared memory exceed what it serves.
  const int tile_tokens = kTileRows / group;
  const int64_t tile_entries = static_cast<int64_t>(tile_tokens) * a.top_k;
  int list_capacity = 1;
  while (list_capacity < tile_entries) list_capacity <<= 1;
  bool tiled = path == SparsePath::kAuto && a.new_len > kSplitPathMaxTokens && a.selected_key == nullptr &&
               a.block_indices != nullptr && tile_entries <= kMaxSparseTileList;
  if (tiled) {
    int shared_limit = 0;
    HYSPARSE_CUDA_RETURN_IF(DeviceAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, &shared_limit));
    tiled = SparseTiledSharedBytes(a.head_dim, list_capacity) <= static_cast<size_t>(shared_limit);
  }

  SplitPlan splits;
  if (!tiled) HYSPARSE_CUDA_RETURN_IF(PlanSplits(kv_rows * head_chunks * branches, max_slots, &splits));
  struct Regions {
    float2* part_ml = nullptr;
    float* part_o = nullptr;
  } r;
  // The layouts capture plain numbers: a lambda holding a SplitPlan (internal linkage) would draw
  // -Wsubobject-linkage.
  const int64_t partials = branches * head_rows * splits.num_splits;
  HYSPARSE_CUDA_RETURN_IF(CarveDeviceScratch(scratch, "HySparseSparseAttn", [&](ScratchCarver& c) {
    Regions t;
    t.part_ml = c.Take<float2>(partials);
    t.part_o = c.Take<float>(partials * a.head_dim);
    return t;
  }, &r));

  GroupAttnParams<T> p = CommonGroupParams(a, gate ? GroupMode::kGate : GroupMode::kUnion, splits, head_chunks,
                                           r.part_ml, r.part_o);
  p.window = a.window;
  p.top_k = a.top_k;
  p.key = a.own_key;
  p.value = a.own_value;
  p.capacity = a.own_capacity;
  p.start = a.own_start;
  if (a.selected_key) {
    p.selected_key = a.selected_key;
    p.selected_value = a.selected_value;
  } else {
    p.sa_key = a.sa_key;
    p.sa_value = a.sa_value;
    p.sa_capacity = a.sa_capacity;
  }
  p.block_indices = a.block_indices;
  p.seqlens = seqlens_k;
  p.vector_ok = a.head_dim % 8 == 0 && ViewAligned(a.query, a.query_view) && RowsAligned(a.own_key, a.head_dim) &&
                RowsAligned(a.own_value, a.head_dim) && RowsAligned(p.sa_key, a.head_dim) &&
                RowsAligned(p.sa_value, a.head_dim) && RowsAligned(p.selected_key, a.head_dim) &&
                RowsAligned(p.selected_value, a.head_dim);
  if (tiled) {
    SparseTiledParams<T> t;
    static_cast<GroupAttnParams<T>&>(t) = p;
    t.tile_tokens = tile_tokens;
    t.list_capacity = list_capacity;
    HYSPARSE_CUDA_RETURN_IF(LaunchSparseAttnTiled(t, stream));
  } else {
    HYSPARSE_CUDA_RETURN_IF(LaunchGroupAttn(p, stream));
  }

  CombineParams<T> c = CommonCombineParams(a, p, branches);
  c.gate = gate ? a.gate : nullptr;
  c.gate_per_channel = a.gate_per_channel;
  c.sinks = a.sinks;
  return LaunchCombine(c, stream);
}

#define HYSPARSE_INSTANTIATE_LAUNCHERS(T)                                                                 \
  template Status LaunchFullAttn<T>(const FullAttnArgs<T>&, cudaStream_t, ScratchAllocator&, const int32_t*); \
  template Status LaunchSparseAttn<T>(const SparseAttnArgs<T>&, cudaStream_t, ScratchAllocator&, const int32_t*, SparsePath);
HYSPARSE_INSTANTIATE_LAUNCHERS(float)
HYSPARSE_INSTANTIATE_LAUNCHERS(Half)
HYSPARSE_INSTANTIATE_LAUNCHERS(BFloat16)
#undef HYSPARSE_INSTANTIATE_LAUNCHERS

}  // namespace cuda
}  // namespace hysparse
