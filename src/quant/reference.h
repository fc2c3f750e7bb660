// Float64 references, written from the definitions and independent of the fast
// code: a dense Hadamard matrix instead of the butterfly, argmin over centroids
// instead of boundary search, plain loops for attention. Tests compare against them.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/quantizer.h"

namespace tq::ref {

// Π as a dense padded_dim × padded_dim matrix: H[i][j] = (−1)^popcount(i&j)/√D, times diag(s).
std::vector<double> rotation_matrix(const Rotation& r);

struct Encoded {
  std::vector<int> idx;  // padded_dim() codes
  double norm = 0;       // stored norm (before fp16 rounding)
};
Encoded encode(const VectorQuantizer& q, const double* x);
// x̃ (dim() entries) from codes and a norm, in float64.
std::vector<double> decode(const VectorQuantizer& q, const std::vector<int>& idx, double norm);

// Causal GQA attention in float64. q: [n_q][n_heads][hd], k/v: [n_kv][n_kv_heads][hd],
// positions[n_q]: query i sees key t iff t <= positions[i]. Returns [n_q][n_heads][hd].
std::vector<double> attention(const std::vector<double>& q, const std::vector<int32_t>& positions,
                              const std::vector<double>& k, const std::vector<double>& v, int n_heads,
                              int n_kv_heads, int head_dim, double scale);

}  // namespace tq::ref
