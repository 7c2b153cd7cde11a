// ONNX Runtime glue of HySparseSparseAttn (docs/ops.md): schema, checks (including every block
// index, so the kernel never reads out of bounds), the own-cache update, then the kernel.
#pragma once

#include "kernels/attention_args.h"
#include "ops/attention_inputs.h"
#include "ops/attention_op.h"

namespace hysparse {
namespace ops {

constexpr const char* kSparseAttnName = "HySparseSparseAttn";

// Input and output positions (docs/ops.md).
enum SparseAttnInput : size_t {
  kSparseQuery, kSparseKey, kSparseValue, kSparsePastKey, kSparsePastValue, kSparseSharedKey, kSparseSharedValue,
  kSparseBlockIndices, kSparseMask, kSparseGate, kSparseSinks, kSparseSelectedKey, kSparseSelectedValue,
  kSparseSeqlensK, kSparseTotalSequenceLength, kSparseInputCount
};
enum SparseAttnOutput : size_t { kSparseOutput, kSparsePresentKey, kSparsePresentValue, kSparseOutputCount };

struct SparseAttnAttributes {
  HeadAttributes heads;
  int window = 128;
  Combine combine = Combine::kUnion;
  bool window_cache = false;
};
SparseAttnAttributes ReadSparseAttnAttributes(const Ort::ConstKernelInfo& info, const OpContext& op);

// The op's schema, shared by the CPU and CUDA registrations (AttentionOp); the tables follow the
// position enums above. block_indices is required by the contract but declared optional: ORT's own
// check of a missing required input names only its position, while CheckSparseAttnInputs names it.
struct SparseAttnSchema {
  static constexpr const char* kName = kSparseAttnName;
  static constexpr Port kInputs[] = {
      Required("query"), Required("key"), Required("value"), Optional("past_key"), Optional("past_value"),
      Optional("shared_key"), Optional("shared_value"), Optional("block_indices", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32),
      Optional("attention_mask", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64), Optional("gate"), Optional("sinks"),
      Optional("selected_key"), Optional("selected_value"), Optional("seqlens_k", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32),
      HostLength("total_sequence_length")};
  static constexpr Port kOutputs[] = {Required("output"), Required("present_key"), Required("present_value")};
  using Attributes = SparseAttnAttributes;
  static Attributes ReadAttributes(const Ort::ConstKernelInfo& info, const OpContext& op) {
    return ReadSparseAttnAttributes(info, op);
  }
};
static_assert(std::size(SparseAttnSchema::kInputs) == kSparseInputCount &&
              std::size(SparseAttnSchema::kOutputs) == kSparseOutputCount);


// The node's inputs, read from the kernel context in the order of the schema's input table.
struct SparseAttnInputs {
  TensorInput query, key, value, past_key, past_value, shared_key, shared_value, block_indices, mask, gate, sinks,
      selected_key, selected_value, seqlens_k, total_sequence_length;
  explicit SparseAttnInputs(const Ort::KernelContext& ctx);
};

// Sizes needed to check and describe block_indices entries.
struct IndexLayout {
  int64_t batch = 0, kv_heads = 0, new_len = 0, top_k = 0, num_blocks = 0, total_len = 0;
  int block_size = 0;
  // Shared-buffer mode: each batch row's own total length (host memory, `batch` entries); rows then
  // hold blocks below ceil(row_total_len[b] / block_size) instead of num_blocks.
  const int64_t* row_total_len = nullptr;

  int64_t TotalOf(int64_t b) const { return row_total_len ? row_total_len[b] : total_len; }
  int64_t NumBlocksOf(int64_t b) const { return row_total_len ? (row_total_len[b] + block_size - 1) / block_size : num_blocks; }
};

// Where the SA branch reads the selected blocks (docs/ops.md "Where the SA branch reads").
enum class SaSource { kSelected, kShared, kOwn };

// Sizes of one call after every shape/type rule has been checked; reads no tensor data, so the CPU
// and CUDA glue share it. The values of the mask and the block indices are checked separately.
// In shared-buffer mode (seqlens_k given) total_len, own_past, own_len and present_len are all the
// buffer capacity; each row's own lengths come from seqlens_k at run time.
struct SparseAttnShape {
  QkvShape qkv;
  int64_t total_len = 0;    // T
  int64_t own_past = 0;     // length of past_key
  int64_t own_len = 0;      // own_past + S: the own buffer the kernel reads
  int64_t present_len = 0;  // own_len, or min(window, own_len) with a window cache
  int64_t top_k = 0;        // last dimension of block_indices
  int64_t num_blocks = 0;   // ceil(T / block_size)
  bool gate_per_channel = false;
  bool shared_buffer = false;
  SaSource sa_source = SaSource::kOwn;

  IndexLayout Indices(int kv_heads, int block_size) const;
};
SparseAttnShape CheckSparseAttnInputs(const OpContext& op, const SparseAttnAttributes& attrs,
                                      const SparseAttnInputs& in, ONNXTensorElementDataType type);

// Kernel arguments for one call; own_key/own_value hold past ++ new (own_len rows per head).
template <typename T>
SparseAttnArgs<T> MakeSparseAttnArgs(const SparseAttnAttributes& attrs, const SparseAttnInputs& in,
                                     const SparseAttnShape& shape, const T* own_key, const T* own_value, T* output);

// The CPU kernel (sparse_attn_op.cc).
using SparseAttnCpuNode = AttentionNode<SparseAttnSchema, CpuPlacement>;
template <typename T>
void ComputeSparseAttnCpu(const SparseAttnCpuNode& node, Ort::KernelContext& ctx);
template <typename T>
using SparseAttnOp = AttentionOp<SparseAttnSchema, CpuPlacement, T, &ComputeSparseAttnCpu<T>>;

// What is wrong with a block_indices entry (docs/ops.md "Block indices").
enum class BlockIndexProblem { kBelowMinusOne, kOutOfRange, kAfterPadding, kNotAscending };

// Throws the OpError for a bad entry of `row` (flattened (b, h, s)); shared by the CPU check and the
// CUDA glue, which finds problems on the device.
[[noreturn]] void FailBlockIndexRow(const OpContext& op, int64_t row, BlockIndexProblem problem, int64_t value,
                                    int64_t previous, const IndexLayout& layout);

// Checks that every [.., K] row of host-resident `indices` is strictly ascending blocks in
// [0, num_blocks) followed only by -1. Throws OpError naming the first bad row.
void CheckBlockIndices(const OpContext& op, const int32_t* indices, const IndexLayout& layout);

}  // namespace ops
}  // namespace hysparse
