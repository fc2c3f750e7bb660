// tq bench-depth: decode tok/s at given cache depths and prefill tok/s at given prompt
// lengths, per cache policy, on the CPU or the GPU. Depth is reached with
// Model::fill_synthetic (random K/V appended to the caches on the GPU: decode speed does
// not depend on the values). Prints a table with each policy's ratio to fp16, the bytes a
// decode step reads (weights + KV + DeltaNet states), achieved GB/s and, on the GPU, the
// measured copy bandwidth and resident device memory.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "backend/cuda/cuda_backend.h"
#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace tq::cli {
namespace {

struct O {
  std::string model, device = "cuda", kv = "fp16,tq4,tq3,k8v3", json_out;
  std::vector<size_t> depths{0, 4096, 16384, 32768, 65536, 131072};
  std::vector<int> prefill{512, 8192};
  std::vector<size_t> prefill_depths;  // prompts appended at these depths too (llama-bench's pp512 @ d)
  int gen = 64;
  int batch = 1;  // sequences decoded together (Model::forward_batch); 1 = plain forward
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run(const O& o) {
  const std::string dir = o.model.empty() ? builtin_model_dir() : o.model;
  const auto policies = CachePolicy::parse_list(o.kv);
  check(o.gen >= 1, "--gen: expected >= 1");
  auto model = load_model(dir, o.device);
  const ModelConfig& c = model->config();
  auto& pool = ThreadPool::global();
  const bool gpu = o.device == "cuda";
  const double bw = gpu ? cuda::copy_bandwidth_gbs() : 0;
  // Bytes a decode step reads from the weights: everything but the embedding table (one row).
  const auto& ck = model->checkpoint();
  size_t weight_bytes = ck.weight_bytes();
  if (!c.tie_embeddings && ck.has("lm_head.weight")) weight_bytes -= ck.matrix("model.embed_tokens", c.vocab, c.hidden).bytes();
  fmt::print("model {} ({}), device {}, weights read per token {:.3f} GB{}\n", dir, c.model_type, o.device,
             weight_bytes / 1e9, gpu ? fmt::format(", copy bandwidth {:.0f} GB/s", bw) : "");
  nlohmann::json out = {{"model", dir}, {"device", o.device}, {"weight_bytes", weight_bytes},
                        {"copy_bandwidth_gbs", bw}, {"decode", nlohmann::json::array()},
                        {"prefill", nlohmann::json::array()}, {"batch", nlohmann::json::array()}};
  std::vector<int32_t> toks(*std::max_element(o.prefill.begin(), o.prefill.end()));
  std::mt19937 rng(7);
  for (auto& t : toks) t = static_cast<int32_t>(rng() % c.vocab);
  std::vector<float> logits(c.vocab);
  std::map<std::string, std::map<size_t, double>> tps;
  std::map<std::string, std::map<std::pair<int, size_t>, double>> pps;  // prefill tok/s by (tokens, depth)
  if (o.batch > 1) {  // batched decode throughput against one-by-one, same sequences
    check(o.batch <= 64, "--batch: expected 1..64");
    for (const auto& p : policies)
      for (size_t d : o.depths) {
        std::vector<std::unique_ptr<SequenceState>> sts;
        std::vector<SequenceState*> ptrs;
        for (int b = 0; b < o.batch; ++b) {
          sts.push_back(model->new_state(p));
          if (d > 0) model->fill_synthetic(*sts.back(), d, 1234 + b, pool);
          ptrs.push_back(sts.back().get());
        }
        std::vector<int32_t> next(o.batch, toks[0]);
        std::vector<float> lb(static_cast<size_t>(o.batch) * c.vocab);
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < o.gen; ++i) model->forward_batch(ptrs, next.data(), lb.data(), pool);
        const double batched = o.gen * o.batch / seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < o.gen; ++i)
          for (int b = 0; b < o.batch; ++b) model->forward(*ptrs[b], &next[b], 1, logits.data(), false, pool);
        const double single = o.gen * o.batch / seconds_since(t0);
        fmt::print("  {:<6} depth {:>7}: {} sequences: batched {:8.1f} tok/s, one by one {:8.1f} tok/s ({:.2f}x)\n",
                   p.name(), d, o.batch, batched, single, batched / single);
        out["batch"].push_back({{"kv", p.name()}, {"depth", d}, {"sequences", o.batch},
                                {"batched_tok_per_s", batched}, {"single_tok_per_s", single}});
      }
    if (!o.json_out.empty()) std::ofstream(o.json_out) << out.dump(2) << "\n";
    return 0;
  }
  for (const auto& p : policies) {
    auto st = model->new_state(p);
    for (size_t d : o.depths) {
      if (d > st->pos) model->fill_synthetic(*st, d - st->pos, 1234, pool);
      int32_t next = toks[0];
      for (int w = 0; w < 3; ++w) model->forward_argmax(*st, &next, 1, pool);  // warm-up
      const size_t depth = st->pos;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < o.gen; ++i) next = model->forward_argmax(*st, &next, 1, pool);  // greedy
      const double s = seconds_since(t0), rate = o.gen / s;
      const size_t kvb = st->kv_bytes(), stb = st->state_bytes();
      const double gbs = (weight_bytes + kvb + stb) * rate / 1e9;
      const size_t mem = gpu ? cuda::device_memory_used() : 0;
      tps[p.name()][d] = rate;
      fmt::print("  {:<6} depth {:>7}: {:8.1f} tok/s  KV {:8.1f} MB  {:7.0f} GB/s{}{}\n", p.name(), depth, rate,
                 kvb / 1e6, gbs, gpu ? fmt::format(" ({:.0f}% of copy)", 100 * gbs / bw) : "",
                 gpu ? fmt::format("  GPU memory used {:.2f} GB", mem / 1e9) : "");
      out["decode"].push_back({{"kv", p.name()}, {"depth", depth}, {"tok_per_s", rate}, {"kv_bytes", kvb},
                               {"state_bytes", stb}, {"achieved_gbs", gbs}, {"device_memory_used", mem}});
    }
    // An L-token prompt's prefill tok/s at depth d: timed passes (short prompts repeated for at
    // least 0.5 s), each on a state `reset` readies beforehand (outside the timing), then
    // printed and recorded.
    auto prefill = [&](int L, size_t d, std::unique_ptr<SequenceState>& ps, auto&& reset) {
      model->forward(*ps, toks.data(), std::min(L, 64), logits.data(), false, pool);  // warm-up
      double spent = 0;
      int reps = 0;
      do {
        reset();
        const auto t0 = std::chrono::steady_clock::now();
        model->forward(*ps, toks.data(), L, logits.data(), false, pool);
        spent += seconds_since(t0);
      } while (++reps < 100 && spent < 0.5);
      const double rate = static_cast<double>(L) * reps / spent;
      fmt::print("  {:<6} prefill {:>6} tokens{}: {:8.0f} tok/s\n", p.name(), L,
                 d > 0 ? fmt::format(" at depth {:>7}", d) : "", rate);
      out["prefill"].push_back({{"kv", p.name()}, {"tokens", L}, {"depth", d}, {"tok_per_s", rate}});
      pps[p.name()][{L, d}] = rate;
    };
    for (int L : o.prefill) {  // into an empty cache: a fresh state per pass
      auto ps = model->new_state(p);
      prefill(L, 0, ps, [&] { ps = model->new_state(p); });
    }
    // Prompts appended to a cache already d tokens deep (a new turn of a long conversation): the
    // state is filled once per depth, and cut back to d before each timed pass (the DeltaNet
    // states run on from there; their speed does not depend on their values).
    for (size_t d : o.prefill_depths) {
      if (d == 0) continue;  // (measured above)
      auto ps = model->new_state(p);
      model->fill_synthetic(*ps, d, 1234, pool);
      for (int L : o.prefill) prefill(L, d, ps, [&] { ps->truncate(d); });
    }
  }
  fmt::print("\n| kv |");
  for (size_t d : o.depths) fmt::print(" d={} |", d);
  fmt::print("\n|---|");
  for (size_t i = 0; i < o.depths.size(); ++i) fmt::print("---:|");
  fmt::print("\n");
  for (const auto& p : policies) {
    fmt::print("| {} |", p.name());
    for (size_t d : o.depths) {
      const double r = tps[p.name()][d];
      const double f = tps.count("fp16") ? tps["fp16"][d] : 0;
      fmt::print(" {:.1f}{} |", r, f > 0 && p.name() != "fp16" ? fmt::format(" ({:.2f}x)", r / f) : "");
    }
    fmt::print("\n");
  }
  // Prefill: a column per prompt length and depth (ppN, ppN @ d), as llama-bench names them.
  std::vector<std::pair<int, size_t>> all;
  for (int L : o.prefill) all.push_back({L, 0});
  for (size_t d : o.prefill_depths)
    if (d > 0)
      for (int L : o.prefill) all.push_back({L, d});
  fmt::print("\n| kv |");
  for (const auto& [L, d] : all) fmt::print(" pp{}{} |", L, d > 0 ? fmt::format(" @ {}", d) : "");
  fmt::print("\n|---|");
  for (size_t i = 0; i < all.size(); ++i) fmt::print("---:|");
  fmt::print("\n");
  for (const auto& p : policies) {
    fmt::print("| {} |", p.name());
    for (const auto& c : all) {
      const double r = pps[p.name()][c];
      const double f = pps.count("fp16") ? pps["fp16"][c] : 0;
      fmt::print(" {:.0f}{} |", r, f > 0 && p.name() != "fp16" ? fmt::format(" ({:.2f}x)", r / f) : "");
    }
    fmt::print("\n");
  }
  if (!o.json_out.empty()) std::ofstream(o.json_out) << out.dump(2) << "\n";
  return 0;
}

}  // namespace

Runner add_bench_depth(CLI::App& app) {
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("bench-depth", "Decode tok/s at cache depths and prefill tok/s, per cache policy");
  c->add_option("-m,--model", o->model, "Checkpoint directory (default: the built-in model)");
  c->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  c->add_option("--kv", o->kv, "Cache policies, comma-separated")->capture_default_str();
  c->add_option("--depths", o->depths, "Cache depths in tokens")->delimiter(',')->capture_default_str();
  c->add_option("--prefill", o->prefill, "Prompt lengths for prefill speed")->delimiter(',')->capture_default_str();
  c->add_option("--prefill-depths", o->prefill_depths, "Also time each prompt appended at these cache depths")
      ->delimiter(',');
  c->add_option("--gen", o->gen, "Decode steps timed per depth")->capture_default_str();
  c->add_option("--json", o->json_out, "Write all numbers as JSON");
  c->add_option("--batch", o->batch, "Decode this many sequences at once (batched vs one by one)")->capture_default_str();
  return [o] { return run(*o); };
}

}  // namespace tq::cli
