// Prefill timing of the CPU kernels alone (no ONNX Runtime): HySparseFullAttn with block selection
// against HySparseSparseAttn over the blocks that full op selected, at one layer shape, S new tokens,
// no past. The sparse op reads the full layer's cache (retrofit: SA source = own cache), union,
// K blocks of block_size + window w, as a 1:3 hybrid's sparse layers do in its first call.
//
// The sparse op runs twice per round: on its token tiles (the path decode and small S take, and
// every prefill took before the prefill tiles) and on its prefill tiles. The runs are interleaved
// (full, token tiles, prefill tiles, full, ...) so that a loaded machine slows all alike, and every
// sample is printed with the median: the ratios to the full op are the numbers to read. On a loaded
// machine wall times scatter; --clock cpu (one thread, serial) times each call in the calling
// thread's CPU time instead, which the load barely changes.
//
//   hysparse_prefill_bench [--shape small|e2e|7b] [--s 4096,16384] [--iters 5] [--threads 2]
//                          [--type f32|f16] [--queries iid|correlated] [--only full|token|tiled]
//                          [--past P] [--kv-parts N] [--clock wall|cpu]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cpu/attention_cpu.h"

namespace {

using namespace hysparse;

// Pool threads that stay alive across calls (as ONNX Runtime's do), pulling task indices from a
// shared counter.
class PoolExecutor final : public Executor {
 public:
  explicit PoolExecutor(int threads) {
    for (int t = 1; t < threads; ++t) workers_.emplace_back([this] { Work(); });
  }
  ~PoolExecutor() override {
    stop_.store(true);
    for (std::thread& w : workers_) w.join();
  }
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn) const override {
    fn_ = &fn;
    n_ = n;
    next_.store(0);
    done_.store(0);
    generation_.fetch_add(1);
    Drain();
    while (done_.load() != workers_.size()) std::this_thread::yield();
    fn_ = nullptr;
  }

 private:
  void Drain() const {
    for (size_t i = next_++; i < n_; i = next_++) (*fn_)(i);
  }
  void Work() {
    int seen = 0;
    while (!stop_.load()) {
      const int g = generation_.load();
      if (g == seen) {
        std::this_thread::yield();
        continue;
      }
      seen = g;
      Drain();
      done_.fetch_add(1);
    }
  }
  std::vector<std::thread> workers_;
  mutable const std::function<void(size_t)>* fn_ = nullptr;
  mutable size_t n_ = 0;
  mutable std::atomic<size_t> next_{0};
  mutable std::atomic<size_t> done_{0};
  mutable std::atomic<int> generation_{0};
  std::atomic<bool> stop_{false};
};

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stoll(item));
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

template <typename T>
T Store(float x);
template <>
float Store<float>(float x) { return x; }
template <>
Half Store<Half>(float x) { return FloatToHalf(x); }

struct Options {
  std::string shape = "small";
  std::vector<int64_t> lengths = {4096, 16384};
  int iters = 5;
  int threads = 2;
  std::string type = "f32";
  bool correlated = true;
  std::string only;  // "full", "token" or "tiled": time one of them (for profiles)
  int64_t past = 0;  // tokens already cached (chunked prefill: S new tokens after them)
  int kv_parts = 0;  // SparseAttnCpuOptions::kv_parts
  bool cpu_clock = false;  // thread CPU time of serial runs instead of wall time
};

template <typename E>
void RunLength(const Options& o, int64_t S, const Executor& exec) {
  // small: H_q 8, H_kv 2, D 64; e2e: the end-to-end prefill benchmark's decoder (D 32); 7b: 32 / 8 / 128.
  const int hq = o.shape == "7b" ? 32 : 8, hkv = o.shape == "7b" ? 8 : 2,
            dim = o.shape == "7b" ? 128 : o.shape == "e2e" ? 32 : 64;
  const int bs = 64, top_k = 16, window = 128;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  const int64_t T = o.past + S;
  std::vector<E> q(static_cast<size_t>(hq) * S * dim), k(static_cast<size_t>(hkv) * T * dim), v(k.size());
  // Correlated queries (a per-head direction plus noise) make neighbouring tokens select mostly the
  // same blocks, as a trained model's do; iid queries give the worst case for a shared tile.
  std::vector<float> base(static_cast<size_t>(hq) * dim);
  for (float& x : base) x = uniform(rng);
  for (int h = 0; h < hq; ++h)
    for (int64_t s = 0; s < S; ++s)
      for (int d = 0; d < dim; ++d) {
        const float noise = uniform(rng);
        const float x = o.correlated ? base[static_cast<size_t>(h) * dim + d] + 0.1f * noise : noise;
        q[(static_cast<size_t>(h) * S + s) * dim + d] = Store<E>(x);
      }
  for (E& x : k) x = Store<E>(uniform(rng));
  for (E& x : v) x = Store<E>(uniform(rng));
  std::vector<E> out_full(q.size()), out_sparse(q.size());
  std::vector<int32_t> indices(static_cast<size_t>(hkv) * S * top_k);

  FullAttnArgs<E> fa;
  fa.batch = 1, fa.num_heads = hq, fa.kv_num_heads = hkv, fa.head_dim = dim, fa.new_len = S, fa.total_len = T;
  fa.scale = 1.f / std::sqrt(static_cast<float>(dim)), fa.block_size = bs, fa.top_k = top_k;
  fa.query = q.data(), fa.query_view = HeadView::Bnsh(S, hq, dim);
  fa.key_cache = k.data(), fa.value_cache = v.data(), fa.cache_capacity = T;
  fa.output = out_full.data(), fa.output_view = fa.query_view, fa.block_indices = indices.data();

  SparseAttnArgs<E> sa;
  sa.batch = 1, sa.num_heads = hq, sa.kv_num_heads = hkv, sa.head_dim = dim, sa.new_len = S, sa.total_len = T;
  sa.scale = fa.scale, sa.block_size = bs, sa.window = window, sa.combine = Combine::kUnion;
  sa.query = q.data(), sa.query_view = fa.query_view;
  sa.own_key = k.data(), sa.own_value = v.data(), sa.own_capacity = T, sa.own_start = 0, sa.own_len = T;
  sa.sa_key = k.data(), sa.sa_value = v.data(), sa.sa_capacity = T;
  sa.block_indices = indices.data(), sa.top_k = top_k;
  sa.output = out_sparse.data(), sa.output_view = fa.query_view;

  cpu::SparseAttnCpuOptions token_options, tiled_options;
  token_options.prefill_tiles = -1;
  tiled_options.prefill_tiles = 1;
  token_options.kv_parts = tiled_options.kv_parts = o.kv_parts;
  const auto time = [&](const std::function<void()>& fn) {
    if (o.cpu_clock) {
      timespec t0{}, t1{};
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
      fn();
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
      return (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6;
    }
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  const auto full = [&] { RunFullAttnCpu(fa, exec); };
  const auto token = [&] { cpu::RunSparseAttnCpu(sa, exec, token_options); };
  const auto tiled = [&] { cpu::RunSparseAttnCpu(sa, exec, tiled_options); };

  full();  // warm-up; also the block indices the sparse op reads
  token();
  tiled();
  // Keys a token reads, averaged: |selected ∪ window| (what the sparse op must touch at least).
  double keys = 0;
  for (int g = 0; g < hkv; ++g)
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = o.past + s;
      int64_t n = std::min<int64_t>(window, t + 1);
      const int32_t* row = &indices[(static_cast<size_t>(g) * S + s) * top_k];
      for (int j = 0; j < top_k && row[j] >= 0; ++j) {
        const int64_t lo = int64_t{row[j]} * bs, hi = std::min<int64_t>(lo + bs, t - window + 1);
        n += std::max<int64_t>(0, hi - lo);
      }
      keys += static_cast<double>(n);
    }
  keys /= static_cast<double>(hkv) * S;
  // Distinct blocks the tokens of a 32-token tile select, against the K each token selects: how much
  // a prefill tile's block loads are shared.
  double union_blocks = 0;
  int64_t tiles = 0;
  for (int g = 0; g < hkv; ++g)
    for (int64_t s0 = 0; s0 < S; s0 += 32, ++tiles) {
      std::vector<int32_t> blocks;
      for (int64_t s = s0; s < std::min<int64_t>(S, s0 + 32); ++s)
        for (int j = 0; j < top_k; ++j) blocks.push_back(indices[(static_cast<size_t>(g) * S + s) * top_k + j]);
      std::sort(blocks.begin(), blocks.end());
      blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
      union_blocks += static_cast<double>(blocks.size()) - (blocks.front() < 0);
    }
  union_blocks /= static_cast<double>(tiles);

  std::vector<double> tf, tt, tp;
  for (int i = 0; i < o.iters; ++i) {
    tf.push_back(o.only.empty() || o.only == "full" ? time(full) : 1.0);
    tt.push_back(o.only.empty() || o.only == "token" ? time(token) : 1.0);
    tp.push_back(o.only.empty() || o.only == "tiled" ? time(tiled) : 1.0);
  }
  const auto list = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.3g", x);
      s += (s.empty() ? "" : " ") + std::string(buf);
    }
    return s;
  };
  const auto min = [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); };
  const auto max = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  std::printf("%s %s S=%lld past=%lld queries=%s threads=%d clock=%s keys/token=%.0f (full: %.0f), "
              "blocks per 32-token tile %.1f\n",
              o.shape.c_str(), o.type.c_str(), static_cast<long long>(S), static_cast<long long>(o.past),
              o.correlated ? "correlated" : "iid", o.threads, o.cpu_clock ? "thread-cpu" : "wall", keys,
              o.past + (S + 1) / 2.0, union_blocks);
  const std::pair<const char*, const std::vector<double>*> rows[] = {
      {"full", &tf}, {"sparse, token tiles", &tt}, {"sparse, prefill tiles", &tp}};
  for (const auto& [name, v] : rows)
    std::printf("  %-22s median %9.3f ms  min %9.3f  max %9.3f  / full %.3f (min/min %.3f)  [%s]\n", name,
                Median(*v), min(*v), max(*v), Median(*v) / Median(tf), min(*v) / min(tf), list(*v).c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--shape") o.shape = value;
    else if (key == "--s") o.lengths = ParseList(value);
    else if (key == "--iters") o.iters = std::stoi(value);
    else if (key == "--threads") o.threads = std::stoi(value);
    else if (key == "--type") o.type = value;
    else if (key == "--only") o.only = value;
    else if (key == "--past") o.past = std::stoll(value);
    else if (key == "--kv-parts") o.kv_parts = std::stoi(value);
    else if (key == "--clock") o.cpu_clock = value == "cpu";
    else if (key == "--queries") o.correlated = value != "iid";
    else {
      std::fprintf(stderr, "unknown option %s\n", key.c_str());
      return 2;
    }
  }
  if (o.cpu_clock && o.threads != 1) {
    std::fprintf(stderr, "--clock cpu times the calling thread: use --threads 1\n");
    return 2;
  }
  PoolExecutor pool(o.threads);
  SerialExecutor serial;
  const Executor& exec = o.threads == 1 ? static_cast<const Executor&>(serial) : pool;
  for (int64_t S : o.lengths) {
    if (o.type == "f16")
      RunLength<Half>(o, S, exec);
    else
      RunLength<float>(o, S, exec);
  }
  return 0;
}
