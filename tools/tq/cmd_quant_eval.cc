// tq quant-eval: measured distortion of the quantizer against the paper's theory.
#include <fmt/format.h>

#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "quant/codebook.h"
#include "quant/qjl.h"
#include "quant/quantizer.h"

namespace tq::cli {
namespace {

struct Options {
  int dim = 128;
  std::vector<int> bits{1, 2, 3, 4};
  int vectors = 20000;
  uint64_t seed = 1;
  bool json = false;
  bool qjl = true;
};

struct Sums {
  double mse = 0, mse_nc = 0, prod = 0, prod_qjl = 0, bias_qjl = 0;
};

// The paper's D_prod·d figures for TurboQuant_prod at b = 1..4 (1.57, 0.56, 0.18, 0.047).
double paper_dprod_times_d(int b) {
  switch (b) {
    case 1: return 1.57;
    case 2: return 0.56;
    case 3: return 0.18;
    case 4: return 0.047;
    default: return 0;
  }
}

int run(const Options& o) {
  check(o.dim >= 2 && o.dim <= 65536, "--dim: expected 2..65536, got {}", o.dim);
  check(o.vectors >= 1, "--vectors: expected >= 1, got {}", o.vectors);
  for (int b : o.bits) check(b >= 1 && b <= 8, "--bits: each bit width must be in 1..8, got {}", b);
  auto& pool = ThreadPool::global();
  nlohmann::json results = nlohmann::json::array();
  if (!o.json)
    fmt::print("dim {} (padded {}), {} random unit vectors and queries, seed {}\n", o.dim,
               VectorQuantizer(o.dim, 1, 0).padded_dim(), o.vectors, o.seed);
  if (!o.json)
    fmt::print("{:>4} {:>10} {:>10} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11} {:>6}\n", "bits", "D_mse",
               "exact LM", "diff%", "paper", "upper", "lower", "D_mse+nc", "D_prod·d", "prod D·d", "paper prod", "B/vec");
  for (int b : o.bits) {
    const VectorQuantizer q(o.dim, b, derive_seed(o.seed, 1, b), /*norm_correction=*/false);
    const VectorQuantizer qnc(o.dim, b, derive_seed(o.seed, 1, b), /*norm_correction=*/true);
    std::unique_ptr<ProdQuantizer> pq;
    const bool do_qjl = o.qjl && o.dim <= 4096;
    if (do_qjl) pq = std::make_unique<ProdQuantizer>(o.dim, b, derive_seed(o.seed, 2, b));
    std::vector<Sums> part(pool.size());
    const size_t n_chunks = std::min<size_t>(64, o.vectors);
    pool.parallel_for(n_chunks, [&](size_t c, int w) {
      const int d = o.dim;
      std::vector<float> x(d), y(d), xt(d), scratch(q.padded_dim());
      std::vector<uint8_t> codes(q.code_bytes());
      Sums s;
      for (int i = static_cast<int>(c); i < o.vectors; i += static_cast<int>(n_chunks)) {
        std::mt19937_64 rng(derive_seed(o.seed, 3, b, i));
        std::normal_distribution<float> nd;
        double nx = 0, ny = 0;
        for (int j = 0; j < d; ++j) nx += (x[j] = nd(rng)) * static_cast<double>(x[j]);
        for (int j = 0; j < d; ++j) ny += (y[j] = nd(rng)) * static_cast<double>(y[j]);
        for (int j = 0; j < d; ++j) x[j] = static_cast<float>(x[j] / std::sqrt(nx));
        for (int j = 0; j < d; ++j) y[j] = static_cast<float>(y[j] / std::sqrt(ny));
        auto err = [&](const std::vector<float>& rec, double& mse, double* prod, double* bias) {
          double e2 = 0, ip = 0, ipt = 0;
          for (int j = 0; j < d; ++j) {
            e2 += (x[j] - rec[j]) * static_cast<double>(x[j] - rec[j]);
            ip += static_cast<double>(y[j]) * x[j];
            ipt += static_cast<double>(y[j]) * rec[j];
          }
          mse += e2;
          if (prod) *prod += (ip - ipt) * (ip - ipt);
          if (bias) *bias += ipt - ip;
        };
        uint16_t n = q.encode(x.data(), codes.data(), scratch.data());
        q.decode(codes.data(), n, xt.data(), scratch.data());
        err(xt, s.mse, &s.prod, nullptr);
        n = qnc.encode(x.data(), codes.data(), scratch.data());
        qnc.decode(codes.data(), n, xt.data(), scratch.data());
        err(xt, s.mse_nc, nullptr, nullptr);
        if (pq) {
          double dummy = 0;
          pq->roundtrip(x.data(), xt.data());
          err(xt, dummy, &s.prod_qjl, &s.bias_qjl);
        }
      }
      part[w].mse += s.mse;
      part[w].mse_nc += s.mse_nc;
      part[w].prod += s.prod;
      part[w].prod_qjl += s.prod_qjl;
      part[w].bias_qjl += s.bias_qjl;
    });
    Sums t;
    for (const auto& p : part) {
      t.mse += p.mse;
      t.mse_nc += p.mse_nc;
      t.prod += p.prod;
      t.prod_qjl += p.prod_qjl;
      t.bias_qjl += p.bias_qjl;
    }
    const double N = o.vectors;
    const double d_mse = t.mse / N, theory = q.codebook().mse;
    nlohmann::json r = {{"bits", b},
                        {"d_mse", d_mse},
                        {"d_mse_theory", theory},
                        {"d_mse_rel_diff", d_mse / theory - 1},
                        {"d_mse_paper", tq_mse_paper_figure(b)},
                        {"d_mse_upper_bound", tq_mse_upper_bound(b)},
                        {"d_mse_lower_bound", tq_mse_lower_bound(b)},
                        {"d_mse_norm_corrected", t.mse_nc / N},
                        {"d_prod", t.prod / N},
                        {"bytes_per_vector", q.bytes_per_vector()}};
    if (pq) {
      r["qjl"] = {{"d_prod", t.prod_qjl / N},
                  {"d_prod_paper", paper_dprod_times_d(b) / o.dim},
                  {"d_prod_upper_bound", std::sqrt(3.0) * M_PI * M_PI / o.dim * std::pow(4.0, -b)},
                  {"bias", t.bias_qjl / N},
                  {"bytes_per_vector", pq->bytes_per_vector()}};
    }
    results.push_back(r);
    if (!o.json)
      fmt::print("{:>4} {:>10.6f} {:>10.6f} {:>+7.2f} {:>8.4g} {:>10.6f} {:>10.6f} {:>10.6f} {:>10.5f} {:>11.5f} {:>11.4g} {:>6}\n",
                 b, d_mse, theory, 100 * (d_mse / theory - 1), tq_mse_paper_figure(b), tq_mse_upper_bound(b),
                 tq_mse_lower_bound(b), t.mse_nc / N, t.prod / N * o.dim, pq ? t.prod_qjl / N * o.dim : NAN,
                 paper_dprod_times_d(b), q.bytes_per_vector());
  }
  if (o.json) {
    nlohmann::json j = {{"dim", o.dim}, {"vectors", o.vectors}, {"seed", o.seed}, {"results", results}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("D_mse: mean ‖x − x̃‖² (plain norms); exact LM: the Lloyd-Max optimum for this d; D_mse+nc: with norm\n"
               "correction; D_prod·d: d·E(⟨y,x⟩ − ⟨y,x̃⟩)² for the MSE quantizer; prod D·d: TurboQuant_prod (b−1 bits +\n"
               "QJL); B/vec: bytes per vector in the cache (codes + fp16 norm).\n");
  }
  return 0;
}

}  // namespace

Runner add_quant_eval(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* c = app.add_subcommand("quant-eval", "Measure quantizer distortion (D_mse, D_prod) against theory");
  c->add_option("--dim", o->dim, "Vector dimension")->capture_default_str();
  c->add_option("--bits", o->bits, "Bit widths, comma-separated (1..8)")->delimiter(',')->capture_default_str();
  c->add_option("--vectors", o->vectors, "Random unit vectors per bit width")->capture_default_str();
  c->add_option("--seed", o->seed, "Seed")->capture_default_str();
  c->add_flag("--json", o->json, "Print one JSON object");
  c->add_flag("!--no-qjl", o->qjl, "Skip the TurboQuant_prod (QJL) measurement");
  return [o] { return run(*o); };
}

}  // namespace tq::cli
