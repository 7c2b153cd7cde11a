#include "ops/sparse_attn_op.h"

#include <algorithm>
#include <vector>

namespace hysparse {
namespace ops {
namespace {

enum SparseInput : size_t {
  kQuery, kKey, kValue, kPastKey, kPastValue, kSharedKey, kSharedValue, kBlockIndices, kMask, kGate, kSinks,
  kSelectedKey, kSelectedValue
};
enum SparseOutput : size_t { kOutput, kPresentKey, kPresentValue };

}  // namespace

void CheckBlockIndices(const OpContext& op, const int32_t* indices, int batch, int kv_heads, int64_t new_len,
                       int64_t top_k, int64_t num_blocks, int64_t total_len, int block_size) {
  const int64_t rows = static_cast<int64_t>(batch) * kv_heads * new_len;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = indices + r * top_k;
    int64_t previous = -1;
    bool padding = false;
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t idx = row[k];
      std::string problem;
      if (idx == -1) {
        padding = true;
        continue;
      } else if (idx < -1) {
        problem = "holds " + std::to_string(idx) + " (only -1 may pad a row)";
      } else if (idx >= num_blocks) {
        problem = "holds block " + std::to_string(idx) + ", but the key cache has " + std::to_string(num_blocks) +
                  " blocks (length " + std::to_string(total_len) + ", block_size " + std::to_string(block_size) + ")";
      } else if (padding) {
        problem = "holds block " + std::to_string(idx) + " after a -1 (padding must come last)";
      } else if (idx <= previous) {
        problem = "is not strictly ascending (block " + std::to_string(idx) + " after " + std::to_string(previous) + ")";
      }
      if (!problem.empty()) {
        const int64_t s = r % new_len, h = (r / new_len) % kv_heads, b = r / (new_len * kv_heads);
        op.Fail("input 'block_indices' row (b=" + std::to_string(b) + ", h=" + std::to_string(h) + ", s=" +
                std::to_string(s) + ") " + problem);
      }
      previous = idx;
    }
  }
}

template <typename T>
SparseAttnKernel<T>::SparseAttnKernel(const OrtApi&, const OrtKernelInfo* info)
    : op_(kSparseAttnName, NodeName(Ort::ConstKernelInfo(info))) {
  Ort::ConstKernelInfo ki(info);
  heads_ = ReadHeadAttributes(ki, op_);
  const int64_t default_window = 128, default_window_cache = 0;
  window_ = static_cast<int>(ReadIntAttribute(ki, op_, "window", &default_window, 1));
  const int64_t window_cache = ReadIntAttribute(ki, op_, "window_cache", &default_window_cache, 0);
  if (window_cache > 1) op_.Fail("attribute 'window_cache' must be 0 or 1, got " + std::to_string(window_cache));
  window_cache_ = window_cache == 1;
  const std::string combine = ReadStringAttribute(ki, "combine", "union");
  if (combine == "union") {
    combine_ = Combine::kUnion;
  } else if (combine == "gate") {
    combine_ = Combine::kGate;
  } else {
    op_.Fail("attribute 'combine' must be \"union\" or \"gate\", got \"" + combine + "\"");
  }
}

template <typename T>
OrtStatusPtr SparseAttnKernel<T>::ComputeV2(OrtKernelContext* context) const {
  return GuardStatus([&] {
    Ort::KernelContext ctx(context);
    Compute(ctx);
  });
}

template <typename T>
void SparseAttnKernel<T>::Compute(Ort::KernelContext& ctx) const {
  const auto type = ElementType<T>::kOnnx;
  const TensorInput query = ReadInput(ctx, kQuery, "query");
  const TensorInput key = ReadInput(ctx, kKey, "key");
  const TensorInput value = ReadInput(ctx, kValue, "value");
  const TensorInput past_key = ReadInput(ctx, kPastKey, "past_key");
  const TensorInput past_value = ReadInput(ctx, kPastValue, "past_value");
  const TensorInput shared_key = ReadInput(ctx, kSharedKey, "shared_key");
  const TensorInput shared_value = ReadInput(ctx, kSharedValue, "shared_value");
  const TensorInput indices = ReadInput(ctx, kBlockIndices, "block_indices");
  const TensorInput mask = ReadInput(ctx, kMask, "attention_mask");
  const TensorInput gate = ReadInput(ctx, kGate, "gate");
  const TensorInput sinks = ReadInput(ctx, kSinks, "sinks");
  const TensorInput selected_key = ReadInput(ctx, kSelectedKey, "selected_key");
  const TensorInput selected_value = ReadInput(ctx, kSelectedValue, "selected_value");
  for (const TensorInput* t : {&query, &key, &value, &past_key, &past_value, &shared_key, &shared_value, &gate, &sinks,
                               &selected_key, &selected_value}) {
    CheckType(op_, *t, type);
  }
  CheckType(op_, indices, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
  if (!indices.present) op_.Fail("input 'block_indices' is required");

  const QkvShape qkv = CheckQkv(op_, heads_, query, key, value);
  const int B = qkv.batch, Hq = heads_.num_heads, Hkv = heads_.kv_num_heads, D = qkv.head_dim;
  const int64_t S = qkv.new_len;
  CheckPair(op_, past_key, past_value);
  CheckPair(op_, shared_key, shared_value);
  CheckPair(op_, selected_key, selected_value);

  // Total length T: from the shared cache, else the mask, else the own full-length cache.
  const int64_t own_past = past_key.present ? CheckCache(op_, past_key, B, Hkv, -1, D) : 0;
  int64_t total;
  if (shared_key.present) {
    total = CheckCache(op_, shared_key, B, Hkv, -1, D);
    CheckCache(op_, shared_value, B, Hkv, total, D, "the length of 'shared_key'");
    if (total < S) {
      op_.Fail("input 'shared_key' " + ShapeString(shared_key.shape) + " is shorter than the " + std::to_string(S) +
               " new tokens: it must be the full layer's present cache, which includes them");
    }
  } else if (window_cache_ && mask.present && mask.Rank() == 2) {
    total = mask.Dim(1);
  } else if (window_cache_) {
    op_.Fail("with window_cache=1 the total length comes from 'shared_key' or 'attention_mask'; neither is given");
  } else {
    total = own_past + S;
  }
  const int64_t past_total = total - S;
  if (past_total < 0) op_.Fail("total length " + std::to_string(total) + " is shorter than the new tokens");

  const int64_t expected_own_past = window_cache_ ? std::min<int64_t>(window_, past_total) : past_total;
  const std::string own_rule = window_cache_ ? "window_cache=1: min(window, total length - S)" : "total length - S";
  if (past_key.present) {
    CheckCache(op_, past_key, B, Hkv, expected_own_past, D, own_rule);
    CheckCache(op_, past_value, B, Hkv, expected_own_past, D, "the length of 'past_key'");
  } else if (expected_own_past != 0) {
    op_.Fail("inputs 'past_key'/'past_value' are missing but the total length " + std::to_string(total) + " implies " +
             std::to_string(expected_own_past) + " past tokens (" + own_rule + ")");
  }
  CheckMask(op_, mask, B, total);

  // Block indices [B, H_kv, S, K], every entry checked before the kernel touches memory.
  if (indices.Rank() != 4 || indices.Dim(0) != B || indices.Dim(1) != Hkv || indices.Dim(2) != S || indices.Dim(3) < 1) {
    op_.Fail("input 'block_indices' must be [B, kv_num_heads, S, K] = [" + std::to_string(B) + ", " +
             std::to_string(Hkv) + ", " + std::to_string(S) + ", K>=1], got " + ShapeString(indices.shape));
  }
  const int64_t K = indices.Dim(3);
  const int64_t bs = heads_.block_size;
  const int64_t num_blocks = (total + bs - 1) / bs;
  CheckBlockIndices(op_, indices.Data<int32_t>(), B, Hkv, S, K, num_blocks, total, heads_.block_size);

  if (selected_key.present) {
    const std::vector<int64_t> want{B, Hkv, S, K * bs, D};
    for (const TensorInput* t : {&selected_key, &selected_value}) {
      if (t->shape != want) {
        op_.Fail(std::string("input '") + t->name + "' must be [B, kv_num_heads, S, K*block_size, D] = " +
                 ShapeString(want) + ", got " + ShapeString(t->shape));
      }
    }
  }
  if (!shared_key.present && !selected_key.present && window_cache_) {
    op_.Fail("with window_cache=1 the own cache holds only the window, so the selected blocks need 'shared_key'/"
             "'shared_value' or 'selected_key'/'selected_value'");
  }

  // Gate and sinks.
  bool gate_per_channel = false;
  if (gate.present) {
    if (combine_ != Combine::kGate) op_.Fail("input 'gate' is only allowed with combine=\"gate\"");
    const std::vector<int64_t> per_head{B, S, 2LL * Hq}, per_channel{B, S, 2LL * Hq * D};
    if (gate.shape == per_channel && D != 1) {
      gate_per_channel = true;
    } else if (gate.shape != per_head) {
      op_.Fail("input 'gate' must be [B, S, 2*num_heads] = " + ShapeString(per_head) +
               " (per head) or [B, S, 2*num_heads*D] = " + ShapeString(per_channel) + " (per channel), got " +
               ShapeString(gate.shape));
    }
  }
  if (sinks.present) {
    const std::vector<int64_t> want{combine_ == Combine::kGate ? 2 : 1, Hq};
    if (sinks.shape != want) {
      op_.Fail("input 'sinks' must be " + ShapeString(want) + " for combine=\"" +
               (combine_ == Combine::kGate ? "gate" : "union") + "\", got " + ShapeString(sinks.shape));
    }
  }

  // Own cache: past ++ new. With a full-length cache that is the present output itself; with a window
  // cache it is scratch, and present keeps its tail.
  const int64_t own_len = own_past + S;
  const int64_t present_len = window_cache_ ? std::min<int64_t>(window_, own_len) : own_len;
  const std::vector<int64_t> present_shape{B, Hkv, present_len, D};
  auto present_key = ctx.GetOutput(kPresentKey, present_shape);
  auto present_value = ctx.GetOutput(kPresentValue, present_shape);
  std::vector<T> own_key_scratch, own_value_scratch;
  T* own_k = present_key.GetTensorMutableData<T>();
  T* own_v = present_value.GetTensorMutableData<T>();
  if (window_cache_) {
    own_key_scratch.resize(static_cast<size_t>(B) * Hkv * own_len * D);
    own_value_scratch.resize(own_key_scratch.size());
    own_k = own_key_scratch.data();
    own_v = own_value_scratch.data();
  }
  ConcatCache(past_key.present ? past_key.Data<T>() : nullptr, own_past, key.Data<T>(), qkv.kv_view, S, B, Hkv, D, own_k);
  ConcatCache(past_value.present ? past_value.Data<T>() : nullptr, own_past, value.Data<T>(), qkv.kv_view, S, B, Hkv, D,
              own_v);

  SparseAttnArgs<T> args;
  args.batch = B;
  args.num_heads = Hq;
  args.kv_num_heads = Hkv;
  args.head_dim = D;
  args.new_len = S;
  args.total_len = total;
  args.scale = ResolveScale(heads_.scale, D);
  args.block_size = heads_.block_size;
  args.window = window_;
  args.combine = combine_;
  args.query = query.Data<T>();
  args.query_view = qkv.query_view;
  args.own_key = own_k;
  args.own_value = own_v;
  args.own_capacity = own_len;
  args.own_len = own_len;
  args.own_start = total - own_len;
  if (selected_key.present) {
    args.selected_key = selected_key.Data<T>();
    args.selected_value = selected_value.Data<T>();
  } else if (shared_key.present) {
    args.sa_key = shared_key.Data<T>();
    args.sa_value = shared_value.Data<T>();
    args.sa_capacity = total;
  } else {
    args.sa_key = own_k;
    args.sa_value = own_v;
    args.sa_capacity = own_len;
  }
  args.block_indices = indices.Data<int32_t>();
  args.top_k = static_cast<int>(K);
  args.attention_mask = mask.present ? mask.Data<int64_t>() : nullptr;
  args.gate = gate.present ? gate.Data<T>() : nullptr;
  args.gate_per_channel = gate_per_channel;
  args.sinks = sinks.present ? sinks.Data<T>() : nullptr;
  auto output = ctx.GetOutput(kOutput, query.shape);
  args.output = output.GetTensorMutableData<T>();
  args.output_view = qkv.query_view;

  RunSparseAttnCpu(args, OrtExecutor(ctx));

  if (window_cache_) {
    CopyCacheTail(own_k, own_len, present_len, B, Hkv, D, present_key.GetTensorMutableData<T>());
    CopyCacheTail(own_v, own_len, present_len, B, Hkv, D, present_value.GetTensorMutableData<T>());
  }
}

template <typename T>
OrtStatusPtr SparseAttnOp<T>::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
  return GuardStatus([&] { *kernel = new SparseAttnKernel<T>(api, info); });
}

template <typename T>
ONNXTensorElementDataType SparseAttnOp<T>::GetInputType(size_t index) const {
  switch (index) {
    case kBlockIndices: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case kMask: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    default: return ElementType<T>::kOnnx;
  }
}

template <typename T>
OrtCustomOpInputOutputCharacteristic SparseAttnOp<T>::GetInputCharacteristic(size_t index) const {
  return index <= kValue || index == kBlockIndices ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

template struct SparseAttnOp<float>;
template struct SparseAttnOp<Half>;
template class SparseAttnKernel<float>;
template class SparseAttnKernel<Half>;

}  // namespace ops
}  // namespace hysparse
