// Generation: chunked prefill, then a decode loop with a sampler, stop tokens and stop
// strings. `Generation` is the step-at-a-time form (one prefill chunk or one decoded
// token per step) that the server interleaves across requests; `generate` runs it to
// the end.
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kv/cache_policy.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace tq {

struct SamplerConfig {
  float temperature = 0.8f;  // 0 = greedy
  int top_k = 40;            // 0 = off
  float top_p = 0.95f;       // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;  // 1 = off (applied to the last 64 tokens)
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerConfig& c) : cfg_(c), rng_(c.seed) {}
  int32_t sample(std::vector<float>& logits, const std::vector<int32_t>& history);
  // How many of the largest logits (before the repetition penalty) decide the draw: top_k,
  // plus one per token the penalty may lower; 0 when the whole row is needed (greedy, no
  // top-k, or a penalty below 1, which can raise any token).
  int candidates_needed(int vocab) const;
  // The same draw as sample from the candidates_needed largest logits (Model::forward_top).
  int32_t sample_top(std::vector<Candidate> top, const std::vector<int32_t>& history);
  // Temperature alone decides the draw (no top-k below the vocabulary, top-p, min-p or
  // penalty): Model::forward_sample can draw it at uniform() where the logits are.
  bool whole_row(int vocab) const;
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }
  float temperature() const { return cfg_.temperature; }

 private:
  // Applies fn(logit) once per occurrence of a token in the penalty window.
  template <typename F>
  void penalize(const std::vector<int32_t>& history, F&& at) const;
  // Temperature, top-p, min-p and the draw over sorted candidates. A prefix of a longer
  // sorted row (!complete) comes with the row's mass; −1 when top-p or min-p would look
  // past it.
  int32_t pick(const std::vector<Candidate>& sorted, double mass = 0, bool complete = true);
  SamplerConfig cfg_;
  std::mt19937_64 rng_;
};

struct GenerateOptions {
  int max_tokens = 256;
  int prefill_chunk = 256;
  int context = 0;  // 0: the model's max_position_embeddings (or unlimited if unknown)
  SamplerConfig sampler;
  std::vector<int32_t> stop_tokens;   // sorted
  std::vector<std::string> stop_strings;  // text never includes them; generation ends at the first
  int checkpoint_every = 512;  // with a Session: DeltaNet checkpoints at multiples of this position
  std::vector<size_t> checkpoint_at;  // with a Session: and at these absolute positions (e.g. message ends)
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (stop token excluded)
  std::string text;
  int n_prompt = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  std::string finish_reason;  // "stop", "length", "context"
  size_t kv_bytes = 0;
};

class Session;

class Generation {
 public:
  // Continues `state` with `prompt` (tokens not yet processed), then generates. With a
  // session, tokens go through it (recorded, DeltaNet checkpoints at the end of the
  // prompt and at multiples of checkpoint_every); `state` must then be session->state().
  Generation(const Model& model, SequenceState& state, const Tokenizer& tok, std::vector<int32_t> prompt,
             const GenerateOptions& opt, Session* session = nullptr);
  ~Generation();
  bool done() const { return done_; }
  bool prefilling() const { return prefilled_ < prompt_.size(); }
  // One prefill chunk or one decoded token; returns the text that became final.
  std::string step(ThreadPool& pool);
  // Decode in two halves, so a caller can run several generations' tokens in one batched
  // forward: decode_begin samples the next token and returns it (the text that became
  // final goes to `text`), or −1 when generation ended; decode_end takes the logits the
  // forward of that token produced. Only while !prefilling(), and only for a session on
  // the CPU (elsewhere a forward gives the argmax, the draw or the candidates: use step).
  int32_t decode_begin(std::string& text);
  std::string decode_end(const float* logits, double seconds);
  Session* session() const { return session_; }
  const GenerateResult& result() const { return r_; }

 private:
  void prefill_chunk(ThreadPool& pool);
  std::string decode_one(ThreadPool& pool);
  void fetch_top(const int32_t* tokens, int n, ThreadPool& pool);  // forward_top into top_
  void forward(const int32_t* tokens, int n, ThreadPool& pool);    // whole logits into logits_
  void draw(const int32_t* tokens, int n, ThreadPool& pool);       // forward_sample into next_
  std::string finish(const std::string& reason, bool cut_by_stop_string);
  bool cut_at_stop_string();
  std::string release_text(bool all);

  const Model& model_;
  SequenceState& st_;
  const Tokenizer& tok_;
  std::vector<int32_t> prompt_;
  GenerateOptions opt_;
  Session* session_;
  size_t ctx_;
  size_t prefilled_ = 0;
  std::vector<float> logits_;
  Sampler sampler_;
  // Greedy without a penalty (not in a CPU session): the model returns only the argmax
  // (Model::forward_argmax; on the GPU the logits stay there) into next_, not logits_.
  bool argmax_only_ = false;
  int32_t next_ = -1;
  // Top-k sampling (likewise): only the top_fetch_ largest logits come back
  // (Model::forward_top: on the GPU the logits stay there) into top_ (non-empty until
  // sampled), not logits_.
  int top_fetch_ = 0;
  // Sampling over the whole row on a device (Sampler::whole_row): the model draws the token
  // where the logits are (Model::forward_sample) into next_.
  bool draw_on_device_ = false;
  std::vector<Candidate> top_;
  std::vector<int32_t> history_;
  std::unique_ptr<StreamDecoder> stream_;
  std::string text_;     // all decoded text (stop string cut off when found)
  size_t released_ = 0;  // bytes of text_ handed out
  GenerateResult r_;
  bool done_ = false;
};

// Stop tokens of a checkpoint: config eos ids, generation_config.json, and the
// tokenizer's end-of-text tokens (</s>, <|im_end|>, <|endoftext|>).
std::vector<int32_t> stop_tokens_for(const std::string& dir, const ModelConfig& c, const Tokenizer& t);

GenerateResult generate(const Model& model, SequenceState& state, const Tokenizer& tok,
                        const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(const std::string&)>& on_text, ThreadPool& pool);

}  // namespace tq
