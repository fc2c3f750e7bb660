#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/f16.h"
#include "core/rng.h"
#include "quant/packing.h"
#include "quant/qjl.h"
#include "quant/quantizer.h"
#include "quant/reference.h"
#include "test_util.h"

namespace tq {
namespace {

std::vector<float> unit(int d, std::mt19937_64& rng) {
  auto x = test::gaussian(d, rng);
  double n = 0;
  for (float v : x) n += v * v;
  for (auto& v : x) v = static_cast<float>(v / std::sqrt(n));
  return x;
}

TEST(Quantizer, EncodeDecodeMatchesFloat64Reference) {
  std::mt19937_64 rng(test::fresh_seed());
  for (int d : {8, 64, 80, 128, 256}) {
    for (int bits : {1, 2, 3, 4, 8}) {
      for (bool nc : {false, true}) {
        VectorQuantizer q(d, bits, rng(), nc);
        const int D = q.padded_dim();
        const auto& bnd = q.codebook().boundaries;
        for (int trial = 0; trial < 5; ++trial) {
          auto x = test::gaussian(d, rng, 3.0f);
          std::vector<double> xd(x.begin(), x.end());
          auto e = ref::encode(q, xd.data());
          std::vector<uint8_t> codes(q.code_bytes()), idx(D);
          std::vector<float> scratch(D), out(d);
          uint16_t n = q.encode(x.data(), codes.data(), scratch.data());
          unpack_codes(codes.data(), D, bits, idx.data());
          // Recompute u in float64 to know which coordinates lie within float error of a boundary.
          auto pi = ref::rotation_matrix(q.rotation());
          double nx = 0;
          for (double v : xd) nx += v * v;
          int mismatches = 0;
          for (int i = 0; i < D; ++i) {
            if (idx[i] == e.idx[i]) continue;
            double y = 0;
            for (int j = 0; j < d; ++j) y += pi[static_cast<size_t>(i) * D + j] * xd[j];
            const double u = y / std::sqrt(nx) * std::sqrt(static_cast<double>(D));
            double gap = 1e9;
            for (double b : bnd) gap = std::min(gap, std::fabs(u - b));
            EXPECT_LT(gap, 1e-5) << "index differs away from a boundary: d=" << d << " bits=" << bits;
            ++mismatches;
          }
          if (mismatches) continue;
          // The stored norm comes from the float rotation, whose result is within ≈ 2·(log2 D + 1)·2^-24 of the
          // float64 one relatively (one rounding per butterfly stage, margin 2): where the float64 norm lies that
          // close to an fp16 rounding midpoint, either neighbour is right (seed 932327752765179349 met one).
          const double rel = 2.0 * (std::log2(static_cast<double>(D)) + 1) * std::ldexp(1.0, -24);
          const uint16_t n_lo = f32_to_f16(static_cast<float>(e.norm * (1 - rel)));
          const uint16_t n_hi = f32_to_f16(static_cast<float>(e.norm * (1 + rel)));
          EXPECT_TRUE(n == n_lo || n == n_hi) << d << " " << bits << ": " << n << " not in {" << n_lo << ", " << n_hi << "}";
          q.decode(codes.data(), n, out.data(), scratch.data());
          auto back = ref::decode(q, e.idx, f16_to_f32(n));
          double scale = 0;
          for (double v : back) scale = std::max(scale, std::fabs(v));
          for (int j = 0; j < d; ++j) EXPECT_NEAR(out[j], back[j], 1e-5 * scale + 1e-7) << d << " " << bits;
        }
      }
    }
  }
}

// Must show 1: D_mse within 1% of the exact Lloyd-Max value at d = 128 and 256,
// b = 1..4, over 20,000 random unit vectors (fresh seed each run).
TEST(Quantizer, MeasuredMseWithinOnePercentOfLloydMax) {
  const uint64_t seed = test::fresh_seed();
  for (int d : {128, 256}) {
    for (int b = 1; b <= 4; ++b) {
      VectorQuantizer q(d, b, derive_seed(seed, d, b), /*norm_correction=*/false);
      std::vector<uint8_t> codes(q.code_bytes());
      std::vector<float> scratch(d), out(d);
      std::mt19937_64 rng(derive_seed(seed, d, b, 7));
      double sum = 0;
      const int N = 20000;
      for (int i = 0; i < N; ++i) {
        auto x = unit(d, rng);
        uint16_t n = q.encode(x.data(), codes.data(), scratch.data());
        q.decode(codes.data(), n, out.data(), scratch.data());
        for (int j = 0; j < d; ++j) sum += (x[j] - out[j]) * static_cast<double>(x[j] - out[j]);
      }
      const double measured = sum / N, exact = q.codebook().mse;
      EXPECT_NEAR(measured / exact, 1.0, 0.01) << "d=" << d << " b=" << b << " measured " << measured;
    }
  }
}

TEST(Quantizer, NormCorrectionRestoresTheNorm) {
  std::mt19937_64 rng(test::fresh_seed());
  VectorQuantizer q(256, 3, rng(), true);
  std::vector<uint8_t> codes(q.code_bytes());
  std::vector<float> scratch(256), out(256);
  for (int t = 0; t < 20; ++t) {
    auto x = test::gaussian(256, rng, 10.0f);
    double nx = 0, no = 0;
    for (float v : x) nx += v * v;
    uint16_t n = q.encode(x.data(), codes.data(), scratch.data());
    q.decode(codes.data(), n, out.data(), scratch.data());
    for (float v : out) no += v * v;
    EXPECT_NEAR(std::sqrt(no), std::sqrt(nx), std::sqrt(nx) * 1e-3);  // fp16 norm: 2^-11
  }
}

TEST(Quantizer, ZeroVectorDecodesToZero) {
  VectorQuantizer q(128, 3, 5);
  std::vector<float> x(128, 0.0f), scratch(128), out(128, 1.0f);
  std::vector<uint8_t> codes(q.code_bytes());
  uint16_t n = q.encode(x.data(), codes.data(), scratch.data());
  q.decode(codes.data(), n, out.data(), scratch.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

TEST(Quantizer, BytesPerVector) {
  EXPECT_EQ(VectorQuantizer(256, 3, 1).bytes_per_vector(), 98u);  // ≤ 100: 5.2× below fp16's 512
  EXPECT_EQ(VectorQuantizer(128, 3, 1).bytes_per_vector(), 50u);
  EXPECT_EQ(VectorQuantizer(256, 4, 1).bytes_per_vector(), 130u);
  EXPECT_EQ(VectorQuantizer(80, 3, 1).bytes_per_vector(), 50u);  // padded to 128
}

// TurboQuant_prod is unbiased: E⟨y, x̃⟩ = ⟨y, x⟩, and its D_prod is below the paper's
// bound (√3·π²/d)·4^-b (Theorem 2). Over a fixed x and y, averaging over many
// independent quantizers (random S and rotation) must give the true inner product.
TEST(Qjl, UnbiasedInnerProducts) {
  const uint64_t seed = test::fresh_seed();
  const int d = 64;
  std::mt19937_64 rng(seed);
  auto x = unit(d, rng), y = unit(d, rng);
  double ip = 0;
  for (int j = 0; j < d; ++j) ip += static_cast<double>(x[j]) * y[j];
  for (int b : {1, 2, 3}) {
    const int trials = 3000;
    double sum = 0, sum2 = 0;
    std::vector<float> xt(d);
    for (int t = 0; t < trials; ++t) {
      ProdQuantizer pq(d, b, derive_seed(seed, b, t));
      pq.roundtrip(x.data(), xt.data());
      double e = -ip;
      for (int j = 0; j < d; ++j) e += static_cast<double>(xt[j]) * y[j];
      sum += e;
      sum2 += e * e;
    }
    const double mean = sum / trials, var = sum2 / trials - mean * mean;
    const double se = std::sqrt(var / trials);
    EXPECT_LT(std::fabs(mean), 4.5 * se + 1e-4) << "bias at b=" << b << ": " << mean << " (se " << se << ")";
    EXPECT_LT(sum2 / trials, std::sqrt(3.0) * M_PI * M_PI / d * std::pow(4.0, -b)) << b;
  }
}

}  // namespace
}  // namespace tq
