// Split-K attention for one token and all query heads of one KV group: the decode path of
// HySparseFullAttn and every path of HySparseSparseAttn.
//
// A CTA (4 warps) owns a (b, KV head g, token s, head chunk) row and one split of that token's key
// slots. Each warp holds 4 lane groups of 8 lanes; a lane group takes one key slot at a time, its 8
// lanes each load D/8 contiguous elements of K (one 16-byte load per 8 elements), reduce the dot
// products for every head of the chunk with three shuffles, and fold the key into a private online
// softmax (max, sum, output slice per head). So each key row is read once for all heads of the group
// and the loads of a warp cover four whole rows. The 16 lane-group states are merged in shared
// memory into one partial per (head, split); LaunchCombine merges the splits.
//
// Key slots of a token (t = T - S + s its position; in shared-buffer mode t = p_b + s, RowOf):
//   kFull:            slot j = position j, j in [0, t].
//   kUnion:           slots [0, K*bs) = selected positions outside the window (SA source), then
//                     [K*bs, K*bs + w) = window positions t, t-1, ... (own cache).
//   kGate, branch 0:  slots [0, K*bs) = every selected position (SA source).
//   kGate, branch 1:  slots [0, w) = window positions (own cache).
// Slots that hold no valid key (masked, causal, -1 index, outside the own cache) are skipped without
// reading K or V.
#include "kernels/cuda/cuda_internal.cuh"

namespace hysparse {
namespace cuda {
namespace detail {
namespace {

constexpr int kThreads = 128;
constexpr int kLaneGroups = kThreads / 8;

template <typename T>
struct RowContext {
  int b, g;
  int64_t s, t;
  const int64_t* mask;       // row b of the mask, or null
  const T* key;              // (b, g) plane of the full/own cache
  const T* value;
  const T* sa_key;           // (b, g) plane of the SA cache, or null
  const T* sa_value;
  const T* selected_key;     // rows of token (b, g, s) in selected_*, or null
  const T* selected_value;
  const int32_t* indices;    // block_indices row of (b, g, s), or null
};

// Finds the key/value rows of a slot; returns false when the slot holds no valid key.
template <typename T>
__device__ __forceinline__ bool ResolveSlot(const GroupAttnParams<T>& p, const RowContext<T>& row, int branch,
                                            int64_t slot, const T*& k, const T*& v) {
  const int64_t D = p.head_dim;
  const int64_t selected_slots = static_cast<int64_t>(p.top_k) * p.block_size;
  bool window_part;
  int64_t i = slot;
  int64_t pos;
  if (p.mode == GroupMode::kFull) {
    pos = slot;
    if (row.mask && row.mask[pos] == 0) return false;
    k = row.key + pos * D;
    v = row.value + pos * D;
    return true;
  } else if (p.mode == GroupMode::kUnion) {
    window_part = slot >= selected_slots;
    if (window_part) i = slot - selected_slots;
  } else {
    window_part = branch == 1;
  }
  if (window_part) {
    pos = row.t - i;
    if (pos < 0 || pos < p.start) return false;
    if (row.mask && row.mask[pos] == 0) return false;
    k = row.key + (pos - p.start) * D;
    v = row.value + (pos - p.start) * D;
    return true;
  }
  const int32_t block = row.indices[i / p.block_size];
  if (block < 0) return false;
  pos = static_cast<int64_t>(block) * p.block_size + i % p.block_size;
  if (pos > row.t || pos >= p.total_len) return false;
  // Union: positions the window covers (from t - w + 1, or the own cache's first one) count once, there.
  if (p.mode == GroupMode::kUnion && pos >= max(row.t - p.window + 1, p.start)) return false;
  if (row.mask && row.mask[pos] == 0) return false;
  if (row.selected_key) {
    k = row.selected_key + i * D;
    v = row.selected_value + i * D;
  } else {
    k = row.sa_key + pos * D;
    v = row.sa_value + pos * D;
  }
  return true;
}

template <typename T, int kE>
__device__ __forceinline__ void LoadSlice(const T* row, int d0, int head_dim, bool vector_ok, float (&out)[kE]) {
#pragma unroll
  for (int c = 0; c < kE / 8; ++c) {
    float chunk[8];
    const int d = d0 + 8 * c;
    if (d < head_dim) {
      Load8(row + d, head_dim - d, vector_ok, chunk);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) chunk[i] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) out[8 * c + i] = chunk[i];
  }
}

// A lane's kE elements of one K or V row, kept in the storage type until used: half the registers
// of floats for 16-bit types, so the next key's rows can be in flight while this one is computed.
template <typename T, int kE>
struct RawSlice {
  static constexpr int kWords = kE * static_cast<int>(sizeof(T)) / 16;
  union {
    uint4 words[kWords];
    T elems[kE];
  };
};

template <typename T, int kE>
__device__ __forceinline__ void LoadRaw(const T* row, int d0, int head_dim, bool vector_ok, RawSlice<T, kE>& out) {
  if (vector_ok && d0 + kE <= head_dim) {
    const uint4* src = reinterpret_cast<const uint4*>(row + d0);
#pragma unroll
    for (int w = 0; w < RawSlice<T, kE>::kWords; ++w) out.words[w] = src[w];
  } else {
#pragma unroll
    for (int e = 0; e < kE; ++e) out.elems[e] = d0 + e < head_dim ? row[d0 + e] : T{};
  }
}

template <typename T, int kE>
__device__ __forceinline__ void ZeroRaw(RawSlice<T, kE>& out) {
#pragma unroll
  for (int w = 0; w < RawSlice<T, kE>::kWords; ++w) out.words[w] = make_uint4(0, 0, 0, 0);
}

// Requests the key and value rows of `slot`, or zeros when the slot is at or past `end` or holds no
// key; returns whether it holds one.
template <typename T, int kE>
__device__ __forceinline__ bool LoadSlot(const GroupAttnParams<T>& p, const RowContext<T>& row, int branch,
                                         int64_t slot, int64_t end, int d0, RawSlice<T, kE>& k, RawSlice<T, kE>& v) {
  const T* kp = nullptr;
  const T* vp = nullptr;
  const bool valid = slot < end && ResolveSlot(p, row, branch, slot, kp, vp);
  if (valid) {
    LoadRaw<T, kE>(kp, d0, p.head_dim, p.vector_ok, k);
    LoadRaw<T, kE>(vp, d0, p.head_dim, p.vector_ok, v);
  } else {
    ZeroRaw(k);
    ZeroRaw(v);
  }
  return valid;
}

// kE: elements per lane (head-size capacity 8*kE); kHeads: query heads per CTA.
template <typename T, int kE, int kHeads>
__global__ void __launch_bounds__(kThreads) GroupAttnKernel(const GroupAttnParams<T> p) {
  constexpr int kD = 8 * kE;
  __shared__ float sm_o[kLaneGroups][kHeads * kD];
  __shared__ float sm_m[kLaneGroups][kHeads];
  __shared__ float sm_l[kLaneGroups][kHeads];

  const int tid = threadIdx.x;
  const int lane_group = tid / 8;
  const int l8 = tid % 8;
  const int d0 = l8 * kE;
  const int branch = blockIdx.z;
  const int split = blockIdx.y;

  int64_t x = blockIdx.x;
  const int chunk = static_cast<int>(x % p.head_chunks);
  x /= p.head_chunks;
  RowContext<T> row;
  row.s = x % p.new_len;
  x /= p.new_len;
  row.g = static_cast<int>(x % p.kv_num_heads);
  row.b = static_cast<int>(x / p.kv_num_heads);
  const RowSpan span = RowOf(p.seqlens, row.b, p.total_len, p.new_len);
  row.t = span.past + row.s;
  row.mask = p.mask ? p.mask + static_cast<int64_t>(row.b) * p.total_len : nullptr;
  const int64_t plane = static_cast<int64_t>(row.b) * p.kv_num_heads + row.g;
  row.key = p.key + plane * p.capacity * p.head_dim;
  row.value = p.value + plane * p.capacity * p.head_dim;
  row.sa_key = p.sa_key ? p.sa_key + plane * p.sa_capacity * p.head_dim : nullptr;
  row.sa_value = p.sa_value ? p.sa_value + plane * p.sa_capacity * p.head_dim : nullptr;
  const int64_t token_row = plane * p.new_len + row.s;  // (b, g, s)
  const int64_t selected_slots = static_cast<int64_t>(p.top_k) * p.block_size;
  row.selected_key = p.selected_key ? p.selected_key + token_row * selected_slots * p.head_dim : nullptr;
  row.selected_value = p.selected_value ? p.selected_value + token_row * selected_slots * p.head_dim : nullptr;
  row.indices = p.block_indices ? p.block_indices + token_row * p.top_k : nullptr;

  const int h0 = row.g * p.group + chunk * kHeads;
  const int heads = min(kHeads, p.group - chunk * kHeads);
  // A masked query position or a padding token (shared-buffer mode) has no keys: output 0.
  const bool row_valid = row.s < span.real && (!row.mask || row.mask[row.t] != 0);

  int64_t slots = 0;
  if (row_valid) {
    switch (p.mode) {
      case GroupMode::kFull: slots = row.t + 1; break;
      case GroupMode::kUnion: slots = selected_slots + p.window; break;
      case GroupMode::kGate: slots = branch == 0 ? selected_slots : p.window; break;
    }
  }
  const int64_t begin = static_cast<int64_t>(split) * p.split_len;
  const int64_t end = min(slots, begin + p.split_len);

  float q[kHeads][kE];
#pragma unroll
  for (int hh = 0; hh < kHeads; ++hh) {
    if (hh < heads) {
      LoadSlice<T, kE>(p.query + ViewOffset(p.query_view, row.b, h0 + hh, row.s), d0, p.head_dim, p.vector_ok, q[hh]);
#pragma unroll
      for (int e = 0; e < kE; ++e) q[hh][e] *= p.scale_log2;
    } else {
#pragma unroll
      for (int e = 0; e < kE; ++e) q[hh][e] = 0.f;
    }
  }

  float m[kHeads], l[kHeads], o[kHeads][kE];
#pragma unroll
  for (int hh = 0; hh < kHeads; ++hh) {
    m[hh] = NegInf();
    l[hh] = 0.f;
#pragma unroll
    for (int e = 0; e < kE; ++e) o[hh][e] = 0.f;
  }

  // Every lane runs the same number of iterations so the shuffles below see all 32 lanes. The rows
  // of the group's next slot are requested before the current slot's arithmetic (one slot ahead).
  RawSlice<T, kE> k_raw, v_raw;
  bool valid = LoadSlot(p, row, branch, begin + lane_group, end, d0, k_raw, v_raw);
  for (int64_t base = begin; base < end; base += kLaneGroups) {
    const int64_t slot = base + lane_group;
    RawSlice<T, kE> next_k, next_v;
    const bool next_valid = LoadSlot(p, row, branch, slot + kLaneGroups, end, d0, next_k, next_v);

    float logit[kHeads];
#pragma unroll
    for (int hh = 0; hh < kHeads; ++hh) {
      float dot = 0.f;
#pragma unroll
      for (int e = 0; e < kE; ++e) dot = fmaf(q[hh][e], ToFloat(k_raw.elems[e]), dot);
      dot += __shfl_xor_sync(0xffffffffu, dot, 4);
      dot += __shfl_xor_sync(0xffffffffu, dot, 2);
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      logit[hh] = dot;
    }
    if (p.key_logits && l8 == 0 && slot < end) {  // kFull: slot = position
#pragma unroll
      for (int hh = 0; hh < kHeads; ++hh) {
        if (hh < heads) {
          const int64_t head_row = (static_cast<int64_t>(row.b) * p.num_heads + h0 + hh) * p.new_len + row.s;
          p.key_logits[head_row * p.total_len + slot] = valid ? logit[hh] : NegInf();
        }
      }
    }
    if (valid) {
#pragma unroll
      for (int hh = 0; hh < kHeads; ++hh) {
        if (hh < heads) {
          const float m_new = fmaxf(m[hh], logit[hh]);
          const float alpha = exp2f(m[hh] - m_new);
          const float weight = exp2f(logit[hh] - m_new);
          l[hh] = l[hh] * alpha + weight;
#pragma unroll
          for (int e = 0; e < kE; ++e) o[hh][e] = fmaf(o[hh][e], alpha, weight * ToFloat(v_raw.elems[e]));
          m[hh] = m_new;
        }
      }
    }
    k_raw = next_k;
    v_raw = next_v;
    valid = next_valid;
  }

  // Merge the lane groups (all 8 lanes of a group hold identical m and l).
#pragma unroll
  for (int hh = 0; hh < kHeads; ++hh) {
#pragma unroll
    for (int e = 0; e < kE; ++e) sm_o[lane_group][hh * kD + d0 + e] = o[hh][e];
    if (l8 == 0) {
      sm_m[lane_group][hh] = m[hh];
      sm_l[lane_group][hh] = l[hh];
    }
  }
  __syncthreads();
  const int64_t rows_per_branch = static_cast<int64_t>(p.batch) * p.num_heads * p.new_len;
  for (int item = tid; item < kHeads * kD; item += kThreads) {
    const int hh = item / kD, d = item % kD;
    if (hh >= heads || d >= p.head_dim) continue;
    float mx = NegInf();
    for (int gi = 0; gi < kLaneGroups; ++gi) mx = fmaxf(mx, sm_m[gi][hh]);
    float acc = 0.f, sum = 0.f;
    if (mx != NegInf()) {
      for (int gi = 0; gi < kLaneGroups; ++gi) {
        const float w = exp2f(sm_m[gi][hh] - mx);  // a group that saw no key has m = -inf: weight 0
        acc = fmaf(w, sm_o[gi][item], acc);
        sum = fmaf(w, sm_l[gi][hh], sum);
      }
    }
    const int64_t head_row = (static_cast<int64_t>(row.b) * p.num_heads + h0 + hh) * p.new_len + row.s;
    const int64_t part = (branch * rows_per_branch + head_row) * p.num_splits + split;
    p.part_o[part * p.head_dim + d] = acc;
    if (d == 0) p.part_ml[part] = make_float2(mx, sum);
  }
}

template <typename T>
__device__ __forceinline__ float GateLogit(const CombineParams<T>& p, int64_t b, int64_t s, int h, int d, int branch) {
  if (!p.gate) return 0.f;
  const int64_t H = p.num_heads;
  if (p.gate_per_channel) {
    return ToFloat(p.gate[((b * p.new_len + s) * 2 + branch) * H * p.head_dim + h * p.head_dim + d]);
  }
  return ToFloat(p.gate[((b * p.new_len + s) * 2 + branch) * H + h]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) CombineKernel(const CombineParams<T> p) {
  const int64_t head_row = blockIdx.x;  // (b*H_q + h)*S + s
  const int64_t s = head_row % p.new_len;
  const int h = static_cast<int>((head_row / p.new_len) % p.num_heads);
  const int64_t b = head_row / p.new_len / p.num_heads;
  const int64_t rows_per_branch = static_cast<int64_t>(p.batch) * p.num_heads * p.new_len;

  // Per branch: the splits' common max, and the factor turning the merged numerator into the
  // branch output (1/sum, or with a sink exp2(mx - m')/(sum*exp2(mx - m') + exp2(sink - m'))).
  float branch_max[2] = {NegInf(), NegInf()};
  float factor[2] = {0.f, 0.f};
  for (int br = 0; br < p.branches; ++br) {
    const float2* ml = p.part_ml + (br * rows_per_branch + head_row) * p.num_splits;
    float mx = NegInf();
    for (int i = 0; i < p.num_splits; ++i) mx = fmaxf(mx, ml[i].x);
    float sum = 0.f;
    if (mx != NegInf()) {
      for (int i = 0; i < p.num_splits; ++i) sum += ml[i].y * exp2f(ml[i].x - mx);
    }
    branch_max[br] = mx;
    if (sum > 0.f) {
      if (p.sinks) {
        const float sink = ToFloat(p.sinks[br * p.num_heads + h]) * kLog2e;
        const float top = fmaxf(mx, sink);
        const float c = exp2f(mx - top);
        factor[br] = c / (sum * c + exp2f(sink - top));
      } else {
        factor[br] = 1.f / sum;
      }
    }
    if (p.lse && threadIdx.x == 0) p.lse[head_row] = sum > 0.f ? mx + log2f(sum) : NegInf();
  }

  T* out = p.output + ViewOffset(p.output_view, b, h, s);
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float branch_out[2] = {0.f, 0.f};
    for (int br = 0; br < p.branches; ++br) {
      if (factor[br] == 0.f) continue;  // no valid key in this branch: it contributes 0
      const int64_t first = (br * rows_per_branch + head_row) * p.num_splits;
      float acc = 0.f;
      for (int i = 0; i < p.num_splits; ++i) {
        const float2 ml = p.part_ml[first + i];
        if (ml.x == NegInf()) continue;
        acc = fmaf(exp2f(ml.x - branch_max[br]), p.part_o[(first + i) * p.head_dim + d], acc);
      }
      branch_out[br] = acc * factor[br];
    }
    float value;
    if (p.branches == 2) {
      const float g_sa = 1.f / (1.f + expf(-GateLogit(p, b, s, h, d, 0)));
      const float g_swa = 1.f / (1.f + expf(-GateLogit(p, b, s, h, d, 1)));
      value = g_sa * branch_out[0] + g_swa * branch_out[1];
    } else {
      value = branch_out[0];
    }
    out[d] = FromFloat<T>(value);
  }
}

template <typename T, int kE, int kHeads>
Status LaunchGroup(const GroupAttnParams<T>& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.kv_num_heads * p.new_len * p.head_chunks;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(p.num_splits),
                  p.mode == GroupMode::kGate ? 2u : 1u);
  GroupAttnKernel<T, kE, kHeads><<<grid, kThreads, 0, stream>>>(p);
  HYSPARSE_CUDA_CHECK_LAUNCH("HySparse split-K attention kernel");
  return Status::Ok();
}

}  // namespace

// The split-K kernel's tile for a head size, chosen in one place for the launcher and for the split
// planning (GroupHeadsPerCta): kE elements of D per lane (8 lanes cover D <= 8*kE) and kHeads query
// heads per CTA. q and the output slices take 2*kE*kHeads registers, the K/V slices of two slots
// 4*kE*sizeof(T)/4: kept under the 255-register limit without spills.
template <int kElementsPerLane, int kHeadsPerCta>
struct GroupTile {
  static constexpr int kE = kElementsPerLane;
  static constexpr int kHeads = kHeadsPerCta;
};

// Calls f with the GroupTile for head_dim (at most 256) and storage type T; returns what f returns.
template <typename T, typename F>
auto WithGroupTile(int head_dim, F&& f) {
  if (head_dim <= 64) return f(GroupTile<8, 8>{});
  if (head_dim <= 128) return f(GroupTile<16, 4>{});
  return f(GroupTile<32, sizeof(T) == 4 ? 1 : 2>{});
}

int GroupHeadsPerCta(int head_dim, int element_bytes) {
  const auto heads = [](auto tile) { return decltype(tile)::kHeads; };
  return element_bytes == 4 ? WithGroupTile<float>(head_dim, heads) : WithGroupTile<Half>(head_dim, heads);
}

template <typename T>
Status LaunchGroupAttn(const GroupAttnParams<T>& p, cudaStream_t stream) {
  return WithGroupTile<T>(p.head_dim, [&](auto tile) {
    using Tile = decltype(tile);
    return LaunchGroup<T, Tile::kE, Tile::kHeads>(p, stream);
  });
}

template <typename T>
Status LaunchCombine(const CombineParams<T>& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.num_heads * p.new_len;
  CombineKernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(p);
  HYSPARSE_CUDA_CHECK_LAUNCH("HySparse split-K combine kernel");
  return Status::Ok();
}

template Status LaunchGroupAttn<float>(const GroupAttnParams<float>&, cudaStream_t);
template Status LaunchGroupAttn<Half>(const GroupAttnParams<Half>&, cudaStream_t);
template Status LaunchGroupAttn<BFloat16>(const GroupAttnParams<BFloat16>&, cudaStream_t);
template Status LaunchCombine<float>(const CombineParams<float>&, cudaStream_t);
template Status LaunchCombine<Half>(const CombineParams<Half>&, cudaStream_t);
template Status LaunchCombine<BFloat16>(const CombineParams<BFloat16>&, cudaStream_t);

}  // namespace detail
}  // namespace cuda
}  // namespace hysparse
