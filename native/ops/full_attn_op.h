// ONNX Runtime glue of HySparseFullAttn (docs/ops.md): schema, attribute and input checks, output
// allocation, the past ++ new cache copy, then the kernel.
#pragma once

#include "kernels/attention_args.h"
#include "ops/attention_inputs.h"
#include "ops/element_types.h"

namespace hysparse {
namespace ops {

constexpr const char* kFullAttnName = "HySparseFullAttn";

template <typename T>
class FullAttnKernel {
 public:
  FullAttnKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context) const;

 private:
  void Compute(Ort::KernelContext& ctx) const;

  OpContext op_;
  HeadAttributes heads_;
  int top_k_ = 16;
};

template <typename T>
struct FullAttnOp : Ort::CustomOpBase<FullAttnOp<T>, FullAttnKernel<T>, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return kFullAttnName; }
  size_t GetInputTypeCount() const { return 6; }
  ONNXTensorElementDataType GetInputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const;
  size_t GetOutputTypeCount() const { return 7; }
  ONNXTensorElementDataType GetOutputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const;
};

}  // namespace ops
}  // namespace hysparse
