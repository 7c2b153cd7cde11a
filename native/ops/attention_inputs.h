// Checking and preparing the inputs both HySparse ops share: attributes, Q/K/V layouts, KV caches,
// attention masks, and the past ++ new cache copy. Everything here throws OpError with a message
// that names the op, the input and expected vs actual.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/attention_args.h"
#include "ops/op_errors.h"
#include "ops/ort_api.h"

namespace hysparse {
namespace ops {

// One input of the node as the op sees it: absent (optional and not given) or a tensor.
struct TensorInput {
  const char* name = "";
  bool present = false;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  const void* data = nullptr;

  int64_t Dim(size_t i) const { return shape[i]; }
  size_t Rank() const { return shape.size(); }
  int64_t Elements() const;
  template <typename T>
  const T* Data() const { return static_cast<const T*>(data); }
};

// Reads input `index` (absent when the node lists fewer inputs or an empty name there).
TensorInput ReadInput(const Ort::KernelContext& ctx, size_t index, const char* name);

// Limits of the attributes that size outputs (docs/ops.md "Errors"): block_size and top_k are read at
// session creation and refused outside [1, max].
constexpr int64_t kMaxBlockSize = 4096;
constexpr int64_t kMaxTopK = 65536;

// Integer/float/string attributes with defaults. A missing attribute takes the default; a required
// one (no default) is an error; an attribute given with another type (top_k as a float, scale as a
// string, ...) is an error naming it and both types, never silently its default.
int64_t ReadIntAttribute(const Ort::ConstKernelInfo& info, const OpContext& op, const char* name,
                         const int64_t* default_value, int64_t min_value, int64_t max_value = INT32_MAX);
float ReadFloatAttribute(const Ort::ConstKernelInfo& info, const OpContext& op, const char* name, float default_value);
std::string ReadStringAttribute(const Ort::ConstKernelInfo& info, const OpContext& op, const char* name,
                                const std::string& default_value);

// Attributes both ops take.
struct HeadAttributes {
  int num_heads = 0;
  int kv_num_heads = 0;
  float scale = 0.f;  // 0 = 1/sqrt(D), resolved per call
  int block_size = 64;
};
HeadAttributes ReadHeadAttributes(const Ort::ConstKernelInfo& info, const OpContext& op);

// The shapes of query/key/value after checking: 3-D [B,S,H*D] or 4-D [B,H,S,D].
struct QkvShape {
  int batch = 0;
  int64_t new_len = 0;  // S
  int head_dim = 0;     // D
  bool bnsh = false;    // 4-D layout
  HeadView query_view;
  HeadView kv_view;     // of key and value
};
QkvShape CheckQkv(const OpContext& op, const HeadAttributes& heads, const TensorInput& query,
                  const TensorInput& key, const TensorInput& value);

// Checks that `input` has element type `type`.
void CheckType(const OpContext& op, const TensorInput& input, ONNXTensorElementDataType type);

// Checks a [B, H_kv, length, D] cache. expected_length < 0 accepts any length. Returns the length.
int64_t CheckCache(const OpContext& op, const TensorInput& cache, int batch, int kv_heads,
                   int64_t expected_length, int head_dim, const std::string& rule = "");

// Checks that `a` and `b` are both given or both absent.
void CheckPair(const OpContext& op, const TensorInput& a, const TensorInput& b);

// Checks the shape and type of an int64 [B, T] mask (no data access: valid for device tensors).
void CheckMaskShape(const OpContext& op, const TensorInput& mask, int batch, int64_t total_len);
// Checks that a host-resident mask holds only 0 and 1.
void CheckMaskValues(const OpContext& op, const TensorInput& mask);
// Throws the OpError for a mask entry that is neither 0 nor 1 (shared with the CUDA glue).
[[noreturn]] void FailMaskValue(const OpContext& op, int64_t element, int64_t value, int64_t total_len);

// Resolves the scale attribute (0 = 1/sqrt(D)).
float ResolveScale(float scale, int head_dim);

// The kernel sizes of a checked call of either op, `total_len` long.
AttentionDims CallDims(const HeadAttributes& heads, const QkvShape& qkv, int64_t total_len);

// One cache's past, its new tokens and where their concatenation goes.
template <typename T>
struct CacheAppend {
  const T* past = nullptr;   // [B, H_kv, past_len, D], or null when past_len == 0
  const T* fresh = nullptr;  // the new tokens, read through the new-token view
  T* dst = nullptr;          // [B, H_kv, keep, D]
};

// Writes, for the key and the value cache alike, the last `keep` (<= past_len + S) positions of
// past ++ new into [B, H_kv, keep, D] `dst`; keep = past_len + S is the whole concatenation. Both
// caches are copied in one parallel pass over their (batch, head) planes: one hand-off to the thread
// pool per call, not one per cache.
template <typename T>
void ConcatCaches(const CacheAppend<T>& key, const CacheAppend<T>& value, int64_t past_len, const HeadView& new_view,
                  int64_t new_len, int64_t keep, int batch, int kv_heads, int head_dim, const Executor& exec);

// Copies the last `keep` positions of the [B, H_kv, len, D] buffer `src` into [B, H_kv, keep, D] `dst`.
template <typename T>
void CopyCacheTail(const T* src, int64_t len, int64_t keep, int batch, int kv_heads, int head_dim, T* dst);

// ORT's intra-op thread pool as a kernel Executor.
class OrtExecutor final : public Executor {
 public:
  explicit OrtExecutor(const Ort::KernelContext& ctx) : ctx_(ctx) {}
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn) const override;

 private:
  const Ort::KernelContext& ctx_;
};

// Runs `body`, turning OpError/Ort::Exception/std::exception into an OrtStatus (null on success).
template <typename F>
OrtStatusPtr GuardStatus(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const OpError& e) {
    return Ort::Status(e.what(), ORT_INVALID_ARGUMENT).release();
  } catch (const Ort::Exception& e) {
    return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
  } catch (const std::exception& e) {
    return Ort::Status(e.what(), ORT_FAIL).release();
  }
}

// Node name for messages ("?" when ORT does not know it).
std::string NodeName(const Ort::ConstKernelInfo& info);

}  // namespace ops
}  // namespace hysparse
