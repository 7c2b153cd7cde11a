// Host emulation of the CUDA device features the HySparse kernels use, so their real source (turned
// into host C++ by translate.py) runs on a machine without a GPU against the CPU kernels.
//
// Every CUDA thread of a block is a std::thread; the blocks of a grid run one after another, each
// thread walking the grid in the same order. __syncthreads is a barrier of the block, warp
// collectives (shuffles, ballot, match) a barrier of the warp's 32 threads around a shared slot
// array, __shared__ variables are function statics (one block at a time uses them) and dynamic
// shared memory is a per-launch buffer filled with NaN bytes. Atomics are the compiler's.
//
// What it checks: the kernels' indexing, masking, tiling, split/merge arithmetic and collectives,
// bit for bit the same code as on the GPU. What it cannot: timing, the memory model across real
// concurrent blocks, warp-divergence rules of the hardware, device math accuracy (exp2f is the host's).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

namespace emu {

struct Index3 {
  unsigned x = 0, y = 0, z = 0;
};

struct Warp {
  std::barrier<> barrier{32};
  uint64_t slot[32] = {};
};

struct Block {
  std::unique_ptr<std::barrier<>> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<char> dynamic_shared;
};

inline Block* g_block = nullptr;
inline Index3 g_block_dim, g_grid_dim;
inline thread_local Index3 t_thread_idx, t_block_idx;
inline thread_local int t_lane = 0;
inline thread_local Warp* t_warp = nullptr;

inline void SyncThreads() { g_block->barrier->arrive_and_wait(); }
inline void* DynamicSharedMemory() { return g_block->dynamic_shared.data(); }

template <typename V>
uint64_t ToBits(V v) {
  static_assert(sizeof(V) <= 8, "warp collectives move at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  return bits;
}
template <typename V>
V FromBits(uint64_t bits) {
  V v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// Publishes this lane's value, waits for the warp, reads what `read` picks, waits again so the slots
// can be reused. Every lane of the warp must call it (the kernels always use full-warp masks).
template <typename Read>
auto Exchange(uint64_t mine, Read read) {
  t_warp->slot[t_lane] = mine;
  t_warp->barrier.arrive_and_wait();
  auto result = read(t_warp->slot);
  t_warp->barrier.arrive_and_wait();
  return result;
}

template <typename V>
V ShflXor(unsigned, V v, int lane_mask) {
  return FromBits<V>(Exchange(ToBits(v), [&](const uint64_t* s) { return s[t_lane ^ lane_mask]; }));
}
template <typename V>
V ShflUp(unsigned, V v, int delta) {
  return FromBits<V>(Exchange(ToBits(v), [&](const uint64_t* s) { return s[t_lane >= delta ? t_lane - delta : t_lane]; }));
}
inline unsigned Ballot(unsigned, bool predicate) {
  return Exchange(predicate ? 1u : 0u, [](const uint64_t* s) {
    unsigned m = 0;
    for (int i = 0; i < 32; ++i) m |= s[i] ? 1u << i : 0u;
    return m;
  });
}
inline unsigned MatchAny(unsigned, int value) {
  return Exchange(static_cast<uint32_t>(value), [](const uint64_t* s) {
    unsigned m = 0;
    for (int i = 0; i < 32; ++i) m |= s[i] == s[t_lane] ? 1u << i : 0u;
    return m;
  });
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...) for one-dimensional blocks.
template <typename... Params, typename... Args>
void Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t, Args&&... args) {
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const unsigned threads = block.x;
  Block ctx;
  ctx.barrier = std::make_unique<std::barrier<>>(threads);
  for (unsigned w = 0; w < (threads + 31) / 32; ++w) ctx.warps.push_back(std::make_unique<Warp>());
  ctx.dynamic_shared.assign(shared_bytes + 64, static_cast<char>(0xFF));
  g_block = &ctx;
  g_block_dim = {block.x, block.y, block.z};
  g_grid_dim = {grid.x, grid.y, grid.z};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      t_thread_idx = {t, 0, 0};
      t_lane = static_cast<int>(t % 32);
      t_warp = ctx.warps[t / 32].get();
      for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
          for (unsigned x = 0; x < grid.x; ++x) {
            t_block_idx = {x, y, z};
            std::apply(kernel, params);
            ctx.barrier->arrive_and_wait();  // the next block reuses the statics
          }
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  g_block = nullptr;
}

}  // namespace emu

#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx ::emu::t_thread_idx
#define blockIdx ::emu::t_block_idx
#define blockDim ::emu::g_block_dim
#define gridDim ::emu::g_grid_dim
#define __syncthreads() ::emu::SyncThreads()
#define __shfl_xor_sync(mask, v, lane_mask) ::emu::ShflXor(mask, v, lane_mask)
#define __shfl_up_sync(mask, v, delta) ::emu::ShflUp(mask, v, delta)
#define __ballot_sync(mask, predicate) ::emu::Ballot(mask, predicate)
#define __match_any_sync(mask, value) ::emu::MatchAny(mask, value)

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
inline float __int_as_float(int x) { return ::emu::FromBits<float>(static_cast<uint32_t>(x)); }
inline float __uint_as_float(unsigned x) { return ::emu::FromBits<float>(x); }
inline unsigned __float_as_uint(float x) { return static_cast<unsigned>(::emu::ToBits(x)); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  unsigned long long seen = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v < seen && !__atomic_compare_exchange_n(p, &seen, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return seen;
}
using std::max;
using std::min;
