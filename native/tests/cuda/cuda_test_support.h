// Host-side helpers for the CUDA kernel tests and the timing program: device buffers, a cudaMalloc
// scratch allocator, storage-type conversion, and the no-GPU skip.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cuda/bfloat16.h"
#include "kernels/cuda/cuda_kernels.h"

namespace hysparse {
namespace cuda {
namespace testing {

inline void Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err) + " " + cudaGetErrorString(err));
  }
}

inline bool HasCudaDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// Storage conversions on the host (the CPU references run in float32 on the rounded inputs).
template <typename T>
T ToStorage(float x);
template <>
inline float ToStorage<float>(float x) { return x; }
template <>
inline Half ToStorage<Half>(float x) { return FloatToHalf(x); }
template <>
inline BFloat16 ToStorage<BFloat16>(float x) { return FloatToBFloat16(x); }
inline float FromStorage(float x) { return x; }
inline float FromStorage(Half x) { return HalfToFloat(x); }
inline float FromStorage(BFloat16 x) { return BFloat16ToFloat(x); }

template <typename T>
const char* TypeName();
template <>
inline const char* TypeName<float>() { return "float32"; }
template <>
inline const char* TypeName<Half>() { return "float16"; }
template <>
inline const char* TypeName<BFloat16>() { return "bfloat16"; }

// Uploads and fills go through the legacy default stream, which does not order with the tests'
// non-blocking streams: cudaMemcpy from pageable memory returns once the bytes are staged, before
// the DMA lands, and cudaMemset returns at once. Without this wait a kernel can read inputs (or
// poison) that have not arrived yet: on an H200 that showed as zero outputs in half the cases,
// which the CPU emulation, where every call completes in order, cannot show.
inline void WaitForLegacyStream() { Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

// Owning device array.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t count) : count_(count) {
    if (count_) Check(cudaMalloc(reinterpret_cast<void**>(&ptr_), count_ * sizeof(T)), "cudaMalloc");
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { Upload(host); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : ptr_(o.ptr_), count_(o.count_) { o.ptr_ = nullptr; o.count_ = 0; }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(count_, o.count_);
    return *this;
  }
  ~DeviceArray() {
    if (ptr_) cudaFree(ptr_);
  }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  void Upload(const std::vector<T>& host) {
    if (host.size() != count_) throw std::runtime_error("DeviceArray::Upload: size mismatch");
    if (count_) Check(cudaMemcpy(ptr_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
    WaitForLegacyStream();
  }
  std::vector<T> Download() const {
    std::vector<T> host(count_);
    if (count_) Check(cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }
  // Fills every byte (0xFF makes float, half and bfloat16 NaN, and int32 -1; tests use it to spot
  // elements a kernel should have written and did not).
  void FillBytes(int byte) {
    if (count_) Check(cudaMemset(ptr_, byte, count_ * sizeof(T)), "cudaMemset");
    WaitForLegacyStream();
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// ScratchAllocator over cudaMalloc; everything is freed when it goes out of scope, so the owner must
// synchronise the stream first. Counts what was asked for so tests can check the plan.
class MallocScratch final : public ScratchAllocator {
 public:
  ~MallocScratch() override {
    for (void* p : blocks_) cudaFree(p);
  }
  void* Allocate(size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) return nullptr;
    // Scratch is never assumed zeroed: fill it with NaN bytes so a kernel reading what nobody wrote shows.
    if (cudaMemset(p, 0xFF, bytes) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
      cudaFree(p);
      return nullptr;
    }
    blocks_.push_back(p);
    requested_ += bytes;
    ++calls_;
    return p;
  }
  size_t requested_bytes() const { return requested_; }
  int calls() const { return calls_; }

 private:
  std::vector<void*> blocks_;
  size_t requested_ = 0;
  int calls_ = 0;
};

// A non-blocking stream, so nothing here can serialise with the legacy default stream.
class Stream {
 public:
  Stream() { Check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  void Sync() const { Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

 private:
  cudaStream_t stream_ = nullptr;
};

// The outputs of a HySparseFullAttn launch in device memory, poisoned so that an element the kernel
// should have written and did not shows: NaN bytes, and 0x7F7F7F7F in block_indices. An output of
// size 0 is not requested: Bind leaves it null.
template <typename T>
struct FullAttnDeviceOutputs {
  FullAttnDeviceOutputs(size_t output_n, size_t indices_n, size_t scores_n, size_t selected_n)
      : output(output_n), indices(indices_n), scores(scores_n), selected_key(selected_n), selected_value(selected_n) {
    output.FillBytes(0xFF);
    indices.FillBytes(0x7F);
    scores.FillBytes(0xFF);
    selected_key.FillBytes(0xFF);
    selected_value.FillBytes(0xFF);
  }
  void Bind(FullAttnArgs<T>& args) const {
    args.output = output.get();
    args.block_indices = indices.get();
    args.block_scores = scores.get();
    args.selected_key = selected_key.get();
    args.selected_value = selected_value.get();
  }

  DeviceArray<T> output;
  DeviceArray<int32_t> indices;
  DeviceArray<float> scores;
  DeviceArray<T> selected_key, selected_value;
};

// What one launcher call asked of its scratch allocator.
struct ScratchUse {
  size_t bytes = 0;
  int calls = 0;
};

// Runs launch(scratch) with a fresh MallocScratch on `stream` and, when it succeeds, waits for the
// stream before the scratch is freed.
template <typename Launch>
Status LaunchAndWait(const Stream& stream, ScratchUse* use, Launch&& launch) {
  MallocScratch scratch;
  const Status st = launch(scratch);
  if (st.ok()) stream.Sync();
  *use = {scratch.requested_bytes(), scratch.calls()};
  return st;
}

}  // namespace testing
}  // namespace cuda
}  // namespace hysparse
