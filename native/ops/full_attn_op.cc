#include "ops/full_attn_op.h"

#include <memory>

namespace hysparse {
namespace ops {
FullAttnInputs::FullAttnInputs(const Ort::KernelContext& ctx)
    : query(ReadInput(ctx, kFullQuery, "query")),
      key(ReadInput(ctx, kFullKey, "key")),
      value(ReadInput(ctx, kFullValue, "value")),
      past_key(ReadInput(ctx, kFullPastKey, "past_key")),
      past_value(ReadInput(ctx, kFullPastValue, "past_value")),
      mask(ReadInput(ctx, kFullMask, "attention_mask")) {}

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
  shape.total_len = shape.past_len + qkv.new_len;
  CheckMaskShape(op, in.mask, qkv.batch, shape.total_len);
  return shape;
}

template <typename T>
FullAttnKernel<T>::FullAttnKernel(const OrtApi&, const OrtKernelInfo* info)
    : op_(kFullAttnName, NodeName(Ort::ConstKernelInfo(info))) {
  Ort::ConstKernelInfo ki(info);
  heads_ = ReadHeadAttributes(ki, op_);
  const int64_t default_top_k = 16;
  top_k_ = static_cast<int>(ReadIntAttribute(ki, op_, "top_k", &default_top_k, 1));
}

template <typename T>
OrtStatusPtr FullAttnKernel<T>::ComputeV2(OrtKernelContext* context) const {
  return GuardStatus([&] {
    Ort::KernelContext ctx(context);
    Compute(ctx);
  });
}

template <typename T>
FullAttnBinding<T> BindFullAttn(Ort::KernelContext& ctx, const HeadAttributes& heads, int top_k,
                                const FullAttnInputs& in, const FullAttnShape& shape) {
  const QkvShape& qkv = shape.qkv;
  FullAttnBinding<T> binding;
  FullAttnArgs<T>& args = binding.args;
  args.batch = qkv.batch;
  args.num_heads = heads.num_heads;
  args.kv_num_heads = heads.kv_num_heads;
  args.head_dim = qkv.head_dim;
  args.new_len = qkv.new_len;
  args.total_len = shape.total_len;
  args.scale = ResolveScale(heads.scale, qkv.head_dim);
  args.block_size = heads.block_size;
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

template <typename T>
void FullAttnKernel<T>::Compute(Ort::KernelContext& ctx) const {
  const FullAttnInputs in(ctx);
  const FullAttnShape shape = CheckFullAttnInputs(op_, heads_, in, ElementType<T>::kOnnx);
  CheckMaskValues(op_, in.mask);
  const FullAttnBinding<T> bound = BindFullAttn<T>(ctx, heads_, top_k_, in, shape);
  const QkvShape& qkv = shape.qkv;
  ConcatCache(in.past_key.present ? in.past_key.Data<T>() : nullptr, shape.past_len, in.key.Data<T>(), qkv.kv_view,
              qkv.new_len, qkv.batch, heads_.kv_num_heads, qkv.head_dim, bound.present_key);
  ConcatCache(in.past_value.present ? in.past_value.Data<T>() : nullptr, shape.past_len, in.value.Data<T>(),
              qkv.kv_view, qkv.new_len, qkv.batch, heads_.kv_num_heads, qkv.head_dim, bound.present_value);
  RunFullAttnCpu(bound.args, OrtExecutor(ctx));
}

template <typename T>
OrtStatusPtr FullAttnOp<T>::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return GuardStatus([&] { *kernel = new FullAttnKernel<T>(api, info); });
}

template <typename T>
ONNXTensorElementDataType FullAttnOp<T>::GetInputType(size_t index) const {
  return index == kFullMask ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ElementType<T>::kOnnx;
}

template <typename T>
OrtCustomOpInputOutputCharacteristic FullAttnOp<T>::GetInputCharacteristic(size_t index) const {
  return index <= kFullValue ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

template <typename T>
ONNXTensorElementDataType FullAttnOp<T>::GetOutputType(size_t index) const {
  switch (index) {
    case kFullIndices: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case kFullScores: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    default: return ElementType<T>::kOnnx;
  }
}

template <typename T>
OrtCustomOpInputOutputCharacteristic FullAttnOp<T>::GetOutputCharacteristic(size_t index) const {
  return index <= kFullPresentValue ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

template FullAttnBinding<float> BindFullAttn<float>(Ort::KernelContext&, const HeadAttributes&, int, const FullAttnInputs&, const FullAttnShape&);
template FullAttnBinding<Half> BindFullAttn<Half>(Ort::KernelContext&, const HeadAttributes&, int, const FullAttnInputs&, const FullAttnShape&);
template struct FullAttnOp<float>;
template struct FullAttnOp<Half>;
template class FullAttnKernel<float>;
template class FullAttnKernel<Half>;

}  // namespace ops
}  // namespace hysparse
