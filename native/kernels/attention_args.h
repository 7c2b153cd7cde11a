// Arguments of the HySparse attention kernels, shared by the CPU and CUDA back ends.
//
// Kernels see plain pointers and strides, never ONNX Runtime types: the ORT glue in native/ops/
// validates every input (docs/ops.md), builds the caches, and fills these structs. That keeps each
// kernel testable on its own (native/tests/) and through ORT (tests/HySparse.Onnx.Tests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace hysparse {

// IEEE half stored as its 16 bits; layout-compatible with Ort::Float16_t.
struct Half {
  uint16_t bits;
};

// float16 <-> float32, exact for every finite value, NaN and infinity; float -> half rounds to nearest even.
float HalfToFloat(Half h);
Half FloatToHalf(float f);

// Element (b, h, s, d) of a query/key/value/output tensor lives at
// base + b*batch_stride + h*head_stride + s*token_stride + d. This one view covers both the 3-D
// [B, S, H*D] and the 4-D [B, H, S, D] layouts (docs/ops.md "Layouts").
struct HeadView {
  int64_t batch_stride = 0;
  int64_t head_stride = 0;
  int64_t token_stride = 0;

  static HeadView Bsnh(int64_t seq, int64_t heads, int64_t head_dim) {
    return {seq * heads * head_dim, head_dim, heads * head_dim};
  }
  static HeadView Bnsh(int64_t seq, int64_t heads, int64_t head_dim) {
    return {heads * seq * head_dim, seq * head_dim, head_dim};
  }
  int64_t Offset(int64_t b, int64_t h, int64_t s) const {
    return b * batch_stride + h * head_stride + s * token_stride;
  }
};

// Runs fn(i) for i in [0, n), possibly in parallel. The ORT glue maps it onto the session's intra-op
// thread pool; tests use a serial or std::thread implementation. fn must not throw.
class Executor {
 public:
  virtual ~Executor() = default;
  virtual void ParallelFor(size_t n, const std::function<void(size_t)>& fn) const = 0;
};

// Runs everything on the calling thread.
class SerialExecutor final : public Executor {
 public:
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn) const override {
    for (size_t i = 0; i < n; ++i) fn(i);
  }
};

// The sizes of one attention call. Both ops' arguments and the CUDA launch parameters start with
// them, so a call's sizes travel as one piece (`dims() = ...`) from the glue to every kernel.
struct AttentionDims {
  int batch = 0;
  int num_heads = 0;     // H_q
  int kv_num_heads = 0;  // H_kv, divides H_q
  int head_dim = 0;      // D
  int64_t new_len = 0;   // S
  int64_t total_len = 0; // T = P + S (absolute); new token s sits at position T - S + s
  float scale = 0.f;     // already resolved (never 0)
  int block_size = 64;

  AttentionDims& dims() { return *this; }
  const AttentionDims& dims() const { return *this; }
};

// HySparseFullAttn after validation. KV caches are [B, H_kv, cache_capacity, D] and already hold
// past ++ new at positions [0, total_len).
template <typename T>
struct FullAttnArgs : AttentionDims {
  int top_k = 16;

  const T* query = nullptr;
  HeadView query_view;
  const T* key_cache = nullptr;
  const T* value_cache = nullptr;
  int64_t cache_capacity = 0;          // >= total_len
  const int64_t* attention_mask = nullptr;  // [B, total_len] of 0/1, or null

  T* output = nullptr;
  HeadView output_view;
  int32_t* block_indices = nullptr;  // [B, H_kv, S, top_k] or null
  float* block_scores = nullptr;     // [B, H_kv, S, num_blocks] or null
  T* selected_key = nullptr;         // [B, H_kv, S, top_k*block_size, D] or null
  T* selected_value = nullptr;       // same shape, or null

  int64_t NumBlocks() const { return (total_len + block_size - 1) / block_size; }
  bool WantsSelection() const {
    return block_indices || block_scores || selected_key || selected_value;
  }
};

enum class Combine { kUnion, kGate };

// HySparseSparseAttn after validation (docs/ops.md "HySparseSparseAttn").
template <typename T>
struct SparseAttnArgs : AttentionDims {
  int window = 128;
  Combine combine = Combine::kUnion;

  const T* query = nullptr;
  HeadView query_view;

  // The layer's own keys/values: past ++ new, [B, H_kv, own_capacity, D]; slot k holds absolute
  // position own_start + k, for k in [0, own_len). own_start + own_len == total_len.
  const T* own_key = nullptr;
  const T* own_value = nullptr;
  int64_t own_capacity = 0;
  int64_t own_start = 0;
  int64_t own_len = 0;

  // SA source, exactly one of:
  //  (a) a full-length cache [B, H_kv, sa_capacity, D] holding positions [0, total_len)
  //      (the shared full-layer cache, or the own cache in retrofit), or
  //  (b) gathered blocks [B, H_kv, S, top_k*block_size, D] (selected_key/value of the full layer).
  const T* sa_key = nullptr;
  const T* sa_value = nullptr;
  int64_t sa_capacity = 0;
  const T* selected_key = nullptr;
  const T* selected_value = nullptr;

  const int32_t* block_indices = nullptr;  // [B, H_kv, S, top_k], validated (ascending, then -1)
  int top_k = 0;

  const int64_t* attention_mask = nullptr;  // [B, total_len] or null
  const T* gate = nullptr;                  // [B, S, 2*H_q] or [B, S, 2*H_q*D], or null
  bool gate_per_channel = false;
  const T* sinks = nullptr;                 // [2, H_q] (gate) or [1, H_q] (union), or null

  T* output = nullptr;
  HeadView output_view;
};

// CPU kernels (native/kernels/cpu/). T is float or Half. They trust their arguments: all checking
// happens before, in native/ops/.
template <typename T>
void RunFullAttnCpu(const FullAttnArgs<T>& args, const Executor& exec);
template <typename T>
void RunSparseAttnCpu(const SparseAttnArgs<T>& args, const Executor& exec);

}  // namespace hysparse
