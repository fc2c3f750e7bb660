// tq kv-bench: decode attention (one new query per head) over caches of each policy.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "kv/kv_slot.h"

namespace tq::cli {
namespace {

struct Options {
  int head_dim = 256, heads = 16, kv_heads = 4;
  std::vector<long long> tokens{16384, 65536};
  std::string kv = "fp16,tq3";
  int repeats = 7;
  uint64_t seed = 1;
  bool json = false;
};

double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
  double e = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    e += (a[i] - ref[i]) * static_cast<double>(a[i] - ref[i]);
    r += ref[i] * static_cast<double>(ref[i]);
  }
  return std::sqrt(e / std::max(r, 1e-300));
}

int run(const Options& o) {
  KVGeometry geo{o.heads, o.kv_heads, o.head_dim};
  geo.validate();
  const auto policies = CachePolicy::parse_list(o.kv);
  check(o.repeats >= 1, "--repeats: expected >= 1, got {}", o.repeats);
  for (long long t : o.tokens) check(t >= 1 && t <= (1ll << 26), "--tokens: expected 1..2^26, got {}", t);
  auto& pool = ThreadPool::global();
  const size_t row = static_cast<size_t>(o.kv_heads) * o.head_dim;
  nlohmann::json results = nlohmann::json::array();
  if (!o.json)
    fmt::print("decode attention: head_dim {}, {} heads, {} KV heads, {} threads, median of {} repeats\n", o.head_dim,
               o.heads, o.kv_heads, pool.size(), o.repeats);
  if (!o.json)
    fmt::print("{:>10} {:>8} {:>12} {:>10} {:>10} {:>10} {:>12} {:>10}\n", "kv", "tokens", "resident MB", "B/token",
               "ms", "GB/s", "vs first", "rel err");
  for (long long T : o.tokens) {
    // Keys with a few large channels and a per-token scale, as real post-RoPE keys have.
    std::vector<std::unique_ptr<KVSlot>> slots;
    for (const auto& p : policies) slots.push_back(make_kv_slot(p, geo, 0));
    auto exact = make_kv_slot(CachePolicy::parse("f32"), geo, 0);
    const size_t chunk = 1024;
    std::vector<float> k(chunk * row), v(chunk * row);
    for (size_t t0 = 0; t0 < static_cast<size_t>(T); t0 += chunk) {
      const size_t n = std::min<size_t>(chunk, T - t0);
      pool.parallel_for(n, [&](size_t i, int) {
        std::mt19937_64 rng(derive_seed(o.seed, t0 + i));
        std::normal_distribution<float> nd;
        for (size_t j = 0; j < row; ++j) {
          const float boost = (j % o.head_dim) < 4 ? 4.0f : 1.0f;
          k[i * row + j] = nd(rng) * boost;
          v[i * row + j] = nd(rng);
        }
      });
      std::span<const float> ks(k.data(), n * row), vs(v.data(), n * row);
      for (auto& s : slots) s->append(ks, vs, n);
      exact->append(ks, vs, n);
    }
    std::mt19937_64 rng(derive_seed(o.seed, 1u << 30));
    std::normal_distribution<float> nd;
    std::vector<float> q(static_cast<size_t>(o.heads) * o.head_dim), out(q.size()), ref(q.size());
    for (auto& x : q) x = nd(rng);
    const int32_t pos = static_cast<int32_t>(T - 1);
    exact->attend(q, std::span<const int32_t>(&pos, 1), ref, 0, pool);
    std::vector<std::vector<double>> times(slots.size());
    std::vector<double> errs(slots.size());
    for (size_t s = 0; s < slots.size(); ++s) {  // warm-up and accuracy
      slots[s]->attend(q, std::span<const int32_t>(&pos, 1), out, 0, pool);
      errs[s] = rel_err(out, ref);
    }
    for (int r = 0; r < o.repeats; ++r)
      for (size_t s = 0; s < slots.size(); ++s) {  // policies interleaved
        auto t0 = std::chrono::steady_clock::now();
        slots[s]->attend(q, std::span<const int32_t>(&pos, 1), out, 0, pool);
        times[s].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    double first = 0;
    for (size_t s = 0; s < slots.size(); ++s) {
      auto& ts = times[s];
      std::sort(ts.begin(), ts.end());
      const double med = ts[ts.size() / 2];
      if (s == 0) first = med;
      const size_t bytes = slots[s]->resident_bytes();
      results.push_back({{"kv", policies[s].name()},
                         {"tokens", T},
                         {"seconds", med},
                         {"bytes", bytes},
                         {"bytes_per_token", slots[s]->bytes_per_token()},
                         {"gb_per_s", bytes / med / 1e9},
                         {"speedup_vs_first", first / med},
                         {"rel_err_vs_f32", errs[s]}});
      if (!o.json)
        fmt::print("{:>10} {:>8} {:>12.2f} {:>10} {:>10.3f} {:>10.1f} {:>11.2f}x {:>10.2e}\n", policies[s].name(), T,
                   bytes / 1e6, slots[s]->bytes_per_token(), med * 1e3, bytes / med / 1e9, first / med, errs[s]);
    }
  }
  if (o.json) fmt::print("{}\n", nlohmann::json{{"results", results}}.dump());
  return 0;
}

}  // namespace

Runner add_kv_bench(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* c = app.add_subcommand("kv-bench", "Decode-attention speed and memory per cache policy");
  c->add_option("--head-dim", o->head_dim, "Head dimension")->capture_default_str();
  c->add_option("--heads", o->heads, "Query heads")->capture_default_str();
  c->add_option("--kv-heads", o->kv_heads, "KV heads")->capture_default_str();
  c->add_option("--tokens", o->tokens, "Cache lengths, comma-separated")->delimiter(',')->capture_default_str();
  c->add_option("--kv", o->kv, "Cache policies, comma-separated")->capture_default_str();
  c->add_option("--repeats", o->repeats, "Timed repeats per policy (median reported)")->capture_default_str();
  c->add_option("--seed", o->seed, "Seed")->capture_default_str();
  c->add_flag("--json", o->json, "Print one JSON object");
  return [o] { return run(*o); };
}

}  // namespace tq::cli
