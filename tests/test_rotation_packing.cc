#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "quant/packing.h"
#include "quant/reference.h"
#include "quant/rotation.h"
#include "test_util.h"

namespace tq {
namespace {

TEST(Rotation, MatchesDenseHadamardReference) {
  std::mt19937_64 rng(test::fresh_seed());
  for (int d : {2, 8, 12, 64, 80, 128, 256}) {
    Rotation r(d, rng());
    const int D = r.padded_dim();
    ASSERT_EQ(D, next_pow2(d));
    auto m = ref::rotation_matrix(r);
    auto x = test::gaussian(d, rng);
    std::vector<float> y(D);
    r.forward(x.data(), y.data());
    for (int i = 0; i < D; ++i) {
      double e = 0;
      for (int j = 0; j < d; ++j) e += m[static_cast<size_t>(i) * D + j] * x[j];
      // float butterfly: log2(D) additions per output, each with relative error 2^-24.
      EXPECT_NEAR(y[i], e, 1e-6 * std::log2(D) * 4) << d << " " << i;
    }
    r.inverse_inplace(y.data());
    for (int j = 0; j < d; ++j) EXPECT_NEAR(y[j], x[j], 1e-5) << d;
  }
}

TEST(Rotation, PreservesNormAndSeedsDiffer) {
  std::mt19937_64 rng(test::fresh_seed());
  Rotation a(256, 1), b(256, 2), a2(256, 1);
  EXPECT_EQ(a.signs(), a2.signs());
  EXPECT_NE(a.signs(), b.signs());
  auto x = test::gaussian(256, rng);
  std::vector<float> y(256);
  a.forward(x.data(), y.data());
  double nx = 0, ny = 0;
  for (int i = 0; i < 256; ++i) nx += x[i] * x[i], ny += y[i] * y[i];
  EXPECT_NEAR(ny, nx, 1e-5 * nx);
}

TEST(Packing, RoundTripAllWidthsExactSize) {
  std::mt19937_64 rng(test::fresh_seed());
  for (int bits = 1; bits <= 8; ++bits) {
    for (size_t n : {1u, 7u, 32u, 33u, 256u}) {
      std::vector<uint8_t> codes(n), back(n);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      std::vector<uint8_t> packed(packed_bytes(n, bits) + 1, 0xAB);
      pack_codes(codes.data(), n, bits, packed.data());
      EXPECT_EQ(packed.back(), 0xAB) << "wrote past the end";
      unpack_codes(packed.data(), n, bits, back.data());
      EXPECT_EQ(codes, back) << bits << " " << n;
      // Bit j·b of the stream is the low bit of code j.
      for (size_t j = 0; j < n; ++j) EXPECT_EQ((packed[j * bits / 8] >> (j * bits % 8)) & 1, codes[j] & 1);
    }
  }
  EXPECT_EQ(packed_bytes(32, 3), 12u);
  EXPECT_EQ(packed_bytes(256, 3), 96u);
  EXPECT_EQ(packed_bytes(256, 4), 128u);
  EXPECT_EQ(packed_bytes(256, 2), 64u);
}

}  // namespace
}  // namespace tq
