// Llama-family forward pass (llama, qwen2, qwen3): RMSNorm → attention (GQA, RoPE,
// optional q/k biases and q/k norms) → residual → RMSNorm → SwiGLU MLP → residual.
#include <cmath>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "model/model.h"

namespace tq {
namespace {

struct Layer {
  std::vector<float> in_norm, post_norm, q_norm, k_norm, q_bias, k_bias, v_bias;
  Weight q, k, v, o, gate, up, down;
};

class Llama final : public Model {
 public:
  explicit Llama(std::unique_ptr<Checkpoint> c) : Model(std::move(c)) {
    const ModelConfig& m = config();
    const Checkpoint& ck = *ckpt_;
    const int64_t H = m.hidden, qd = m.n_heads * m.head_dim, kvd = m.n_kv_heads * m.head_dim;
    embed_ = ck.matrix("model.embed_tokens", m.vocab, H);
    head_ = m.tie_embeddings || !ck.has("lm_head.weight") ? embed_ : ck.matrix("lm_head", m.vocab, H);
    final_norm_ = ck.vector("model.norm.weight", H);
    for (int l = 0; l < m.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Layer L;
      L.in_norm = ck.vector(p + "input_layernorm.weight", H);
      L.post_norm = ck.vector(p + "post_attention_layernorm.weight", H);
      L.q = ck.matrix(p + "self_attn.q_proj", qd, H);
      L.k = ck.matrix(p + "self_attn.k_proj", kvd, H);
      L.v = ck.matrix(p + "self_attn.v_proj", kvd, H);
      L.o = ck.matrix(p + "self_attn.o_proj", H, qd);
      if (m.attn_bias) {
        L.q_bias = ck.vector(p + "self_attn.q_proj.bias", qd);
        L.k_bias = ck.vector(p + "self_attn.k_proj.bias", kvd);
        L.v_bias = ck.vector(p + "self_attn.v_proj.bias", kvd);
      }
      if (m.qk_norm) {
        L.q_norm = ck.vector(p + "self_attn.q_norm.weight", m.head_dim);
        L.k_norm = ck.vector(p + "self_attn.k_norm.weight", m.head_dim);
      }
      L.gate = ck.matrix(p + "mlp.gate_proj", m.intermediate, H);
      L.up = ck.matrix(p + "mlp.up_proj", m.intermediate, H);
      L.down = ck.matrix(p + "mlp.down_proj", H, m.intermediate);
      layers_.push_back(std::move(L));
    }
  }

  void forward(SequenceState& st, const int32_t* tokens, int n, float* logits, bool all_logits,
               ThreadPool& pool) const override {
    const ModelConfig& m = config();
    const int H = m.hidden, hd = m.head_dim, nh = m.n_heads, nkv = m.n_kv_heads;
    const int qd = nh * hd, kvd = nkv * hd, I = m.intermediate;
    std::vector<float> x(static_cast<size_t>(n) * H), xb(x.size()), q(static_cast<size_t>(n) * qd),
        k(static_cast<size_t>(n) * kvd), v(k.size()), att(q.size()), o(x.size()),
        g(static_cast<size_t>(n) * I), u(g.size());
    std::vector<int32_t> pos(n);
    for (int i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(st.pos + i);
    layers::embed(embed_, tokens, n, m.vocab, x.data());
    for (int l = 0; l < m.n_layers; ++l) {
      const Layer& L = layers_[l];
      cpu::rmsnorm(x.data(), L.in_norm.data(), n, H, static_cast<float>(m.rms_eps), xb.data());
      cpu::matmul(L.q, xb.data(), n, q.data(), pool);
      cpu::matmul(L.k, xb.data(), n, k.data(), pool);
      cpu::matmul(L.v, xb.data(), n, v.data(), pool);
      if (m.attn_bias)
        for (int i = 0; i < n; ++i) {
          for (int j = 0; j < qd; ++j) q[i * qd + j] += L.q_bias[j];
          for (int j = 0; j < kvd; ++j) k[i * kvd + j] += L.k_bias[j], v[i * kvd + j] += L.v_bias[j];
        }
      if (m.qk_norm) {
        cpu::rmsnorm(q.data(), L.q_norm.data(), n * nh, hd, static_cast<float>(m.rms_eps), q.data());
        cpu::rmsnorm(k.data(), L.k_norm.data(), n * nkv, hd, static_cast<float>(m.rms_eps), k.data());
      }
      cpu::rope(q.data(), n, nh, hd, m.rot_dims(), pos.data(), m.rope_theta);
      cpu::rope(k.data(), n, nkv, hd, m.rot_dims(), pos.data(), m.rope_theta);
      st.kv[l]->append(k, v, n);
      st.kv[l]->attend(q, pos, att, 0, pool);
      cpu::matmul(L.o, att.data(), n, o.data(), pool);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      cpu::rmsnorm(x.data(), L.post_norm.data(), n, H, static_cast<float>(m.rms_eps), xb.data());
      layers::swiglu_mlp(L.gate, L.up, L.down, xb.data(), n, g.data(), u.data(), o.data(), pool);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    }
    layers::final_logits(head_, final_norm_, static_cast<float>(m.rms_eps), x.data(), n, H, all_logits, xb.data(),
                         logits, pool);
    st.pos += n;
  }

 private:
  Weight embed_, head_;
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
};

}  // namespace

std::unique_ptr<Model> make_llama(std::unique_ptr<Checkpoint> c) { return std::make_unique<Llama>(std::move(c)); }

}  // namespace tq
