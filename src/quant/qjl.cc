#include "quant/qjl.h"

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/f16.h"
#include "core/rng.h"

namespace tq {

ProdQuantizer::ProdQuantizer(int dim, int bits, uint64_t seed) : dim_(dim), bits_(bits) {
  check(bits >= 1 && bits <= 8, "qjl: bits must be in 1..8, got {}", bits);
  check(dim >= 2 && dim <= 4096, "qjl: dimension must be in 2..4096, got {}", dim);
  if (bits >= 2) mse_ = std::make_unique<VectorQuantizer>(dim, bits - 1, seed, /*norm_correction=*/false);
  std::mt19937_64 rng(derive_seed(seed, 0x51ull));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  s_.resize(static_cast<size_t>(dim) * dim);
  for (auto& v : s_) v = nd(rng);
}

size_t ProdQuantizer::bytes_per_vector() const {
  size_t b = (dim_ + 7) / 8 + 2;
  if (mse_) b += mse_->bytes_per_vector();
  return b;
}

void ProdQuantizer::roundtrip(const float* x, float* xt) const {
  const int d = dim_;
  std::vector<float> r(x, x + d);
  std::fill(xt, xt + d, 0.0f);
  if (mse_) {
    std::vector<uint8_t> codes(mse_->code_bytes());
    std::vector<float> scratch(mse_->padded_dim());
    uint16_t n = mse_->encode(x, codes.data(), scratch.data());
    mse_->decode(codes.data(), n, xt, scratch.data());
    for (int i = 0; i < d; ++i) r[i] = x[i] - xt[i];
  }
  double g2 = 0;
  for (int i = 0; i < d; ++i) g2 += static_cast<double>(r[i]) * r[i];
  const float gamma = f16_to_f32(f32_to_f16(static_cast<float>(std::sqrt(g2))));
  std::vector<float> z(d);
  for (int i = 0; i < d; ++i) {
    double acc = 0;
    for (int j = 0; j < d; ++j) acc += static_cast<double>(s_[static_cast<size_t>(i) * d + j]) * r[j];
    z[i] = acc >= 0 ? 1.0f : -1.0f;
  }
  const float scale = gamma * std::sqrt(static_cast<float>(M_PI / 2)) / d;
  for (int j = 0; j < d; ++j) {
    double acc = 0;
    for (int i = 0; i < d; ++i) acc += static_cast<double>(s_[static_cast<size_t>(i) * d + j]) * z[i];
    xt[j] += scale * static_cast<float>(acc);
  }
}

}  // namespace tq
