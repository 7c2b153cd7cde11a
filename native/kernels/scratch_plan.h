// One way to carve a scratch allocation into typed regions, for the CPU kernels (a per-thread host
// buffer) and the CUDA launchers (one ScratchAllocator call) alike. Plain C++: no ORT, no CUDA types.
//
// A layout is written once, as a function that takes its regions from a ScratchCarver in order. It
// runs twice: over a sizing carver, which only adds up the bytes, and over the allocation, which
// hands out the pointers. So the sizes and the order cannot drift apart between the two passes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hysparse {

class ScratchCarver {
 public:
  // Sizing pass: every Take returns null and only adds to bytes().
  static ScratchCarver Sizing(size_t alignment) { return ScratchCarver(alignment, nullptr); }
  // Carving pass over `base` (aligned to `alignment`, at least the sizing pass's bytes() long). A
  // null base (nothing was allocated because nothing was asked for) hands out null.
  ScratchCarver(size_t alignment, void* base) : alignment_(alignment), base_(static_cast<char*>(base)) {}

  // The next region of `count` elements. Every region starts on an `alignment` boundary (alignment
  // is a power of two), so vector loads need no check of their own.
  template <typename U>
  U* Take(int64_t count) {
    const size_t offset = bytes_;
    bytes_ += RoundUp(static_cast<size_t>(count) * sizeof(U));
    return base_ ? reinterpret_cast<U*>(base_ + offset) : nullptr;
  }
  size_t bytes() const { return bytes_; }
  size_t alignment() const { return alignment_; }

 private:
  size_t RoundUp(size_t bytes) const { return (bytes + alignment_ - 1) & ~(alignment_ - 1); }

  size_t alignment_;
  char* base_;
  size_t bytes_ = 0;
};

// Host memory for carving, grown when a layout needs more and kept for later calls (a kernel keeps
// one per thread, so steady-state calls do not allocate).
class HostScratch {
 public:
  // `bytes` usable bytes starting at an `alignment` boundary.
  void* Reserve(size_t bytes, size_t alignment) {
    if (storage_.size() < bytes + alignment) storage_.resize(bytes + alignment);
    const uintptr_t address = reinterpret_cast<uintptr_t>(storage_.data());
    return storage_.data() + ((alignment - address % alignment) % alignment);
  }

 private:
  std::vector<unsigned char> storage_;
};

// Runs `layout(ScratchCarver&)` over a sizing carver, reserves that many bytes of `storage`, and
// returns what `layout` returns when run over them.
template <typename Layout>
auto CarveHostScratch(HostScratch& storage, size_t alignment, Layout&& layout) {
  ScratchCarver sizing = ScratchCarver::Sizing(alignment);
  layout(sizing);
  ScratchCarver carver(alignment, storage.Reserve(sizing.bytes(), alignment));
  return layout(carver);
}

}  // namespace hysparse
