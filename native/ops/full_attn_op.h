// ONNX Runtime glue of HySparseFullAttn (docs/ops.md): schema, attribute and input checks, output
// allocation, the past ++ new cache copy, then the kernel.
#pragma once

#include "kernels/attention_args.h"
#include "ops/attention_inputs.h"
#include "ops/element_types.h"

namespace hysparse {
namespace ops {

constexpr const char* kFullAttnName = "HySparseFullAttn";

// Input and output positions (docs/ops.md).
enum FullAttnInput : size_t {
  kFullQuery, kFullKey, kFullValue, kFullPastKey, kFullPastValue, kFullMask, kFullSeqlensK, kFullTotalSequenceLength,
  kFullInputCount
};
enum FullAttnOutput : size_t {
  kFullOutput, kFullPresentKey, kFullPresentValue, kFullIndices, kFullScores, kFullSelectedKey, kFullSelectedValue
};

// The op's schema, shared by the CPU and CUDA registrations. `type` is the float storage type.
ONNXTensorElementDataType FullAttnInputType(size_t index, ONNXTensorElementDataType type);
OrtCustomOpInputOutputCharacteristic FullAttnInputCharacteristic(size_t index);
ONNXTensorElementDataType FullAttnOutputType(size_t index, ONNXTensorElementDataType type);
OrtCustomOpInputOutputCharacteristic FullAttnOutputCharacteristic(size_t index);

// The node's inputs, read from the kernel context.
struct FullAttnInputs {
  TensorInput query, key, value, past_key, past_value, mask, seqlens_k, total_sequence_length;
  explicit FullAttnInputs(const Ort::KernelContext& ctx);
};

// Sizes of one call, after every shape/type rule of docs/ops.md has been checked. Reads no tensor
// data, so the CPU and CUDA glue share it.
// In shared-buffer mode (seqlens_k given) past_len and total_len are both the buffer capacity: the
// present/block_scores shapes follow it, and each row's own lengths come from seqlens_k at run time.
struct FullAttnShape {
  QkvShape qkv;
  int64_t past_len = 0;
  int64_t total_len = 0;
  bool shared_buffer = false;
};
FullAttnShape CheckFullAttnInputs(const OpContext& op, const HeadAttributes& heads, const FullAttnInputs& in,
                                  ONNXTensorElementDataType type);

// The `top_k` attribute (default 16, in [1, kMaxTopK]); shared by the CPU and CUDA kernels.
int ReadTopKAttribute(const Ort::ConstKernelInfo& info, const OpContext& op);

// Refuses, naming the output and its shape, an output sized by top_k (block_indices, selected_key,
// selected_value) that would hold more than kMaxOutputElements elements. Called before any output is
// allocated; an output counts when the node lists it (output_count = the node's output count).
constexpr int64_t kMaxOutputElements = INT32_MAX;
void CheckTopKOutputSizes(const OpContext& op, const HeadAttributes& heads, int top_k, const FullAttnShape& shape,
                          size_t output_count);

// The kernel arguments with every output allocated (host or device pointers alike, whatever memory
// ORT hands out). present_key/value are allocated but not yet filled with past ++ new: the backend
// does that copy (memcpy on CPU, a stream-ordered kernel on CUDA).
template <typename T>
struct FullAttnBinding {
  FullAttnArgs<T> args;
  T* present_key = nullptr;
  T* present_value = nullptr;
};
template <typename T>
FullAttnBinding<T> BindFullAttn(Ort::KernelContext& ctx, const HeadAttributes& heads, int top_k,
                                const FullAttnInputs& in, const FullAttnShape& shape);

template <typename T>
class FullAttnKernel {
 public:
  FullAttnKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context) const;

 private:
  void Compute(Ort::KernelContext& ctx) const;
  // Shared-buffer mode: one kernel call per batch row over that row's valid prefix of the buffer.
  void ComputeSharedBuffer(Ort::KernelContext& ctx, const FullAttnInputs& in, const FullAttnShape& shape) const;

  OpContext op_;
  HeadAttributes heads_;
  int top_k_ = 16;
};

// The CPU registration. Declares past -> present as may-inplace so ORT can hand a shared-buffer call
// the same memory for both (CustomOpBase's constructor clears that entry, so it is set afterwards).
template <typename T>
struct FullAttnOp : Ort::CustomOpBase<FullAttnOp<T>, FullAttnKernel<T>, /*WithStatus=*/true> {
  FullAttnOp();
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return kFullAttnName; }
  size_t GetInputTypeCount() const { return kFullInputCount; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return FullAttnInputType(i, ElementType<T>::kOnnx); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const { return FullAttnInputCharacteristic(i); }
  size_t GetOutputTypeCount() const { return 7; }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return FullAttnOutputType(i, ElementType<T>::kOnnx); }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const { return FullAttnOutputCharacteristic(i); }
};

}  // namespace ops
}  // namespace hysparse
