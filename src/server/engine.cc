#include "server/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace tq::server {

namespace fs = std::filesystem;

bool Job::next_piece(std::string& out, int timeout_ms) {
  std::unique_lock lock(m_);
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return !pieces_.empty() || finished_; });
  out.clear();
  while (!pieces_.empty()) {
    out += pieces_.front();
    pieces_.pop_front();
  }
  return !(finished_ && out.empty());
}

void Job::wait() {
  std::unique_lock lock(m_);
  cv_.wait(lock, [&] { return finished_; });
}

void Job::push(std::string piece) {
  if (piece.empty()) return;
  {
    std::lock_guard lock(m_);
    pieces_.push_back(std::move(piece));
  }
  cv_.notify_all();
}

void Job::finish(const GenerateResult& r, std::string error) {
  {
    std::lock_guard lock(m_);
    result_ = r;
    error_ = std::move(error);
    finished_ = true;
  }
  cv_.notify_all();
}

Engine::Engine(const Model& model, const Tokenizer& tok, EngineOptions opt)
    : model_(model), tok_(tok), opt_(std::move(opt)) {
  check(opt_.parallel >= 1, "--parallel: expected >= 1, got {}", opt_.parallel);
  recurrent_ = Session(model_, opt_.policy).recurrent();
  if (!opt_.cache_dir.empty()) {
    std::error_code ec;
    fs::create_directories(opt_.cache_dir, ec);
    check(fs::is_directory(opt_.cache_dir), "--prompt-cache {}: not a directory and cannot be created ({})",
          opt_.cache_dir, ec.message());
    index_cache_dir();
  }
  update_gauges();
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { shutdown(); }

void Engine::submit(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard lock(m_);
    if (stop_) {
      job->finish({}, "the server is shutting down");
      return;
    }
    queue_.push_back(job);
    metrics_.queued = queue_.size();
  }
  cv_.notify_all();
}

EngineMetrics Engine::metrics() const {
  std::lock_guard lock(m_);
  return metrics_;
}

std::vector<SessionFileStats> Engine::shutdown() {
  {
    std::lock_guard lock(m_);
    if (stop_ && !thread_.joinable()) return {};
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  return flush_to_disk();
}

void Engine::loop() {
  ThreadPool& pool = ThreadPool::global();
  while (true) {
    std::vector<std::shared_ptr<Job>> admit;
    {
      std::unique_lock lock(m_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty() || !running_.empty(); });
      if (stop_) {
        for (auto& j : queue_) j->finish({}, "the server is shutting down");
        queue_.clear();
        break;
      }
      while (running_.size() + admit.size() < static_cast<size_t>(opt_.parallel) && !queue_.empty()) {
        admit.push_back(queue_.front());
        queue_.pop_front();
      }
      metrics_.queued = queue_.size();
    }
    std::lock_guard sessions(sessions_m_);
    for (auto& j : admit) start(j);
    // One step of every running job: prefill chunks one job at a time, then the next token
    // of every decoding job in one batched forward (the weights read once for all) on the
    // CPU; on a GPU each job's own step (its logits stay there: only the argmax or the
    // sampler's candidates come back; a GPU forward has no batched form yet).
    std::vector<Running*> decoding;
    const bool batched = model_.device() == "cpu";
    for (auto& r : running_) {
      if (r.job->cancelled()) {
        complete(r, "cancelled");
        continue;
      }
      if (batched && !r.gen->prefilling() && !r.gen->done()) {
        decoding.push_back(&r);
        continue;
      }
      try {
        r.job->push(r.gen->step(pool));
        if (r.gen->done()) complete(r, "");
      } catch (const std::exception& e) {
        complete(r, e.what());
      }
    }
    decode_batch(decoding, pool);
    std::erase_if(running_, [](const Running& r) { return r.job == nullptr; });
    enforce_budget();
    update_gauges();
  }
  std::lock_guard sessions(sessions_m_);
  for (auto& r : running_) complete(r, "the server is shutting down");
  running_.clear();
}

void Engine::decode_batch(const std::vector<Running*>& decoding, ThreadPool& pool) {
  std::vector<Session*> sessions;
  std::vector<int32_t> tokens;
  std::vector<Running*> live;
  for (Running* r : decoding) {
    try {
      std::string text;
      const int32_t t = r->gen->decode_begin(text);
      r->job->push(std::move(text));
      if (t < 0) {
        complete(*r, "");
        continue;
      }
      sessions.push_back(r->gen->session());
      tokens.push_back(t);
      live.push_back(r);
    } catch (const std::exception& e) {
      complete(*r, e.what());
    }
  }
  // Batches of at most kMaxBatch rows: up to there a batched step computes bit-for-bit
  // what each request's own step would (see cpu::matmul).
  constexpr size_t kMaxBatch = cpu::kPerTokenMaxRows;
  const size_t V = static_cast<size_t>(model_.config().vocab);
  for (size_t b0 = 0; b0 < live.size(); b0 += kMaxBatch) {
    const size_t nb = std::min(kMaxBatch, live.size() - b0);
    std::vector<Session*> ss(sessions.begin() + b0, sessions.begin() + b0 + nb);
    logits_.resize(nb * V);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      Session::forward_batch(ss, tokens.data() + b0, logits_.data(), pool);
    } catch (const std::exception& e) {
      for (size_t i = b0; i < b0 + nb; ++i) complete(*live[i], e.what());
      continue;
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    {
      std::lock_guard lock(m_);
      metrics_.decode_batches++;
      metrics_.decode_batch_tokens += nb;
    }
    // Each request is charged its share of the batch, so summed decode time stays wall time.
    const double share = secs / static_cast<double>(nb);
    for (size_t i = 0; i < nb; ++i)
      live[b0 + i]->job->push(live[b0 + i]->gen->decode_end(logits_.data() + i * V, share));
  }
}

void Engine::start(const std::shared_ptr<Job>& job) {
  Entry* fresh = nullptr;
  try {
    size_t reuse = 0;
    Entry* e = best_entry(job->prompt, reuse);
    if (!e) {
      fresh = e = &entries_.emplace_back();
      e->session = std::make_unique<Session>(model_, opt_.policy);
    } else if (reuse < e->session->pos()) {
      // The request shares only part of the session: fork it and keep the original.
      auto s = e->session->fork(reuse);
      fresh = e = &entries_.emplace_back();
      e->session = std::move(s);
    }
    e->session->rewind(reuse);
    GenerateOptions g = job->gen;
    g.prefill_chunk = opt_.prefill_chunk;
    g.checkpoint_every = opt_.checkpoint_every;
    g.checkpoint_at.push_back(job->prompt.size() - 1);  // the same prompt again (regenerate) resumes here
    std::vector<int32_t> rest(job->prompt.begin() + static_cast<std::ptrdiff_t>(reuse), job->prompt.end());
    auto gen = std::make_unique<Generation>(model_, e->session->state(), tok_, std::move(rest), g, e->session.get());
    e->busy = e->dirty = true;
    e->last_used = ++clock_;
    job->cached_ = static_cast<int>(reuse);
    running_.push_back({job, e, std::move(gen)});
  } catch (const std::exception& ex) {
    if (fresh) entries_.remove_if([&](const Entry& x) { return &x == fresh; });
    job->finish({}, ex.what());
  }
}

void Engine::complete(Running& r, const std::string& error) {
  GenerateResult res = r.gen->result();
  r.entry->busy = false;
  r.entry->last_used = ++clock_;
  {
    std::lock_guard lock(m_);
    metrics_.requests++;
    metrics_.prompt_tokens += r.job->prompt.size();
    metrics_.cached_tokens += r.job->cached_;
    metrics_.prefill_tokens += r.job->prompt.size() - r.job->cached_;
    metrics_.generated_tokens += res.tokens.size();
    metrics_.prefill_seconds += res.prefill_seconds;
    metrics_.decode_seconds += res.decode_seconds;
  }
  r.job->finish(res, error);
  r.job = nullptr;
}

Engine::Entry* Engine::best_entry(const std::vector<int32_t>& prompt, size_t& reuse) {
  Entry* best = nullptr;
  reuse = 0;
  for (auto& e : entries_) {
    if (e.busy) continue;
    size_t r = 0;
    if (e.session) {
      r = e.session->reusable_prefix(prompt);
    } else {  // on disk: the file's tokens and checkpoint positions tell
      r = reusable_prefix(e.disk_tokens, e.disk_checkpoints, recurrent_, prompt);
    }
    if (r > reuse) reuse = r, best = &e;
  }
  if (best && !ensure_loaded(*best)) return best_entry(prompt, reuse);  // file gone or bad: it was removed
  return best;
}

bool Engine::ensure_loaded(Entry& e) {
  if (e.session) return true;
  try {
    std::ifstream f(e.file, std::ios::binary);
    check(f.good(), "{}: cannot open", e.file);
    e.session = Session::load(f, model_, opt_.policy, opt_.model_id, e.file);
    e.disk_tokens.clear();
    e.disk_checkpoints.clear();
    std::lock_guard lock(m_);
    metrics_.restored_from_disk++;
    return true;
  } catch (const std::exception& ex) {
    fmt::print(stderr, "tq serve: prompt cache: skipping {}: {}\n", e.file, ex.what());
    entries_.remove_if([&](const Entry& x) { return &x == &e; });
    return false;
  }
}

SessionFileStats Engine::write(Entry& e) {
  if (e.file.empty()) {
    std::random_device rd;
    const uint64_t id = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ (clock_ * 0x9e3779b97f4a7c15ull);
    e.file = (fs::path(opt_.cache_dir) / fmt::format("{:016x}.tqpc", id)).string();
  }
  const std::string tmp = e.file + ".tmp";
  SessionFileStats st;
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    check(f.good(), "{}: cannot write", tmp);
    st = e.session->save(f, opt_.model_id, opt_.file_checkpoints);
    f.close();
    check(f.good(), "{}: write failed", tmp);
  }
  fs::rename(tmp, e.file);
  e.dirty = false;
  e.file_bytes = st.total_bytes;
  std::lock_guard lock(m_);
  metrics_.cache_files_written++;
  return st;
}

void Engine::enforce_budget() {
  auto total = [&] {
    size_t b = 0;
    for (const auto& e : entries_)
      if (e.session) b += e.session->bytes();
    return b;
  };
  size_t used = total();
  while (used > opt_.kv_budget) {
    Entry* lru = nullptr;
    for (auto& e : entries_)
      if (e.session && !e.busy && (!lru || e.last_used < lru->last_used)) lru = &e;
    if (!lru) break;  // only running sessions left
    const size_t b = lru->session->bytes();
    bool kept = false;
    if (!opt_.cache_dir.empty()) {
      try {
        if (lru->dirty || lru->file.empty()) write(*lru);
        lru->disk_tokens = lru->session->tokens();
        lru->disk_checkpoints = lru->session->checkpoint_positions();
        lru->session.reset();
        kept = true;
        std::lock_guard lock(m_);
        metrics_.evicted_to_disk++;
      } catch (const std::exception& ex) {
        fmt::print(stderr, "tq serve: prompt cache: {}\n", ex.what());
      }
    }
    if (!kept) {
      entries_.remove_if([&](const Entry& x) { return &x == lru; });
      std::lock_guard lock(m_);
      metrics_.dropped++;
    }
    used -= b;
  }
}

std::vector<SessionFileStats> Engine::flush_to_disk() {
  std::vector<SessionFileStats> out;
  if (opt_.cache_dir.empty()) return out;
  std::lock_guard sessions(sessions_m_);
  for (auto& e : entries_) {
    if (!e.session || e.busy || (!e.dirty && !e.file.empty())) continue;
    try {
      out.push_back(write(e));
      out.back().file = e.file;
      out.back().tokens = e.session->pos();
    } catch (const std::exception& ex) {
      fmt::print(stderr, "tq serve: prompt cache: {}\n", ex.what());
    }
  }
  update_gauges();
  return out;
}

void Engine::index_cache_dir() {
  size_t skipped = 0;
  for (const auto& de : fs::directory_iterator(opt_.cache_dir)) {
    if (de.path().extension() != ".tqpc" || !de.is_regular_file()) continue;
    try {
      std::ifstream f(de.path(), std::ios::binary);
      Entry e;
      auto head = Session::peek(f, opt_.model_id, opt_.policy, de.path().string());
      e.disk_tokens = std::move(head.tokens);
      e.disk_checkpoints = std::move(head.checkpoints);
      e.file = de.path().string();
      e.file_bytes = de.file_size();
      entries_.push_back(std::move(e));
    } catch (const std::exception& ex) {
      ++skipped;  // another model's or policy's session, or a damaged file: left in place
      fmt::print(stderr, "tq serve: prompt cache: not using {}\n", ex.what());
    }
  }
  fmt::print(stderr, "tq serve: prompt cache {}: {} sessions indexed, {} files not for this model/policy\n",
             opt_.cache_dir, entries_.size(), skipped);
}

void Engine::update_gauges() {
  size_t mem = 0, disk = 0, kv = 0, bytes = 0, disk_bytes = 0;
  for (const auto& e : entries_) {
    if (e.session) {
      ++mem;
      kv += e.session->kv_bytes();
      bytes += e.session->bytes();
    } else {
      ++disk;
    }
    disk_bytes += e.file_bytes;
  }
  std::lock_guard lock(m_);
  metrics_.sessions_in_memory = mem;
  metrics_.sessions_on_disk = disk;
  metrics_.kv_bytes = kv;
  metrics_.session_bytes = bytes;
  metrics_.disk_bytes = disk_bytes;
  metrics_.running = running_.size();
}

}  // namespace tq::server
