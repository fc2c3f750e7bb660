// Llama-family forward pass (llama, qwen2, qwen3): RMSNorm → attention (GQA, RoPE,
// optional q/k biases and q/k norms) → residual → RMSNorm → SwiGLU MLP → residual.
#include <cmath>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "model/weights.h"

namespace tq {
namespace {

class Llama final : public CpuModel {
 public:
  explicit Llama(std::unique_ptr<Checkpoint> c) : CpuModel(std::move(c)), w_(load_weights(*ckpt_)) {}

 private:
  void run(const std::vector<SequenceState*>& states, const int32_t* tokens, int n, const int32_t* pos, float* logits,
           bool all_logits, ThreadPool& pool) const override {
    const ModelConfig& m = config();
    const int H = m.hidden, hd = m.head_dim, nh = m.n_heads, nkv = m.n_kv_heads;
    const int qd = nh * hd, kvd = nkv * hd, I = m.intermediate;
    std::vector<float> x(static_cast<size_t>(n) * H), xb(x.size()), q(static_cast<size_t>(n) * qd),
        k(static_cast<size_t>(n) * kvd), v(k.size()), att(q.size()), o(x.size()),
        g(static_cast<size_t>(n) * I), u(g.size());
    layers::embed(w_.embed, tokens, n, m.vocab, x.data());
    for (int l = 0; l < m.n_layers; ++l) {
      const LayerWeights& L = w_.layers[l];
      const AttnWeights& A = L.attn;
      cpu::rmsnorm(x.data(), L.in_norm.data(), n, H, static_cast<float>(m.rms_eps), xb.data());
      cpu::matmul(A.q, xb.data(), n, q.data(), pool);
      cpu::matmul(A.k, xb.data(), n, k.data(), pool);
      cpu::matmul(A.v, xb.data(), n, v.data(), pool);
      if (m.attn_bias)
        for (int i = 0; i < n; ++i) {
          for (int j = 0; j < qd; ++j) q[i * qd + j] += A.q_bias[j];
          for (int j = 0; j < kvd; ++j) k[i * kvd + j] += A.k_bias[j], v[i * kvd + j] += A.v_bias[j];
        }
      if (m.qk_norm) {
        cpu::rmsnorm(q.data(), A.q_norm.data(), n * nh, hd, static_cast<float>(m.rms_eps), q.data());
        cpu::rmsnorm(k.data(), A.k_norm.data(), n * nkv, hd, static_cast<float>(m.rms_eps), k.data());
      }
      cpu::rope(q.data(), n, nh, hd, m.rot_dims(), pos, m.rope_theta);
      cpu::rope(k.data(), n, nkv, hd, m.rot_dims(), pos, m.rope_theta);
      layers::append_attend(states, l, k, v, q, pos, n, att, pool);
      cpu::matmul(A.o, att.data(), n, o.data(), pool);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      cpu::rmsnorm(x.data(), L.post_norm.data(), n, H, static_cast<float>(m.rms_eps), xb.data());
      layers::swiglu_mlp(L.gate, L.up, L.down, xb.data(), n, g.data(), u.data(), o.data(), pool);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    }
    layers::final_logits(w_.head, w_.final_norm, static_cast<float>(m.rms_eps), x.data(), n, H, all_logits, xb.data(),
                         logits, pool);
  }

  ModelWeights w_;
};

}  // namespace

std::unique_ptr<Model> make_llama(std::unique_ptr<Checkpoint> c) { return std::make_unique<Llama>(std::move(c)); }

}  // namespace tq
