#include "ops/full_attn_op.h"

#include "kernels/cuda/bfloat16.h"
#include "ops/shared_buffer.h"

#include <algorithm>
#include <iomanip>
#include <memory>
#include <sstream>
#include <type_traits>
#include <vector>

namespace hysparse {
namespace ops {
FullAttnInputs::FullAttnInputs(const Ort::KernelContext& ctx) {
  ReadInputs(ctx, FullAttnSchema::kInputs, &query, &key, &value, &past_key, &past_value, &mask, &seqlens_k,
             &total_sequence_length);
}

FullAttnShape CheckFullAttnInputs(const OpContext& op, const HeadAttributes& heads, const FullAttnInputs& in,
                                  ONNXTensorElementDataType type) {
  for (const TensorInput* t : {&in.query, &in.key, &in.value, &in.past_key, &in.past_value}) CheckType(op, *t, type);
  FullAttnShape shape;
  shape.qkv = CheckQkv(op, heads, in.query, in.key, in.value);
  const QkvShape& qkv = shape.qkv;
  CheckPair(op, in.past_key, in.past_value);
  if (in.past_key.present) {
    shape.past_len = CheckCache(op, in.past_key, qkv.batch, heads.kv_num_heads, -1, qkv.head_dim);
    CheckCache(op, in.past_value, qkv.batch, heads.kv_num_heads, shape.past_len, qkv.head_dim,
               "the length of 'past_key'");
  }
  shape.shared_buffer = CheckSharedBufferInputs(op, in.seqlens_k, in.total_sequence_length, qkv.batch);
  if (shape.shared_buffer) {
    if (!in.past_key.present) {
      op.Fail("shared-buffer mode (seqlens_k) needs 'past_key'/'past_value': the [B, kv_num_heads, capacity, D] buffer");
    }
    if (in.mask.present) {
      op.Fail("input 'attention_mask' must be absent in shared-buffer mode: seqlens_k gives each row's length");
    }
    shape.total_len = shape.past_len;
    return shape;
  }
  shape.total_len = shape.past_len + qkv.new_len;
  CheckMaskShape(op, in.mask, qkv.batch, shape.total_len);
  return shape;
}

int ReadTopKAttribute(const Ort::ConstKernelInfo& info, const OpContext& op) {
  const int64_t default_top_k = 16;
  return static_cast<int>(ReadIntAttribute(info, op, "top_k", &default_top_k, 1, kMaxTopK));
}

void CheckTopKOutputSizes(const OpContext& op, const HeadAttributes& heads, int top_k, const FullAttnShape& shape,
                          size_t output_count) {
  const QkvShape& qkv = shape.qkv;
  const int64_t B = qkv.batch, Hkv = heads.kv_num_heads, S = qkv.new_len, K = top_k, bs = heads.block_size,
                D = qkv.head_dim;
  struct Sized {
    size_t index;
    const char* name;
    std::vector<int64_t> dims;
  };
  for (const Sized& out : {Sized{kFullIndices, "block_indices", {B, Hkv, S, K}},
                           Sized{kFullSelectedKey, "selected_key", {B, Hkv, S, K * bs, D}},
                           Sized{kFullSelectedValue, "selected_value", {B, Hkv, S, K * bs, D}}}) {
    if (out.index >= output_count) continue;
    double elements = 1;  // in floating point: the product of the dims may overflow int64
    for (int64_t d : out.dims) elements *= static_cast<double>(d);
    if (elements > static_cast<double>(kMaxOutputElements)) {
      std::ostringstream count;
      count << std::fixed << std::setprecision(0) << elements;
      op.Fail(std::string("output '") + out.name + "' " + ShapeString(out.dims) + " would hold " + count.str() + " elements, more than the limit of " +
              std::to_string(kMaxOutputElements) + " (top_k " + std::to_string(K) + ", block_size " +
              std::to_string(bs) + "): lower top_k, or do not request it");
    }
  }
}

FullAttnAttributes FullAttnSchema::ReadAttributes(const Ort::ConstKernelInfo& info, const OpContext& op) {
  FullAttnAttributes attrs;
  attrs.heads = ReadHeadAttributes(info, op);
  attrs.top_k = ReadTopKAttribute(info, op);
  return attrs;
}

template <typename T>
FullAttnBinding<T> BindFullAttn(Ort::KernelContext& ctx, const HeadAttributes& heads, int top_k,
                                const FullAttnInputs& in, const FullAttnShape& shape) {
  const QkvShape& qkv = shape.qkv;
  FullAttnBinding<T> binding;
  FullAttnArgs<T>& args = binding.args;
  args.dims() = CallDims(heads, qkv, shape.total_len);
  args.top_k = top_k;
  args.query = in.query.Data<T>();
  args.query_view = qkv.query_view;
  args.attention_mask = in.mask.present ? in.mask.Data<int64_t>() : nullptr;

  const int64_t B = qkv.batch, Hkv = heads.kv_num_heads, S = qkv.new_len, D = qkv.head_dim;
  args.output = ctx.GetOutput(kFullOutput, in.query.shape).GetTensorMutableData<T>();
  args.output_view = qkv.query_view;
  const std::vector<int64_t> cache_shape{B, Hkv, shape.total_len, D};
  binding.present_key = ctx.GetOutput(kFullPresentKey, cache_shape).GetTensorMutableData<T>();
  binding.present_value = ctx.GetOutput(kFullPresentValue, cache_shape).GetTensorMutableData<T>();
  args.key_cache = binding.present_key;
  args.value_cache = binding.present_value;
  args.cache_capacity = shape.total_len;

  // Optional outputs: absent when the node lists fewer outputs or leaves a name empty.
  const size_t outputs = ctx.GetOutputCount();
  auto optional_output = [&](size_t index, const std::vector<int64_t>& dims) -> Ort::UnownedValue {
    return index < outputs ? ctx.GetOutput(index, dims) : Ort::UnownedValue(nullptr);
  };
  const int64_t K = top_k, bs = heads.block_size;
  if (Ort::UnownedValue v = optional_output(kFullIndices, {B, Hkv, S, K}); v != nullptr) {
    args.block_indices = v.GetTensorMutableData<int32_t>();
  }
  if (Ort::UnownedValue v = optional_output(kFullScores, {B, Hkv, S, args.NumBlocks()}); v != nullptr) {
    args.block_scores = v.GetTensorMutableData<float>();
  }
  if (Ort::UnownedValue v = optional_output(kFullSelectedKey, {B, Hkv, S, K * bs, D}); v != nullptr) {
    args.selected_key = v.GetTensorMutableData<T>();
  }
  if (Ort::UnownedValue v = optional_output(kFullSelectedValue, {B, Hkv, S, K * bs, D}); v != nullptr) {
    args.selected_value = v.GetTensorMutableData<T>();
  }
  return binding;
}

namespace {

// One kernel call per row b with batch 1, the row's total length and its real new tokens, over row b
// of the buffer (cache_capacity stays the buffer's). The per-token outputs of a row whose prompt is
// right-padded (real < S) or whose block count differs from the buffer's go through compact scratch
// and are spread into the node's outputs, padding rows filled as the contract says.
template <typename T>
void ComputeSharedBuffer(const FullAttnCpuNode& node, Ort::KernelContext& ctx, const FullAttnInputs& in,
                         const FullAttnShape& shape) {
  const OpContext& op = node.op;
  const HeadAttributes& heads = node.attrs.heads;
  const int top_k = node.attrs.top_k;
  const QkvShape& qkv = shape.qkv;
  const SharedBufferRows rows = ReadSharedBufferRows(op, in.seqlens_k, in.total_sequence_length, in.past_key, qkv.new_len);
  const FullAttnBinding<T> bound = BindFullAttn<T>(ctx, heads, top_k, in, shape);
  UpdateSharedBuffer(in.past_key.Data<T>(), bound.present_key, in.key.Data<T>(), qkv.kv_view, rows, qkv.batch,
                     heads.kv_num_heads, qkv.head_dim);
  UpdateSharedBuffer(in.past_value.Data<T>(), bound.present_value, in.value.Data<T>(), qkv.kv_view, rows, qkv.batch,
                     heads.kv_num_heads, qkv.head_dim);

  const FullAttnArgs<T>& all = bound.args;
  const int64_t Hkv = heads.kv_num_heads, S = qkv.new_len, D = qkv.head_dim, K = top_k;
  const int64_t capacity = rows.capacity, nb_all = all.NumBlocks(), selected_width = K * heads.block_size * D;
  const OrtExecutor exec(ctx);
  for (int b = 0; b < qkv.batch; ++b) {
    FullAttnArgs<T> row = RowArgs(all, rows, b);
    row.key_cache += b * Hkv * capacity * D;
    row.value_cache += b * Hkv * capacity * D;
    const int64_t real = row.new_len, nb = row.NumBlocks();
    const bool padded = real < S;

    // Where the kernel writes one per-token output of this row, and how it reaches the node's output.
    std::vector<int32_t> indices_scratch;
    std::vector<float> scores_scratch;
    std::vector<T> selected_key_scratch, selected_value_scratch;
    auto place = [&](auto* node_output, int64_t node_width, auto& scratch, int64_t width, auto fill) {
      using E = std::remove_pointer_t<decltype(node_output)>;
      if (node_output == nullptr) return static_cast<E*>(nullptr);
      E* node_row = node_output + b * Hkv * S * node_width;
      if (!padded && width == node_width) return node_row;
      scratch.assign(static_cast<size_t>(Hkv * real * width), fill);
      return scratch.data();
    };
    row.block_indices = place(all.block_indices, K, indices_scratch, K, int32_t{-1});
    row.block_scores = place(all.block_scores, nb_all, scores_scratch, nb, 0.f);
    row.selected_key = place(all.selected_key, selected_width, selected_key_scratch, selected_width, T{});
    row.selected_value = place(all.selected_value, selected_width, selected_value_scratch, selected_width, T{});
    RunFullAttnCpu(row, exec);

    auto spread = [&](auto* node_output, int64_t node_width, const auto& scratch, int64_t width, auto fill) {
      if (node_output == nullptr || scratch.empty()) return;
      auto* node_row = node_output + b * Hkv * S * node_width;
      std::fill(node_row, node_row + Hkv * S * node_width, fill);
      CopyHeadRows(scratch.data(), real * width, width, node_row, S * node_width, node_width, Hkv, real, width);
    };
    spread(all.block_indices, K, indices_scratch, K, int32_t{-1});
    spread(all.block_scores, nb_all, scores_scratch, nb, 0.f);
    spread(all.selected_key, selected_width, selected_key_scratch, selected_width, T{});
    spread(all.selected_value, selected_width, selected_value_scratch, selected_width, T{});
    ZeroPaddingOutput(all.output, all.output_view, b, heads.num_heads, qkv.head_dim, real, S);
  }
}

}  // namespace

template <typename T>
void ComputeFullAttnCpu(const FullAttnCpuNode& node, Ort::KernelContext& ctx) {
  const OpContext& op = node.op;
  const HeadAttributes& heads = node.attrs.heads;
  const int top_k = node.attrs.top_k;
  const FullAttnInputs in(ctx);
  const FullAttnShape shape = CheckFullAttnInputs(op, heads, in, ElementType<T>::kOnnx);
  CheckTopKOutputSizes(op, heads, top_k, shape, ctx.GetOutputCount());
  if (shape.shared_buffer) {
    ComputeSharedBuffer<T>(node, ctx, in, shape);
    return;
  }
  CheckMaskValues(op, in.mask);
  const FullAttnBinding<T> bound = BindFullAttn<T>(ctx, heads, top_k, in, shape);
  const QkvShape& qkv = shape.qkv;
  const OrtExecutor exec(ctx);
  const CacheAppend<T> key{in.past_key.present ? in.past_key.Data<T>() : nullptr, in.key.Data<T>(), bound.present_key};
  const CacheAppend<T> value{in.past_value.present ? in.past_value.Data<T>() : nullptr, in.value.Data<T>(),
                             bound.present_value};
  ConcatCaches(key, value, shape.past_len, qkv.kv_view, qkv.new_len, shape.past_len + qkv.new_len, qkv.batch,
               heads.kv_num_heads, qkv.head_dim, exec);
  RunFullAttnCpu(bound.args, exec);
}

template FullAttnBinding<float> BindFullAttn<float>(Ort::KernelContext&, const HeadAttributes&, int, const FullAttnInputs&, const FullAttnShape&);
template FullAttnBinding<Half> BindFullAttn<Half>(Ort::KernelContext&, const HeadAttributes&, int, const FullAttnInputs&, const FullAttnShape&);
// bfloat16 is bound only by the CUDA glue; the header is plain C++, so the CPU build compiles it too.
template FullAttnBinding<BFloat16> BindFullAttn<BFloat16>(Ort::KernelContext&, const HeadAttributes&, int, const FullAttnInputs&, const FullAttnShape&);
template void ComputeFullAttnCpu<float>(const FullAttnCpuNode&, Ort::KernelContext&);
template void ComputeFullAttnCpu<Half>(const FullAttnCpuNode&, Ort::KernelContext&);

}  // namespace ops
}  // namespace hysparse
