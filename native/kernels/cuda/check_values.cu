// Device-side value checks of the sparse op's inputs (mask entries, block index rows). The inputs live
// in GPU memory, so checking them on the host would cost a copy of each tensor; here one small kernel
// finds the first problem and only its description crosses to the host.
#include <algorithm>

#include "kernels/cuda/cuda_internal.cuh"

namespace hysparse {
namespace cuda {
namespace {
using detail::CeilDiv;
using detail::Error;

// Problems are ranked by position so the report is deterministic: the lowest (where, slot) wins.
// key = where * 2^20 + slot (top_k < 2^20 is checked by the launcher); mask problems rank first.
// Shared-buffer mode (seqlens non-null): batch row b of block_indices (rows_per_batch rows) holds blocks
// below ceil(total_b / block_size), total_b = seqlens[b] + 1 clamped to [1, capacity]; a bad seqlens
// value itself is reported first, by DescribeProblemKernel.
struct SharedRows {
  const int32_t* seqlens = nullptr;
  int64_t batch = 0, rows_per_batch = 1, capacity = 0, declared_total = 0;
  int block_size = 1;
};

__device__ int64_t RowTotal(const SharedRows& sr, int64_t b) {
  const int64_t total = static_cast<int64_t>(sr.seqlens[b]) + 1;
  return total < 1 ? 1 : (total > sr.capacity ? sr.capacity : total);
}

__device__ int64_t RowBlocks(const SharedRows& sr, int64_t r, int64_t num_blocks) {
  if (!sr.seqlens) return num_blocks;
  return (RowTotal(sr, r / sr.rows_per_batch) + sr.block_size - 1) / sr.block_size;
}

__global__ void CheckValuesKernel(const int32_t* indices, int64_t rows, int top_k, int64_t num_blocks,
                                  const int64_t* mask, int64_t mask_elements, SharedRows sr,
                                  unsigned long long* first_key) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < mask_elements; i += stride) {
    const int64_t m = mask[i];
    if (m != 0 && m != 1) atomicMin(first_key, static_cast<unsigned long long>(i));
  }
  const unsigned long long index_base = static_cast<unsigned long long>(mask_elements);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += stride) {
    const int32_t* row = indices + r * top_k;
    const int64_t row_blocks = RowBlocks(sr, r, num_blocks);
    int64_t previous = -1;
    bool padding = false;
    for (int k = 0; k < top_k; ++k) {
      const int64_t idx = row[k];
      if (idx == -1) {
        padding = true;
        continue;
      }
      if (idx < -1 || idx >= row_blocks || padding || idx <= previous) {
        atomicMin(first_key, index_base + (static_cast<unsigned long long>(r) << 20) + k);
        break;
      }
      previous = idx;
    }
  }
}

// Turns the winning key back into a full description (one thread; the row is re-read).
__global__ void DescribeProblemKernel(const int32_t* indices, int top_k, int64_t num_blocks, const int64_t* mask,
                                      int64_t mask_elements, SharedRows sr, const unsigned long long* first_key,
                                      ValueProblem* problem) {
  const unsigned long long key = *first_key;
  ValueProblem p;
  if (sr.seqlens) {
    // The rows' lengths first, in the CPU glue's order: each row, then total_sequence_length.
    int64_t max_total = 0;
    for (int64_t b = 0; b < sr.batch && p.kind == ValueProblemKind::kNone; ++b) {
      const int64_t value = sr.seqlens[b];
      if (value < 0 || value + 1 > sr.capacity) {
        p.kind = value < 0 ? ValueProblemKind::kSeqlensNegative : ValueProblemKind::kSeqlensPastCapacity;
        p.where = b;
        p.value = value;
      }
      max_total = max(max_total, value + 1);
    }
    if (p.kind == ValueProblemKind::kNone && sr.declared_total != max_total) {
      p.kind = ValueProblemKind::kTotalLengthMismatch;
      p.value = sr.declared_total;
      p.previous = max_total;
    }
    if (p.kind != ValueProblemKind::kNone) {
      *problem = p;
      return;
    }
  }
  if (key != ~0ULL) {
    if (key < static_cast<unsigned long long>(mask_elements)) {
      p.kind = ValueProblemKind::kMaskValue;
      p.where = static_cast<int64_t>(key);
      p.value = mask[key];
    } else {
      const unsigned long long rel = key - static_cast<unsigned long long>(mask_elements);
      p.where = static_cast<int64_t>(rel >> 20);
      p.slot = static_cast<int64_t>(rel & ((1ULL << 20) - 1));
      const int32_t* row = indices + p.where * top_k;
      p.value = row[p.slot];
      bool padding = false;
      int64_t previous = -1;
      for (int k = 0; k < p.slot; ++k) {
        if (row[k] == -1) padding = true; else previous = row[k];
      }
      p.previous = previous;
      const int64_t row_blocks = RowBlocks(sr, p.where, num_blocks);
      p.kind = p.value < -1                ? ValueProblemKind::kIndexBelowMinusOne
               : p.value >= row_blocks      ? ValueProblemKind::kIndexPastLastBlock
               : padding                    ? ValueProblemKind::kIndexAfterPadding
                                            : ValueProblemKind::kIndexNotAscending;
      if (sr.seqlens) p.row_total = RowTotal(sr, p.where / sr.rows_per_batch);
    }
  }
  *problem = p;
}

}  // namespace

namespace {

Status LaunchCheck(const int32_t* block_indices, int64_t rows, int top_k, int64_t num_blocks, const int64_t* mask,
                   int64_t mask_elements, const SharedRows& sr, ValueProblem* problem, cudaStream_t stream) {
  if (stream == nullptr) return Error(cudaErrorInvalidValue, "LaunchCheckSparseValues: null stream");
  if (top_k < 1 || top_k >= (1 << 20)) return Error(cudaErrorInvalidValue, "LaunchCheckSparseValues: top_k out of range");
  if (mask == nullptr) mask_elements = 0;
  // The key scratch lives in the problem struct's first field until DescribeProblemKernel overwrites it.
  auto* first_key = reinterpret_cast<unsigned long long*>(problem);
  cudaError_t err = cudaMemsetAsync(first_key, 0xFF, sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return Error(err, std::string("LaunchCheckSparseValues: memset: ") + cudaGetErrorString(err));
  const int64_t work = std::max(rows, mask_elements);
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>(std::max<int64_t>(CeilDiv(work, threads), 1), 1024));
  CheckValuesKernel<<<blocks, threads, 0, stream>>>(block_indices, rows, top_k, num_blocks, mask, mask_elements, sr,
                                                    first_key);
  err = cudaGetLastError();
  if (err != cudaSuccess) return Error(err, std::string("CheckValuesKernel: ") + cudaGetErrorString(err));
  // One thread reads the key and then overwrites the struct it lives in: copy the key first.
  DescribeProblemKernel<<<1, 1, 0, stream>>>(block_indices, top_k, num_blocks, mask, mask_elements, sr, first_key,
                                             problem);
  err = cudaGetLastError();
  if (err != cudaSuccess) return Error(err, std::string("DescribeProblemKernel: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace

Status LaunchCheckSparseValues(const int32_t* block_indices, int64_t rows, int top_k, int64_t num_blocks,
                               const int64_t* mask, int64_t mask_elements, ValueProblem* problem,
                               cudaStream_t stream) {
  return LaunchCheck(block_indices, rows, top_k, num_blocks, mask, mask_elements, SharedRows{}, problem, stream);
}

Status LaunchCheckSharedBufferValues(const int32_t* seqlens_k, int batch, int64_t capacity,
                                     int64_t total_sequence_length, const int32_t* block_indices,
                                     int64_t rows_per_batch, int top_k, int block_size, ValueProblem* problem,
                                     cudaStream_t stream) {
  if (seqlens_k == nullptr) return Error(cudaErrorInvalidValue, "LaunchCheckSharedBufferValues: seqlens_k is required");
  SharedRows sr;
  sr.seqlens = seqlens_k;
  sr.batch = batch;
  sr.rows_per_batch = std::max<int64_t>(rows_per_batch, 1);
  sr.capacity = capacity;
  sr.declared_total = total_sequence_length;
  sr.block_size = std::max(block_size, 1);
  const int64_t rows = block_indices ? batch * rows_per_batch : 0;
  const int64_t num_blocks = CeilDiv(capacity, static_cast<int64_t>(sr.block_size));
  return LaunchCheck(block_indices, rows, block_indices ? top_k : 1, num_blocks, nullptr, 0, sr, problem, stream);
}

}  // namespace cuda
}  // namespace hysparse
