// A loaded model: its config, its weights (mapped from the checkpoint) and a forward
// pass written once against the CPU ops. The model makes the per-sequence state: one
// KV slot per attention layer (from the CachePolicy) and one recurrent state per
// Gated DeltaNet layer.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "kv/kv_slot.h"

namespace tq {

class ThreadPool;

// Gated DeltaNet layer state of one sequence (Qwen3.5): conv window and fp32 S.
struct DeltaState {
  std::vector<float> conv;  // [conv_kernel - 1][conv_dim], pre-activation inputs
  std::vector<float> s;     // [n_v_heads][d_v][d_k]
  size_t bytes() const { return (conv.capacity() + s.capacity()) * sizeof(float); }
};

// A copy of a device sequence's DeltaNet states (a session checkpoint), opaque to the host.
struct DeviceStates {
  virtual ~DeviceStates() = default;
  virtual size_t bytes() const = 0;
};

// A sequence's state held by another device (the CUDA backend keeps KV caches and
// DeltaNet states in GPU memory; the CPU-side vectors of SequenceState stay empty).
struct DeviceSequence {
  virtual ~DeviceSequence() = default;
  virtual size_t kv_bytes() const = 0;     // resident bytes of the KV caches
  virtual size_t state_bytes() const = 0;  // DeltaNet states
  virtual void truncate(size_t n) = 0;     // KV only
  virtual bool recurrent() const = 0;      // holds DeltaNet states
  // A deep copy on the same device: KV caches and DeltaNet states (a session fork).
  virtual std::unique_ptr<DeviceSequence> clone() const = 0;
  // The DeltaNet states copied (a checkpoint), put back, or zeroed (position 0).
  virtual std::shared_ptr<const DeviceStates> save_states() const = 0;
  virtual void restore_states(const DeviceStates& from) = 0;
  virtual void reset_states() = 0;
  // Conversions to and from the CPU's forms, for session files: layer l's KV cache as
  // KVSlot::state bytes of its n tokens; the DeltaNet states (live, or a checkpoint's) as
  // DeltaStates shaped as the CPU model's (Model::new_state's).
  virtual std::string kv_state(int layer) const = 0;
  virtual void load_kv_state(int layer, const std::string& state, size_t n_tokens) = 0;
  virtual void get_delta(std::vector<DeltaState>& out, const DeviceStates* from = nullptr) const = 0;
  virtual void set_delta(const std::vector<DeltaState>& in) = 0;
  virtual std::shared_ptr<const DeviceStates> states_from(const std::vector<DeltaState>& in) const = 0;
};

struct SequenceState {
  std::vector<std::unique_ptr<KVSlot>> kv;  // per layer; null for DeltaNet layers
  std::vector<DeltaState> delta;            // per layer; empty for attention layers
  std::unique_ptr<DeviceSequence> device;   // set by device backends instead of kv/delta
  size_t pos = 0;                           // tokens processed
  size_t kv_bytes() const;                  // resident bytes of all KV slots
  size_t state_bytes() const;               // DeltaNet states
  void truncate(size_t n);                  // KV only (DeltaNet state cannot roll back)
};

// One logit and its token id (Model::forward_top).
struct Candidate {
  float logit;
  int32_t id;
};
// Candidates' order: larger logit first, equal logits by smaller id.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}
// The k largest of logits[n] in that order.
std::vector<Candidate> top_logits(const float* logits, int n, int k);
// The first index at which the cumulative softmax(logits / temperature) weight exceeds u
// times the total (u in [0, 1)), in double: a draw from the distribution for uniform u.
int32_t sample_at(const float* logits, int n, float temperature, double u);

class Model {
 public:
  virtual ~Model() = default;
  static std::unique_ptr<Model> load(const std::string& dir);
  const ModelConfig& config() const { return ckpt_->config(); }
  const Checkpoint& checkpoint() const { return *ckpt_; }
  virtual std::unique_ptr<SequenceState> new_state(const CachePolicy& policy) const;
  virtual std::string device() const { return "cpu"; }
  // Runs tokens[n] at positions state.pos ... state.pos+n-1 and advances state.pos.
  // logits: [n][vocab] if all_logits, else [vocab] for the last token.
  virtual void forward(SequenceState& state, const int32_t* tokens, int n, float* logits, bool all_logits,
                       ThreadPool& pool) const = 0;
  // forward for the last token's logits, returning only their argmax (the first of equal
  // values): greedy decoding. The CUDA backend computes it on the GPU and copies 8 bytes
  // instead of the logits; the default runs forward and scans on the host.
  virtual int32_t forward_argmax(SequenceState& state, const int32_t* tokens, int n, ThreadPool& pool) const;
  // forward for the last token's logits, returning only the k largest (top-k sampling),
  // largest first, equal values by smaller id (top_logits orders a logits row the same
  // way). The CUDA backend selects them on the GPU and copies k pairs instead of the
  // logits; the default runs forward and selects on the host.
  virtual std::vector<Candidate> forward_top(SequenceState& state, const int32_t* tokens, int n, int k,
                                             ThreadPool& pool) const;
  // forward for the last token's logits, returning a draw from softmax(logits / temperature)
  // over the whole vocabulary at u in [0, 1) (sample_at: the inverse CDF) — sampling with no
  // top-k, top-p, min-p or penalty. The CUDA backend draws on the GPU and copies 4 bytes; the
  // default runs forward and draws on the host.
  virtual int32_t forward_sample(SequenceState& state, const int32_t* tokens, int n, float temperature, double u,
                                 ThreadPool& pool) const;
  // Batched decode: one token for each of several sequences (tokens[i] at states[i]->pos),
  // the weights read once for all of them; logits [states.size()][vocab]. The default
  // runs forward per sequence.
  virtual void forward_batch(const std::vector<SequenceState*>& states, const int32_t* tokens, float* logits,
                             ThreadPool& pool) const;
  // Advances the state by n tokens for speed measurements at depth: the CPU runs random
  // tokens through forward; the CUDA backend appends random K/V to the caches directly
  // (decode speed does not depend on the values).
  virtual void fill_synthetic(SequenceState& state, size_t n, uint64_t seed, ThreadPool& pool) const;

 protected:
  explicit Model(std::unique_ptr<Checkpoint> c) : ckpt_(std::move(c)) {}
  // forward's logits of the last token (the host defaults of forward_argmax and forward_top).
  std::vector<float> last_logits(SequenceState& state, const int32_t* tokens, int n, ThreadPool& pool) const;
  std::unique_ptr<Checkpoint> ckpt_;
};

// A model computed on the CPU. forward and forward_batch both come down to run: the rows
// are n tokens of one sequence (states.size() == 1) or one token of each of several
// sequences (row i belongs to states[i]).
class CpuModel : public Model {
 public:
  void forward(SequenceState& state, const int32_t* tokens, int n, float* logits, bool all_logits,
               ThreadPool& pool) const final;
  void forward_batch(const std::vector<SequenceState*>& states, const int32_t* tokens, float* logits,
                     ThreadPool& pool) const final;

 protected:
  using Model::Model;
  // Runs the n rows and returns; the caller advances the states.
  virtual void run(const std::vector<SequenceState*>& states, const int32_t* tokens, int n, const int32_t* pos,
                   float* logits, bool all_logits, ThreadPool& pool) const = 0;

 private:
  void run_rows(const std::vector<SequenceState*>& states, const int32_t* tokens, int n, float* logits,
                bool all_logits, ThreadPool& pool) const;
};

// Layers shared by the architectures (shapes in comments; x, xb: [n][hidden]).
namespace layers {
// x[i] = embedding row tokens[i]; checks each id against the vocabulary.
void embed(const Weight& table, const int32_t* tokens, int n, int vocab, float* x);
// out = down(silu(gate(xb)) ⊙ up(xb)); g, u: [n][intermediate] scratch.
void swiglu_mlp(const Weight& gate, const Weight& up, const Weight& down, const float* xb, int n, float* g, float* u,
                float* out, ThreadPool& pool);
// KV append + attention of one attention layer: for one sequence (states.size() == 1: n
// tokens of it) or a batch (row i belongs to states[i]). k, v: [n][kv row]; q, att: [n][q row].
void append_attend(const std::vector<SequenceState*>& states, int layer, std::span<const float> k,
                   std::span<const float> v, std::span<const float> q, const int32_t* pos, int n, std::span<float> att,
                   ThreadPool& pool);
// logits = head(rmsnorm(x)) for the last row, or every row when all_rows; xb: scratch.
void final_logits(const Weight& head, const std::vector<float>& norm, float eps, const float* x, int n, int hidden,
                  bool all_rows, float* xb, float* logits, ThreadPool& pool);
}  // namespace layers

std::unique_ptr<Model> make_llama(std::unique_ptr<Checkpoint> c);
std::unique_ptr<Model> make_qwen35(std::unique_ptr<Checkpoint> c);

}  // namespace tq
