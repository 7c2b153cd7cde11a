#include "ops/sparse_attn_op.h"

#include "kernels/cuda/bfloat16.h"
#include "ops/shared_buffer.h"

#include <algorithm>
#include <memory>
#include <vector>

namespace hysparse {
namespace ops {
void FailBlockIndexRow(const OpContext& op, int64_t row, BlockIndexProblem problem, int64_t value, int64_t previous,
                       const IndexLayout& layout) {
  const int64_t s = row % layout.new_len, h = (row / layout.new_len) % layout.kv_heads,
                b = row / (layout.new_len * layout.kv_heads);
  std::string what;
  switch (problem) {
    case BlockIndexProblem::kBelowMinusOne:
      what = "holds " + std::to_string(value) + " (only -1 may pad a row)";
      break;
    case BlockIndexProblem::kOutOfRange:
      what = "holds block " + std::to_string(value) + ", but the key cache has " + std::to_string(layout.NumBlocksOf(b)) +
             " blocks (length " + std::to_string(layout.TotalOf(b)) + ", block_size " +
             std::to_string(layout.block_size) + ")";
      break;
    case BlockIndexProblem::kAfterPadding:
      what = "holds block " + std::to_string(value) + " after a -1 (padding must come last)";
      break;
    case BlockIndexProblem::kNotAscending:
      what = "is not strictly ascending (block " + std::to_string(value) + " after " + std::to_string(previous) + ")";
      break;
  }
  op.Fail("input 'block_indices' row (b=" + std::to_string(b) + ", h=" + std::to_string(h) + ", s=" +
          std::to_string(s) + ") " + what);
}

void CheckBlockIndices(const OpContext& op, const int32_t* indices, const IndexLayout& layout) {
  const int64_t rows = layout.batch * layout.kv_heads * layout.new_len;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = indices + r * layout.top_k;
    const int64_t num_blocks = layout.NumBlocksOf(r / (layout.kv_heads * layout.new_len));
    int64_t previous = -1;
    bool padding = false;
    for (int64_t k = 0; k < layout.top_k; ++k) {
      const int64_t idx = row[k];
      if (idx == -1) {
        padding = true;
        continue;
      }
      if (idx < -1) FailBlockIndexRow(op, r, BlockIndexProblem::kBelowMinusOne, idx, previous, layout);
      if (idx >= num_blocks) FailBlockIndexRow(op, r, BlockIndexProblem::kOutOfRange, idx, previous, layout);
      if (padding) FailBlockIndexRow(op, r, BlockIndexProblem::kAfterPadding, idx, previous, layout);
      if (idx <= previous) FailBlockIndexRow(op, r, BlockIndexProblem::kNotAscending, idx, previous, layout);
      previous = idx;
    }
  }
}

IndexLayout SparseAttnShape::Indices(int kv_heads, int block_size) const {
  return IndexLayout{qkv.batch, kv_heads, qkv.new_len, top_k, num_blocks, total_len, block_size};
}

SparseAttnAttributes ReadSparseAttnAttributes(const Ort::ConstKernelInfo& info, const OpContext& op) {
  SparseAttnAttributes a;
  a.heads = ReadHeadAttributes(info, op);
  const int64_t default_window = 128, default_window_cache = 0;
  a.window = static_cast<int>(ReadIntAttribute(info, op, "window", &default_window, 1));
  const int64_t window_cache = ReadIntAttribute(info, op, "window_cache", &default_window_cache, 0);
  if (window_cache > 1) op.Fail("attribute 'window_cache' must be 0 or 1, got " + std::to_string(window_cache));
  a.window_cache = window_cache == 1;
  const std::string combine = ReadStringAttribute(info, op, "combine", "union");
  if (combine == "union") {
    a.combine = Combine::kUnion;
  } else if (combine == "gate") {
    a.combine = Combine::kGate;
  } else {
    op.Fail("attribute 'combine' must be \"union\" or \"gate\", got \"" + combine + "\"");
  }
  return a;
}

SparseAttnInputs::SparseAttnInputs(const Ort::KernelContext& ctx) {
  ReadInputs(ctx, SparseAttnSchema::kInputs, &query, &key, &value, &past_key, &past_value, &shared_key, &shared_value,
             &block_indices, &mask, &gate, &sinks, &selected_key, &selected_value, &seqlens_k, &total_sequence_length);
}

SparseAttnShape CheckSparseAttnInputs(const OpContext& op, const SparseAttnAttributes& attrs, const SparseAttnInputs& in,
                                      ONNXTensorElementDataType type) {
  const HeadAttributes& heads = attrs.heads;
  for (const TensorInput* t : {&in.query, &in.key, &in.value, &in.past_key, &in.past_value, &in.shared_key,
                               &in.shared_value, &in.gate, &in.sinks, &in.selected_key, &in.selected_value}) {
    CheckType(op, *t, type);
  }
  if (!in.block_indices.present) op.Fail("input 'block_indices' is required");
  CheckType(op, in.block_indices, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);

  SparseAttnShape shape;
  shape.qkv = CheckQkv(op, heads, in.query, in.key, in.value);
  const int B = shape.qkv.batch, Hq = heads.num_heads, Hkv = heads.kv_num_heads, D = shape.qkv.head_dim;
  const int64_t S = shape.qkv.new_len;
  CheckPair(op, in.past_key, in.past_value);
  CheckPair(op, in.shared_key, in.shared_value);
  CheckPair(op, in.selected_key, in.selected_value);

  shape.shared_buffer = CheckSharedBufferInputs(op, in.seqlens_k, in.total_sequence_length, B);
  // Total length T: from the shared cache, else (window cache) the mask, else the own full-length cache.
  const int64_t own_past = in.past_key.present ? CheckCache(op, in.past_key, B, Hkv, -1, D) : 0;
  int64_t total;
  if (shape.shared_buffer) {
    // The own past is the buffer; its capacity stands in for T in every shape below.
    if (attrs.window_cache) {
      op.Fail("attribute 'window_cache' must be 0 in shared-buffer mode (seqlens_k): the own cache is the shared buffer");
    }
    if (in.mask.present) {
      op.Fail("input 'attention_mask' must be absent in shared-buffer mode: seqlens_k gives each row's length");
    }
    if (!in.past_key.present) {
      op.Fail("shared-buffer mode (seqlens_k) needs 'past_key'/'past_value': the [B, kv_num_heads, capacity, D] buffer");
    }
    CheckCache(op, in.past_value, B, Hkv, own_past, D, "the length of 'past_key'");
    if (in.shared_key.present) {
      const std::string rule = "shared-buffer mode: the capacity of 'past_key'";
      CheckCache(op, in.shared_key, B, Hkv, own_past, D, rule);
      CheckCache(op, in.shared_value, B, Hkv, own_past, D, rule);
    }
    total = own_past;
  } else if (in.shared_key.present) {
    total = CheckCache(op, in.shared_key, B, Hkv, -1, D);
    CheckCache(op, in.shared_value, B, Hkv, total, D, "the length of 'shared_key'");
    if (total < S) {
      op.Fail("input 'shared_key' " + ShapeString(in.shared_key.shape) + " is shorter than the " + std::to_string(S) +
              " new tokens: it must be the full layer's present cache, which includes them");
    }
  } else if (attrs.window_cache && in.mask.present && in.mask.Rank() == 2) {
    total = in.mask.Dim(1);
  } else if (attrs.window_cache) {
    op.Fail("with window_cache=1 the total length comes from 'shared_key' or 'attention_mask'; neither is given");
  } else {
    total = own_past + S;
  }
  if (!shape.shared_buffer) {
    if (total < S) {
      op.Fail("total length " + std::to_string(total) + " is shorter than the " + std::to_string(S) + " new tokens");
    }
    const int64_t past_total = total - S;
    const int64_t expected_own_past = attrs.window_cache ? std::min<int64_t>(attrs.window, past_total) : past_total;
    const std::string own_rule = attrs.window_cache ? "window_cache=1: min(window, total length - S)" : "total length - S";
    if (in.past_key.present) {
      CheckCache(op, in.past_key, B, Hkv, expected_own_past, D, own_rule);
      CheckCache(op, in.past_value, B, Hkv, expected_own_past, D, "the length of 'past_key'");
    } else if (expected_own_past != 0) {
      op.Fail("inputs 'past_key'/'past_value' are missing but the total length " + std::to_string(total) + " implies " +
              std::to_string(expected_own_past) + " past tokens (" + own_rule + ")");
    }
    CheckMaskShape(op, in.mask, B, total);
  }
  shape.total_len = total;
  shape.own_past = own_past;
  shape.own_len = shape.shared_buffer ? own_past : own_past + S;
  shape.present_len = attrs.window_cache ? std::min<int64_t>(attrs.window, shape.own_len) : shape.own_len;

  const TensorInput& indices = in.block_indices;
  if (indices.Rank() != 4 || indices.Dim(0) != B || indices.Dim(1) != Hkv || indices.Dim(2) != S || indices.Dim(3) < 1) {
    op.Fail("input 'block_indices' must be [B, kv_num_heads, S, K] = [" + std::to_string(B) + ", " +
            std::to_string(Hkv) + ", " + std::to_string(S) + ", K>=1], got " + ShapeString(indices.shape));
  }
  shape.top_k = indices.Dim(3);
  const int64_t bs = heads.block_size;
  shape.num_blocks = (total + bs - 1) / bs;

  if (in.selected_key.present) {
    const std::vector<int64_t> want{B, Hkv, S, shape.top_k * bs, D};
    for (const TensorInput* t : {&in.selected_key, &in.selected_value}) {
      if (t->shape != want) {
        op.Fail(std::string("input '") + t->name + "' must be [B, kv_num_heads, S, K*block_size, D] = " +
                ShapeString(want) + ", got " + ShapeString(t->shape));
      }
    }
    shape.sa_source = SaSource::kSelected;
  } else if (in.shared_key.present) {
    shape.sa_source = SaSource::kShared;
  } else if (attrs.window_cache) {
    op.Fail("with window_cache=1 the own cache holds only the window, so the selected blocks need 'shared_key'/"
            "'shared_value' or 'selected_key'/'selected_value'");
  } else {
    shape.sa_source = SaSource::kOwn;
  }

  if (in.gate.present) {
    if (attrs.combine != Combine::kGate) op.Fail("input 'gate' is only allowed with combine=\"gate\"");
    const std::vector<int64_t> per_head{B, S, 2LL * Hq}, per_channel{B, S, 2LL * Hq * D};
    if (in.gate.shape == per_channel && D != 1) {
      shape.gate_per_channel = true;
    } else if (in.gate.shape != per_head) {
      op.Fail("input 'gate' must be [B, S, 2*num_heads] = " + ShapeString(per_head) +
              " (per head) or [B, S, 2*num_heads*D] = " + ShapeString(per_channel) + " (per channel), got " +
              ShapeString(in.gate.shape));
    }
  }
  if (in.sinks.present) {
    const bool gated = attrs.combine == Combine::kGate;
    const std::vector<int64_t> want{gated ? 2 : 1, Hq};
    if (in.sinks.shape != want) {
      op.Fail("input 'sinks' must be " + ShapeString(want) + " for combine=\"" + (gated ? "gate" : "union") +
              "\", got " + ShapeString(in.sinks.shape));
    }
  }
  return shape;
}

template <typename T>
SparseAttnArgs<T> MakeSparseAttnArgs(const SparseAttnAttributes& attrs, const SparseAttnInputs& in,
                                     const SparseAttnShape& shape, const T* own_key, const T* own_value, T* output) {
  const QkvShape& qkv = shape.qkv;
  SparseAttnArgs<T> args;
  args.dims() = CallDims(attrs.heads, qkv, shape.total_len);
  args.window = attrs.window;
  args.combine = attrs.combine;
  args.query = in.query.Data<T>();
  args.query_view = qkv.query_view;
  args.own_key = own_key;
  args.own_value = own_value;
  args.own_capacity = shape.own_len;
  args.own_len = shape.own_len;
  args.own_start = shape.total_len - shape.own_len;
  switch (shape.sa_source) {
    case SaSource::kSelected:
      args.selected_key = in.selected_key.Data<T>();
      args.selected_value = in.selected_value.Data<T>();
      break;
    case SaSource::kShared:
      args.sa_key = in.shared_key.Data<T>();
      args.sa_value = in.shared_value.Data<T>();
      args.sa_capacity = shape.total_len;
      break;
    case SaSource::kOwn:
      args.sa_key = own_key;
      args.sa_value = own_value;
      args.sa_capacity = shape.own_len;
      break;
  }
  args.block_indices = in.block_indices.Data<int32_t>();
  args.top_k = static_cast<int>(shape.top_k);
  args.attention_mask = in.mask.present ? in.mask.Data<int64_t>() : nullptr;
  args.gate = in.gate.present ? in.gate.Data<T>() : nullptr;
  args.gate_per_channel = shape.gate_per_channel;
  args.sinks = in.sinks.present ? in.sinks.Data<T>() : nullptr;
  args.output = output;
  args.output_view = qkv.query_view;
  return args;
}

namespace {

// Scratch for the window-cache path's past ++ new, which every decode step needs. Reused per thread
// up to kKeptScratchElements, so a decode loop neither allocates nor zero-fills (nor page-faults)
// each step; a larger request (a long prompt) gets a one-off uninitialised allocation in `owner`.
template <typename T>
T* WindowScratch(size_t elements, std::unique_ptr<T[]>& owner) {
  constexpr size_t kKeptScratchElements = size_t{16} << 20;
  if (elements > kKeptScratchElements) {
    owner.reset(new T[elements]);
    return owner.get();
  }
  thread_local std::unique_ptr<T[]> kept;
  thread_local size_t kept_elements = 0;
  if (kept_elements < elements) {
    kept.reset(new T[elements]);
    kept_elements = elements;
  }
  return kept.get();
}

// One kernel call per row b with batch 1, the row's total length and its real new tokens; the own
// cache and the SA source are row b of their buffers (capacities unchanged). The per-token inputs of
// a right-padded prompt row (block_indices, selected_*) are gathered into compact scratch for the
// kernel; its padding tokens get zero output.
template <typename T>
void ComputeSharedBuffer(const SparseAttnCpuNode& node, Ort::KernelContext& ctx, const SparseAttnInputs& in,
                         const SparseAttnShape& shape) {
  const OpContext& op = node.op;
  const SparseAttnAttributes& attrs = node.attrs;
  const QkvShape& qkv = shape.qkv;
  const int B = qkv.batch, Hkv = attrs.heads.kv_num_heads, D = qkv.head_dim;
  const SharedBufferRows rows = ReadSharedBufferRows(op, in.seqlens_k, in.total_sequence_length, in.past_key, qkv.new_len);
  IndexLayout layout = shape.Indices(Hkv, attrs.heads.block_size);
  layout.row_total_len = rows.total.data();
  CheckBlockIndices(op, in.block_indices.Data<int32_t>(), layout);

  const int64_t capacity = rows.capacity, S = qkv.new_len, K = shape.top_k;
  const std::vector<int64_t> present_shape{B, Hkv, capacity, D};
  T* present_key = ctx.GetOutput(kSparsePresentKey, present_shape).GetTensorMutableData<T>();
  T* present_value = ctx.GetOutput(kSparsePresentValue, present_shape).GetTensorMutableData<T>();
  UpdateSharedBuffer(in.past_key.Data<T>(), present_key, in.key.Data<T>(), qkv.kv_view, rows, B, Hkv, D);
  UpdateSharedBuffer(in.past_value.Data<T>(), present_value, in.value.Data<T>(), qkv.kv_view, rows, B, Hkv, D);

  T* output = ctx.GetOutput(kSparseOutput, in.query.shape).GetTensorMutableData<T>();
  const SparseAttnArgs<T> all = MakeSparseAttnArgs<T>(attrs, in, shape, present_key, present_value, output);
  const int64_t buffer_row = Hkv * capacity * D, selected_width = K * attrs.heads.block_size * D;
  const int64_t gate_width = all.gate_per_channel ? 2LL * all.num_heads * D : 2LL * all.num_heads;
  const OrtExecutor exec(ctx);
  for (int b = 0; b < B; ++b) {
    SparseAttnArgs<T> row = RowArgs(all, rows, b);
    row.own_key += b * buffer_row;
    row.own_value += b * buffer_row;
    row.own_start = 0;
    row.own_len = row.total_len;
    if (row.sa_key) {
      row.sa_key += b * buffer_row;
      row.sa_value += b * buffer_row;
    }
    if (row.gate) row.gate += b * S * gate_width;
    const int64_t real = row.new_len;

    // The kernel reads per-token inputs as [H_kv, real, width]: the node's rows as they are when
    // nothing is padded, else a compact copy of the real tokens' rows.
    std::vector<int32_t> indices_scratch;
    std::vector<T> selected_key_scratch, selected_value_scratch;
    auto tokens = [&](const auto* node_input, int64_t width, auto& scratch) {
      const auto* node_row = node_input + b * Hkv * S * width;
      if (real == S) return node_row;
      scratch.resize(static_cast<size_t>(Hkv * real * width));
      CopyHeadRows(node_row, S * width, width, scratch.data(), real * width, width, Hkv, real, width);
      return static_cast<decltype(node_row)>(scratch.data());
    };
    row.block_indices = tokens(all.block_indices, K, indices_scratch);
    if (row.selected_key) {
      row.selected_key = tokens(all.selected_key, selected_width, selected_key_scratch);
      row.selected_value = tokens(all.selected_value, selected_width, selected_value_scratch);
    }
    RunSparseAttnCpu(row, exec);
    ZeroPaddingOutput(output, all.output_view, b, all.num_heads, D, real, S);
  }
}

}  // namespace

template <typename T>
void ComputeSparseAttnCpu(const SparseAttnCpuNode& node, Ort::KernelContext& ctx) {
  const OpContext& op = node.op;
  const SparseAttnAttributes& attrs = node.attrs;
  const SparseAttnInputs in(ctx);
  const SparseAttnShape shape = CheckSparseAttnInputs(op, attrs, in, ElementType<T>::kOnnx);
  const QkvShape& qkv = shape.qkv;
  const int B = qkv.batch, Hkv = attrs.heads.kv_num_heads, D = qkv.head_dim;
  if (shape.shared_buffer) {
    ComputeSharedBuffer<T>(node, ctx, in, shape);
    return;
  }
  CheckMaskValues(op, in.mask);
  CheckBlockIndices(op, in.block_indices.Data<int32_t>(), shape.Indices(Hkv, attrs.heads.block_size));

  // Own cache = past ++ new. With a full-length cache that is the present output itself. With a
  // window cache, present keeps only the tail: when that tail holds every own position the kernel
  // reads (the windows of all new tokens: always so in decode), past ++ new goes straight into
  // present and the kernel reads it there; otherwise (a prompt longer than the window) past ++ new is
  // built in scratch and present gets its tail afterwards.
  const std::vector<int64_t> present_shape{B, Hkv, shape.present_len, D};
  T* present_key = ctx.GetOutput(kSparsePresentKey, present_shape).GetTensorMutableData<T>();
  T* present_value = ctx.GetOutput(kSparsePresentValue, present_shape).GetTensorMutableData<T>();
  const OrtExecutor exec(ctx);
  const int64_t total = shape.total_len, S = qkv.new_len;
  const int64_t first_window = std::max<int64_t>(total - S - attrs.window + 1, total - shape.own_len);
  const bool present_holds_windows = total - shape.present_len <= std::max<int64_t>(0, first_window);
  const bool use_scratch = attrs.window_cache && !present_holds_windows;
  const int64_t own_len = use_scratch ? shape.own_len : shape.present_len;
  T* own_k = present_key;
  T* own_v = present_value;
  std::unique_ptr<T[]> own_scratch_owner;
  if (use_scratch) {
    const size_t elements = static_cast<size_t>(B) * Hkv * shape.own_len * D;
    T* scratch = WindowScratch<T>(2 * elements, own_scratch_owner);
    own_k = scratch;
    own_v = scratch + elements;
  }
  const CacheAppend<T> key{in.past_key.present ? in.past_key.Data<T>() : nullptr, in.key.Data<T>(), own_k};
  const CacheAppend<T> value{in.past_value.present ? in.past_value.Data<T>() : nullptr, in.value.Data<T>(), own_v};
  ConcatCaches(key, value, shape.own_past, qkv.kv_view, S, own_len, B, Hkv, D, exec);

  T* output = ctx.GetOutput(kSparseOutput, in.query.shape).GetTensorMutableData<T>();
  SparseAttnArgs<T> args = MakeSparseAttnArgs<T>(attrs, in, shape, own_k, own_v, output);
  args.own_capacity = args.own_len = own_len;
  args.own_start = total - own_len;
  RunSparseAttnCpu(args, exec);

  if (use_scratch) {
    CopyCacheTail(own_k, shape.own_len, shape.present_len, B, Hkv, D, present_key);
    CopyCacheTail(own_v, shape.own_len, shape.present_len, B, Hkv, D, present_value);
  }
}

template SparseAttnArgs<float> MakeSparseAttnArgs<float>(const SparseAttnAttributes&, const SparseAttnInputs&, const SparseAttnShape&, const float*, const float*, float*);
template SparseAttnArgs<Half> MakeSparseAttnArgs<Half>(const SparseAttnAttributes&, const SparseAttnInputs&, const SparseAttnShape&, const Half*, const Half*, Half*);
// bfloat16 is bound only by the CUDA glue.
template SparseAttnArgs<BFloat16> MakeSparseAttnArgs<BFloat16>(const SparseAttnAttributes&, const SparseAttnInputs&, const SparseAttnShape&, const BFloat16*, const BFloat16*, BFloat16*);
template void ComputeSparseAttnCpu<float>(const SparseAttnCpuNode&, Ort::KernelContext&);
template void ComputeSparseAttnCpu<Half>(const SparseAttnCpuNode&, Ort::KernelContext&);

}  // namespace ops
}  // namespace hysparse
