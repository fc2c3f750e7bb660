// TurboQuant_prod (arXiv 2504.19874, Algorithm 2): an unbiased inner-product
// quantizer. (b−1)-bit TurboQuant_mse, then QJL on the residual r = x − x̃_mse:
//   qjl = sign(S·r), S ∈ R^(d×d) with i.i.d. N(0,1) entries, γ = ‖r‖,
//   x̃ = x̃_mse + γ · √(π/2)/d · Sᵀ·qjl.
// √(π/2)/d is the unbiased scale for a *Gaussian* S (rows of norm ≈ √d); an
// orthogonal S would need √(π/2)/√d instead (turboquant.md §2.6). At b = 1 the MSE
// stage is empty and x̃ is plain QJL of x.
// A research option: the KV cache uses TurboQuant_mse (QJL's variance hurts softmax).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "quant/quantizer.h"

namespace tq {

class ProdQuantizer {
 public:
  ProdQuantizer(int dim, int bits, uint64_t seed);
  int dim() const { return dim_; }
  int bits() const { return bits_; }
  // Storage: (b−1)-bit MSE codes + fp16 norm (if b ≥ 2), d sign bits, fp16 γ.
  size_t bytes_per_vector() const;
  // x̃ = DeQuant_prod(Quant_prod(x)).
  void roundtrip(const float* x, float* xt) const;

 private:
  int dim_, bits_;
  std::unique_ptr<VectorQuantizer> mse_;  // null at b = 1
  std::vector<float> s_;                  // S, row-major d×d
};

}  // namespace tq
