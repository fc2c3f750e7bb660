#include "model/model.h"

#include "core/error.h"

namespace tq {

size_t SequenceState::kv_bytes() const {
  size_t b = 0;
  for (const auto& k : kv)
    if (k) b += k->resident_bytes();
  return b;
}

size_t SequenceState::state_bytes() const {
  size_t b = 0;
  for (const auto& d : delta) b += d.bytes();
  return b;
}

void SequenceState::truncate(size_t n) {
  for (auto& k : kv)
    if (k) k->truncate(n);
  pos = std::min(pos, n);
}

std::unique_ptr<Model> Model::load(const std::string& dir) {
  auto ckpt = std::make_unique<Checkpoint>(dir);
  if (ckpt->config().model_type == "qwen3_5") return make_qwen35(std::move(ckpt));
  return make_llama(std::move(ckpt));
}

std::unique_ptr<SequenceState> Model::new_state(const CachePolicy& policy) const {
  const ModelConfig& c = config();
  auto s = std::make_unique<SequenceState>();
  s->kv.resize(c.n_layers);
  s->delta.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    if (c.is_linear[l]) {
      const int conv_dim = 2 * c.lin_k_heads * c.lin_k_dim + c.lin_v_heads * c.lin_v_dim;
      s->delta[l].conv.assign(static_cast<size_t>(c.conv_kernel - 1) * conv_dim, 0.0f);
      s->delta[l].s.assign(static_cast<size_t>(c.lin_v_heads) * c.lin_v_dim * c.lin_k_dim, 0.0f);
    } else {
      s->kv[l] = make_kv_slot(policy, KVGeometry{c.n_heads, c.n_kv_heads, c.head_dim}, l);
    }
  }
  return s;
}

}  // namespace tq
