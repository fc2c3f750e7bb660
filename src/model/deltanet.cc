#include "model/deltanet.h"

#include <cmath>
#include <vector>

namespace tq {

void gated_delta_recurrent(const DeltaInputs& in, float* s, float* y) {
  const int rep = in.hv / in.hk, dk = in.dk, dv = in.dv;
  std::vector<float> mem(dv);
  for (int t = 0; t < in.n; ++t)
    for (int h = 0; h < in.hv; ++h) {
      float* S = s + static_cast<size_t>(h) * dv * dk;
      const float* k = in.k + (static_cast<size_t>(t) * in.hk + h / rep) * dk;
      const float* q = in.q + (static_cast<size_t>(t) * in.hk + h / rep) * dk;
      const float* v = in.v + (static_cast<size_t>(t) * in.hv + h) * dv;
      const float g = in.g[static_cast<size_t>(t) * in.hv + h], b = in.beta[static_cast<size_t>(t) * in.hv + h];
      float* out = y + (static_cast<size_t>(t) * in.hv + h) * dv;
      for (int i = 0; i < dv; ++i) {
        float* row = S + static_cast<size_t>(i) * dk;
        float m = 0;
        for (int j = 0; j < dk; ++j) m += (row[j] *= g) * k[j];
        const float delta = (v[i] - m) * b;
        float o = 0;
        for (int j = 0; j < dk; ++j) o += (row[j] += delta * k[j]) * q[j];
        out[i] = o;
      }
    }
}

// Per value head and chunk of C tokens (positions i, j within the chunk), with
// γ_i = Σ_{t<=i} log g_t and S in [dk][dv] orientation (transposed from the state):
//   T = (I + strict_lower((β⊙K)·Kᵀ ⊙ e^{γ_i−γ_j}))⁻¹
//   U = T·(β⊙V),  W = T·(β⊙K ⊙ e^{γ})
//   V' = U − W·S
//   O = (Q ⊙ e^{γ})·S + lower_incl(Q·Kᵀ ⊙ e^{γ_i−γ_j})·V'
//   S ← e^{γ_C}·S + (K ⊙ e^{γ_C−γ})ᵀ·V'
void gated_delta_chunked(const DeltaInputs& in, float* s, float* y, int chunk) {
  const int rep = in.hv / in.hk, dk = in.dk, dv = in.dv;
  std::vector<double> S(static_cast<size_t>(dk) * dv), T, U, W, A, gam, Vp;
  for (int h = 0; h < in.hv; ++h) {
    float* Sh = s + static_cast<size_t>(h) * dv * dk;
    for (int i = 0; i < dv; ++i)
      for (int j = 0; j < dk; ++j) S[static_cast<size_t>(j) * dv + i] = Sh[static_cast<size_t>(i) * dk + j];
    for (int c0 = 0; c0 < in.n; c0 += chunk) {
      const int C = std::min(chunk, in.n - c0);
      auto K = [&](int i, int j) { return static_cast<double>(in.k[(static_cast<size_t>(c0 + i) * in.hk + h / rep) * dk + j]); };
      auto Q = [&](int i, int j) { return static_cast<double>(in.q[(static_cast<size_t>(c0 + i) * in.hk + h / rep) * dk + j]); };
      auto V = [&](int i, int j) { return static_cast<double>(in.v[(static_cast<size_t>(c0 + i) * in.hv + h) * dv + j]); };
      auto B = [&](int i) { return static_cast<double>(in.beta[static_cast<size_t>(c0 + i) * in.hv + h]); };
      gam.assign(C, 0);
      double acc = 0;
      for (int i = 0; i < C; ++i) gam[i] = acc += std::log(static_cast<double>(in.g[static_cast<size_t>(c0 + i) * in.hv + h]));
      // L[i][j] = β_i ⟨k_i, k_j⟩ e^{γ_i − γ_j} for j < i; T = (I + L)⁻¹ by forward substitution.
      A.assign(static_cast<size_t>(C) * C, 0);
      for (int i = 0; i < C; ++i)
        for (int j = 0; j < i; ++j) {
          double d = 0;
          for (int x = 0; x < dk; ++x) d += K(i, x) * K(j, x);
          A[static_cast<size_t>(i) * C + j] = B(i) * d * std::exp(gam[i] - gam[j]);
        }
      T.assign(static_cast<size_t>(C) * C, 0);
      for (int i = 0; i < C; ++i) {
        T[static_cast<size_t>(i) * C + i] = 1;
        for (int j = 0; j < i; ++j) {
          double v = 0;
          for (int m = j; m < i; ++m) v -= A[static_cast<size_t>(i) * C + m] * T[static_cast<size_t>(m) * C + j];
          T[static_cast<size_t>(i) * C + j] = v;
        }
      }
      U.assign(static_cast<size_t>(C) * dv, 0);
      W.assign(static_cast<size_t>(C) * dk, 0);
      for (int i = 0; i < C; ++i)
        for (int m = 0; m <= i; ++m) {
          const double t = T[static_cast<size_t>(i) * C + m] * B(m);
          if (t == 0) continue;
          const double e = std::exp(gam[m]);
          for (int x = 0; x < dv; ++x) U[static_cast<size_t>(i) * dv + x] += t * V(m, x);
          for (int x = 0; x < dk; ++x) W[static_cast<size_t>(i) * dk + x] += t * K(m, x) * e;
        }
      // V' = U − W·S
      Vp = U;
      for (int i = 0; i < C; ++i)
        for (int x = 0; x < dk; ++x) {
          const double w = W[static_cast<size_t>(i) * dk + x];
          for (int z = 0; z < dv; ++z) Vp[static_cast<size_t>(i) * dv + z] -= w * S[static_cast<size_t>(x) * dv + z];
        }
      // Outputs.
      for (int i = 0; i < C; ++i) {
        float* out = y + (static_cast<size_t>(c0 + i) * in.hv + h) * dv;
        std::vector<double> o(dv, 0);
        const double ei = std::exp(gam[i]);
        for (int x = 0; x < dk; ++x) {
          const double qx = Q(i, x) * ei;
          for (int z = 0; z < dv; ++z) o[z] += qx * S[static_cast<size_t>(x) * dv + z];
        }
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int x = 0; x < dk; ++x) d += Q(i, x) * K(j, x);
          d *= std::exp(gam[i] - gam[j]);
          for (int z = 0; z < dv; ++z) o[z] += d * Vp[static_cast<size_t>(j) * dv + z];
        }
        for (int z = 0; z < dv; ++z) out[z] = static_cast<float>(o[z]);
      }
      // State update.
      const double eC = std::exp(gam[C - 1]);
      for (auto& v : S) v *= eC;
      for (int j = 0; j < C; ++j) {
        const double e = std::exp(gam[C - 1] - gam[j]);
        for (int x = 0; x < dk; ++x) {
          const double kx = K(j, x) * e;
          for (int z = 0; z < dv; ++z) S[static_cast<size_t>(x) * dv + z] += kx * Vp[static_cast<size_t>(j) * dv + z];
        }
      }
    }
    for (int i = 0; i < dv; ++i)
      for (int j = 0; j < dk; ++j) Sh[static_cast<size_t>(i) * dk + j] = static_cast<float>(S[static_cast<size_t>(j) * dv + i]);
  }
}

}  // namespace tq
