#include "ops/attention_inputs.h"

#include <cmath>
#include <cstring>

namespace hysparse {
namespace ops {
namespace {

const char* TypeName(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    default: return "another type";
  }
}

std::string Quote(const char* name) { return std::string("'") + name + "'"; }

}  // namespace

int64_t TensorInput::Elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

TensorInput ReadInput(const Ort::KernelContext& ctx, size_t index, const char* name) {
  TensorInput in;
  in.name = name;
  if (index >= ctx.GetInputCount()) return in;
  Ort::ConstValue v = ctx.GetInput(index);
  if (v == nullptr) return in;
  auto info = v.GetTensorTypeAndShapeInfo();
  in.present = true;
  in.type = info.GetElementType();
  in.shape = info.GetShape();
  in.data = v.GetTensorRawData();
  return in;
}

namespace {

// The type an attribute of the node has. The custom-op API has no "type of attribute" query, so the
// typed getters are tried in turn: each fails both for a missing attribute and for one of another type.
enum class AttributeKind { kMissing, kInt, kFloat, kString, kOther };

bool Succeeded(OrtStatus* status) {
  if (status == nullptr) return true;
  Ort::GetApi().ReleaseStatus(status);
  return false;
}

AttributeKind ProbeAttribute(const Ort::ConstKernelInfo& info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  const OrtKernelInfo* raw = info;
  int64_t i = 0;
  if (Succeeded(api.KernelInfoGetAttribute_int64(raw, name, &i))) return AttributeKind::kInt;
  float f = 0.f;
  if (Succeeded(api.KernelInfoGetAttribute_float(raw, name, &f))) return AttributeKind::kFloat;
  size_t size = 0;
  if (Succeeded(api.KernelInfoGetAttribute_string(raw, name, nullptr, &size))) return AttributeKind::kString;
  size = 0;
  if (Succeeded(api.KernelInfoGetAttributeArray_int64(raw, name, nullptr, &size))) return AttributeKind::kOther;
  size = 0;
  if (Succeeded(api.KernelInfoGetAttributeArray_float(raw, name, nullptr, &size))) return AttributeKind::kOther;
  return AttributeKind::kMissing;
}

const char* KindName(AttributeKind kind) {
  switch (kind) {
    case AttributeKind::kInt: return "an int";
    case AttributeKind::kFloat: return "a float";
    case AttributeKind::kString: return "a string";
    default: return "a list or tensor";
  }
}

// Called when the getter of `want` failed: a missing attribute returns (the caller takes the default
// or reports it required); one of another type is an error.
void CheckNotOtherType(const Ort::ConstKernelInfo& info, const OpContext& op, const char* name, AttributeKind want) {
  const AttributeKind got = ProbeAttribute(info, name);
  if (got == AttributeKind::kMissing) return;
  op.Fail("attribute " + Quote(name) + " must be " + KindName(want) + ", got " + KindName(got));
}

}  // namespace

int64_t ReadIntAttribute(const Ort::ConstKernelInfo& info, const OpContext& op, const char* name,
                         const int64_t* default_value, int64_t min_value, int64_t max_value) {
  int64_t value;
  try {
    value = info.GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    CheckNotOtherType(info, op, name, AttributeKind::kInt);
    if (!default_value) op.Fail("required attribute " + Quote(name) + " (int) is missing");
    value = *default_value;
  }
  if (value < min_value) {
    op.Fail("attribute " + Quote(name) + " must be >= " + std::to_string(min_value) + ", got " +
            std::to_string(value));
  }
  if (value > max_value) {
    op.Fail("attribute " + Quote(name) + " must be <= " + std::to_string(max_value) + ", got " + std::to_string(value));
  }
  return value;
}

float ReadFloatAttribute(const Ort::ConstKernelInfo& info, const OpContext& op, const char* name, float default_value) {
  try {
    return info.GetAttribute<float>(name);
  } catch (const Ort::Exception&) {
    CheckNotOtherType(info, op, name, AttributeKind::kFloat);
    return default_value;
  }
}

std::string ReadStringAttribute(const Ort::ConstKernelInfo& info, const OpContext& op, const char* name,
                                const std::string& default_value) {
  try {
    return info.GetAttribute<std::string>(name);
  } catch (const Ort::Exception&) {
    CheckNotOtherType(info, op, name, AttributeKind::kString);
    return default_value;
  }
}

HeadAttributes ReadHeadAttributes(const Ort::ConstKernelInfo& info, const OpContext& op) {
  HeadAttributes a;
  a.num_heads = static_cast<int>(ReadIntAttribute(info, op, "num_heads", nullptr, 1));
  a.kv_num_heads = static_cast<int>(ReadIntAttribute(info, op, "kv_num_heads", nullptr, 1));
  if (a.num_heads % a.kv_num_heads != 0) {
    op.Fail("attribute 'kv_num_heads' (" + std::to_string(a.kv_num_heads) + ") must divide 'num_heads' (" +
            std::to_string(a.num_heads) + ")");
  }
  a.scale = ReadFloatAttribute(info, op, "scale", 0.f);
  if (!std::isfinite(a.scale) || a.scale < 0.f) {
    op.Fail("attribute 'scale' must be a finite value >= 0 (0 = 1/sqrt(head size)), got " + std::to_string(a.scale));
  }
  const int64_t default_block = 64;
  a.block_size = static_cast<int>(ReadIntAttribute(info, op, "block_size", &default_block, 1, kMaxBlockSize));
  return a;
}

void CheckType(const OpContext& op, const TensorInput& input, ONNXTensorElementDataType type) {
  if (input.present && input.type != type) {
    op.Fail("input " + Quote(input.name) + " must be " + TypeName(type) + ", got " + TypeName(input.type));
  }
}

QkvShape CheckQkv(const OpContext& op, const HeadAttributes& heads, const TensorInput& query,
                  const TensorInput& key, const TensorInput& value) {
  QkvShape s;
  const size_t rank = query.Rank();
  if (rank != 3 && rank != 4) {
    op.Fail("input 'query' must be 3-D [B, S, num_heads*D] or 4-D [B, num_heads, S, D], got shape " +
            ShapeString(query.shape));
  }
  for (const TensorInput* t : {&key, &value}) {
    if (t->Rank() != rank) {
      op.Fail("input " + Quote(t->name) + " must have the rank of 'query' (" + std::to_string(rank) + "), got shape " +
              ShapeString(t->shape));
    }
  }
  if (key.shape != value.shape) {
    op.Fail("inputs 'key' and 'value' must have the same shape, got " + ShapeString(key.shape) + " and " +
            ShapeString(value.shape));
  }
  s.bnsh = rank == 4;
  const int64_t batch = query.Dim(0);
  int64_t seq, head_dim;
  if (s.bnsh) {
    if (query.Dim(1) != heads.num_heads) {
      op.Fail("input 'query' " + ShapeString(query.shape) + ": dimension 1 must be num_heads = " +
              std::to_string(heads.num_heads));
    }
    seq = query.Dim(2);
    head_dim = query.Dim(3);
    const std::vector<int64_t> want{batch, heads.kv_num_heads, seq, head_dim};
    if (key.shape != want) {
      op.Fail("input 'key' must be [B, kv_num_heads, S, D] = " + ShapeString(want) + ", got " + ShapeString(key.shape));
    }
  } else {
    seq = query.Dim(1);
    if (query.Dim(2) % heads.num_heads != 0) {
      op.Fail("input 'query' " + ShapeString(query.shape) + ": last dimension must be divisible by num_heads = " +
              std::to_string(heads.num_heads));
    }
    head_dim = query.Dim(2) / heads.num_heads;
    const std::vector<int64_t> want{batch, seq, heads.kv_num_heads * head_dim};
    if (key.shape != want) {
      op.Fail("input 'key' must be [B, S, kv_num_heads*D] = " + ShapeString(want) + ", got " + ShapeString(key.shape));
    }
  }
  if (batch < 1 || seq < 1) op.Fail("input 'query' " + ShapeString(query.shape) + " must have B >= 1 and S >= 1");
  if (head_dim < 1 || head_dim > 512) {
    op.Fail("head size D must be in [1, 512], got " + std::to_string(head_dim) + " from 'query' " + ShapeString(query.shape));
  }
  if (batch > INT32_MAX) op.Fail("batch size too large: " + std::to_string(batch));
  s.batch = static_cast<int>(batch);
  s.new_len = seq;
  s.head_dim = static_cast<int>(head_dim);
  if (s.bnsh) {
    s.query_view = HeadView::Bnsh(seq, heads.num_heads, head_dim);
    s.kv_view = HeadView::Bnsh(seq, heads.kv_num_heads, head_dim);
  } else {
    s.query_view = HeadView::Bsnh(seq, heads.num_heads, head_dim);
    s.kv_view = HeadView::Bsnh(seq, heads.kv_num_heads, head_dim);
  }
  return s;
}

int64_t CheckCache(const OpContext& op, const TensorInput& cache, int batch, int kv_heads,
                   int64_t expected_length, int head_dim, const std::string& rule) {
  if (cache.Rank() != 4 || cache.Dim(0) != batch || cache.Dim(1) != kv_heads || cache.Dim(3) != head_dim ||
      cache.Dim(2) < 0) {
    op.Fail("input " + Quote(cache.name) + " must be [B, kv_num_heads, length, D] = [" + std::to_string(batch) + ", " +
            std::to_string(kv_heads) + ", length, " + std::to_string(head_dim) + "], got " + ShapeString(cache.shape));
  }
  if (expected_length >= 0 && cache.Dim(2) != expected_length) {
    op.Fail("input " + Quote(cache.name) + " " + ShapeString(cache.shape) + " must have length " +
            std::to_string(expected_length) + (rule.empty() ? "" : " (" + rule + ")") + ", got " +
            std::to_string(cache.Dim(2)));
  }
  return cache.Dim(2);
}

void CheckPair(const OpContext& op, const TensorInput& a, const TensorInput& b) {
  if (a.present != b.present) {
    const TensorInput& given = a.present ? a : b;
    const TensorInput& missing = a.present ? b : a;
    op.Fail("input " + Quote(given.name) + " is given without " + Quote(missing.name) + ": give both or neither");
  }
}

void CheckMaskShape(const OpContext& op, const TensorInput& mask, int batch, int64_t total_len) {
  if (!mask.present) return;
  CheckType(op, mask, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  const std::vector<int64_t> want{batch, total_len};
  if (mask.shape != want) {
    op.Fail("input 'attention_mask' must be [B, total length] = " + ShapeString(want) + ", got " +
            ShapeString(mask.shape));
  }
}

void CheckMaskValues(const OpContext& op, const TensorInput& mask) {
  if (!mask.present) return;
  const int64_t total_len = mask.Dim(1);
  const int64_t* m = mask.Data<int64_t>();
  for (int64_t i = 0; i < mask.Elements(); ++i) {
    if (m[i] != 0 && m[i] != 1) FailMaskValue(op, i, m[i], total_len);
  }
}

void FailMaskValue(const OpContext& op, int64_t element, int64_t value, int64_t total_len) {
  op.Fail("input 'attention_mask' must hold only 0 and 1, got " + std::to_string(value) + " at (b=" +
          std::to_string(element / total_len) + ", position " + std::to_string(element % total_len) + ")");
}

float ResolveScale(float scale, int head_dim) {
  return scale > 0.f ? scale : 1.f / std::sqrt(static_cast<float>(head_dim));
}

AttentionDims CallDims(const HeadAttributes& heads, const QkvShape& qkv, int64_t total_len) {
  return AttentionDims{qkv.batch, heads.num_heads, heads.kv_num_heads, qkv.head_dim, qkv.new_len, total_len,
                       ResolveScale(heads.scale, qkv.head_dim), heads.block_size};
}

template <typename T>
void ConcatCaches(const CacheAppend<T>& key, const CacheAppend<T>& value, int64_t past_len, const HeadView& new_view,
                  int64_t new_len, int64_t keep, int batch, int kv_heads, int head_dim, const Executor& exec) {
  const int64_t total = past_len + new_len;
  const int64_t first = total - keep;  // first position kept
  const size_t row_bytes = sizeof(T) * static_cast<size_t>(head_dim);
  const size_t planes = static_cast<size_t>(batch) * kv_heads;
  // One task per (cache, b, h) plane: a long past makes this copy as costly as decode attention
  // itself, so it must not run on one thread while the pool waits.
  exec.ParallelFor(2 * planes, [&](size_t task) {
    const CacheAppend<T>& cache = task < planes ? key : value;
    const size_t plane = task % planes;
    const int64_t b = static_cast<int64_t>(plane) / kv_heads, h = static_cast<int64_t>(plane) % kv_heads;
    T* out = cache.dst + static_cast<int64_t>(plane) * keep * head_dim;
    if (first < past_len) {
      std::memcpy(out, cache.past + (static_cast<int64_t>(plane) * past_len + first) * head_dim,
                  row_bytes * static_cast<size_t>(past_len - first));
    }
    for (int64_t s = std::max<int64_t>(0, first - past_len); s < new_len; ++s) {
      std::memcpy(out + (past_len + s - first) * head_dim, cache.fresh + new_view.Offset(b, h, s), row_bytes);
    }
  });
}

template <typename T>
void CopyCacheTail(const T* src, int64_t len, int64_t keep, int batch, int kv_heads, int head_dim, T* dst) {
  const int64_t rows = static_cast<int64_t>(batch) * kv_heads;
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * keep * head_dim, src + (r * len + (len - keep)) * head_dim,
                sizeof(T) * static_cast<size_t>(keep * head_dim));
  }
}

template void ConcatCaches<float>(const CacheAppend<float>&, const CacheAppend<float>&, int64_t, const HeadView&,
                                  int64_t, int64_t, int, int, int, const Executor&);
template void ConcatCaches<Half>(const CacheAppend<Half>&, const CacheAppend<Half>&, int64_t, const HeadView&,
                                 int64_t, int64_t, int, int, int, const Executor&);
template void CopyCacheTail<float>(const float*, int64_t, int64_t, int, int, int, float*);
template void CopyCacheTail<Half>(const Half*, int64_t, int64_t, int, int, int, Half*);

void OrtExecutor::ParallelFor(size_t n, const std::function<void(size_t)>& fn) const {
  if (n == 0) return;
  if (n == 1) {
    fn(0);
    return;
  }
  auto trampoline = [](void* user, size_t i) { (*static_cast<const std::function<void(size_t)>*>(user))(i); };
  ctx_.ParallelFor(trampoline, n, 0, const_cast<std::function<void(size_t)>*>(&fn));
}

std::string NodeName(const Ort::ConstKernelInfo& info) {
  try {
    std::string name = info.GetNodeName();
    return name.empty() ? "?" : name;
  } catch (const Ort::Exception&) {
    return "?";
  }
}

}  // namespace ops
}  // namespace hysparse
