// Row copies: the gather of selected KV blocks (HySparseFullAttn outputs 5-6) and the cache builder
// the ORT glue uses for present_key/value.
#include "kernels/cuda/cuda_internal.cuh"

namespace hysparse {
namespace cuda {
namespace detail {
namespace {

constexpr int kThreads = 128;

// One CTA per (b, g, s, k): copies the bs rows of block block_indices[b,g,s,k] (zero rows for a -1
// slot or rows past the end of the cache). The bs*D elements of a block are contiguous in both the
// cache and the output, so the copy runs over one flat range.
template <typename T>
__global__ void __launch_bounds__(kThreads) GatherKernel(const GatherParams<T> p) {
  const int64_t slot = blockIdx.x;  // ((b*H_kv + g)*S + s)*K + k
  const int64_t token_row = slot / p.top_k;
  const int64_t plane = token_row / p.new_len;
  const int64_t row_total = RowOf(p.seqlens, plane / p.kv_num_heads, p.total_len, p.new_len).total;
  const int32_t block = p.block_indices[slot];
  const int64_t D = p.head_dim;
  const int64_t block_elems = static_cast<int64_t>(p.block_size) * D;
  // Rows [0, valid_rows) of the block exist in the cache.
  int64_t valid_rows = 0;
  if (block >= 0) {
    valid_rows = row_total - static_cast<int64_t>(block) * p.block_size;
    valid_rows = valid_rows < 0 ? 0 : (valid_rows > p.block_size ? p.block_size : valid_rows);
  }
  const int64_t valid_elems = valid_rows * D;
  const int64_t src_offset = (plane * p.capacity + static_cast<int64_t>(block < 0 ? 0 : block) * p.block_size) * D;
  const int64_t dst_offset = slot * block_elems;
  for (int which = 0; which < 2; ++which) {
    const T* src = (which == 0 ? p.key_cache : p.value_cache) + src_offset;
    T* dst_base = which == 0 ? p.selected_key : p.selected_value;
    if (!dst_base) continue;
    T* dst = dst_base + dst_offset;
    if (p.vector_ok) {  // D % 8 == 0, so an 8-element chunk never straddles the valid/zero boundary
      for (int64_t e = static_cast<int64_t>(threadIdx.x) * 8; e < block_elems; e += kThreads * 8) {
        if (e < valid_elems) {
          Copy8(src + e, dst + e, 8, true);
        } else {
          Zero8(dst + e, 8, true);
        }
      }
    } else {
      for (int64_t e = threadIdx.x; e < block_elems; e += kThreads) dst[e] = e < valid_elems ? src[e] : T{};
    }
  }
}

// Token s of (b, h) goes to cache row start + s; with seqlens (shared-buffer mode) to row p_b + s, and
// only for the row's real tokens.
template <typename T>
__global__ void __launch_bounds__(kThreads) CopyToCacheKernel(const T* src, HeadView view, int heads, int64_t len,
                                                              int head_dim, T* dst, int64_t capacity, int64_t start,
                                                              int64_t total_chunks, bool vector_ok,
                                                              const int32_t* seqlens) {
  const int chunks_per_row = (head_dim + 7) / 8;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; c < total_chunks;
       c += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int d = static_cast<int>(c % chunks_per_row) * 8;
    int64_t rest = c / chunks_per_row;
    const int64_t s = rest % len;
    rest /= len;
    const int64_t h = rest % heads;
    const int64_t b = rest / heads;
    int64_t row = start + s;
    if (seqlens) {
      const RowSpan span = RowOf(seqlens, b, capacity, len);
      if (s >= span.real) continue;
      row = span.past + s;
    }
    Copy8(src + ViewOffset(view, b, h, s) + d, dst + ((b * heads + h) * capacity + row) * head_dim + d,
          head_dim - d, vector_ok);
  }
}

}  // namespace

template <typename T>
Status LaunchGather(const GatherParams<T>& p, cudaStream_t stream) {
  const int64_t slots = static_cast<int64_t>(p.batch) * p.kv_num_heads * p.new_len * p.top_k;
  GatherKernel<T><<<static_cast<unsigned>(slots), kThreads, 0, stream>>>(p);
  HYSPARSE_CUDA_CHECK_LAUNCH("HySparseFullAttn selected-KV gather kernel");
  return Status::Ok();
}

template Status LaunchGather<float>(const GatherParams<float>&, cudaStream_t);
template Status LaunchGather<Half>(const GatherParams<Half>&, cudaStream_t);
template Status LaunchGather<BFloat16>(const GatherParams<BFloat16>&, cudaStream_t);

}  // namespace detail

namespace {

template <typename T>
Status LaunchCopy(const T* src, HeadView src_view, int batch, int heads, int64_t len, int head_dim, T* dst,
                  int64_t dst_capacity, int64_t dst_start, const int32_t* seqlens, cudaStream_t stream) {
  using namespace detail;
  if (stream == nullptr) return Error(cudaErrorInvalidValue, "LaunchCopyToCache: refusing the legacy default stream");
  if (len <= 0 || batch <= 0 || heads <= 0) return Status::Ok();
  const bool vector_ok = head_dim % 8 == 0 && Aligned16(src) && Aligned16(dst) &&
                         StrideAligned16<T>(src_view.batch_stride) && StrideAligned16<T>(src_view.head_stride) &&
                         StrideAligned16<T>(src_view.token_stride) && StrideAligned16<T>(head_dim);
  const int64_t chunks = static_cast<int64_t>(batch) * heads * len * ((head_dim + 7) / 8);
  const int64_t blocks = std::min<int64_t>(CeilDiv(chunks, kThreads), 65536);
  CopyToCacheKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      src, src_view, heads, len, head_dim, dst, dst_capacity, dst_start, chunks, vector_ok, seqlens);
  HYSPARSE_CUDA_CHECK_LAUNCH("HySparse cache copy kernel");
  return Status::Ok();
}

}  // namespace

template <typename T>
Status LaunchCopyToCache(const T* src, HeadView src_view, int batch, int heads, int64_t len, int head_dim, T* dst,
                         int64_t dst_capacity, int64_t dst_start, cudaStream_t stream) {
  return LaunchCopy(src, src_view, batch, heads, len, head_dim, dst, dst_capacity, dst_start, nullptr, stream);
}

template <typename T>
Status LaunchWriteNewTokens(const T* src, HeadView src_view, int batch, int heads, int64_t new_len, int head_dim,
                            T* buffer, int64_t capacity, const int32_t* seqlens_k, cudaStream_t stream) {
  if (seqlens_k == nullptr) {
    return detail::Error(cudaErrorInvalidValue, "LaunchWriteNewTokens: seqlens_k is required");
  }
  return LaunchCopy(src, src_view, batch, heads, new_len, head_dim, buffer, capacity, 0, seqlens_k, stream);
}

template Status LaunchCopyToCache<float>(const float*, HeadView, int, int, int64_t, int, float*, int64_t, int64_t,
                                         cudaStream_t);
template Status LaunchCopyToCache<Half>(const Half*, HeadView, int, int, int64_t, int, Half*, int64_t, int64_t,
                                        cudaStream_t);
template Status LaunchCopyToCache<BFloat16>(const BFloat16*, HeadView, int, int, int64_t, int, BFloat16*, int64_t,
                                            int64_t, cudaStream_t);

template Status LaunchWriteNewTokens<float>(const float*, HeadView, int, int, int64_t, int, float*, int64_t,
                                            const int32_t*, cudaStream_t);
template Status LaunchWriteNewTokens<Half>(const Half*, HeadView, int, int, int64_t, int, Half*, int64_t, const int32_t*,
                                           cudaStream_t);
template Status LaunchWriteNewTokens<BFloat16>(const BFloat16*, HeadView, int, int, int64_t, int, BFloat16*, int64_t,
                                               const int32_t*, cudaStream_t);

}  // namespace cuda
}  // namespace hysparse
