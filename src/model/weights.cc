#include "model/weights.h"

#include "core/error.h"

namespace tq {

namespace {

// MLX-converted Qwen3.5 checkpoints store conv1d as [C, K, 1] and norm weights as 1 + w;
// raw HF checkpoints store conv1d as [C, 1, K] and zero-centred norm weights.
bool qwen35_hf_layout(const Checkpoint& ck) {
  const ModelConfig& m = ck.config();
  const int64_t conv_dim = 2 * m.lin_k_heads * m.lin_k_dim + m.lin_v_heads * m.lin_v_dim;
  const int K = m.conv_kernel;
  for (int l = 0; l < m.n_layers; ++l)
    if (m.is_linear[l]) {
      const auto& t = ck.tensor("model.layers." + std::to_string(l) + ".linear_attn.conv1d.weight");
      check(t.shape.size() == 3 && t.shape[0] == conv_dim && t.shape[1] * t.shape[2] == K,
            "{}: conv1d.weight of layer {} has shape {}, expected [{}, {}, 1] or [{}, 1, {}]", ck.dir(), l,
            t.shape_str(), conv_dim, K, conv_dim, K);
      return t.shape[2] != 1;
    }
  return false;
}

}  // namespace

ModelWeights load_weights(const Checkpoint& ck) {
  const ModelConfig& m = ck.config();
  const bool qwen35 = m.model_type == "qwen3_5";
  const int64_t H = m.hidden, hd = m.head_dim;
  const float shift = qwen35 && qwen35_hf_layout(ck) ? 1.0f : 0.0f;
  auto norm_vec = [&](const std::string& name, int64_t n) {
    auto v = ck.vector(name, n);
    for (auto& x : v) x += shift;
    return v;
  };
  ModelWeights w;
  w.embed = ck.matrix("model.embed_tokens", m.vocab, H);
  w.head = m.tie_embeddings || !ck.has("lm_head.weight") ? w.embed : ck.matrix("lm_head", m.vocab, H);
  w.final_norm = norm_vec("model.norm.weight", H);
  for (int l = 0; l < m.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights L;
    L.in_norm = norm_vec(p + "input_layernorm.weight", H);
    L.post_norm = norm_vec(p + "post_attention_layernorm.weight", H);
    L.gate = ck.matrix(p + "mlp.gate_proj", m.intermediate, H);
    L.up = ck.matrix(p + "mlp.up_proj", m.intermediate, H);
    L.down = ck.matrix(p + "mlp.down_proj", H, m.intermediate);
    L.linear = qwen35 && m.is_linear[l];
    if (L.linear) {
      const int64_t kd = m.lin_k_heads * m.lin_k_dim, vd = m.lin_v_heads * m.lin_v_dim, conv_dim = 2 * kd + vd;
      DeltaWeights& D = L.delta;
      const std::string q = p + "linear_attn.";
      D.qkv = ck.matrix(q + "in_proj_qkv", conv_dim, H);
      D.z = ck.matrix(q + "in_proj_z", vd, H);
      D.b = ck.matrix(q + "in_proj_b", m.lin_v_heads, H);
      D.a = ck.matrix(q + "in_proj_a", m.lin_v_heads, H);
      D.out = ck.matrix(q + "out_proj", H, vd);
      D.conv = ck.vector(q + "conv1d.weight", conv_dim * m.conv_kernel);  // [C][K] in both layouts
      D.a_log = ck.vector(q + "A_log", m.lin_v_heads);
      D.dt_bias = ck.vector(q + "dt_bias", m.lin_v_heads);
      D.norm = ck.vector(q + "norm.weight", m.lin_v_dim);  // plain weight, never shifted
    } else {
      AttnWeights& A = L.attn;
      const std::string q = p + "self_attn.";
      const int64_t qd = m.n_heads * hd, kvd = m.n_kv_heads * hd;
      A.q = ck.matrix(q + "q_proj", m.attn_output_gate ? 2 * qd : qd, H);
      A.k = ck.matrix(q + "k_proj", kvd, H);
      A.v = ck.matrix(q + "v_proj", kvd, H);
      A.o = ck.matrix(q + "o_proj", H, qd);
      if (m.attn_bias) {
        A.q_bias = ck.vector(q + "q_proj.bias", qd);
        A.k_bias = ck.vector(q + "k_proj.bias", kvd);
        A.v_bias = ck.vector(q + "v_proj.bias", kvd);
      }
      if (m.qk_norm) {
        A.q_norm = norm_vec(q + "q_norm.weight", hd);
        A.k_norm = norm_vec(q + "k_norm.weight", hd);
      }
    }
    w.layers.push_back(std::move(L));
  }
  return w;
}

}  // namespace tq
