#include "ops/shared_buffer.h"

#include <cstring>
#include <string>

namespace hysparse {
namespace ops {

bool CheckSharedBufferInputs(const OpContext& op, const TensorInput& seqlens_k, const TensorInput& total_sequence_length,
                             int batch) {
  CheckPair(op, seqlens_k, total_sequence_length);
  if (!seqlens_k.present) return false;
  CheckType(op, seqlens_k, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
  CheckType(op, total_sequence_length, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
  if (seqlens_k.shape != std::vector<int64_t>{batch}) {
    op.Fail("input 'seqlens_k' must be int32 [B] = [" + std::to_string(batch) + "], got " +
            ShapeString(seqlens_k.shape));
  }
  if (total_sequence_length.Elements() != 1 || total_sequence_length.Rank() > 1) {
    op.Fail("input 'total_sequence_length' must be an int32 scalar or [1], got " +
            ShapeString(total_sequence_length.shape));
  }
  return true;
}

SharedBufferRows ReadSharedBufferRows(const OpContext& op, const TensorInput& seqlens_k,
                                      const TensorInput& total_sequence_length, const TensorInput& buffer,
                                      int64_t new_len) {
  SharedBufferRows rows;
  rows.capacity = buffer.Dim(2);
  rows.new_len = new_len;
  const int32_t* lengths = seqlens_k.Data<int32_t>();
  int64_t max_total = 0;
  for (int64_t b = 0; b < seqlens_k.Dim(0); ++b) {
    const int64_t total = static_cast<int64_t>(lengths[b]) + 1;
    if (lengths[b] < 0 || total > rows.capacity) FailSeqlensRow(op, b, lengths[b], buffer);
    rows.total.push_back(total);
    max_total = std::max(max_total, total);
  }
  const int64_t declared = total_sequence_length.Data<int32_t>()[0];
  if (declared != max_total) FailTotalSequenceLength(op, declared, max_total);
  return rows;
}

void FailSeqlensRow(const OpContext& op, int64_t b, int64_t value, const TensorInput& buffer) {
  if (value < 0) {
    op.Fail("input 'seqlens_k' row " + std::to_string(b) + " holds " + std::to_string(value) +
            ": it must be the row's valid total length - 1, so >= 0");
  }
  op.Fail("input 'seqlens_k' row " + std::to_string(b) + " holds " + std::to_string(value) + ": total length " +
          std::to_string(value + 1) + " exceeds the capacity " + std::to_string(buffer.Dim(2)) + " of '" +
          buffer.name + "' " + ShapeString(buffer.shape));
}

void FailTotalSequenceLength(const OpContext& op, int64_t declared, int64_t max_total) {
  op.Fail("input 'total_sequence_length' is " + std::to_string(declared) + ", but max(seqlens_k) + 1 = " +
          std::to_string(max_total));
}

template <typename T>
void UpdateSharedBuffer(const T* past, T* present, const T* fresh, const HeadView& new_view, const SharedBufferRows& rows,
                        int batch, int kv_heads, int head_dim) {
  const int64_t capacity = rows.capacity;
  const size_t row_bytes = sizeof(T) * static_cast<size_t>(head_dim);
  if (present != past) {
    std::memcpy(present, past, row_bytes * static_cast<size_t>(batch) * kv_heads * capacity);
  }
  for (int b = 0; b < batch; ++b) {
    const int64_t first = rows.Past(b), real = rows.Real(b);
    for (int h = 0; h < kv_heads; ++h) {
      T* head = present + (static_cast<int64_t>(b) * kv_heads + h) * capacity * head_dim;
      for (int64_t s = 0; s < real; ++s) {
        std::memcpy(head + (first + s) * head_dim, fresh + new_view.Offset(b, h, s), row_bytes);
      }
    }
  }
}

template <typename E>
void CopyHeadRows(const E* src, int64_t src_head_stride, int64_t src_row_stride, E* dst, int64_t dst_head_stride,
                  int64_t dst_row_stride, int64_t heads, int64_t rows, int64_t width) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dst + h * dst_head_stride + r * dst_row_stride, src + h * src_head_stride + r * src_row_stride,
                  sizeof(E) * static_cast<size_t>(width));
    }
  }
}

size_t ORT_API_CALL PastPresentMayInplace(int** input_index, int** output_index) {
  // Input and output positions are the same for both ops: past_key/past_value are inputs 3/4,
  // present_key/present_value outputs 1/2.
  *input_index = new int[2]{3, 4};
  *output_index = new int[2]{1, 2};
  return 2;
}

void ORT_API_CALL ReleasePastPresentInplace(int* input_index, int* output_index) {
  delete[] input_index;
  delete[] output_index;
}

template void UpdateSharedBuffer<float>(const float*, float*, const float*, const HeadView&, const SharedBufferRows&, int, int, int);
template void UpdateSharedBuffer<Half>(const Half*, Half*, const Half*, const HeadView&, const SharedBufferRows&, int, int, int);
template void CopyHeadRows<float>(const float*, int64_t, int64_t, float*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void CopyHeadRows<Half>(const Half*, int64_t, int64_t, Half*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void CopyHeadRows<int32_t>(const int32_t*, int64_t, int64_t, int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace ops
}  // namespace hysparse
