// Lloyd-Max scalar codebooks for the coordinates of a randomly rotated unit vector.
//
// For x uniform on the sphere S^(d-1) each coordinate t has density
//   f(t) = Γ(d/2) / (√π Γ((d-1)/2)) · (1 - t²)^((d-3)/2),  t ∈ [-1, 1]
// (TurboQuant, arXiv 2504.19874, Lemma 1). We solve the Lloyd-Max conditions for
// this exact density in float64 and keep the result in "u units", u = t·√d, where
// the variance is 1 and the tables look like the familiar N(0,1) ones.
#pragma once
#include <vector>

namespace tq {

struct Codebook {
  int dim = 0;                     // the dimension d of the rotated vector
  int bits = 0;                    // b: 2^b levels
  std::vector<double> centroids;   // 2^b values, ascending, u units (× √d)
  std::vector<double> boundaries;  // 2^b - 1 midpoints, ascending, u units
  double mse = 0;                  // exact D_mse = E‖x̂ − x̃‖² for a unit vector (no norm correction)
  std::vector<float> centroids_f;  // centroids as float, u units
  std::vector<float> boundaries_f;
  int levels() const { return 1 << bits; }
};

// The Lloyd-Max codebook for dimension d (>= 2) and 1..8 bits, computed once per
// (d, bits) in float64 and cached for the life of the process. Thread-safe.
const Codebook& lloyd_max_codebook(int dim, int bits);

// The density of u = t·√d at u (for tests and reporting).
double sphere_coordinate_density(double u, int dim);

// Theoretical figures of the paper (Theorems 1 and 3) for a unit vector.
double tq_mse_upper_bound(int bits);  // (√3·π/2)·4^-b
double tq_mse_lower_bound(int bits);  // 4^-b
// The paper's rounded D_mse figures for b = 1..4 (0.36, 0.117, 0.03, 0.009); 0 when not given.
double tq_mse_paper_figure(int bits);

}  // namespace tq
