// ONNX Runtime glue of both ops on the CUDA execution provider. Shapes are checked by the same
// backend-independent functions as on CPU (CheckFullAttnInputs / CheckSparseAttnInputs); the values
// of the mask and of the block indices live in GPU memory and are checked there (LaunchCheckSparseValues),
// with only the verdict copied back. Everything runs on ORT's compute stream; scratch memory comes from
// the kernel's device allocator.
#pragma once

#include <memory>

#include "kernels/cuda/bfloat16.h"
#include "kernels/cuda/cuda_kernels.h"
#include "ops/full_attn_op.h"
#include "ops/sparse_attn_op.h"

namespace hysparse {
namespace ops {

template <>
struct ElementType<BFloat16> {
  static constexpr ONNXTensorElementDataType kOnnx = ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
};

constexpr const char* kCudaExecutionProvider = "CUDAExecutionProvider";

// Session config key: "0" skips the device-side value checks (and the stream synchronisation that
// reports them) for decode loops whose inputs come straight from HySparseFullAttn.
constexpr const char* kCudaCheckValuesConfig = "hysparse.cuda.check_values";

// Pinned host memory for one ValueProblem, owned by a kernel object.
class PinnedProblem {
 public:
  PinnedProblem();
  ~PinnedProblem();
  PinnedProblem(const PinnedProblem&) = delete;
  PinnedProblem& operator=(const PinnedProblem&) = delete;
  cuda::ValueProblem* get() const { return host_; }

 private:
  cuda::ValueProblem* host_ = nullptr;
};

template <typename T>
class CudaFullAttnKernel {
 public:
  CudaFullAttnKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context) const;

 private:
  void Compute(Ort::KernelContext& ctx) const;

  OpContext op_;
  HeadAttributes heads_;
  int top_k_ = 16;
  bool check_values_ = true;
  OrtAllocator* allocator_ = nullptr;  // the EP's device allocator (owned by ORT)
  std::unique_ptr<PinnedProblem> problem_;
};

template <typename T>
class CudaSparseAttnKernel {
 public:
  CudaSparseAttnKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context) const;

 private:
  void Compute(Ort::KernelContext& ctx) const;

  OpContext op_;
  SparseAttnAttributes attrs_;
  bool check_values_ = true;
  OrtAllocator* allocator_ = nullptr;
  std::unique_ptr<PinnedProblem> problem_;
};

template <typename T>
struct CudaFullAttnOp : Ort::CustomOpBase<CudaFullAttnOp<T>, CudaFullAttnKernel<T>, /*WithStatus=*/true> {
  CudaFullAttnOp();  // declares past -> present may-inplace, as the CPU op does
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return kFullAttnName; }
  const char* GetExecutionProviderType() const { return kCudaExecutionProvider; }
  size_t GetInputTypeCount() const { return kFullInputCount; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return FullAttnInputType(i, ElementType<T>::kOnnx); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const { return FullAttnInputCharacteristic(i); }
  // total_sequence_length stays in host memory, as GroupQueryAttention declares it; seqlens_k is on the device.
  OrtMemType GetInputMemoryType(size_t i) const {
    return i == kFullTotalSequenceLength ? OrtMemTypeCPUInput : OrtMemTypeDefault;
  }
  size_t GetOutputTypeCount() const { return 7; }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return FullAttnOutputType(i, ElementType<T>::kOnnx); }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const { return FullAttnOutputCharacteristic(i); }
};

template <typename T>
struct CudaSparseAttnOp : Ort::CustomOpBase<CudaSparseAttnOp<T>, CudaSparseAttnKernel<T>, /*WithStatus=*/true> {
  CudaSparseAttnOp();  // declares past -> present may-inplace, as the CPU op does
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  const char* GetName() const { return kSparseAttnName; }
  const char* GetExecutionProviderType() const { return kCudaExecutionProvider; }
  size_t GetInputTypeCount() const { return kSparseInputCount; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return SparseAttnInputType(i, ElementType<T>::kOnnx); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const { return SparseAttnInputCharacteristic(i); }
  OrtMemType GetInputMemoryType(size_t i) const {
    return i == kSparseTotalSequenceLength ? OrtMemTypeCPUInput : OrtMemTypeDefault;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ElementType<T>::kOnnx; }
};

}  // namespace ops
}  // namespace hysparse
