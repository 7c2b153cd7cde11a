// Times the HySparse CUDA kernels at the paper's 7B layer shape (H_q 32, H_kv 8, D 128, bfloat16,
// block 64, top-K 16, window 128) against ceilings measured on the same GPU in the same run:
// device-to-device copy bandwidth, the bf16 tensor-core matrix rate (cuBLAS) and the fp32 FMA rate
// (the kernels' own arithmetic is fp32 on CUDA cores). Prints a markdown table.
//
//   hysparse_cuda_bench [--quick]     (--quick: the smallest size of each kind, for a smoke run)
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_kernels.h"
#include "tests/cuda/cuda_test_support.h"

namespace hysparse {
namespace cuda {
namespace bench {
namespace {

using testing::Check;
using testing::DeviceArray;

constexpr int kHeads = 32, kKvHeads = 8, kDim = 128, kBlock = 64, kTopK = 16, kWindow = 128;

// Grows on demand, keeps its buffer: after a warm-up call the timed calls allocate nothing.
class PoolScratch final : public ScratchAllocator {
 public:
  ~PoolScratch() override {
    if (ptr_) cudaFree(ptr_);
  }
  void* Allocate(size_t bytes) override {
    if (bytes > size_) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = nullptr;
      size_ = 0;
      if (cudaMalloc(&ptr_, bytes) != cudaSuccess) return nullptr;
      size_ = bytes;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

__global__ void FillKernel(BFloat16* p, size_t n, uint32_t seed, float amplitude) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed ^ static_cast<uint32_t>(i >> 32) * 40503u;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    const float u = (x & 0xFFFFFF) / 16777216.f * 2.f - 1.f;
    const uint32_t bits = __float_as_uint(u * amplitude);
    p[i].bits = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  }
}

// Long independent FMA chains: the fp32 rate the CUDA-core kernels could reach at best.
__global__ void FmaKernel(float* out, int iterations, float a, float b) {
  float x[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) x[i] = threadIdx.x * 1e-3f + i;
  for (int it = 0; it < iterations; ++it) {
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = fmaf(x[i], a, b);
  }
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) sum += x[i];
  if (sum == 12345.f) out[0] = sum;  // keeps the chains alive
}

void Fill(DeviceArray<BFloat16>& a, uint32_t seed, float amplitude, cudaStream_t stream) {
  FillKernel<<<1024, 256, 0, stream>>>(a.get(), a.size(), seed, amplitude);
  Check(cudaGetLastError(), "fill kernel");
}

// Fills each (array, amplitude) as Fill does, with seeds first_seed, first_seed + 1, ...
void FillEach(cudaStream_t stream, uint32_t first_seed,
              std::initializer_list<std::pair<DeviceArray<BFloat16>*, float>> arrays) {
  uint32_t seed = first_seed;
  for (const auto& [array, amplitude] : arrays) Fill(*array, seed++, amplitude, stream);
}

struct Timer {
  cudaEvent_t start, stop;
  Timer() {
    Check(cudaEventCreate(&start), "event");
    Check(cudaEventCreate(&stop), "event");
  }
  ~Timer() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
};

// Mean milliseconds of `reps` runs after one warm-up run.
template <typename Fn>
double TimeMs(cudaStream_t stream, int reps, Fn&& fn) {
  fn();
  Check(cudaStreamSynchronize(stream), "warm-up");
  Timer t;
  Check(cudaEventRecord(t.start, stream), "record");
  for (int i = 0; i < reps; ++i) fn();
  Check(cudaEventRecord(t.stop, stream), "record");
  Check(cudaEventSynchronize(t.stop), "sync");
  float ms = 0.f;
  Check(cudaEventElapsedTime(&ms, t.start, t.stop), "elapsed");
  return ms / reps;
}

void Require(const Status& st) {
  if (!st.ok()) {
    std::fprintf(stderr, "kernel failed: %s\n", st.message.c_str());
    std::exit(1);
  }
}

struct Ceilings {
  double copy_gbs = 0, bf16_tflops = 0, fp32_tflops = 0;
};

Ceilings MeasureCeilings(cudaStream_t stream) {
  Ceilings c;
  const size_t bytes = size_t{2} << 30;
  DeviceArray<char> a(bytes), b(bytes);
  Check(cudaMemsetAsync(a.get(), 1, bytes, stream), "memset");
  const double copy_ms = TimeMs(stream, 10, [&] {
    Check(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, stream), "copy");
  });
  c.copy_gbs = 2.0 * bytes / (copy_ms * 1e-3) / 1e9;  // read + write

  const int n = 8192;
  DeviceArray<BFloat16> ma(size_t{n} * n), mb(size_t{n} * n), mc(size_t{n} * n);
  Fill(ma, 1, 1.f, stream);
  Fill(mb, 2, 1.f, stream);
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate failed");
  cublasSetStream(handle, stream);
  const float alpha = 1.f, beta = 0.f;
  const double gemm_ms = TimeMs(stream, 10, [&] {
    if (cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, ma.get(), CUDA_R_16BF, n, mb.get(),
                     CUDA_R_16BF, n, &beta, mc.get(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      throw std::runtime_error("cublasGemmEx failed");
    }
  });
  cublasDestroy(handle);
  c.bf16_tflops = 2.0 * n * n * static_cast<double>(n) / (gemm_ms * 1e-3) / 1e12;

  int device = 0, sms = 0;
  Check(cudaGetDevice(&device), "device");
  Check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "attr");
  DeviceArray<float> sink(1);
  const int iterations = 1 << 16, blocks = sms * 8, threads = 256;
  const double fma_ms = TimeMs(stream, 5, [&] {
    FmaKernel<<<blocks, threads, 0, stream>>>(sink.get(), iterations, 0.999f, 0.001f);
    Check(cudaGetLastError(), "fma kernel");
  });
  c.fp32_tflops = 2.0 * 8 * iterations * static_cast<double>(blocks) * threads / (fma_ms * 1e-3) / 1e12;
  return c;
}

struct Row {
  std::string kernel;
  std::string size;
  double ms;
  double tflops;  // < 0: not reported
  double gbs;     // < 0: not reported
  std::string ceiling;
};

void PrintRow(const Row& r) {
  char tf[32] = "-", gb[32] = "-";
  if (r.tflops >= 0) std::snprintf(tf, sizeof tf, "%.1f", r.tflops);
  if (r.gbs >= 0) std::snprintf(gb, sizeof gb, "%.0f", r.gbs);
  std::printf("| %s | %s | %.3f | %s | %s | %s |\n", r.kernel.c_str(), r.size.c_str(), r.ms, tf, gb, r.ceiling.c_str());
  std::fflush(stdout);
}

std::string Percent(double value, double ceiling, const char* of) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.0f%% of %s", 100.0 * value / ceiling, of);
  return buf;
}

// The sizes of a bench call: B = 1 at the bench shape.
AttentionDims BenchDims(int64_t new_len, int64_t total) {
  return {1, kHeads, kKvHeads, kDim, new_len, total, 1.f / std::sqrt(float(kDim)), kBlock};
}

// HySparseFullAttn at the bench shape, B = 1, BSNH query, cache capacity = total length.
FullAttnArgs<BFloat16> FullArgs(int64_t new_len, int64_t total, const DeviceArray<BFloat16>& q,
                                const DeviceArray<BFloat16>& k, const DeviceArray<BFloat16>& v,
                                DeviceArray<BFloat16>& out) {
  FullAttnArgs<BFloat16> a;
  a.dims() = BenchDims(new_len, total);
  a.top_k = kTopK;
  a.query = q.get();
  a.query_view = HeadView::Bsnh(new_len, kHeads, kDim);
  a.key_cache = k.get();
  a.value_cache = v.get();
  a.cache_capacity = total;
  a.output = out.get();
  a.output_view = a.query_view;
  return a;
}

// HySparseSparseAttn, combine = gate with per-head gates and sinks, SA from a shared full-length cache;
// the own cache holds the last own_len positions.
SparseAttnArgs<BFloat16> GateArgs(int64_t new_len, int64_t total, const DeviceArray<BFloat16>& q,
                                  const DeviceArray<BFloat16>& own_k, const DeviceArray<BFloat16>& own_v,
                                  int64_t own_len, const DeviceArray<BFloat16>& shared_k,
                                  const DeviceArray<BFloat16>& shared_v, const DeviceArray<int32_t>& indices,
                                  const DeviceArray<BFloat16>& gate, const DeviceArray<BFloat16>& sinks,
                                  DeviceArray<BFloat16>& out) {
  SparseAttnArgs<BFloat16> a;
  a.dims() = BenchDims(new_len, total);
  a.window = kWindow;
  a.combine = Combine::kGate;
  a.query = q.get();
  a.query_view = HeadView::Bsnh(new_len, kHeads, kDim);
  a.own_key = own_k.get();
  a.own_value = own_v.get();
  a.own_capacity = own_len;
  a.own_start = total - own_len;
  a.own_len = own_len;
  a.sa_key = shared_k.get();
  a.sa_value = shared_v.get();
  a.sa_capacity = total;
  a.block_indices = indices.get();
  a.top_k = kTopK;
  a.gate = gate.get();
  a.sinks = sinks.get();
  a.output = out.get();
  a.output_view = a.query_view;
  return a;
}

int Main(bool quick) {
  cudaDeviceProp prop{};
  int device = 0;
  Check(cudaGetDevice(&device), "device");
  Check(cudaGetDeviceProperties(&prop, device), "properties");
  testing::Stream stream_holder;
  const cudaStream_t stream = stream_holder.get();

  const Ceilings ceil = MeasureCeilings(stream);
  std::printf("Device: %s, %d SMs, compute capability %d.%d\n\n", prop.name, prop.multiProcessorCount, prop.major,
              prop.minor);
  std::printf("Measured ceilings: device-to-device copy %.0f GB/s (read + write), bf16 tensor-core GEMM "
              "%.0f TFLOP/s (cuBLAS 8192^3), fp32 FMA %.1f TFLOP/s\n\n",
              ceil.copy_gbs, ceil.bf16_tflops, ceil.fp32_tflops);
  std::printf("Shape: B 1, H_q %d, H_kv %d, D %d, bfloat16, block %d, top-K %d, window %d\n\n", kHeads, kKvHeads,
              kDim, kBlock, kTopK, kWindow);
  std::printf("| kernel | size | ms | TFLOP/s | GB/s | vs ceiling |\n| --- | --- | --- | --- | --- | --- |\n");

  PoolScratch scratch;
  const std::vector<int64_t> prefill = quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 8192, 16384, 32768};
  const std::vector<int64_t> decode =
      quick ? std::vector<int64_t>{8192} : std::vector<int64_t>{8192, 16384, 32768, 65536, 131072};
  const double elem = sizeof(BFloat16);

  for (int64_t S : prefill) {
    DeviceArray<BFloat16> q(size_t(S) * kHeads * kDim), out(q.size()), k(size_t(S) * kKvHeads * kDim), v(k.size());
    DeviceArray<BFloat16> gate(size_t(S) * 2 * kHeads), sinks(2 * kHeads);
    DeviceArray<int32_t> idx(size_t(S) * kKvHeads * kTopK);
    FillEach(stream, 11, {{&q, 2.f}, {&k, 1.f}, {&v, 1.f}, {&gate, 2.f}, {&sinks, 1.f}});
    FullAttnArgs<BFloat16> fa = FullArgs(S, S, q, k, v, out);
    const double causal_pairs = double(S) * (S + 1) / 2;
    const double flops = 4.0 * kHeads * kDim * causal_pairs;
    const int reps = S >= 16384 ? 2 : 3;
    char size[32];
    std::snprintf(size, sizeof size, "S = %lldk", static_cast<long long>(S / 1024));

    double ms = TimeMs(stream, reps, [&] { Require(LaunchFullAttn(fa, stream, scratch)); });
    PrintRow({"full prefill, output only", size, ms, flops / (ms * 1e-3) / 1e12, -1,
              Percent(flops / (ms * 1e-3) / 1e12, ceil.fp32_tflops, "fp32 FMA") + ", " +
                  Percent(flops / (ms * 1e-3) / 1e12, ceil.bf16_tflops, "bf16 MMA")});
    fa.block_indices = idx.get();
    ms = TimeMs(stream, reps, [&] { Require(LaunchFullAttn(fa, stream, scratch)); });
    PrintRow({"full prefill + top-K", size, ms, flops / (ms * 1e-3) / 1e12, -1,
              Percent(flops / (ms * 1e-3) / 1e12, ceil.fp32_tflops, "fp32 FMA")});

    // The prefill's own cache holds every new token (its window cache is cut after the call).
    SparseAttnArgs<BFloat16> sa = GateArgs(S, S, q, k, v, S, k, v, idx, gate, sinks, out);
    double keys = 0;  // attended keys, upper bound: K*bs selected + w window per token
    for (int64_t s = 0; s < S; ++s) keys += std::min<double>(s + 1, kTopK * kBlock) + std::min<double>(s + 1, kWindow);
    const double sflops = 4.0 * kHeads * kDim * keys;
    ms = TimeMs(stream, 3, [&] { Require(LaunchSparseAttn(sa, stream, scratch)); });
    PrintRow({"sparse prefill (gate, sinks), tiled", size, ms, sflops / (ms * 1e-3) / 1e12, -1,
              Percent(sflops / (ms * 1e-3) / 1e12, ceil.fp32_tflops, "fp32 FMA") + " (key count: upper bound)"});
    // The split-K kernel on the same call: what sparse prefill cost before the tiled kernel.
    ms = TimeMs(stream, 3, [&] { Require(LaunchSparseAttn(sa, stream, scratch, nullptr, SparsePath::kSplitK)); });
    PrintRow({"sparse prefill (gate, sinks), split-K", size, ms, sflops / (ms * 1e-3) / 1e12, -1,
              Percent(sflops / (ms * 1e-3) / 1e12, ceil.fp32_tflops, "fp32 FMA") + " (key count: upper bound)"});
  }

  for (int64_t T : decode) {
    DeviceArray<BFloat16> q(size_t(kHeads) * kDim), out(q.size()), k(size_t(T) * kKvHeads * kDim), v(k.size());
    DeviceArray<BFloat16> own_k(size_t(kWindow) * kKvHeads * kDim), own_v(own_k.size()), gate(2 * kHeads),
        sinks(2 * kHeads);
    DeviceArray<int32_t> idx(size_t(kKvHeads) * kTopK);
    FillEach(stream, 21, {{&q, 2.f}, {&k, 1.f}, {&v, 1.f}, {&own_k, 1.f}, {&own_v, 1.f}, {&gate, 2.f}, {&sinks, 1.f}});
    FullAttnArgs<BFloat16> fa = FullArgs(1, T, q, k, v, out);
    char size[32];
    std::snprintf(size, sizeof size, "T = %lldk", static_cast<long long>(T / 1024));
    const double full_bytes = 2.0 * kKvHeads * T * kDim * elem;

    double ms = TimeMs(stream, 20, [&] { Require(LaunchFullAttn(fa, stream, scratch)); });
    PrintRow({"full decode, output only", size, ms, -1, full_bytes / (ms * 1e-3) / 1e9,
              Percent(full_bytes / (ms * 1e-3) / 1e9, ceil.copy_gbs, "copy BW")});
    fa.block_indices = idx.get();
    const double full_ms = TimeMs(stream, 20, [&] { Require(LaunchFullAttn(fa, stream, scratch)); });
    PrintRow({"full decode + top-K", size, full_ms, -1, full_bytes / (full_ms * 1e-3) / 1e9,
              Percent(full_bytes / (full_ms * 1e-3) / 1e9, ceil.copy_gbs, "copy BW")});

    // Window cache: positions [T - 128, T).
    SparseAttnArgs<BFloat16> sa = GateArgs(1, T, q, own_k, own_v, kWindow, k, v, idx, gate, sinks, out);
    const double sparse_bytes = 2.0 * kKvHeads * (kTopK * kBlock + kWindow) * kDim * elem;
    ms = TimeMs(stream, 50, [&] { Require(LaunchSparseAttn(sa, stream, scratch)); });
    char note[96];
    std::snprintf(note, sizeof note, ", %.1fx faster than full decode + top-K", full_ms / ms);
    PrintRow({"sparse decode (gate, sinks)", size, ms, -1, sparse_bytes / (ms * 1e-3) / 1e9,
              Percent(sparse_bytes / (ms * 1e-3) / 1e9, ceil.copy_gbs, "copy BW") + note});
  }
  // Shared-buffer decode (GroupQueryAttention's convention, as genai runs it): one buffer of capacity C
  // per layer, bound as past and present; a step writes the new token in place and attends over the
  // row's seqlens_k + 1 positions. Lengths live on the device, so every step has the same launches.
  const int64_t capacity = quick ? 16384 : 65536;
  const std::vector<int64_t> shared_decode = quick ? std::vector<int64_t>{16384} : std::vector<int64_t>{16384, 65536};
  {
    const size_t plane = size_t(capacity) * kKvHeads * kDim;
    DeviceArray<BFloat16> q(size_t(kHeads) * kDim), out(q.size()), k_new(size_t(kKvHeads) * kDim), v_new(k_new.size());
    DeviceArray<BFloat16> full_k(plane), full_v(plane), own_k(plane), own_v(plane), gate(2 * kHeads), sinks(2 * kHeads);
    DeviceArray<int32_t> idx(size_t(kKvHeads) * kTopK), seqlens(1);
    FillEach(stream, 31, {{&q, 2.f}, {&k_new, 1.f}, {&v_new, 1.f}, {&full_k, 1.f}, {&full_v, 1.f}, {&own_k, 1.f},
                          {&own_v, 1.f}, {&gate, 2.f}, {&sinks, 1.f}});
    const HeadView new_view = HeadView::Bsnh(1, kKvHeads, kDim);
    // A shared-buffer step's cache update: the new token written in place at each row's position.
    const auto write_new = [&](DeviceArray<BFloat16>& keys, DeviceArray<BFloat16>& values) {
      Require(LaunchWriteNewTokens(k_new.get(), new_view, 1, kKvHeads, 1, kDim, keys.get(), capacity, seqlens.get(),
                                   stream));
      Require(LaunchWriteNewTokens(v_new.get(), new_view, 1, kKvHeads, 1, kDim, values.get(), capacity, seqlens.get(),
                                   stream));
    };
    for (int64_t T : shared_decode) {
      const int32_t length = static_cast<int32_t>(T - 1);
      // On the timing stream: a legacy-stream copy would not be ordered with the kernels below.
      Check(cudaMemcpyAsync(seqlens.get(), &length, sizeof length, cudaMemcpyHostToDevice, stream), "seqlens");
      Check(cudaStreamSynchronize(stream), "seqlens");
      char size[48];
      std::snprintf(size, sizeof size, "T = %lldk, C = %lldk", static_cast<long long>(T / 1024),
                    static_cast<long long>(capacity / 1024));
      const double full_bytes = 2.0 * kKvHeads * T * kDim * elem;
      // The bandwidth floor: the K/V bytes attention must read, at the measured copy rate (as "% of copy BW").
      const double floor_ms = full_bytes / (ceil.copy_gbs * 1e9) * 1e3;
      auto vs_floor = [](double ms, double lowest) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.2fx the bandwidth floor (%.4f ms)", ms / lowest, lowest);
        return std::string(buf);
      };

      // The concatenating op at the same length, for comparison: present = past ++ new (a cache copy), then attention.
      DeviceArray<BFloat16> cat_k(size_t(T) * kKvHeads * kDim), cat_v(cat_k.size());
      FullAttnArgs<BFloat16> cat = FullArgs(1, T, q, cat_k, cat_v, out);
      cat.block_indices = idx.get();
      const double cat_ms = TimeMs(stream, 20, [&] {
        Require(LaunchCopyToCache(full_k.get(), HeadView::Bnsh(capacity, kKvHeads, kDim), 1, kKvHeads, T - 1, kDim,
                                  cat_k.get(), T, 0, stream));
        Require(LaunchCopyToCache(full_v.get(), HeadView::Bnsh(capacity, kKvHeads, kDim), 1, kKvHeads, T - 1, kDim,
                                  cat_v.get(), T, 0, stream));
        Require(LaunchCopyToCache(k_new.get(), new_view, 1, kKvHeads, 1, kDim, cat_k.get(), T, T - 1, stream));
        Require(LaunchCopyToCache(v_new.get(), new_view, 1, kKvHeads, 1, kDim, cat_v.get(), T, T - 1, stream));
        Require(LaunchFullAttn(cat, stream, scratch));
      });
      PrintRow({"full decode + top-K, concatenating (cache copy + attention)", size, cat_ms, -1,
                full_bytes / (cat_ms * 1e-3) / 1e9, vs_floor(cat_ms, floor_ms)});

      FullAttnArgs<BFloat16> fa = FullArgs(1, capacity, q, full_k, full_v, out);
      fa.block_indices = idx.get();
      const double shared_ms = TimeMs(stream, 20, [&] {
        write_new(full_k, full_v);
        Require(LaunchFullAttn(fa, stream, scratch, seqlens.get()));
      });
      char note[128];
      std::snprintf(note, sizeof note, "; %.2fx faster than the concatenating step", cat_ms / shared_ms);
      PrintRow({"full decode + top-K, shared buffer (in place)", size, shared_ms, -1,
                full_bytes / (shared_ms * 1e-3) / 1e9, vs_floor(shared_ms, floor_ms) + note});

      // The sparse layer: own buffer, SA from the full layer's buffer (KV sharing), gate + sinks.
      SparseAttnArgs<BFloat16> sa = GateArgs(1, capacity, q, own_k, own_v, capacity, full_k, full_v, idx, gate, sinks, out);
      const double sparse_bytes = 2.0 * kKvHeads * (kTopK * kBlock + kWindow) * kDim * elem;
      const double sparse_floor_ms = sparse_bytes / (ceil.copy_gbs * 1e9) * 1e3;
      const double sparse_ms = TimeMs(stream, 50, [&] {
        write_new(own_k, own_v);
        Require(LaunchSparseAttn(sa, stream, scratch, seqlens.get()));
      });
      std::snprintf(note, sizeof note, "; %.1fx faster than the shared-buffer full step", shared_ms / sparse_ms);
      PrintRow({"sparse decode, shared buffer, KV sharing (gate, sinks)", size, sparse_ms, -1,
                sparse_bytes / (sparse_ms * 1e-3) / 1e9, vs_floor(sparse_ms, sparse_floor_ms) + note});
    }
  }
  std::printf("\nShared-buffer rows: B 1, one buffer of capacity C bound as past and present, seqlens_k = T - 1 "
              "in device memory; the grid and scratch follow C, not T. Bandwidth floor: the K and V bytes attention "
              "must read (GB/s column) at the measured copy rate; the concatenating step also copies the cache.\n");
  std::printf("\nTFLOP/s count 4*D multiply-adds... per (query head, attended key): 2 for QK, 2 for PV. GB/s "
              "count the K and V bytes the kernel must read. Means over repeated launches after a warm-up, "
              "CUDA events on one non-default stream.\n");
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace cuda
}  // namespace hysparse

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  try {
    return hysparse::cuda::bench::Main(quick);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hysparse_cuda_bench: %s\n", e.what());
    return 1;
  }
}
