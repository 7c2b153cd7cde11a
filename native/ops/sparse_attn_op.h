// ONNX Runtime glue of HySparseSparseAttn (docs/ops.md): schema, checks (including every block
// index, so the kernel never reads out of bounds), the own-cache update, then the kernel.
#pragma once

#include "kernels/attention_args.h"
#include "ops/attention_inputs.h"
#include "ops/element_types.h"

namespace hysparse {
namespace ops {

constexpr const char* kSparseAttnName = "HySparseSparseAttn";

template <typename T>
class SparseAttnKernel {
 public:
  SparseAttnKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context) const;

 private:
  void Compute(Ort::KernelContext& ctx) const;

  OpContext op_;
  HeadAttributes heads_;
  int window_ = 128;
  Combine combine_ = Combine::kUnion;
  bool window_cache_ = false;
};

template <typename T>
struct SparseAttnOp : Ort::CustomOpBase<SparseAttnOp<T>, SparseAttnKernel<T>, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return kSparseAttnName; }
  size_t GetInputTypeCount() const { return 13; }
  ONNXTensorElementDataType GetInputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const;
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ElementType<T>::kOnnx; }
};

// Checks that every [.., K] row of `indices` is strictly ascending blocks in [0, num_blocks) followed
// only by -1. Throws OpError naming the first bad row.
void CheckBlockIndices(const OpContext& op, const int32_t* indices, int batch, int kv_heads, int64_t new_len,
                       int64_t top_k, int64_t num_blocks, int64_t total_len, int block_size);

}  // namespace ops
}  // namespace hysparse
