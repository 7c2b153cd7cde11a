// GroupQueryAttention's shared KV buffer convention for both HySparse ops (docs/ops.md "Shared KV
// buffer"): past and present are one [B, H_kv, capacity, D] buffer, seqlens_k says how much of each
// row is valid, and only the new tokens are written. Decode then costs no cache copy when ORT (or the
// caller, through IOBinding) hands the op the same memory as past and present.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/attention_args.h"
#include "ops/attention_inputs.h"

namespace hysparse {
namespace ops {

// Per-row lengths of one shared-buffer call, read from seqlens_k and checked.
struct SharedBufferRows {
  int64_t capacity = 0;        // length axis of the buffer
  int64_t new_len = 0;         // S
  std::vector<int64_t> total;  // total_b = seqlens_k[b] + 1, in [1, capacity]

  // First buffer position of row b's new tokens: p_b = max(0, total_b - S).
  int64_t Past(size_t b) const { return std::max<int64_t>(0, total[b] - new_len); }
  // New tokens of row b that are real (the rest are right padding): min(S, total_b) >= 1.
  int64_t Real(size_t b) const { return total[b] - Past(b); }
};

// Checks the types and shapes of seqlens_k (int32 [B]) and total_sequence_length (int32 [] or [1]),
// and that they come together. Reads no tensor data. Returns true when they are given.
bool CheckSharedBufferInputs(const OpContext& op, const TensorInput& seqlens_k, const TensorInput& total_sequence_length,
                             int batch);

// Reads the host-resident seqlens_k / total_sequence_length and checks each row against the capacity of
// `buffer` (the past_key input, named in messages) and total_sequence_length against max(seqlens_k) + 1.
SharedBufferRows ReadSharedBufferRows(const OpContext& op, const TensorInput& seqlens_k,
                                      const TensorInput& total_sequence_length, const TensorInput& buffer,
                                      int64_t new_len);

// The errors of ReadSharedBufferRows, for the CUDA glue, which finds the bad value on the device: row b
// of seqlens_k holds `value` < 0 or beyond the capacity of `buffer`; total_sequence_length differs from
// max(seqlens_k) + 1.
[[noreturn]] void FailSeqlensRow(const OpContext& op, int64_t b, int64_t value, const TensorInput& buffer);
[[noreturn]] void FailTotalSequenceLength(const OpContext& op, int64_t declared, int64_t max_total);

// Makes `present` hold `past` — nothing to do when ORT or the caller aliased them — then writes the real
// new tokens of every row b (read through `new_view`) at buffer positions [p_b, total_b). Padding tokens
// are not written.
template <typename T>
void UpdateSharedBuffer(const T* past, T* present, const T* fresh, const HeadView& new_view, const SharedBufferRows& rows,
                        int batch, int kv_heads, int head_dim);

// Copies `rows` rows of `width` elements for each of `heads` heads between two per-head row layouts
// that differ in row count and row width: how one batch row's [H, S, W] slice of a per-token output is
// filled from (or gathered into) the kernel's compact [H, real, W'] form.
template <typename E>
void CopyHeadRows(const E* src, int64_t src_head_stride, int64_t src_row_stride, E* dst, int64_t dst_head_stride,
                  int64_t dst_row_stride, int64_t heads, int64_t rows, int64_t width);

// The kernel arguments of batch row b alone: batch 1, the row's total length and real new tokens,
// query and output moved to row b. `Args` is FullAttnArgs or SparseAttnArgs (the fields share names);
// the caller moves the caches.
template <typename Args>
Args RowArgs(const Args& all, const SharedBufferRows& rows, int b) {
  Args row = all;
  row.batch = 1;
  row.new_len = rows.Real(b);
  row.total_len = rows.total[b];
  row.query += b * all.query_view.batch_stride;
  row.output += b * all.output_view.batch_stride;
  return row;
}

// Zeroes the output rows of row b's padding tokens (s >= real) in an output seen through `view`.
template <typename T>
void ZeroPaddingOutput(T* output, const HeadView& view, int b, int num_heads, int head_dim, int64_t real,
                       int64_t new_len) {
  for (int h = 0; h < num_heads; ++h) {
    for (int64_t s = real; s < new_len; ++s) {
      T* token = output + view.Offset(b, h, s);
      std::fill(token, token + head_dim, T{});
    }
  }
}

// The in-place declaration both CPU ops give ORT (OrtCustomOp::GetMayInplace): past_key (input 3) may
// become present_key (output 1), past_value (input 4) present_value (output 2). Arrays are new[]-ed
// and freed by ReleasePastPresentInplace.
size_t ORT_API_CALL PastPresentMayInplace(int** input_index, int** output_index);
void ORT_API_CALL ReleasePastPresentInplace(int* input_index, int* output_index);

}  // namespace ops
}  // namespace hysparse
