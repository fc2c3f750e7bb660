#include "runtime/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"
#include "core/thread_pool.h"
#include "runtime/session.h"

namespace tq {

constexpr size_t kPenaltyWindow = 64;

template <typename F>
void Sampler::penalize(const std::vector<int32_t>& history, F&& at) const {
  if (cfg_.repetition_penalty == 1.0f) return;
  const size_t from = history.size() > kPenaltyWindow ? history.size() - kPenaltyWindow : 0;
  for (size_t i = from; i < history.size(); ++i)
    if (float* l = at(history[i])) *l = *l > 0 ? *l / cfg_.repetition_penalty : *l * cfg_.repetition_penalty;
}

int32_t Sampler::sample(std::vector<float>& logits, const std::vector<int32_t>& history) {
  const int V = static_cast<int>(logits.size());
  penalize(history, [&](int32_t id) { return &logits[id]; });
  if (cfg_.temperature <= 0) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  if (cfg_.top_k > 0 && cfg_.top_k < V) return pick(top_logits(logits.data(), V, cfg_.top_k));
  // No top-k: the whole row's mass once, then only as long a sorted prefix as top-p and
  // min-p look at (not a sort of the whole vocabulary per token), or none when neither cuts.
  const float mx = *std::max_element(logits.begin(), logits.end());
  const auto weight = [&](int i) { return std::exp((logits[i] - mx) / static_cast<double>(cfg_.temperature)); };
  if (cfg_.top_p >= 1.0f && cfg_.min_p <= 0) {
    std::discrete_distribution<int> d(V, 0, V, [&](double x) { return weight(static_cast<int>(x)); });
    return d(rng_);
  }
  double mass = 0;
  for (int i = 0; i < V; ++i) mass += weight(i);
  std::vector<Candidate> all(V);
  for (int i = 0; i < V; ++i) all[i] = {logits[i], i};
  for (int k = std::min(V, 256);; k = std::min(V, 4 * k)) {
    if (k < V) std::nth_element(all.begin(), all.begin() + k, all.end(), ranks_before);  // the k largest first
    std::vector<Candidate> top(all.begin(), all.begin() + k);
    std::sort(top.begin(), top.end(), ranks_before);
    if (const int32_t t = pick(top, mass, k == V); t >= 0) return t;
  }
}

int Sampler::candidates_needed(int vocab) const {
  if (cfg_.temperature <= 0 || cfg_.top_k <= 0 || cfg_.repetition_penalty < 1.0f) return 0;
  // A penalty ≥ 1 only lowers logits, and lowers at most kPenaltyWindow tokens: the k
  // largest after it are among the k + kPenaltyWindow largest before it.
  return std::min(vocab, cfg_.top_k + (cfg_.repetition_penalty != 1.0f ? static_cast<int>(kPenaltyWindow) : 0));
}

bool Sampler::whole_row(int vocab) const {
  return cfg_.temperature > 0 && (cfg_.top_k <= 0 || cfg_.top_k >= vocab) && cfg_.top_p >= 1.0f && cfg_.min_p <= 0 &&
         cfg_.repetition_penalty == 1.0f;
}

int32_t Sampler::sample_top(std::vector<Candidate> top, const std::vector<int32_t>& history) {
  penalize(history, [&](int32_t id) -> float* {
    for (auto& c : top)
      if (c.id == id) return &c.logit;
    return nullptr;
  });
  std::sort(top.begin(), top.end(), ranks_before);
  if (top.size() > static_cast<size_t>(cfg_.top_k)) top.resize(cfg_.top_k);
  return pick(top);
}

int32_t Sampler::pick(const std::vector<Candidate>& c, double mass, bool complete) {
  const int k = static_cast<int>(c.size());
  std::vector<double> p(k);
  const double mx = c[0].logit;
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += (p[i] = std::exp((c[i].logit - mx) / cfg_.temperature));
  for (auto& x : p) x /= complete ? sum : mass;
  int keep = k;
  if (cfg_.top_p < 1.0f) {
    double acc = 0;
    for (int i = 0; i < k; ++i) {
      acc += p[i];
      if (acc >= cfg_.top_p) {
        keep = i + 1;
        break;
      }
    }
    if (keep == k && !complete && acc < cfg_.top_p) return -1;  // the cut lies past this prefix
  }
  if (cfg_.min_p > 0) {
    if (keep == k && !complete && p[k - 1] >= cfg_.min_p * p[0]) return -1;
    while (keep > 1 && p[keep - 1] < cfg_.min_p * p[0]) --keep;
  }
  std::discrete_distribution<int> d(p.begin(), p.begin() + keep);
  return c[d(rng_)].id;
}

std::vector<int32_t> stop_tokens_for(const std::string& dir, const ModelConfig& c, const Tokenizer& t) {
  std::vector<int32_t> s(c.eos_ids.begin(), c.eos_ids.end());
  std::ifstream f(dir + "/generation_config.json");
  if (f.good()) {
    try {
      auto j = nlohmann::json::parse(f);
      if (j.contains("eos_token_id")) {
        const auto& e = j["eos_token_id"];
        if (e.is_number_integer()) s.push_back(e.get<int32_t>());
        if (e.is_array())
          for (const auto& x : e) s.push_back(x.get<int32_t>());
      }
    } catch (const nlohmann::json::exception& e) {
      fail("{}/generation_config.json: not valid JSON: {}", dir, e.what());
    }
  }
  for (const char* name : {"</s>", "<|im_end|>", "<|endoftext|>"}) {
    int32_t id = t.id_of(name);
    if (id >= 0) s.push_back(id);
  }
  std::sort(s.begin(), s.end());
  s.erase(std::unique(s.begin(), s.end()), s.end());
  return s;
}

Generation::Generation(const Model& model, SequenceState& state, const Tokenizer& tok, std::vector<int32_t> prompt,
                       const GenerateOptions& opt, Session* session)
    : model_(model),
      st_(state),
      tok_(tok),
      prompt_(std::move(prompt)),
      opt_(opt),
      session_(session),
      logits_(model.config().vocab),
      sampler_(opt.sampler) {
  const ModelConfig& c = model.config();
  // What comes back from a forward: whole rows of logits in a CPU session (its caller may
  // batch decode steps: decode_end); otherwise the argmax, the draw (on a device) or the
  // sampler's candidates, where the model can give them without the row.
  const bool rows = session && model.device() == "cpu";
  argmax_only_ = !rows && opt.sampler.temperature <= 0 && opt.sampler.repetition_penalty == 1.0f;
  draw_on_device_ = model.device() != "cpu" && sampler_.whole_row(c.vocab);
  top_fetch_ = rows || draw_on_device_ ? 0 : sampler_.candidates_needed(c.vocab);
  ctx_ = opt.context > 0 ? opt.context : (c.max_position > 0 ? c.max_position : SIZE_MAX);
  check(!prompt_.empty(), "generate: empty prompt (no tokens; the model has no BOS token to start from)");
  check(st_.pos + prompt_.size() <= ctx_, "generate: prompt of {} tokens does not fit the context of {} tokens",
        prompt_.size() + st_.pos, ctx_);
  check(opt.prefill_chunk > 0, "generate: prefill_chunk must be > 0, got {}", opt.prefill_chunk);
  check(session == nullptr || &session->state() == &state, "generate: state must be the session's state");
  r_.n_prompt = static_cast<int>(prompt_.size());
  r_.finish_reason = "length";
  history_ = session ? session->tokens() : std::vector<int32_t>{};
  history_.insert(history_.end(), prompt_.begin(), prompt_.end());
  // Generated text continues the prompt's text, if it has any (a lone BOS has none).
  const bool at_start = std::all_of(history_.begin(), history_.end(), [&](int32_t t) { return tok.is_special(t); });
  stream_ = std::make_unique<StreamDecoder>(tok, at_start);
}

Generation::~Generation() = default;

std::string Generation::step(ThreadPool& pool) {
  if (done_) return {};
  const auto t0 = std::chrono::steady_clock::now();
  std::string piece;
  if (prefilling()) {
    prefill_chunk(pool);
    r_.prefill_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!prefilling() && opt_.max_tokens == 0) piece = finish("length", false);
    return piece;
  }
  piece = decode_one(pool);
  r_.decode_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return piece;
}

void Generation::prefill_chunk(ThreadPool& pool) {
  size_t n = std::min<size_t>(opt_.prefill_chunk, prompt_.size() - prefilled_);
  bool at_checkpoint = false;
  if (session_) {  // end chunks on checkpoint positions
    const size_t pos = st_.pos;
    size_t next = pos + n;
    if (opt_.checkpoint_every > 0) next = std::min(next, (pos / opt_.checkpoint_every + 1) * opt_.checkpoint_every);
    for (size_t c : opt_.checkpoint_at)
      if (c > pos) next = std::min(next, c);
    n = next - pos;
    at_checkpoint = (opt_.checkpoint_every > 0 && next % opt_.checkpoint_every == 0) ||
                    std::find(opt_.checkpoint_at.begin(), opt_.checkpoint_at.end(), next) != opt_.checkpoint_at.end();
  }
  const int32_t* t = prompt_.data() + prefilled_;
  const bool last = prefilled_ + n == prompt_.size();
  if (argmax_only_ && last) next_ = session_ ? session_->forward_argmax(t, static_cast<int>(n), pool)
                                              : model_.forward_argmax(st_, t, static_cast<int>(n), pool);
  else if (draw_on_device_ && last) draw(t, static_cast<int>(n), pool);
  else if (top_fetch_ && last) fetch_top(t, static_cast<int>(n), pool);
  else forward(t, static_cast<int>(n), pool);
  prefilled_ += n;
  if (session_ && (at_checkpoint || !prefilling())) session_->checkpoint();
}

int32_t Generation::decode_begin(std::string& text) {
  text.clear();
  if (done_) return -1;
  const int32_t next = next_ >= 0      ? std::exchange(next_, -1)
                       : !top_.empty() ? sampler_.sample_top(std::exchange(top_, {}), history_)
                                        : sampler_.sample(logits_, history_);
  if (std::binary_search(opt_.stop_tokens.begin(), opt_.stop_tokens.end(), next)) {
    text = finish("stop", false);
    return -1;
  }
  r_.tokens.push_back(next);
  history_.push_back(next);
  text_ += stream_->feed(next);
  if (cut_at_stop_string()) {
    text = finish("stop", true);
    return -1;
  }
  if (r_.tokens.size() == static_cast<size_t>(opt_.max_tokens)) {
    text = finish("length", false);
    return -1;
  }
  if (st_.pos + 1 > ctx_) {
    text = finish("context", false);
    return -1;
  }
  return next;
}

std::string Generation::decode_end(const float* logits, double seconds) {
  check(!argmax_only_ && !draw_on_device_ && top_fetch_ == 0,
        "decode_end: this generation fetches only the largest logits or the draw (use step)");
  std::copy(logits, logits + logits_.size(), logits_.begin());
  r_.decode_seconds += seconds;
  return release_text(false);
}

std::string Generation::decode_one(ThreadPool& pool) {
  std::string text;
  const int32_t next = decode_begin(text);
  if (next < 0) return text;
  if (argmax_only_) next_ = session_ ? session_->forward_argmax(&next, 1, pool) : model_.forward_argmax(st_, &next, 1, pool);
  else if (draw_on_device_) draw(&next, 1, pool);
  else if (top_fetch_) fetch_top(&next, 1, pool);
  else forward(&next, 1, pool);
  return text + release_text(false);
}

void Generation::fetch_top(const int32_t* tokens, int n, ThreadPool& pool) {
  top_ = session_ ? session_->forward_top(tokens, n, top_fetch_, pool) : model_.forward_top(st_, tokens, n, top_fetch_, pool);
}

void Generation::draw(const int32_t* tokens, int n, ThreadPool& pool) {
  const float t = sampler_.temperature();
  const double u = sampler_.uniform();
  next_ = session_ ? session_->forward_sample(tokens, n, t, u, pool) : model_.forward_sample(st_, tokens, n, t, u, pool);
}

void Generation::forward(const int32_t* tokens, int n, ThreadPool& pool) {
  if (session_) session_->forward(tokens, n, logits_.data(), false, pool);
  else model_.forward(st_, tokens, n, logits_.data(), false, pool);
}

// Text up to where a stop string could still begin (all of it when none can).
std::string Generation::release_text(bool all) {
  size_t upto = text_.size();
  if (!all) {
    for (const auto& s : opt_.stop_strings)
      for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), text_.size() - released_); k > 0; --k)
        if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
          upto = std::min(upto, text_.size() - k);
          break;
        }
  }
  std::string out = text_.substr(released_, upto - released_);
  released_ = upto;
  return out;
}

// Cuts text_ at the earliest stop string. Released text never holds the start of one
// (release_text keeps back any suffix that begins a stop string), so search from there.
bool Generation::cut_at_stop_string() {
  size_t at = std::string::npos;
  for (const auto& s : opt_.stop_strings)
    if (!s.empty()) at = std::min(at, text_.find(s, released_));
  if (at == std::string::npos) return false;
  text_.resize(at);
  return true;
}

std::string Generation::finish(const std::string& reason, bool cut) {
  r_.finish_reason = reason;
  if (!cut) {  // incomplete UTF-8 at the end comes out as U+FFFD, and may complete a stop string
    text_ += stream_->flush();
    if (cut_at_stop_string()) r_.finish_reason = "stop";
  }
  done_ = true;
  r_.kv_bytes = st_.kv_bytes();
  std::string out = release_text(true);
  r_.text = text_;
  return out;
}

GenerateResult generate(const Model& model, SequenceState& st, const Tokenizer& tok,
                        const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(const std::string&)>& on_text, ThreadPool& pool) {
  Generation g(model, st, tok, prompt, opt);
  while (!g.done()) {
    const std::string piece = g.step(pool);
    if (on_text && !piece.empty()) on_text(piece);
  }
  return g.result();
}

}  // namespace tq
