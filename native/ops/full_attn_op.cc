#include "ops/full_attn_op.h"

#include <memory>

namespace hysparse {
namespace ops {
namespace {

enum FullInput : size_t { kQuery, kKey, kValue, kPastKey, kPastValue, kMask };
enum FullOutput : size_t { kOutput, kPresentKey, kPresentValue, kIndices, kScores, kSelectedKey, kSelectedValue };

}  // namespace

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
void FullAttnKernel<T>::Compute(Ort::KernelContext& ctx) const {
  const auto type = ElementType<T>::kOnnx;
  const TensorInput query = ReadInput(ctx, kQuery, "query");
  const TensorInput key = ReadInput(ctx, kKey, "key");
  const TensorInput value = ReadInput(ctx, kValue, "value");
  const TensorInput past_key = ReadInput(ctx, kPastKey, "past_key");
  const TensorInput past_value = ReadInput(ctx, kPastValue, "past_value");
  const TensorInput mask = ReadInput(ctx, kMask, "attention_mask");
  for (const TensorInput* t : {&query, &key, &value, &past_key, &past_value}) CheckType(op_, *t, type);

  const QkvShape qkv = CheckQkv(op_, heads_, query, key, value);
  CheckPair(op_, past_key, past_value);
  int64_t past_len = 0;
  if (past_key.present) {
    past_len = CheckCache(op_, past_key, qkv.batch, heads_.kv_num_heads, -1, qkv.head_dim);
    CheckCache(op_, past_value, qkv.batch, heads_.kv_num_heads, past_len, qkv.head_dim, "the length of 'past_key'");
  }
  const int64_t total = past_len + qkv.new_len;
  CheckMask(op_, mask, qkv.batch, total);

  FullAttnArgs<T> args;
  args.batch = qkv.batch;
  args.num_heads = heads_.num_heads;
  args.kv_num_heads = heads_.kv_num_heads;
  args.head_dim = qkv.head_dim;
  args.new_len = qkv.new_len;
  args.total_len = total;
  args.scale = ResolveScale(heads_.scale, qkv.head_dim);
  args.block_size = heads_.block_size;
  args.top_k = top_k_;
  args.query = query.Data<T>();
  args.query_view = qkv.query_view;
  args.attention_mask = mask.present ? mask.Data<int64_t>() : nullptr;

  const int64_t B = qkv.batch, Hkv = heads_.kv_num_heads, S = qkv.new_len, D = qkv.head_dim;
  auto output = ctx.GetOutput(kOutput, query.shape);
  const std::vector<int64_t> cache_shape{B, Hkv, total, D};
  auto present_key = ctx.GetOutput(kPresentKey, cache_shape);
  auto present_value = ctx.GetOutput(kPresentValue, cache_shape);
  T* pk = present_key.GetTensorMutableData<T>();
  T* pv = present_value.GetTensorMutableData<T>();
  ConcatCache(past_key.present ? past_key.Data<T>() : nullptr, past_len, key.Data<T>(), qkv.kv_view, S, qkv.batch,
              heads_.kv_num_heads, qkv.head_dim, pk);
  ConcatCache(past_value.present ? past_value.Data<T>() : nullptr, past_len, value.Data<T>(), qkv.kv_view, S,
              qkv.batch, heads_.kv_num_heads, qkv.head_dim, pv);
  args.key_cache = pk;
  args.value_cache = pv;
  args.cache_capacity = total;
  args.output = output.GetTensorMutableData<T>();
  args.output_view = qkv.query_view;

  // Optional outputs: absent when the node lists fewer outputs or leaves a name empty.
  const size_t outputs = ctx.GetOutputCount();
  auto optional_output = [&](size_t index, const std::vector<int64_t>& shape) -> Ort::UnownedValue {
    return index < outputs ? ctx.GetOutput(index, shape) : Ort::UnownedValue(nullptr);
  };
  const int64_t K = top_k_, bs = heads_.block_size;
  if (Ort::UnownedValue v = optional_output(kIndices, {B, Hkv, S, K}); v != nullptr) args.block_indices = v.GetTensorMutableData<int32_t>();
  if (Ort::UnownedValue v = optional_output(kScores, {B, Hkv, S, args.NumBlocks()}); v != nullptr) args.block_scores = v.GetTensorMutableData<float>();
  if (Ort::UnownedValue v = optional_output(kSelectedKey, {B, Hkv, S, K * bs, D}); v != nullptr) args.selected_key = v.GetTensorMutableData<T>();
  if (Ort::UnownedValue v = optional_output(kSelectedValue, {B, Hkv, S, K * bs, D}); v != nullptr) args.selected_value = v.GetTensorMutableData<T>();

  RunFullAttnCpu(args, OrtExecutor(ctx));
}

template <typename T>
OrtStatusPtr FullAttnOp<T>::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return GuardStatus([&] { *kernel = new FullAttnKernel<T>(api, info); });
}

template <typename T>
ONNXTensorElementDataType FullAttnOp<T>::GetInputType(size_t index) const {
  return index == kMask ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ElementType<T>::kOnnx;
}

template <typename T>
OrtCustomOpInputOutputCharacteristic FullAttnOp<T>::GetInputCharacteristic(size_t index) const {
  return index <= kValue ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

template <typename T>
ONNXTensorElementDataType FullAttnOp<T>::GetOutputType(size_t index) const {
  switch (index) {
    case kIndices: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case kScores: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    default: return ElementType<T>::kOnnx;
  }
}

template <typename T>
OrtCustomOpInputOutputCharacteristic FullAttnOp<T>::GetOutputCharacteristic(size_t index) const {
  return index <= kPresentValue ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

template struct FullAttnOp<float>;
template struct FullAttnOp<Half>;
template class FullAttnKernel<float>;
template class FullAttnKernel<Half>;

}  // namespace ops
}  // namespace hysparse
