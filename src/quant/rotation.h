// Randomized Hadamard rotation Π = H_norm · diag(s): random ±1 signs s drawn from a
// seed, then the fast Walsh-Hadamard transform scaled by 1/√D (orthonormal).
// A dimension d that is not a power of two is zero-padded to D = next power of two;
// zero padding preserves inner products (Parseval), so nothing is lost.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tq {

// In place, unnormalized: y ← H_raw · y, n a power of two (H_raw·H_raw = n·I).
void fwht(float* y, int n);
void fwht(double* y, int n);

int next_pow2(int d);

class Rotation {
 public:
  Rotation() = default;
  Rotation(int dim, uint64_t seed);
  int dim() const { return dim_; }
  int padded_dim() const { return padded_; }
  uint64_t seed() const { return seed_; }
  // y[padded_dim] = Π · pad(x[dim]).
  void forward(const float* x, float* y) const;
  // In place on y[padded_dim]: y ← Πᵀ · y = diag(s) · H_norm · y. The first dim()
  // entries are the result in the original space.
  void inverse_inplace(float* y) const;
  const std::vector<float>& signs() const { return signs_; }
  size_t resident_bytes() const { return signs_.capacity() * sizeof(float); }

 private:
  int dim_ = 0, padded_ = 0;
  uint64_t seed_ = 0;
  std::vector<float> signs_;  // ±1, padded_dim entries
};

}  // namespace tq
