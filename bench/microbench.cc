// Google Benchmark microbenchmarks of the quantizer, the attention kernels, the 4-bit
// matvec and the sampler.
#include <benchmark/benchmark.h>

#include <random>

#include "backend/cpu/ops.h"
#include "core/thread_pool.h"
#include "kv/kv_slot.h"
#include "quant/quantizer.h"
#include "runtime/generate.h"

namespace {

void BM_Encode(benchmark::State& st) {
  tq::VectorQuantizer q(static_cast<int>(st.range(0)), static_cast<int>(st.range(1)), 1);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(q.dim()), scratch(q.padded_dim());
  for (auto& v : x) v = nd(rng);
  std::vector<uint8_t> codes(q.code_bytes());
  for (auto _ : st) benchmark::DoNotOptimize(q.encode(x.data(), codes.data(), scratch.data()));
}
BENCHMARK(BM_Encode)->Args({128, 3})->Args({256, 3})->Args({256, 4});

void BM_DecodeAttention(benchmark::State& st, const char* policy) {
  const tq::KVGeometry g{16, 4, 256};
  auto slot = tq::make_kv_slot(tq::CachePolicy::parse(policy), g);
  const size_t T = st.range(0), row = 4 * 256;
  std::mt19937_64 rng(2);
  std::normal_distribution<float> nd;
  std::vector<float> k(1024 * row);
  for (auto& v : k) v = nd(rng);
  for (size_t t = 0; t < T; t += 1024) slot->append(k, k, 1024);
  std::vector<float> q(16 * 256), out(q.size());
  for (auto& v : q) v = nd(rng);
  const int32_t pos = static_cast<int32_t>(slot->size() - 1);
  tq::ThreadPool pool(1);
  for (auto _ : st) slot->attend(q, std::span<const int32_t>(&pos, 1), out, 0, pool);
  st.SetBytesProcessed(st.iterations() * slot->resident_bytes());
}
BENCHMARK_CAPTURE(BM_DecodeAttention, fp16, "fp16")->Arg(4096);
BENCHMARK_CAPTURE(BM_DecodeAttention, tq3, "tq3")->Arg(4096);
BENCHMARK_CAPTURE(BM_DecodeAttention, tq4, "tq4")->Arg(4096);
BENCHMARK_CAPTURE(BM_DecodeAttention, k8v3, "k8v3")->Arg(4096);

}  // namespace

BENCHMARK_MAIN();

namespace {
// 4-bit affine matvec (decode), the shapes of Qwen3.5-0.8B's MLP and its tied lm_head.
void BM_MatvecQ4(benchmark::State& st) {
  const int64_t rows = st.range(0), cols = st.range(1);
  std::vector<uint32_t> codes(rows * cols / 8, 0x76543210u);
  std::vector<uint16_t> sc(rows * cols / 64, 0x3c00), bi(sc.size(), 0xbc00);
  tq::Weight w;
  w.rows = rows, w.cols = cols, w.bits = 4, w.group = 64, w.sdtype = tq::DType::bf16;
  w.data = reinterpret_cast<const uint8_t*>(codes.data());
  w.scales = reinterpret_cast<const uint8_t*>(sc.data());
  w.biases = reinterpret_cast<const uint8_t*>(bi.data());
  std::vector<float> x(cols, 0.5f), y(rows);
  tq::ThreadPool pool(static_cast<int>(st.range(2)));
  for (auto _ : st) tq::cpu::matmul(w, x.data(), 1, y.data(), pool);
  st.SetBytesProcessed(st.iterations() * w.bytes());
}
BENCHMARK(BM_MatvecQ4)->Args({3584, 1024, 1})->Args({3584, 1024, 2})->Args({248320, 1024, 1})->Args({248320, 1024, 2});

// One sampling step over a Qwen3.5-sized row (248320 logits, Gaussian with the given
// spread: 1 = flat, 6 = peaked), temperature 0.8: top_k 40 (the CLI's default), no top-k
// with top_p 0.95, no top-k with top_p 1 (the server's default request).
void BM_SampleRow(benchmark::State& st) {
  const int V = 248320;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.0f, static_cast<float>(st.range(0)));
  std::vector<float> logits(V), row(V);
  for (auto& l : logits) l = nd(rng);
  tq::SamplerConfig c;
  c.top_k = static_cast<int>(st.range(1));
  c.top_p = st.range(2) / 100.0f;
  tq::Sampler sampler(c);
  for (auto _ : st) {
    row = logits;
    benchmark::DoNotOptimize(sampler.sample(row, {}));
  }
}
BENCHMARK(BM_SampleRow)
    ->Args({1, 40, 95})->Args({1, 0, 95})->Args({1, 0, 100})
    ->Args({6, 40, 95})->Args({6, 0, 95})->Args({6, 0, 100})->Unit(benchmark::kMillisecond);
}  // namespace
