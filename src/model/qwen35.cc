// Qwen3.5 text model (model_type qwen3_5): hybrid layers. Every `full_attention_interval`-th
// layer is gated full attention with a KV cache; the others are Gated DeltaNet layers
// with a fixed-size recurrent state. Follows mlx-lm's qwen3_5.py / HF modeling_qwen3_5.py.
#include <cmath>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/deltanet.h"
#include "model/model.h"
#include "model/weights.h"

namespace tq {
namespace {

class Qwen35 final : public CpuModel {
 public:
  explicit Qwen35(std::unique_ptr<Checkpoint> c) : CpuModel(std::move(c)), w_(load_weights(*ckpt_)) {}

 private:
  void run(const std::vector<SequenceState*>& states, const int32_t* tokens, int n, const int32_t* pos, float* logits,
           bool all_logits, ThreadPool& pool) const override {
    const ModelConfig& m = config();
    const int H = m.hidden;
    const float eps = static_cast<float>(m.rms_eps);
    std::vector<float> x(static_cast<size_t>(n) * H), xb(x.size()), o(x.size());
    std::vector<float> g(static_cast<size_t>(n) * m.intermediate), u(g.size());
    layers::embed(w_.embed, tokens, n, m.vocab, x.data());
    for (int l = 0; l < m.n_layers; ++l) {
      const LayerWeights& L = w_.layers[l];
      cpu::rmsnorm(x.data(), L.in_norm.data(), n, H, eps, xb.data());
      if (m.is_linear[l])
        delta_mixer(L.delta, states, l, xb.data(), n, o.data(), pool);
      else
        attention_mixer(L.attn, states, l, xb.data(), n, pos, o.data(), pool);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      cpu::rmsnorm(x.data(), L.post_norm.data(), n, H, eps, xb.data());
      layers::swiglu_mlp(L.gate, L.up, L.down, xb.data(), n, g.data(), u.data(), o.data(), pool);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    }
    layers::final_logits(w_.head, w_.final_norm, eps, x.data(), n, H, all_logits, xb.data(), logits, pool);
  }

  // Gated attention: q/gate interleaved per head, q/k RMSNorm, partial RoPE, output × σ(gate).
  void attention_mixer(const AttnWeights& A, const std::vector<SequenceState*>& states, int layer, const float* xb, int n,
                       const int32_t* pos, float* out, ThreadPool& pool) const {
    const ModelConfig& m = config();
    const int nh = m.n_heads, nkv = m.n_kv_heads, hd = m.head_dim;
    const float eps = static_cast<float>(m.rms_eps);
    std::vector<float> qg(static_cast<size_t>(n) * nh * 2 * hd), q(static_cast<size_t>(n) * nh * hd), gate(q.size());
    std::vector<float> k(static_cast<size_t>(n) * nkv * hd), v(k.size()), att(q.size());
    cpu::matmul(A.q, xb, n, qg.data(), pool);
    cpu::matmul(A.k, xb, n, k.data(), pool);
    cpu::matmul(A.v, xb, n, v.data(), pool);
    for (int i = 0; i < n * nh; ++i) {  // [q_h | gate_h] per head
      std::copy_n(&qg[static_cast<size_t>(i) * 2 * hd], hd, &q[static_cast<size_t>(i) * hd]);
      std::copy_n(&qg[static_cast<size_t>(i) * 2 * hd + hd], hd, &gate[static_cast<size_t>(i) * hd]);
    }
    cpu::rmsnorm(q.data(), A.q_norm.data(), n * nh, hd, eps, q.data());
    cpu::rmsnorm(k.data(), A.k_norm.data(), n * nkv, hd, eps, k.data());
    cpu::rope(q.data(), n, nh, hd, m.rot_dims(), pos, m.rope_theta);
    cpu::rope(k.data(), n, nkv, hd, m.rot_dims(), pos, m.rope_theta);
    layers::append_attend(states, layer, k, v, q, pos, n, att, pool);
    for (size_t i = 0; i < att.size(); ++i) att[i] *= cpu::sigmoid(gate[i]);
    cpu::matmul(A.o, att.data(), n, out, pool);
  }

  // Gated DeltaNet: projections, causal depthwise conv + SiLU, L2-normalized q/k,
  // the gated delta rule on the fp32 state, gated RMSNorm, out projection.
  void delta_mixer(const DeltaWeights& D, const std::vector<SequenceState*>& states, int layer, const float* xb, int n,
                   float* out, ThreadPool& pool) const {
    const ModelConfig& m = config();
    const int Hv = m.lin_v_heads, Dv = m.lin_v_dim, vd = Hv * Dv, C = 2 * m.lin_k_heads * m.lin_k_dim + vd;
    std::vector<float> qkv(static_cast<size_t>(n) * C), z(static_cast<size_t>(n) * vd), b(static_cast<size_t>(n) * Hv),
        a(b.size());
    cpu::matmul(D.qkv, xb, n, qkv.data(), pool);
    cpu::matmul(D.z, xb, n, z.data(), pool);
    cpu::matmul(D.b, xb, n, b.data(), pool);
    cpu::matmul(D.a, xb, n, a.data(), pool);
    std::vector<float> y(static_cast<size_t>(n) * vd);
    if (states.size() == 1) {
      delta_core(D, states[0]->delta[layer], qkv.data(), b.data(), a.data(), n, y.data(), pool);
    } else {  // batch: row i belongs to states[i]
      for (int i = 0; i < n; ++i)
        delta_core(D, states[i]->delta[layer], qkv.data() + static_cast<size_t>(i) * C, b.data() + i * Hv,
                   a.data() + i * Hv, 1, y.data() + static_cast<size_t>(i) * vd, pool);
    }
    // Gated RMSNorm per value head: w · y/rms(y) · silu(z).
    const float eps = static_cast<float>(m.rms_eps);
    cpu::rmsnorm(y.data(), D.norm.data(), n * Hv, Dv, eps, y.data());
    for (size_t i = 0; i < y.size(); ++i) y[i] *= cpu::silu(z[i]);
    cpu::matmul(D.out, y.data(), n, out, pool);
  }

  // Conv, q/k normalization, gates and the delta rule for n consecutive tokens of one state.
  void delta_core(const DeltaWeights& D, DeltaState& s, float* qkv_in, const float* b, const float* a, int n, float* y,
                  ThreadPool& pool) const {
    const ModelConfig& m = config();
    const int Hk = m.lin_k_heads, Hv = m.lin_v_heads, Dk = m.lin_k_dim, Dv = m.lin_v_dim, K = m.conv_kernel;
    const int kd = Hk * Dk, vd = Hv * Dv, C = 2 * kd + vd;
    std::span<float> qkv(qkv_in, static_cast<size_t>(n) * C);
    // Causal conv over [state (K-1 rows) | new rows], then keep the last K-1 inputs.
    std::vector<float> ci(static_cast<size_t>(K - 1 + n) * C);
    std::copy(s.conv.begin(), s.conv.end(), ci.begin());
    std::copy(qkv.begin(), qkv.end(), ci.begin() + static_cast<size_t>(K - 1) * C);
    for (int t = 0; t < n; ++t)
      for (int ch = 0; ch < C; ++ch) {
        float acc = 0;
        for (int k = 0; k < K; ++k) acc += D.conv[static_cast<size_t>(ch) * K + k] * ci[static_cast<size_t>(t + k) * C + ch];
        qkv[static_cast<size_t>(t) * C + ch] = cpu::silu(acc);
      }
    std::copy(ci.end() - static_cast<std::ptrdiff_t>(K - 1) * C, ci.end(), s.conv.begin());
    DeltaInputs in;
    in.n = n;
    in.hk = Hk, in.hv = Hv, in.dk = Dk, in.dv = Dv;
    std::vector<float> q(static_cast<size_t>(n) * kd), k(q.size()), v(static_cast<size_t>(n) * vd),
        beta(static_cast<size_t>(n) * Hv), gdecay(beta.size());
    for (int t = 0; t < n; ++t) {
      const float* r = &qkv[static_cast<size_t>(t) * C];
      for (int h = 0; h < Hk; ++h) {
        l2norm(r + h * Dk, Dk, &q[(static_cast<size_t>(t) * Hk + h) * Dk], 1.0f / std::sqrt(static_cast<float>(Dk)));
        l2norm(r + kd + h * Dk, Dk, &k[(static_cast<size_t>(t) * Hk + h) * Dk], 1.0f);
      }
      std::copy_n(r + 2 * kd, vd, &v[static_cast<size_t>(t) * vd]);
      for (int h = 0; h < Hv; ++h) {
        const size_t i = static_cast<size_t>(t) * Hv + h;
        beta[i] = cpu::sigmoid(b[i]);
        const float sp = a[i] + D.dt_bias[h];
        const float softplus = sp > 20 ? sp : std::log1p(std::exp(sp));
        gdecay[i] = std::exp(-std::exp(D.a_log[h]) * softplus);
      }
    }
    in.q = q.data(), in.k = k.data(), in.v = v.data(), in.beta = beta.data(), in.g = gdecay.data();
    if (n >= kDeltaChunk)
      gated_delta_chunked(in, s.s.data(), y, kDeltaChunk, &pool);
    else
      gated_delta_recurrent(in, s.s.data(), y);
  }

  static void l2norm(const float* x, int n, float* out, float scale) {
    double ss = 0;
    for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss + 1e-6)) * scale;
    for (int i = 0; i < n; ++i) out[i] = x[i] * inv;
  }

  ModelWeights w_;
};

}  // namespace

std::unique_ptr<Model> make_qwen35(std::unique_ptr<Checkpoint> c) { return std::make_unique<Qwen35>(std::move(c)); }

}  // namespace tq
