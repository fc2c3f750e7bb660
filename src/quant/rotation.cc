#include "quant/rotation.h"

#include <cmath>
#include <random>

#include "core/error.h"

namespace tq {

template <typename T>
static void fwht_impl(T* y, int n) {
  for (int h = 1; h < n; h *= 2) {
    for (int i = 0; i < n; i += 2 * h) {
      T* a = y + i;
      T* b = y + i + h;
      for (int j = 0; j < h; ++j) {
        T u = a[j], v = b[j];
        a[j] = u + v;
        b[j] = u - v;
      }
    }
  }
}
void fwht(float* y, int n) { fwht_impl(y, n); }
void fwht(double* y, int n) { fwht_impl(y, n); }

int next_pow2(int d) {
  int p = 1;
  while (p < d) p *= 2;
  return p;
}

Rotation::Rotation(int dim, uint64_t seed) : dim_(dim), padded_(next_pow2(dim)), seed_(seed) {
  check(dim >= 1 && dim <= (1 << 20), "rotation: dimension must be in 1..2^20, got {}", dim);
  std::mt19937_64 rng(seed);
  signs_.resize(padded_);
  for (int i = 0; i < padded_; ++i) signs_[i] = (rng() >> 63) ? -1.0f : 1.0f;
}

void Rotation::forward(const float* x, float* y) const {
  for (int i = 0; i < dim_; ++i) y[i] = x[i] * signs_[i];
  for (int i = dim_; i < padded_; ++i) y[i] = 0;
  fwht(y, padded_);
  const float s = 1.0f / std::sqrt(static_cast<float>(padded_));
  for (int i = 0; i < padded_; ++i) y[i] *= s;
}

void Rotation::inverse_inplace(float* y) const {
  fwht(y, padded_);
  const float s = 1.0f / std::sqrt(static_cast<float>(padded_));
  for (int i = 0; i < padded_; ++i) y[i] *= s * signs_[i];
}

}  // namespace tq
