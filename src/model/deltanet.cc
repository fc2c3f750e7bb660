#include "model/deltanet.h"

#include "core/thread_pool.h"

#include <algorithm>
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
#pragma omp simd reduction(+ : m)
        for (int j = 0; j < dk; ++j) m += (row[j] *= g) * k[j];
        const float delta = (v[i] - m) * b;
        float o = 0;
#pragma omp simd reduction(+ : o)
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
void gated_delta_chunked(const DeltaInputs& in, float* s, float* y, int chunk, ThreadPool* pool) {
  const int rep = in.hv / in.hk, dk = in.dk, dv = in.dv;
  auto dot = [](const double* a, const double* b, int n) {
    double r = 0;
#pragma omp simd reduction(+ : r)
    for (int i = 0; i < n; ++i) r += a[i] * b[i];
    return r;
  };
  auto axpy = [](double a, const double* x, double* y, int n) {
#pragma omp simd
    for (int i = 0; i < n; ++i) y[i] += a * x[i];
  };
  // Value heads are independent: one work item each.
  auto head = [&](size_t hh, int) {
    const int h = static_cast<int>(hh);
    std::vector<double> S(static_cast<size_t>(dk) * dv), T, U, W, A, gam, Vp, Kc, Qc, Vc, o(dv);
    float* Sh = s + static_cast<size_t>(h) * dv * dk;
    for (int i = 0; i < dv; ++i)
      for (int j = 0; j < dk; ++j) S[static_cast<size_t>(j) * dv + i] = Sh[static_cast<size_t>(i) * dk + j];
    for (int c0 = 0; c0 < in.n; c0 += chunk) {
      const int C = std::min(chunk, in.n - c0);
      // This chunk's rows, contiguous, in double.
      Kc.resize(static_cast<size_t>(C) * dk);
      Qc.resize(Kc.size());
      Vc.resize(static_cast<size_t>(C) * dv);
      for (int i = 0; i < C; ++i) {
        const size_t kr = (static_cast<size_t>(c0 + i) * in.hk + h / rep) * dk;
        const size_t vr = (static_cast<size_t>(c0 + i) * in.hv + h) * dv;
        for (int x = 0; x < dk; ++x) Kc[static_cast<size_t>(i) * dk + x] = in.k[kr + x], Qc[static_cast<size_t>(i) * dk + x] = in.q[kr + x];
        for (int x = 0; x < dv; ++x) Vc[static_cast<size_t>(i) * dv + x] = in.v[vr + x];
      }
      const double* K = Kc.data();
      const double* Q = Qc.data();
      auto B = [&](int i) { return static_cast<double>(in.beta[static_cast<size_t>(c0 + i) * in.hv + h]); };
      gam.assign(C, 0);
      double acc = 0;
      for (int i = 0; i < C; ++i) gam[i] = acc += std::log(static_cast<double>(in.g[static_cast<size_t>(c0 + i) * in.hv + h]));
      // L[i][j] = β_i ⟨k_i, k_j⟩ e^{γ_i − γ_j} for j < i; T = (I + L)⁻¹ by forward substitution.
      A.assign(static_cast<size_t>(C) * C, 0);
      for (int i = 0; i < C; ++i)
        for (int j = 0; j < i; ++j)
          A[static_cast<size_t>(i) * C + j] = B(i) * dot(K + i * dk, K + j * dk, dk) * std::exp(gam[i] - gam[j]);
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
          axpy(t, Vc.data() + m * dv, U.data() + i * dv, dv);
          axpy(t * std::exp(gam[m]), K + m * dk, W.data() + i * dk, dk);
        }
      // V' = U − W·S
      Vp = U;
      for (int i = 0; i < C; ++i)
        for (int x = 0; x < dk; ++x) axpy(-W[static_cast<size_t>(i) * dk + x], S.data() + x * dv, Vp.data() + i * dv, dv);
      // O_i = e^{γ_i} q_i·S + Σ_{j<=i} ⟨q_i, k_j⟩ e^{γ_i − γ_j} v'_j
      for (int i = 0; i < C; ++i) {
        std::fill(o.begin(), o.end(), 0.0);
        const double ei = std::exp(gam[i]);
        for (int x = 0; x < dk; ++x) axpy(Q[i * dk + x] * ei, S.data() + x * dv, o.data(), dv);
        for (int j = 0; j <= i; ++j)
          axpy(dot(Q + i * dk, K + j * dk, dk) * std::exp(gam[i] - gam[j]), Vp.data() + j * dv, o.data(), dv);
        float* out = y + (static_cast<size_t>(c0 + i) * in.hv + h) * dv;
        for (int z = 0; z < dv; ++z) out[z] = static_cast<float>(o[z]);
      }
      // S ← e^{γ_C}·S + Σ_j e^{γ_C − γ_j} k_j v'_jᵀ
      const double eC = std::exp(gam[C - 1]);
      for (auto& v : S) v *= eC;
      for (int j = 0; j < C; ++j) {
        const double e = std::exp(gam[C - 1] - gam[j]);
        for (int x = 0; x < dk; ++x) axpy(K[j * dk + x] * e, Vp.data() + j * dv, S.data() + x * dv, dv);
      }
    }
    for (int i = 0; i < dv; ++i)
      for (int j = 0; j < dk; ++j) Sh[static_cast<size_t>(i) * dk + j] = static_cast<float>(S[static_cast<size_t>(j) * dv + i]);
  };
  if (pool)
    pool->parallel_for(static_cast<size_t>(in.hv), head);
  else
    for (int h = 0; h < in.hv; ++h) head(h, 0);
}

}  // namespace tq
