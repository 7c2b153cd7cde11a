// Block scores, group max and top-K selection for HySparseFullAttn (docs/ops.md "Block scores",
// "Selection"). One CTA per (b, KV head g, token s):
//   1. score[i] = max over the group's heads h of exp2(blockmax_h[i] - lse_h) for blocks holding a
//      valid key of the token (block i <= t/bs with a finite maximum), written to block_scores;
//   2. the K-th largest eligible score found by a 4-pass radix select on the float bits (scores are
//      >= 0, so their bits order like the values);
//   3. one ascending pass that emits every block above that threshold plus, among the blocks equal to
//      it, the lowest indices, so equal scores resolve towards the lower block index; then -1 padding.
#include <algorithm>

#include "kernels/cuda/cuda_internal.cuh"

namespace hysparse {
namespace cuda {
namespace detail {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kSharedScores = 10240;  // 40 KiB of scores, under the default 48 KiB of a CTA

// Exclusive count of `flag` over the CTA in thread order; `total` gets the CTA-wide count. Every
// thread must call it (it synchronises the CTA).
__device__ int BlockExclusiveCount(bool flag, int* warp_counts, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const int c = warp_counts[w];
    if (w < warp) before += c;
    all += c;
  }
  __syncthreads();
  *total = all;
  return before + __popc(ballot & ((1u << lane) - 1u));
}

__global__ void __launch_bounds__(kThreads) SelectKernel(const SelectParams p) {
  extern __shared__ float shared_scores[];
  __shared__ int hist[256];
  __shared__ int warp_counts[kWarps];
  __shared__ int pick[2];
  __shared__ int eligible_count;

  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;  // (b*H_kv + g)*S + s
  const int64_t S = p.new_len, nb = p.num_blocks;
  const int64_t s = row % S;
  const int g = static_cast<int>((row / S) % p.kv_num_heads);
  const int64_t b = row / S / p.kv_num_heads;
  const int group = p.num_heads / p.kv_num_heads;
  const RowSpan span = RowOf(p.seqlens, b, p.total_len, S);
  const int64_t t = span.past + s;
  const bool row_valid = s < span.real && (!p.mask || p.mask[b * p.total_len + t] != 0);
  const int64_t last_block = t / p.block_size;
  // Eligible blocks hold their score (>= 0), the others -1.
  float* work = p.work ? p.work + row * nb : shared_scores;

  if (tid == 0) eligible_count = 0;
  __syncthreads();
  int local_eligible = 0;
  for (int64_t i = tid; i < nb; i += kThreads) {
    float score = 0.f;
    bool eligible = false;
    if (row_valid && i <= last_block) {
      for (int hh = 0; hh < group; ++hh) {
        const int64_t head_row = (b * p.num_heads + g * group + hh) * S + s;
        const float mx = p.block_max[head_row * nb + i];
        if (mx != NegInf()) {
          eligible = true;
          const float lse = p.lse[head_row];
          if (lse != NegInf()) score = fmaxf(score, exp2f(mx - lse));
        }
      }
    }
    if (p.block_scores) p.block_scores[row * nb + i] = score;
    work[i] = eligible ? score : -1.f;
    local_eligible += eligible ? 1 : 0;
  }
  if (!p.block_indices) return;  // uniform: scores only
  if (local_eligible) atomicAdd(&eligible_count, local_eligible);
  __syncthreads();
  const int64_t eligible = eligible_count;
  const int take = static_cast<int>(eligible < p.top_k ? eligible : p.top_k);
  const bool take_all = take == eligible;

  uint32_t threshold = 0;
  int equal_take = 0;
  if (!take_all) {
    uint32_t prefix = 0, prefix_mask = 0;
    int remaining = take;  // how many of the candidates matching `prefix` are still to be taken
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      hist[tid] = 0;
      __syncthreads();
      // Scores share few leading bytes, so lanes with the same digit add once, through their leader.
      for (int64_t base = 0; base < nb; base += kThreads) {
        const int64_t i = base + tid;
        const float v = i < nb ? work[i] : -1.f;
        const uint32_t bits = __float_as_uint(v);
        const bool candidate = v >= 0.f && (bits & prefix_mask) == prefix;
        const int digit = candidate ? static_cast<int>((bits >> shift) & 255u) : 256 + (tid & 31);
        const unsigned peers = __match_any_sync(0xffffffffu, digit);
        if (candidate && (tid & 31) == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
      }
      __syncthreads();
      if (tid < 32) {
        // Lane l owns digits 255-8l down to 248-8l: scan from the largest digit down.
        const int lane = tid;
        int count = 0;
#pragma unroll
        for (int k = 0; k < 8; ++k) count += hist[255 - 8 * lane - k];
        int inclusive = count;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
          const int n = __shfl_up_sync(0xffffffffu, inclusive, off);
          if (lane >= off) inclusive += n;
        }
        const unsigned hit = __ballot_sync(0xffffffffu, inclusive >= remaining);
        if (lane == __ffs(hit) - 1) {
          int run = inclusive - count;
          for (int k = 0; k < 8; ++k) {
            const int digit = 255 - 8 * lane - k;
            if (run + hist[digit] >= remaining) {
              pick[0] = digit;
              pick[1] = remaining - run;
              break;
            }
            run += hist[digit];
          }
        }
      }
      __syncthreads();
      prefix |= static_cast<uint32_t>(pick[0]) << shift;
      prefix_mask |= 0xFFu << shift;
      remaining = pick[1];
      __syncthreads();
    }
    threshold = prefix;
    equal_take = remaining;
  }

  int32_t* out = p.block_indices + row * p.top_k;
  int written = 0, equal_seen = 0;
  for (int64_t base = 0; base < nb; base += kThreads) {
    const int64_t i = base + tid;
    const float v = i < nb ? work[i] : -1.f;
    const bool eligible_here = v >= 0.f;
    bool selected;
    if (take_all) {
      selected = eligible_here;
    } else {
      const uint32_t bits = __float_as_uint(v);
      const bool above = eligible_here && bits > threshold;
      const bool equal = eligible_here && bits == threshold;
      int equal_total;
      const int equal_rank = equal_seen + BlockExclusiveCount(equal, warp_counts, &equal_total);
      equal_seen += equal_total;
      selected = above || (equal && equal_rank < equal_take);
    }
    int selected_total;
    const int rank = written + BlockExclusiveCount(selected, warp_counts, &selected_total);
    if (selected) out[rank] = static_cast<int32_t>(i);
    written += selected_total;
  }
  for (int k = take + tid; k < p.top_k; k += kThreads) out[k] = -1;
}

// One warp per (head row, key block): the largest key logit of the block up to the token's position.
__global__ void __launch_bounds__(kThreads) BlockMaxKernel(const float* __restrict__ logits, float* __restrict__ block_max,
                                                           int64_t items, int64_t new_len, int64_t total_len,
                                                           int block_size, int64_t num_blocks,
                                                           const int32_t* __restrict__ seqlens, int num_heads) {
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // head_row*nb + block
  if (item >= items) return;  // whole warps leave together
  const int64_t head_row = item / num_blocks, block = item % num_blocks;
  const int64_t s = head_row % new_len;
  const RowSpan span = RowOf(seqlens, head_row / new_len / num_heads, total_len, new_len);
  const int64_t t = span.past + s;
  // A padding token's logits were never written: its blocks hold no key.
  const int64_t end = s < span.real ? min((block + 1) * block_size, t + 1) : 0;
  const float* row = logits + head_row * total_len;
  float mx = NegInf();
  for (int64_t j = block * block_size + lane; j < end; j += 32) mx = fmaxf(mx, row[j]);
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if (lane == 0) block_max[item] = mx;
}

}  // namespace

Status LaunchBlockMax(const float* key_logits, float* block_max, int64_t head_rows, int64_t new_len,
                      int64_t total_len, int block_size, int64_t num_blocks, const int32_t* seqlens,
                      int num_heads, cudaStream_t stream) {
  const int64_t items = head_rows * num_blocks;
  BlockMaxKernel<<<static_cast<unsigned>(CeilDiv(items, kWarps)), kThreads, 0, stream>>>(
      key_logits, block_max, items, new_len, total_len, block_size, num_blocks, seqlens, num_heads);
  HYSPARSE_CUDA_CHECK_LAUNCH("HySparseFullAttn block maximum kernel");
  return Status::Ok();
}

int64_t SelectSharedCapacity() { return kSharedScores; }

}  // namespace detail

namespace detail {

Status LaunchSelect(const SelectParams& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.kv_num_heads * p.new_len;
  const size_t shared = p.work ? 0 : static_cast<size_t>(p.num_blocks) * sizeof(float);
  SelectKernel<<<static_cast<unsigned>(rows), kThreads, shared, stream>>>(p);
  HYSPARSE_CUDA_CHECK_LAUNCH("HySparseFullAttn block selection kernel");
  return Status::Ok();
}

}  // namespace detail
}  // namespace cuda
}  // namespace hysparse
