// A Session is one sequence a client can come back to: the tokens it has processed,
// its SequenceState (KV slots + DeltaNet states), and checkpoints of the DeltaNet
// states at chosen positions.
//
// Resuming a later request that shares a prefix with the session: KV slots truncate to
// any position, but a DeltaNet state cannot be rolled back, so a hybrid model resumes
// from the live state (when the whole session is a prefix of the request) or from the
// longest checkpoint inside the shared prefix. Pure-attention models resume anywhere.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kv/cache_policy.h"
#include "model/model.h"

namespace tq {

class ThreadPool;

struct SessionFileStats {
  size_t total_bytes = 0;  // the whole file
  size_t kv_bytes = 0;     // the KV slots' records (compressed codes, norms, fp16 window)
  size_t state_bytes = 0;  // DeltaNet states and checkpoints (policy-independent)
  std::string file;        // where it was written (set by the caller that names files)
  size_t tokens = 0;
};

// The rule of Session::reusable_prefix, for a session given by its tokens and checkpoints.
size_t reusable_prefix(std::span<const int32_t> tokens, std::span<const size_t> checkpoints, bool recurrent,
                       std::span<const int32_t> prompt);

class Session {
 public:
  // A Qwen3.5-9B DeltaNet state is ~50 MB (24 layers × 32 heads × 128² × fp32), so
  // checkpoints are few: in memory, and fewer (the newest) in files.
  static constexpr int kMaxCheckpoints = 4;

  Session(const Model& model, const CachePolicy& policy);

  const Model& model() const { return model_; }
  const CachePolicy& policy() const { return policy_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  size_t pos() const { return tokens_.size(); }
  SequenceState& state() { return *state_; }
  const SequenceState& state() const { return *state_; }
  bool recurrent() const { return recurrent_; }
  std::vector<size_t> checkpoint_positions() const;

  // How many leading tokens of `prompt` this session can skip: at most
  // min(common prefix, prompt.size() − 1), since the last prompt token must run to
  // give logits; for a hybrid model only the live position or a checkpoint qualifies.
  size_t reusable_prefix(std::span<const int32_t> prompt) const {
    return tq::reusable_prefix(tokens_, checkpoint_positions(), recurrent_, prompt);
  }
  // Moves the session back to `pos`, a value reusable_prefix returned (0 always works).
  void rewind(size_t pos);
  // Runs tokens at the end of the session (see Model::forward) and records them.
  void forward(const int32_t* tokens, int n, float* logits, bool all_logits, ThreadPool& pool);
  // The same, returning only the last token's argmax, k largest logits or a draw
  // (Model::forward_argmax, forward_top, forward_sample: on a GPU the logits stay there).
  int32_t forward_argmax(const int32_t* tokens, int n, ThreadPool& pool);
  std::vector<Candidate> forward_top(const int32_t* tokens, int n, int k, ThreadPool& pool);
  int32_t forward_sample(const int32_t* tokens, int n, float temperature, double u, ThreadPool& pool);
  // One token at the end of each session, batched (Model::forward_batch); logits [n][vocab].
  static void forward_batch(const std::vector<Session*>& sessions, const int32_t* tokens, float* logits,
                            ThreadPool& pool);
  // Records the DeltaNet states at the current position (no-op for pure attention, or
  // when one exists there). Keeps at most kMaxCheckpoints, thinning where they are densest.
  void checkpoint();

  // A copy holding the first `pos` tokens (pos: a reusable_prefix value), so a request
  // that shares only part of this session leaves the session itself intact.
  std::unique_ptr<Session> fork(size_t pos) const;

  size_t kv_bytes() const { return state_->kv_bytes(); }
  size_t bytes() const;  // KV + DeltaNet states + checkpoints

  // File form: "TQPC" | u32 version | u64 model id | policy | tokens | checkpoint
  // positions | live DeltaNet states | checkpoint states | KV slots (each its own checksummed TQKV record) | u64 FNV-1a.
  // max_checkpoints: keep only the newest ones in the file. A device backend's session is
  // written in the CPU's form (its caches and states downloaded), so a file loads on either.
  SessionFileStats save(std::ostream& os, uint64_t model_id, int max_checkpoints = kMaxCheckpoints) const;
  // Reads a session saved for the same model (model_id) and policy; `what` names the file.
  static std::unique_ptr<Session> load(std::istream& is, const Model& model, const CachePolicy& policy,
                                       uint64_t model_id, const std::string& what);
  // Only the tokens and checkpoint positions of a session file (for indexing a cache directory).
  struct Head {
    std::vector<int32_t> tokens;
    std::vector<size_t> checkpoints;
  };
  static Head peek(std::istream& is, uint64_t model_id, const CachePolicy& policy, const std::string& what);

 private:
  struct Checkpoint {
    size_t pos = 0;
    std::vector<DeltaState> delta;
    std::shared_ptr<const DeviceStates> device;  // a device backend's copy instead of delta
  };
  Session(const Model& model, const CachePolicy& policy, std::unique_ptr<SequenceState> state);
  void record(const int32_t* tokens, int n) { tokens_.insert(tokens_.end(), tokens, tokens + n); }
  const Model& model_;
  CachePolicy policy_;
  std::unique_ptr<SequenceState> state_;
  std::vector<int32_t> tokens_;
  std::vector<Checkpoint> checkpoints_;  // ascending pos
  bool recurrent_ = false;
};

// A stable identity of a checkpoint directory's model (config, tokenizer, weight file
// sizes), stored in session files so a cache is never restored into another model.
uint64_t model_fingerprint(const std::string& dir);

}  // namespace tq
