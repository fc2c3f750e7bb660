#include "quant/codebook.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>

#include "core/error.h"

namespace tq {
namespace {

// 16-point Gauss-Legendre nodes and weights on [-1, 1], computed by Newton's method.
struct GaussLegendre {
  static constexpr int n = 16;
  std::array<double, n> x{}, w{};
  GaussLegendre() {
    for (int i = 0; i < n; ++i) {
      double z = std::cos(M_PI * (i + 0.75) / (n + 0.5));
      for (int it = 0; it < 100; ++it) {
        double p0 = 1, p1 = 0;
        for (int j = 1; j <= n; ++j) {
          double p2 = p1;
          p1 = p0;
          p0 = ((2.0 * j - 1) * z * p1 - (j - 1.0) * p2) / j;
        }
        double dp = n * (z * p0 - p1) / (z * z - 1);
        double dz = p0 / dp;
        z -= dz;
        if (std::fabs(dz) < 1e-16) {
          x[i] = z;
          w[i] = 2 / ((1 - z * z) * dp * dp);
          break;
        }
        x[i] = z;
        w[i] = 2 / ((1 - z * z) * dp * dp);
      }
    }
  }
};
const GaussLegendre& gl() {
  static const GaussLegendre g;
  return g;
}

// Integrals are taken in θ with t = sin θ, where the measure (1-t²)^((d-3)/2) dt
// becomes cos^(d-2) θ dθ: smooth for every d >= 2, even where f(t) is singular.
class SphereMeasure {
 public:
  explicit SphereMeasure(int d) : d_(d), sqrt_d_(std::sqrt(static_cast<double>(d))) {
    // Beyond |u| = 40 the mass is below e^-700: integrate only where it matters.
    theta_max_ = std::asin(std::min(1.0, 40.0 / sqrt_d_));
    Moments m = raw_moments(-theta_max_, theta_max_);
    z_ = m.m0;
  }
  struct Moments {
    double m0 = 0, m1 = 0, m2 = 0;
  };
  double theta_of(double u) const { return std::asin(std::clamp(u / sqrt_d_, -1.0, 1.0)); }
  double theta_max() const { return theta_max_; }
  // Mass and first two u-moments of the cell between two θ values.
  Moments cell(double ta, double tb) const {
    Moments m = raw_moments(std::max(ta, -theta_max_), std::min(tb, theta_max_));
    m.m0 /= z_;
    m.m1 /= z_;
    m.m2 /= z_;
    return m;
  }
  // Density of u at u.
  double density(double u) const {
    double t = u / sqrt_d_;
    if (std::fabs(t) >= 1) return 0;
    double c = std::sqrt(1 - t * t);
    // f_u(u) = cos^(d-2)θ / Z · dθ/du, with dθ/du = 1 / (√d cos θ)
    return std::exp((d_ - 3.0) * std::log(c)) / (z_ * sqrt_d_);
  }

 private:
  Moments raw_moments(double a, double b) const {
    Moments m;
    if (b <= a) return m;
    const auto& g = gl();
    // Subintervals scale with the cell's width relative to the spread of θ (≈ 1/√d).
    int sub = static_cast<int>(std::ceil((b - a) * sqrt_d_ * 6));
    sub = std::clamp(sub, 2, 64);
    double h = (b - a) / sub;
    for (int s = 0; s < sub; ++s) {
      double lo = a + s * h, mid = lo + h / 2;
      for (int i = 0; i < g.n; ++i) {
        double th = mid + g.x[i] * h / 2;
        double wt = g.w[i] * h / 2;
        double c = std::cos(th);
        double f = d_ == 2 ? 1.0 : std::exp((d_ - 2.0) * std::log(std::max(c, 1e-300)));
        double u = sqrt_d_ * std::sin(th);
        m.m0 += wt * f;
        m.m1 += wt * f * u;
        m.m2 += wt * f * u * u;
      }
    }
    return m;
  }
  int d_;
  double sqrt_d_, theta_max_, z_ = 1;
};

struct CellStats {
  std::vector<SphereMeasure::Moments> m;
};

CellStats cell_stats(const SphereMeasure& sm, const std::vector<double>& c) {
  size_t n = c.size();
  CellStats s;
  s.m.resize(n);
  double prev = -sm.theta_max();
  for (size_t k = 0; k < n; ++k) {
    double next = k + 1 < n ? sm.theta_of((c[k] + c[k + 1]) / 2) : sm.theta_max();
    s.m[k] = sm.cell(prev, next);
    prev = next;
  }
  return s;
}

std::unique_ptr<Codebook> solve(int d, int bits) {
  SphereMeasure sm(d);
  const int n = 1 << bits;
  std::vector<double> c(n);
  // Start from evenly spaced levels over ±(a few σ); σ = 1 in u units.
  double span = std::min(std::sqrt(static_cast<double>(d)) * 0.95, 1.0 + 0.6 * bits);
  for (int k = 0; k < n; ++k) c[k] = n == 1 ? 0 : -span + 2 * span * (k + 0.5) / n;

  auto lloyd_step = [&](std::vector<double>& cc) {
    CellStats s = cell_stats(sm, cc);
    double change = 0;
    for (int k = 0; k < n; ++k) {
      double nk = s.m[k].m0 > 0 ? s.m[k].m1 / s.m[k].m0 : cc[k];
      change = std::max(change, std::fabs(nk - cc[k]));
      cc[k] = nk;
    }
    return change;
  };
  for (int it = 0; it < 60; ++it)
    if (lloyd_step(c) < 1e-6) break;

  // Newton on G(c) = c − m(c): the Jacobian is tridiagonal because centroid k
  // depends only on its two boundaries, t = (c_k + c_k+1)/2, and
  // ∂m_k/∂b = f(b)(b − m_k)/P_k, ∂m_k/∂a = f(a)(m_k − a)/P_k.
  for (int it = 0; it < 100; ++it) {
    CellStats s = cell_stats(sm, c);
    std::vector<double> g(n), lo(n, 0), di(n, 1), up(n, 0);
    for (int k = 0; k < n; ++k) {
      double p = s.m[k].m0, mk = s.m[k].m1 / p;
      g[k] = c[k] - mk;
      if (k > 0) {
        double a = (c[k - 1] + c[k]) / 2;
        double dm_da = sm.density(a) * (mk - a) / p;
        lo[k] = -dm_da / 2;
        di[k] -= dm_da / 2;
      }
      if (k + 1 < n) {
        double b = (c[k] + c[k + 1]) / 2;
        double dm_db = sm.density(b) * (b - mk) / p;
        up[k] = -dm_db / 2;
        di[k] -= dm_db / 2;
      }
    }
    // Thomas algorithm for J·δ = g.
    std::vector<double> cp(n), dp(n);
    cp[0] = up[0] / di[0];
    dp[0] = g[0] / di[0];
    for (int k = 1; k < n; ++k) {
      double den = di[k] - lo[k] * cp[k - 1];
      cp[k] = up[k] / den;
      dp[k] = (g[k] - lo[k] * dp[k - 1]) / den;
    }
    std::vector<double> delta(n);
    delta[n - 1] = dp[n - 1];
    for (int k = n - 2; k >= 0; --k) delta[k] = dp[k] - cp[k] * delta[k + 1];
    double step = 0;
    for (int k = 0; k < n; ++k) step = std::max(step, std::fabs(delta[k]));
    std::vector<double> trial(n);
    for (int k = 0; k < n; ++k) trial[k] = c[k] - delta[k];
    if (!std::is_sorted(trial.begin(), trial.end())) {
      lloyd_step(c);  // Newton overshot: fall back to a safe Lloyd step.
      continue;
    }
    c = trial;
    if (step < 1e-13) break;
  }
  // Enforce exact symmetry (the density is even).
  for (int k = 0; k < n / 2; ++k) {
    double v = (c[n - 1 - k] - c[k]) / 2;
    c[k] = -v;
    c[n - 1 - k] = v;
  }
  auto cb = std::make_unique<Codebook>();
  cb->dim = d;
  cb->bits = bits;
  cb->centroids = c;
  for (int k = 0; k + 1 < n; ++k) cb->boundaries.push_back((c[k] + c[k + 1]) / 2);
  CellStats s = cell_stats(sm, c);
  double mse = 0;
  for (int k = 0; k < n; ++k) mse += s.m[k].m2 - 2 * c[k] * s.m[k].m1 + c[k] * c[k] * s.m[k].m0;
  cb->mse = mse;  // per-coordinate MSE in u units × d coordinates / d = D_mse of the unit vector
  for (double v : cb->centroids) cb->centroids_f.push_back(static_cast<float>(v));
  for (double v : cb->boundaries) cb->boundaries_f.push_back(static_cast<float>(v));
  return cb;
}

}  // namespace

double sphere_coordinate_density(double u, int dim) { return SphereMeasure(dim).density(u); }

const Codebook& lloyd_max_codebook(int dim, int bits) {
  check(dim >= 2, "codebook: dimension must be >= 2, got {}", dim);
  check(bits >= 1 && bits <= 8, "codebook: bits must be in 1..8, got {}", bits);
  static std::mutex mu;
  static std::map<std::pair<int, int>, std::unique_ptr<Codebook>> cache;
  std::lock_guard<std::mutex> lk(mu);
  auto& slot = cache[{dim, bits}];
  if (!slot) slot = solve(dim, bits);
  return *slot;
}

double tq_mse_upper_bound(int bits) { return std::sqrt(3.0) * M_PI / 2 * std::pow(4.0, -bits); }
double tq_mse_lower_bound(int bits) { return std::pow(4.0, -bits); }
double tq_mse_paper_figure(int bits) {
  switch (bits) {
    case 1: return 0.36;
    case 2: return 0.117;
    case 3: return 0.03;
    case 4: return 0.009;
    default: return 0;
  }
}

}  // namespace tq
