#include "quant/reference.h"

#include <bit>
#include <cmath>
#include <limits>

namespace tq::ref {

std::vector<double> rotation_matrix(const Rotation& r) {
  const int D = r.padded_dim();
  std::vector<double> m(static_cast<size_t>(D) * D);
  const double s = 1.0 / std::sqrt(static_cast<double>(D));
  for (int i = 0; i < D; ++i)
    for (int j = 0; j < D; ++j) {
      double h = (std::popcount(static_cast<unsigned>(i & j)) & 1) ? -s : s;
      m[static_cast<size_t>(i) * D + j] = h * r.signs()[j];
    }
  return m;
}

Encoded encode(const VectorQuantizer& q, const double* x) {
  const int d = q.dim(), D = q.padded_dim();
  auto pi = rotation_matrix(q.rotation());
  double n2 = 0;
  for (int i = 0; i < d; ++i) n2 += x[i] * x[i];
  const double n = std::sqrt(n2);
  Encoded e;
  e.idx.resize(D);
  double c2 = 0;
  const auto& c = q.codebook().centroids;
  for (int i = 0; i < D; ++i) {
    double y = 0;
    for (int j = 0; j < d; ++j) y += pi[static_cast<size_t>(i) * D + j] * x[j];
    double u = n > 0 ? y / n * std::sqrt(static_cast<double>(D)) : 0;
    int best = 0;
    for (int k = 1; k < static_cast<int>(c.size()); ++k)
      if (std::fabs(u - c[k]) < std::fabs(u - c[best])) best = k;
    e.idx[i] = best;
    c2 += c[best] * c[best];
  }
  e.norm = (q.norm_correction() && c2 > 0) ? n / std::sqrt(c2 / D) : n;
  return e;
}

std::vector<double> decode(const VectorQuantizer& q, const std::vector<int>& idx, double norm) {
  const int d = q.dim(), D = q.padded_dim();
  auto pi = rotation_matrix(q.rotation());
  const auto& c = q.codebook().centroids;
  std::vector<double> x(d, 0.0);
  for (int j = 0; j < d; ++j) {
    double acc = 0;
    for (int i = 0; i < D; ++i) acc += pi[static_cast<size_t>(i) * D + j] * c[idx[i]];
    x[j] = norm * acc / std::sqrt(static_cast<double>(D));
  }
  return x;
}

std::vector<double> attention(const std::vector<double>& q, const std::vector<int32_t>& positions,
                              const std::vector<double>& k, const std::vector<double>& v, int n_heads,
                              int n_kv_heads, int head_dim, double scale) {
  const size_t n_q = positions.size();
  const size_t n_kv = k.size() / (static_cast<size_t>(n_kv_heads) * head_dim);
  const int rep = n_heads / n_kv_heads;
  std::vector<double> out(n_q * n_heads * head_dim, 0.0);
  for (size_t i = 0; i < n_q; ++i)
    for (int h = 0; h < n_heads; ++h) {
      const int g = h / rep;
      const double* qi = &q[(i * n_heads + h) * head_dim];
      size_t limit = std::min<size_t>(n_kv, static_cast<size_t>(positions[i]) + 1);
      std::vector<double> s(limit);
      double m = -std::numeric_limits<double>::infinity();
      for (size_t t = 0; t < limit; ++t) {
        const double* kt = &k[(t * n_kv_heads + g) * head_dim];
        double dot = 0;
        for (int j = 0; j < head_dim; ++j) dot += qi[j] * kt[j];
        s[t] = dot * scale;
        m = std::max(m, s[t]);
      }
      double l = 0;
      for (size_t t = 0; t < limit; ++t) l += (s[t] = std::exp(s[t] - m));
      double* o = &out[(i * n_heads + h) * head_dim];
      for (size_t t = 0; t < limit; ++t) {
        const double* vt = &v[(t * n_kv_heads + g) * head_dim];
        for (int j = 0; j < head_dim; ++j) o[j] += s[t] / l * vt[j];
      }
    }
  return out;
}

}  // namespace tq::ref
