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

class Llama final : public Model {
 public:
  explicit Llama(std::unique_ptr<Checkpoint> c) : Model(std::move(c)), w_(load_weights(*ckpt_)) {}

  void forward(SequenceState& st, const int32_t* tokens, int n, float* logits, bool all_logits,
               ThreadPool& pool) const override {
    run({&st}, tokens, n, logits, all_logits, pool);
  }

  void forward_batch(const std::vector<SequenceState*>& states, const int32_t* tokens, float* logits,
                     ThreadPool& pool) const override {
    run(states, tokens, static_cast<int>(states.size()), logits, true, pool);
  }

 private:
  // One sequence (states.size() == 1: n tokens of it) or a batch (one token per state).
  void run(const std::vector<SequenceState*>& states, const int32_t* tokens, int n, float* logits, bool all_logits,
           ThreadPool& pool) const {
    const ModelConfig& m = config();
    const bool batch = states.size() > 1;
    const int H = m.hidden, hd = m.head_dim, nh = m.n_heads, nkv = m.n_kv_heads;
    const int qd = nh * hd, kvd = nkv * hd, I = m.intermediate;
    std::vector<float> x(static_cast<size_t>(n) * H), xb(x.size()), q(static_cast<size_t>(n) * qd),
        k(static_cast<size_t>(n) * kvd), v(k.size()), att(q.size()), o(x.size()),
        g(static_cast<size_t>(n) * I), u(g.size());
    std::vector<int32_t> pos(n);
    for (int i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(batch ? states[i]->pos : states[0]->pos + i);
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
      cpu::rope(q.data(), n, nh, hd, m.rot_dims(), pos.data(), m.rope_theta);
      cpu::rope(k.data(), n, nkv, hd, m.rot_dims(), pos.data(), m.rope_theta);
      layers::append_attend(states, l, k, v, q, pos.data(), n, att, pool);
      cpu::matmul(A.o, att.data(), n, o.data(), pool);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      cpu::rmsnorm(x.data(), L.post_norm.data(), n, H, static_cast<float>(m.rms_eps), xb.data());
      layers::swiglu_mlp(L.gate, L.up, L.down, xb.data(), n, g.data(), u.data(), o.data(), pool);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    }
    layers::final_logits(w_.head, w_.final_norm, static_cast<float>(m.rms_eps), x.data(), n, H, all_logits, xb.data(),
                         logits, pool);
    if (batch)
      for (auto* st : states) st->pos += 1;
    else
      states[0]->pos += n;
  }

  ModelWeights w_;
};

}  // namespace

std::unique_ptr<Model> make_llama(std::unique_ptr<Checkpoint> c) { return std::make_unique<Llama>(std::move(c)); }

}  // namespace tq
