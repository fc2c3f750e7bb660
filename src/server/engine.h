// The inference engine behind the server: one thread owns the model, the sessions and
// the thread pool. Requests wait in a queue; up to `parallel` of them run at once,
// interleaved one step (a prefill chunk or one decoded token) at a time, so every
// client's stream advances.
//
// Sessions: each finished request leaves its session (tokens, KV slots, DeltaNet states
// and checkpoints). A new request resumes the session sharing its longest reusable
// prefix (see Session::reusable_prefix) and processes only the rest. Sessions count
// against `kv_budget`; over it, least-recently-used idle sessions are written to the
// prompt cache directory (when given) or dropped. Sessions in the directory survive a
// restart: they are indexed at start and loaded when a request matches them.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kv/cache_policy.h"
#include "runtime/generate.h"
#include "runtime/session.h"

namespace tq {
class ThreadPool;
}

namespace tq::server {

struct EngineOptions {
  CachePolicy policy;
  size_t kv_budget = size_t(2) << 30;  // bytes of sessions kept in memory
  int parallel = 4;                     // requests running at once
  std::string cache_dir;                // prompt cache on disk ("" = none)
  uint64_t model_id = 0;                // model_fingerprint of the checkpoint
  int prefill_chunk = 256;
  int checkpoint_every = 512;
  int file_checkpoints = 2;  // DeltaNet checkpoints kept in a session file (the newest)
};

// One request as the engine sees it. The HTTP thread reads text pieces as they come.
class Job {
 public:
  std::vector<int32_t> prompt;
  GenerateOptions gen;

  // Waits up to `timeout_ms` for text. Returns false once the job is finished and
  // every piece has been taken.
  bool next_piece(std::string& out, int timeout_ms);
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  void wait();  // until finished
  // Valid after finishing:
  const std::string& error() const { return error_; }
  const GenerateResult& result() const { return result_; }
  int cached_tokens() const { return cached_; }

 private:
  friend class Engine;
  void push(std::string piece);
  void finish(const GenerateResult& r, std::string error);

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::string> pieces_;
  bool finished_ = false;
  std::atomic<bool> cancelled_{false};
  std::string error_;
  GenerateResult result_;
  int cached_ = 0;
};

struct EngineMetrics {
  uint64_t requests = 0, prompt_tokens = 0, cached_tokens = 0, prefill_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  uint64_t evicted_to_disk = 0, dropped = 0, restored_from_disk = 0, cache_files_written = 0;
  uint64_t decode_batches = 0, decode_batch_tokens = 0;  // batched decode steps and the tokens in them
  size_t sessions_in_memory = 0, sessions_on_disk = 0;
  size_t kv_bytes = 0, session_bytes = 0, disk_bytes = 0;
  size_t queued = 0, running = 0;
};

class Engine {
 public:
  Engine(const Model& model, const Tokenizer& tok, EngineOptions opt);
  ~Engine();  // shutdown()
  // Queues a job; the engine fills its pieces and finishes it.
  void submit(const std::shared_ptr<Job>& job);
  EngineMetrics metrics() const;
  // Finishes running jobs as "cancelled" errors, stops the thread, and writes every
  // changed session to the prompt cache directory (returns what it wrote). Idempotent.
  std::vector<SessionFileStats> shutdown();
  const EngineOptions& options() const { return opt_; }
  // Writes all changed in-memory sessions to the cache directory now (engine idle or not).
  // Returns the per-file statistics of what was written (for reports and tests).
  std::vector<SessionFileStats> flush_to_disk();

 private:
  struct Entry {
    std::unique_ptr<Session> session;  // null: only on disk
    std::vector<int32_t> disk_tokens;  // tokens of the file (when on disk)
    std::vector<size_t> disk_checkpoints;
    std::string file;                  // "" until first written
    size_t file_bytes = 0;
    uint64_t last_used = 0;
    bool busy = false, dirty = false;
  };
  struct Running {
    std::shared_ptr<Job> job;
    Entry* entry;
    std::unique_ptr<Generation> gen;
  };

  void loop();
  void decode_batch(const std::vector<Running*>& decoding, tq::ThreadPool& pool);
  void start(const std::shared_ptr<Job>& job);
  void complete(Running& r, const std::string& error);
  Entry* best_entry(const std::vector<int32_t>& prompt, size_t& reuse);
  bool ensure_loaded(Entry& e);
  void enforce_budget();
  SessionFileStats write(Entry& e);
  void index_cache_dir();
  void update_gauges();

  const Model& model_;
  const Tokenizer& tok_;
  EngineOptions opt_;
  std::list<Entry> entries_;  // engine thread only (and flush_to_disk under the same lock)
  std::vector<Running> running_;
  uint64_t clock_ = 0;
  bool recurrent_ = false;  // the model has DeltaNet layers
  std::vector<float> logits_;  // batched decode logits

  mutable std::mutex m_;  // queue, stop flag, metrics
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stop_ = false;
  EngineMetrics metrics_;
  std::mutex sessions_m_;  // entries_ between the engine thread and flush_to_disk
  std::thread thread_;
};

}  // namespace tq::server
