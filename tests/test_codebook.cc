#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "quant/codebook.h"

namespace tq {
namespace {

// Positive halves, × √d, converged float64 values from turboquant.md §2.5 (4 decimals).
TEST(Codebook, ExactBetaTablesD128D256) {
  struct Row {
    int d, b;
    std::vector<double> c;
  };
  const std::vector<Row> rows = {
      {128, 1, {0.7994}},
      {128, 2, {0.4525, 1.5052}},
      {128, 3, {0.2444, 0.7533, 1.3366, 2.1315}},
      {128, 4, {0.1279, 0.3864, 0.6536, 0.9371, 1.2478, 1.6043, 2.0459, 2.6889}},
      {256, 1, {0.7987}},
      {256, 2, {0.4527, 1.5079}},
      {256, 3, {0.2448, 0.7547, 1.3402, 2.1417}},
      {256, 4, {0.1281, 0.3872, 0.6552, 0.9397, 1.2520, 1.6112, 2.0574, 2.7106}},
  };
  for (const auto& r : rows) {
    const auto& cb = lloyd_max_codebook(r.d, r.b);
    const int half = cb.levels() / 2;
    ASSERT_EQ(static_cast<int>(r.c.size()), half);
    for (int k = 0; k < half; ++k) {
      // The table is rounded to 4 decimals: 5e-5, plus 1e-4 for the last-digit spread.
      EXPECT_NEAR(cb.centroids[half + k], r.c[k], 1.5e-4) << "d=" << r.d << " b=" << r.b << " k=" << k;
      EXPECT_DOUBLE_EQ(cb.centroids[half - 1 - k], -cb.centroids[half + k]);
    }
  }
}

// D_mse of the exact Beta marginal, turboquant.md §5 (5 significant digits).
TEST(Codebook, ExactMseValues) {
  const double d128[] = {0.36089, 0.11600, 0.03397, 0.00931};
  const double d256[] = {0.36214, 0.11674, 0.03426, 0.00941};
  for (int b = 1; b <= 4; ++b) {
    EXPECT_NEAR(lloyd_max_codebook(128, b).mse, d128[b - 1], 6e-6 + 5e-5 * d128[b - 1]) << b;
    EXPECT_NEAR(lloyd_max_codebook(256, b).mse, d256[b - 1], 6e-6 + 5e-5 * d256[b - 1]) << b;
  }
}

// As d → ∞ the marginal tends to N(0,1) in u units: Max (1960) / the N(0,1) table.
TEST(Codebook, GaussianLimitMatchesMaxTable) {
  const std::vector<std::vector<double>> gauss = {
      {0.7979}, {0.4528, 1.5104}, {0.2451, 0.7560, 1.3439, 2.1519},
      {0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326}};
  const double mse[] = {0.36338, 0.11748, 0.03455, 0.00950};
  for (int b = 1; b <= 4; ++b) {
    const auto& cb = lloyd_max_codebook(1 << 20, b);
    const int half = cb.levels() / 2;
    for (int k = 0; k < half; ++k) EXPECT_NEAR(cb.centroids[half + k], gauss[b - 1][k], 1.5e-4) << b << " " << k;
    EXPECT_NEAR(cb.mse, mse[b - 1], 1e-5) << b;
  }
}

// b = 1: the single positive centroid is E|u| = √d·Γ(d/2)/(√π·Γ((d+1)/2)).
TEST(Codebook, OneBitClosedForm) {
  for (int d : {4, 8, 37, 128, 256, 1000, 4096}) {
    const double expect = std::sqrt(static_cast<double>(d)) *
                          std::exp(std::lgamma(d / 2.0) - std::lgamma((d + 1) / 2.0)) / std::sqrt(M_PI);
    EXPECT_NEAR(lloyd_max_codebook(d, 1).centroids[1], expect, 1e-9) << d;
  }
}

// d = 3: each coordinate is uniform on [−1, 1] (Archimedes), so Lloyd-Max is the
// uniform quantizer: evenly spaced centroids, D_mse = 4^-b, for every b.
TEST(Codebook, DimensionThreeIsUniform) {
  for (int b = 1; b <= 8; ++b) {
    const auto& cb = lloyd_max_codebook(3, b);
    const int n = cb.levels();
    const double a = std::sqrt(3.0);
    for (int k = 0; k < n; ++k) EXPECT_NEAR(cb.centroids[k], -a + a * (2 * k + 1) / n, 1e-8) << b << " " << k;
    EXPECT_NEAR(cb.mse, std::pow(4.0, -b), 1e-9 * std::pow(4.0, -b) + 1e-12) << b;
  }
}

TEST(Codebook, AllBitWidthsSortedSymmetricAndBounded) {
  for (int d : {2, 8, 64, 100, 256}) {
    for (int b = 1; b <= 8; ++b) {
      const auto& cb = lloyd_max_codebook(d, b);
      ASSERT_EQ(static_cast<int>(cb.centroids.size()), 1 << b);
      ASSERT_EQ(static_cast<int>(cb.boundaries.size()), (1 << b) - 1);
      for (int k = 0; k + 1 < cb.levels(); ++k) {
        EXPECT_LT(cb.centroids[k], cb.boundaries[k]);
        EXPECT_LT(cb.boundaries[k], cb.centroids[k + 1]);
      }
      EXPECT_NEAR(cb.centroids.front(), -cb.centroids.back(), 1e-12);
      // Theorem 1: below (√3π/2)·4^-b. Theorem 3's 4^-b lower bound is a worst case over
      // inputs for any quantizer; at small d the exact marginal is not Gaussian, so only
      // check the upper bound (and positivity).
      EXPECT_GT(cb.mse, 0);
      EXPECT_LT(cb.mse, tq_mse_upper_bound(b)) << d << " " << b;
    }
  }
}

TEST(Codebook, RejectsBadArguments) {
  EXPECT_THROW(lloyd_max_codebook(128, 0), Error);
  EXPECT_THROW(lloyd_max_codebook(128, 9), Error);
  EXPECT_THROW(lloyd_max_codebook(1, 3), Error);
}

}  // namespace
}  // namespace tq
