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

// The CUDA execution provider. total_sequence_length (a HostLength port) stays in host memory, as
// GroupQueryAttention declares it; seqlens_k is on the device.
struct CudaPlacement {
  // What a CUDA kernel object keeps per node besides the attributes.
  struct Resources {
    explicit Resources(const OrtKernelInfo* info);
    bool check_values = true;
    OrtAllocator* allocator = nullptr;  // the EP's device allocator (owned by ORT)
    std::unique_ptr<PinnedProblem> problem;
  };
  static constexpr const char* kExecutionProvider = "CUDAExecutionProvider";
  static constexpr bool kHostLengths = true;
};

using FullAttnCudaNode = AttentionNode<FullAttnSchema, CudaPlacement>;
using SparseAttnCudaNode = AttentionNode<SparseAttnSchema, CudaPlacement>;
template <typename T>
void ComputeFullAttnCuda(const FullAttnCudaNode& node, Ort::KernelContext& ctx);
template <typename T>
void ComputeSparseAttnCuda(const SparseAttnCudaNode& node, Ort::KernelContext& ctx);

template <typename T>
using CudaFullAttnOp = AttentionOp<FullAttnSchema, CudaPlacement, T, &ComputeFullAttnCuda<T>>;
template <typename T>
using CudaSparseAttnOp = AttentionOp<SparseAttnSchema, CudaPlacement, T, &ComputeSparseAttnCuda<T>>;

}  // namespace ops
}  // namespace hysparse
