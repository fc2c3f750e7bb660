#include "model/model.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/ops.h"
#include "core/error.h"

namespace tq {

size_t SequenceState::kv_bytes() const {
  size_t b = device ? device->kv_bytes() : 0;
  for (const auto& k : kv)
    if (k) b += k->resident_bytes();
  return b;
}

size_t SequenceState::state_bytes() const {
  size_t b = device ? device->state_bytes() : 0;
  for (const auto& d : delta) b += d.bytes();
  return b;
}

void SequenceState::truncate(size_t n) {
  for (auto& k : kv)
    if (k) k->truncate(n);
  if (device) device->truncate(n);
  pos = std::min(pos, n);
}

namespace layers {

void embed(const Weight& table, const int32_t* tokens, int n, int vocab, float* x) {
  for (int i = 0; i < n; ++i) {
    check(tokens[i] >= 0 && tokens[i] < vocab, "token id {} out of range [0, {})", tokens[i], vocab);
    table.dequantize_row(tokens[i], x + static_cast<size_t>(i) * table.cols);
  }
}

void swiglu_mlp(const Weight& gate, const Weight& up, const Weight& down, const float* xb, int n, float* g, float* u,
                float* out, ThreadPool& pool) {
  cpu::matmul(gate, xb, n, g, pool);
  cpu::matmul(up, xb, n, u, pool);
  const size_t m = static_cast<size_t>(n) * gate.rows;
  for (size_t i = 0; i < m; ++i) g[i] = cpu::silu(g[i]) * u[i];
  cpu::matmul(down, g, n, out, pool);
}

void append_attend(const std::vector<SequenceState*>& states, int layer, std::span<const float> k,
                   std::span<const float> v, std::span<const float> q, const int32_t* pos, int n, std::span<float> att,
                   ThreadPool& pool) {
  if (states.size() == 1) {
    KVSlot& kv = *states[0]->kv[layer];
    kv.append(k, v, n);
    kv.attend(q, std::span<const int32_t>(pos, n), att, 0, pool);
    return;
  }
  check(states.size() == static_cast<size_t>(n), "batched attention: {} states for {} rows", states.size(), n);
  const size_t kr = k.size() / n, qr = q.size() / n;
  for (int i = 0; i < n; ++i) {
    KVSlot& kv = *states[i]->kv[layer];
    kv.append(k.subspan(i * kr, kr), v.subspan(i * kr, kr), 1);
    kv.attend(q.subspan(i * qr, qr), std::span<const int32_t>(pos + i, 1), att.subspan(i * qr, qr), 0, pool);
  }
}

void final_logits(const Weight& head, const std::vector<float>& norm, float eps, const float* x, int n, int hidden,
                  bool all_rows, float* xb, float* logits, ThreadPool& pool) {
  const int first = all_rows ? 0 : n - 1, rows = n - first;
  cpu::rmsnorm(x + static_cast<size_t>(first) * hidden, norm.data(), rows, hidden, eps, xb);
  cpu::matmul(head, xb, rows, logits, pool);
}

}  // namespace layers

std::unique_ptr<Model> Model::load(const std::string& dir) {
  auto ckpt = std::make_unique<Checkpoint>(dir);
  if (ckpt->config().model_type == "qwen3_5") return make_qwen35(std::move(ckpt));
  return make_llama(std::move(ckpt));
}

void Model::forward_batch(const std::vector<SequenceState*>& states, const int32_t* tokens, float* logits,
                          ThreadPool& pool) const {
  for (size_t i = 0; i < states.size(); ++i)
    forward(*states[i], tokens + i, 1, logits + i * static_cast<size_t>(config().vocab), false, pool);
}

std::vector<float> Model::last_logits(SequenceState& state, const int32_t* tokens, int n, ThreadPool& pool) const {
  std::vector<float> logits(config().vocab);
  forward(state, tokens, n, logits.data(), false, pool);
  return logits;
}

int32_t Model::forward_argmax(SequenceState& state, const int32_t* tokens, int n, ThreadPool& pool) const {
  const auto logits = last_logits(state, tokens, n, pool);
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

std::vector<Candidate> top_logits(const float* logits, int n, int k) {
  k = std::clamp(k, 0, n);
  std::vector<Candidate> c(n);
  for (int i = 0; i < n; ++i) c[i] = {logits[i], i};
  std::partial_sort(c.begin(), c.begin() + k, c.end(), ranks_before);
  c.resize(k);
  return c;
}

std::vector<Candidate> Model::forward_top(SequenceState& state, const int32_t* tokens, int n, int k,
                                          ThreadPool& pool) const {
  return top_logits(last_logits(state, tokens, n, pool).data(), config().vocab, k);
}

int32_t sample_at(const float* logits, int n, float temperature, double u) {
  const float mx = *std::max_element(logits, logits + n);
  std::vector<double> w(n);
  double total = 0;
  for (int i = 0; i < n; ++i) total += (w[i] = std::exp((static_cast<double>(logits[i]) - mx) / temperature));
  const double target = u * total;
  double c = 0;
  int last = 0;
  for (int i = 0; i < n; ++i) {
    if (w[i] <= 0) continue;
    if ((c += w[i]) > target) return i;
    last = i;
  }
  return last;  // (u · total rounded past the sum)
}

int32_t Model::forward_sample(SequenceState& state, const int32_t* tokens, int n, float temperature, double u,
                              ThreadPool& pool) const {
  return sample_at(last_logits(state, tokens, n, pool).data(), config().vocab, temperature, u);
}

void CpuModel::forward(SequenceState& st, const int32_t* tokens, int n, float* logits, bool all_logits,
                       ThreadPool& pool) const {
  run_rows({&st}, tokens, n, logits, all_logits, pool);
}

void CpuModel::forward_batch(const std::vector<SequenceState*>& states, const int32_t* tokens, float* logits,
                             ThreadPool& pool) const {
  run_rows(states, tokens, static_cast<int>(states.size()), logits, true, pool);
}

void CpuModel::run_rows(const std::vector<SequenceState*>& states, const int32_t* tokens, int n, float* logits,
                        bool all_logits, ThreadPool& pool) const {
  const bool batch = states.size() > 1;
  std::vector<int32_t> pos(n);
  for (int i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(batch ? states[i]->pos : states[0]->pos + i);
  run(states, tokens, n, pos.data(), logits, all_logits, pool);
  if (batch)
    for (auto* st : states) st->pos += 1;
  else
    states[0]->pos += n;
}

void Model::fill_synthetic(SequenceState& st, size_t n, uint64_t seed, ThreadPool& pool) const {
  std::vector<int32_t> t(std::min<size_t>(n, 512));
  std::vector<float> logits(config().vocab);
  uint64_t x = seed;
  for (size_t done = 0; done < n; done += t.size()) {
    const size_t c = std::min(t.size(), n - done);
    for (size_t i = 0; i < c; ++i) t[i] = static_cast<int32_t>((x = x * 6364136223846793005ull + 1442695040888963407ull) >> 33) % config().vocab;
    forward(st, t.data(), static_cast<int>(c), logits.data(), false, pool);
  }
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
