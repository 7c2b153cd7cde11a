// ONNX Runtime glue of HySparseFullAttn (docs/ops.md): schema, attribute and input checks, output
// allocation, the past ++ new cache copy, then the kernel.
#pragma once

#include "kernels/attention_args.h"
#include "ops/attention_inputs.h"
#include "ops/attention_op.h"

namespace hysparse {
namespace ops {

constexpr const char* kFullAttnName = "HySparseFullAttn";

// Input and output positions (docs/ops.md).
enum FullAttnInput : size_t {
  kFullQuery, kFullKey, kFullValue, kFullPastKey, kFullPastValue, kFullMask, kFullSeqlensK, kFullTotalSequenceLength,
  kFullInputCount
};
enum FullAttnOutput : size_t {
  kFullOutput, kFullPresentKey, kFullPresentValue, kFullIndices, kFullScores, kFullSelectedKey, kFullSelectedValue,
  kFullOutputCount
};

struct FullAttnAttributes {
  HeadAttributes heads;
  int top_k = 16;
};

// The op's schema, shared by the CPU and CUDA registrations (AttentionOp); the tables follow the
// position enums above.
struct FullAttnSchema {
  static constexpr const char* kName = kFullAttnName;
  static constexpr Port kInputs[] = {
      Required("query"), Required("key"), Required("value"), Optional("past_key"), Optional("past_value"),
      Optional("attention_mask", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64),
      Optional("seqlens_k", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32), HostLength("total_sequence_length")};
  static constexpr Port kOutputs[] = {
      Required("output"), Required("present_key"), Required("present_value"),
      Optional("block_indices", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32),
      Optional("block_scores", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT), Optional("selected_key"),
      Optional("selected_value")};
  using Attributes = FullAttnAttributes;
  static Attributes ReadAttributes(const Ort::ConstKernelInfo& info, const OpContext& op);
};
static_assert(std::size(FullAttnSchema::kInputs) == kFullInputCount &&
              std::size(FullAttnSchema::kOutputs) == kFullOutputCount);

// The node's inputs, read from the kernel context in the order of the schema's input table.
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

// The CPU kernel (full_attn_op.cc).
using FullAttnCpuNode = AttentionNode<FullAttnSchema, CpuPlacement>;
template <typename T>
void ComputeFullAttnCpu(const FullAttnCpuNode& node, Ort::KernelContext& ctx);
template <typename T>
using FullAttnOp = AttentionOp<FullAttnSchema, CpuPlacement, T, &ComputeFullAttnCpu<T>>;

}  // namespace ops
}  // namespace hysparse
