// Helpers shared by the native CPU kernel tests: a multi-threaded Executor, storage-type
// conversions for building inputs and reading outputs, and the poison that marks output elements
// a kernel must (or must not) write.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "kernels/attention_args.h"

namespace hysparse {
namespace test {

// Runs the tasks on `threads` std::threads (the calling one included) that pull indices from a
// shared counter, so the order and the thread of each task vary from run to run.
class ThreadedExecutor final : public Executor {
 public:
  explicit ThreadedExecutor(int threads) : threads_(threads) {}
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn) const override {
    std::atomic<size_t> next{0};
    const auto worker = [&] {
      for (size_t i = next++; i < n; i = next++) fn(i);
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads_; ++t) pool.emplace_back(worker);
    worker();
    for (std::thread& thread : pool) thread.join();
  }

 private:
  int threads_;
};

// x rounded to the storage type T (float or Half).
template <typename T>
T ToStorage(double x);
template <>
inline float ToStorage<float>(double x) { return static_cast<float>(x); }
template <>
inline Half ToStorage<Half>(double x) { return FloatToHalf(static_cast<float>(x)); }

// The stored value, exactly.
inline double FromStorage(float x) { return x; }
inline double FromStorage(Half x) { return HalfToFloat(x); }

// A NaN with a payload the kernels never produce: an output element that still holds it was not
// written, and one that holds any other value was.
template <typename T>
T PoisonValue();
template <>
inline float PoisonValue<float>() {
  const uint32_t bits = 0x7FC0DEADu;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
template <>
inline Half PoisonValue<Half>() { return Half{0x7E5Au}; }

template <typename T>
bool IsPoison(T x) {
  const T poison = PoisonValue<T>();
  return std::memcmp(&x, &poison, sizeof x) == 0;
}

}  // namespace test
}  // namespace hysparse
