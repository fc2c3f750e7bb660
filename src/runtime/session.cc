#include "runtime/session.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "core/binio.h"
#include "core/error.h"

namespace tq {

using binio::get;
using binio::put;

namespace {
constexpr uint32_t kVersion = 1;

void put_delta(std::ostream& os, const std::vector<DeltaState>& d) {
  for (const auto& s : d) {
    put<uint64_t>(os, s.conv.size());
    binio::put_array(os, s.conv.data(), s.conv.size());
    put<uint64_t>(os, s.s.size());
    binio::put_array(os, s.s.data(), s.s.size());
  }
}

// Reads states into `d`, whose sizes (from a fresh state of this model) must match.
void get_delta(std::istream& is, std::vector<DeltaState>& d, const std::string& what) {
  for (size_t l = 0; l < d.size(); ++l) {
    const uint64_t nc = get<uint64_t>(is, what, "conv size");
    check(nc == d[l].conv.size(), "{}: layer {} conv state has {} values, this model expects {}", what, l, nc,
          d[l].conv.size());
    binio::get_array(is, d[l].conv.data(), nc, what, "conv state");
    const uint64_t ns = get<uint64_t>(is, what, "state size");
    check(ns == d[l].s.size(), "{}: layer {} DeltaNet state has {} values, this model expects {}", what, l, ns,
          d[l].s.size());
    binio::get_array(is, d[l].s.data(), ns, what, "DeltaNet state");
  }
}

// Header shared by load and peek: tokens and checkpoint positions.
Session::Head read_header(std::istream& in, uint64_t model_id, const CachePolicy& policy, size_t size,
                                 const std::string& what) {
  char magic[4];
  in.read(magic, 4);
  check(in.good() && std::string(magic, 4) == "TQPC", "{}: bad magic, expected 'TQPC' (not a session file)", what);
  const uint32_t version = get<uint32_t>(in, what, "version");
  check(version == kVersion, "{}: field 'version' is {}, this build reads version {}", what, version, kVersion);
  const uint64_t id = get<uint64_t>(in, what, "model id");
  check(id == model_id, "{}: saved for another model (model id {:016x}, this model is {:016x})", what, id, model_id);
  const uint32_t len = get<uint32_t>(in, what, "policy length");
  check(len < 256, "{}: field 'policy length' is {}, expected < 256", what, len);
  std::string name(len, '\0');
  in.read(name.data(), len);
  check(in.good() && name == policy.name(), "{}: saved with cache policy '{}', this server uses '{}'", what, name,
        policy.name());
  const uint64_t n = get<uint64_t>(in, what, "n_tokens");
  check(n <= size / 4, "{}: field 'n_tokens' = {} does not fit a file of {} bytes", what, n, size);
  Session::Head h;
  h.tokens.resize(n);
  binio::get_array(in, h.tokens.data(), n, what, "tokens");
  const uint32_t n_ck = get<uint32_t>(in, what, "checkpoint count");
  check(n_ck <= static_cast<uint32_t>(Session::kMaxCheckpoints), "{}: field 'checkpoint count' is {}, expected <= {}",
        what, n_ck, Session::kMaxCheckpoints);
  for (uint32_t i = 0; i < n_ck; ++i) {
    const uint64_t pos = get<uint64_t>(in, what, "checkpoint position");
    check(pos > 0 && pos <= n && (h.checkpoints.empty() || pos > h.checkpoints.back()),
          "{}: checkpoint {} at position {}, expected ascending positions within the {} tokens", what, i, pos, n);
    h.checkpoints.push_back(pos);
  }
  return h;
}

// The whole stream, its checksum verified and removed.
std::string read_verified(std::istream& is, const std::string& what) {
  std::string all((std::istreambuf_iterator<char>(is)), std::istreambuf_iterator<char>());
  check(all.size() >= 4 + 4 + 8 + 8, "{}: {} bytes is too short for a session file", what, all.size());
  uint64_t stored;
  std::memcpy(&stored, all.data() + all.size() - 8, 8);
  all.resize(all.size() - 8);
  check(binio::fnv1a(all) == stored, "{}: checksum mismatch (file corrupted or truncated)", what);
  return all;
}
}  // namespace

Session::Session(const Model& model, const CachePolicy& policy) : Session(model, policy, model.new_state(policy)) {}

Session::Session(const Model& model, const CachePolicy& policy, std::unique_ptr<SequenceState> state)
    : model_(model), policy_(policy), state_(std::move(state)) {
  recurrent_ = state_->device && state_->device->recurrent();
  for (const auto& d : state_->delta) recurrent_ = recurrent_ || !d.s.empty();
}

std::vector<size_t> Session::checkpoint_positions() const {
  std::vector<size_t> p;
  for (const auto& c : checkpoints_) p.push_back(c.pos);
  return p;
}

size_t reusable_prefix(std::span<const int32_t> tokens, std::span<const size_t> checkpoints, bool recurrent,
                       std::span<const int32_t> prompt) {
  if (prompt.empty()) return 0;
  const size_t n = std::min(tokens.size(), prompt.size());
  size_t common = 0;
  while (common < n && tokens[common] == prompt[common]) ++common;
  const size_t limit = std::min(common, prompt.size() - 1);
  if (!recurrent) return limit;
  if (tokens.size() <= limit) return tokens.size();
  size_t best = 0;
  for (size_t c : checkpoints)
    if (c <= limit) best = std::max(best, c);
  return best;
}

void Session::rewind(size_t pos) {
  check(pos <= tokens_.size(), "session rewind: position {} beyond the session's {} tokens", pos, tokens_.size());
  if (pos == tokens_.size()) return;
  if (recurrent_) {
    if (pos == 0) {
      for (auto& d : state_->delta) {
        std::fill(d.conv.begin(), d.conv.end(), 0.0f);
        std::fill(d.s.begin(), d.s.end(), 0.0f);
      }
      if (state_->device) state_->device->reset_states();
    } else {
      auto it = std::find_if(checkpoints_.begin(), checkpoints_.end(), [&](const Checkpoint& c) { return c.pos == pos; });
      check(it != checkpoints_.end(), "session rewind: no DeltaNet checkpoint at position {}", pos);
      state_->delta = it->delta;
      if (state_->device) state_->device->restore_states(*it->device);
    }
  }
  std::erase_if(checkpoints_, [&](const Checkpoint& c) { return c.pos > pos; });
  state_->truncate(pos);
  tokens_.resize(pos);
}

void Session::forward(const int32_t* tokens, int n, float* logits, bool all_logits, ThreadPool& pool) {
  model_.forward(*state_, tokens, n, logits, all_logits, pool);
  record(tokens, n);
}

int32_t Session::forward_argmax(const int32_t* tokens, int n, ThreadPool& pool) {
  const int32_t best = model_.forward_argmax(*state_, tokens, n, pool);
  record(tokens, n);
  return best;
}

std::vector<Candidate> Session::forward_top(const int32_t* tokens, int n, int k, ThreadPool& pool) {
  auto top = model_.forward_top(*state_, tokens, n, k, pool);
  record(tokens, n);
  return top;
}

int32_t Session::forward_sample(const int32_t* tokens, int n, float temperature, double u, ThreadPool& pool) {
  const int32_t t = model_.forward_sample(*state_, tokens, n, temperature, u, pool);
  record(tokens, n);
  return t;
}

void Session::forward_batch(const std::vector<Session*>& sessions, const int32_t* tokens, float* logits,
                            ThreadPool& pool) {
  if (sessions.empty()) return;
  std::vector<SequenceState*> states;
  for (auto* s : sessions) {
    check(&s->model_ == &sessions[0]->model_, "batched sessions must share one model");
    states.push_back(s->state_.get());
  }
  sessions[0]->model_.forward_batch(states, tokens, logits, pool);
  for (size_t i = 0; i < sessions.size(); ++i) sessions[i]->tokens_.push_back(tokens[i]);
}

void Session::checkpoint() {
  if (!recurrent_ || tokens_.empty()) return;
  if (!checkpoints_.empty() && checkpoints_.back().pos == tokens_.size()) return;
  checkpoints_.push_back({tokens_.size(), state_->delta, state_->device ? state_->device->save_states() : nullptr});
  if (checkpoints_.size() <= static_cast<size_t>(kMaxCheckpoints)) return;
  // Drop the checkpoint closest to its predecessor (never the newest).
  size_t drop = 0, gap = SIZE_MAX;
  for (size_t i = 0; i + 1 < checkpoints_.size(); ++i) {
    const size_t g = checkpoints_[i].pos - (i ? checkpoints_[i - 1].pos : 0);
    if (g < gap) gap = g, drop = i;
  }
  checkpoints_.erase(checkpoints_.begin() + static_cast<std::ptrdiff_t>(drop));
}

std::unique_ptr<Session> Session::fork(size_t pos) const {
  if (state_->device) {  // a copy on the device (checkpoints are immutable: shared)
    auto st = std::make_unique<SequenceState>();
    st->device = state_->device->clone();
    st->pos = state_->pos;
    auto s = std::unique_ptr<Session>(new Session(model_, policy_, std::move(st)));
    s->tokens_ = tokens_;
    s->checkpoints_ = checkpoints_;
    s->rewind(pos);
    return s;
  }
  std::stringstream buf;
  save(buf, 0);
  auto s = load(buf, model_, policy_, 0, "session fork");
  s->rewind(pos);
  return s;
}

size_t Session::bytes() const {
  size_t b = state_->kv_bytes() + state_->state_bytes();
  for (const auto& c : checkpoints_) {
    for (const auto& d : c.delta) b += d.bytes();
    if (c.device) b += c.device->bytes();
  }
  return b;
}

SessionFileStats Session::save(std::ostream& os, uint64_t model_id, int max_checkpoints) const {
  // A device session is written in the CPU's form: its caches and states downloaded into a
  // state of the CPU model's shapes (Model::new_state), so files move between backends.
  std::unique_ptr<SequenceState> host;
  std::vector<std::vector<DeltaState>> host_ck(checkpoints_.size());
  if (state_->device) {
    host = model_.Model::new_state(policy_);
    state_->device->get_delta(host->delta);
    for (size_t i = 0; i < checkpoints_.size(); ++i) {
      host_ck[i] = host->delta;  // (shapes)
      state_->device->get_delta(host_ck[i], checkpoints_[i].device.get());
    }
    for (size_t l = 0; l < host->kv.size(); ++l)
      if (host->kv[l]) host->kv[l]->restore(state_->device->kv_state(static_cast<int>(l)), tokens_.size(), "session save");
  }
  const SequenceState& sq = host ? *host : *state_;
  const size_t first_ck =
      checkpoints_.size() > static_cast<size_t>(std::max(0, max_checkpoints)) ? checkpoints_.size() - max_checkpoints : 0;
  std::ostringstream body;
  SessionFileStats st;
  body.write("TQPC", 4);
  put<uint32_t>(body, kVersion);
  put<uint64_t>(body, model_id);
  const std::string name = policy_.name();
  put<uint32_t>(body, static_cast<uint32_t>(name.size()));
  body.write(name.data(), static_cast<std::streamsize>(name.size()));
  put<uint64_t>(body, tokens_.size());
  binio::put_array(body, tokens_.data(), tokens_.size());
  put<uint32_t>(body, static_cast<uint32_t>(checkpoints_.size() - first_ck));
  for (size_t i = first_ck; i < checkpoints_.size(); ++i) put<uint64_t>(body, checkpoints_[i].pos);
  const auto before_state = body.tellp();
  put_delta(body, sq.delta);
  for (size_t i = first_ck; i < checkpoints_.size(); ++i) put_delta(body, host ? host_ck[i] : checkpoints_[i].delta);
  const auto after_state = body.tellp();
  for (const auto& k : sq.kv) {
    if (!k) continue;
    std::ostringstream slot;
    k->save(slot);
    binio::put_blob(body, slot.str());
  }
  const std::string s = body.str();
  os.write(s.data(), static_cast<std::streamsize>(s.size()));
  put<uint64_t>(os, binio::fnv1a(s));
  check(os.good(), "session save: write failed");
  st.total_bytes = s.size() + 8;
  st.state_bytes = static_cast<size_t>(after_state - before_state);
  st.kv_bytes = s.size() - static_cast<size_t>(after_state);
  return st;
}

std::unique_ptr<Session> Session::load(std::istream& is, const Model& model, const CachePolicy& policy,
                                       uint64_t model_id, const std::string& what) {
  const std::string all = read_verified(is, what);
  std::istringstream in(all);
  auto s = std::make_unique<Session>(model, policy);
  // A device session reads into the CPU's form first (as save writes it), then uploads.
  DeviceSequence* dev = s->state_->device.get();
  std::unique_ptr<SequenceState> host = dev ? model.Model::new_state(policy) : nullptr;
  SequenceState& sq = host ? *host : *s->state_;
  Head h = read_header(in, model_id, policy, all.size(), what);
  s->tokens_ = std::move(h.tokens);
  get_delta(in, sq.delta, what);
  for (size_t pos : h.checkpoints) {
    Checkpoint c{pos, sq.delta, nullptr};  // right sizes
    get_delta(in, c.delta, what);
    if (dev) c.device = dev->states_from(c.delta), c.delta.clear();
    s->checkpoints_.push_back(std::move(c));
  }
  for (size_t l = 0; l < sq.kv.size(); ++l) {
    auto& k = sq.kv[l];
    if (!k) continue;
    const size_t remain = all.size() - static_cast<size_t>(in.tellg());
    std::istringstream slot(binio::get_blob(in, remain, what, "KV slot"));
    auto loaded = KVSlot::load(slot, fmt::format("{} (layer {} KV slot)", what, l));
    check(loaded->policy().name() == k->policy().name() && loaded->layer() == k->layer() &&
              loaded->geometry().n_kv_heads == k->geometry().n_kv_heads &&
              loaded->geometry().head_dim == k->geometry().head_dim && loaded->policy().seed == k->policy().seed,
          "{}: layer {} KV slot does not match this model and policy", what, l);
    check(loaded->size() == s->tokens_.size(), "{}: layer {} KV slot holds {} tokens, the session {}", what, l,
          loaded->size(), s->tokens_.size());
    if (dev) dev->load_kv_state(static_cast<int>(l), loaded->state(), s->tokens_.size());
    else k = std::move(loaded);
  }
  check(static_cast<size_t>(in.tellg()) == all.size(), "{}: {} unexpected bytes after the last KV slot", what,
        all.size() - static_cast<size_t>(in.tellg()));
  if (dev) dev->set_delta(sq.delta);
  s->state_->pos = s->tokens_.size();
  return s;
}

Session::Head Session::peek(std::istream& is, uint64_t model_id, const CachePolicy& policy, const std::string& what) {
  const std::string all = read_verified(is, what);
  std::istringstream in(all);
  return read_header(in, model_id, policy, all.size(), what);
}

uint64_t model_fingerprint(const std::string& dir) {
  namespace fs = std::filesystem;
  uint64_t h = binio::fnv1a("tq-model");
  for (const char* name : {"config.json", "tokenizer.json"}) {
    std::ifstream f(fs::path(dir) / name, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    h = binio::fnv1a(s.data(), s.size(), h);
  }
  std::vector<std::string> weights;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors")
      weights.push_back(e.path().filename().string() + ":" + std::to_string(e.file_size()));
  std::sort(weights.begin(), weights.end());
  for (const auto& w : weights) h = binio::fnv1a(w.data(), w.size(), h);
  return h;
}

}  // namespace tq
