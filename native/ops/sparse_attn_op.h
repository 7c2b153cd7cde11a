// ONNX Runtime glue of HySparseSparseAttn (docs/ops.md): schema, checks (including every block
// index, so the kernel never reads out of bounds), the own-cache update, then the kernel.
#pragma once

#include "kernels/attention_args.h"
#include "ops/attention_inputs.h"
#include "ops/element_types.h"

namespace hysparse {
namespace ops {

constexpr const char* kSparseAttnName = "HySparseSparseAttn";

// Input and output positions (docs/ops.md).
enum SparseAttnInput : size_t {
  kSparseQuery, kSparseKey, kSparseValue, kSparsePastKey, kSparsePastValue, kSparseSharedKey, kSparseSharedValue,
  kSparseBlockIndices, kSparseMask, kSparseGate, kSparseSinks, kSparseSelectedKey, kSparseSelectedValue
};
enum SparseAttnOutput : size_t { kSparseOutput, kSparsePresentKey, kSparsePresentValue };

struct SparseAttnAttributes {
  HeadAttributes heads;
  int window = 128;
  Combine combine = Combine::kUnion;
  bool window_cache = false;
};
SparseAttnAttributes ReadSparseAttnAttributes(const Ort::ConstKernelInfo& info, const OpContext& op);

// The node's inputs, read from the kernel context.
struct SparseAttnInputs {
  TensorInput query, key, value, past_key, past_value, shared_key, shared_value, block_indices, mask, gate, sinks,
      selected_key, selected_value;
  explicit SparseAttnInputs(const Ort::KernelContext& ctx);
};

// Where the SA branch reads the selected blocks (docs/ops.md "Where the SA branch reads").
enum class SaSource { kSelected, kShared, kOwn };

// Sizes of one call after every shape/type rule has been checked; reads no tensor data, so the CPU
// and CUDA glue share it. The values of the mask and the block indices are checked separately.
struct SparseAttnShape {
  QkvShape qkv;
  int64_t total_len = 0;    // T
  int64_t own_past = 0;     // length of past_key
  int64_t own_len = 0;      // own_past + S: the own buffer the kernel reads
  int64_t present_len = 0;  // own_len, or min(window, own_len) with a window cache
  int64_t top_k = 0;        // last dimension of block_indices
  int64_t num_blocks = 0;   // ceil(T / block_size)
  bool gate_per_channel = false;
  SaSource sa_source = SaSource::kOwn;
};
SparseAttnShape CheckSparseAttnInputs(const OpContext& op, const SparseAttnAttributes& attrs,
                                      const SparseAttnInputs& in, ONNXTensorElementDataType type);

// Kernel arguments for one call; own_key/own_value hold past ++ new (own_len rows per head).
template <typename T>
SparseAttnArgs<T> MakeSparseAttnArgs(const SparseAttnAttributes& attrs, const SparseAttnInputs& in,
                                     const SparseAttnShape& shape, const T* own_key, const T* own_value, T* output);

template <typename T>
class SparseAttnKernel {
 public:
  SparseAttnKernel(const OrtApi& api, const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context) const;

 private:
  void Compute(Ort::KernelContext& ctx) const;

  OpContext op_;
  SparseAttnAttributes attrs_;
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
