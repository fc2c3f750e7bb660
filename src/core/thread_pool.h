// A small fixed-size thread pool for data-parallel loops.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tq {

// parallel_for(n, fn) calls fn(i, worker) for i in [0, n), items handed out
// dynamically; worker is in [0, size()) and indexes per-thread scratch. The calling
// thread works too (it is worker 0). One loop at a time per pool.
class ThreadPool {
 public:
  // n_threads <= 0: the hardware concurrency.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  void parallel_for(size_t n, const std::function<void(size_t, int)>& fn);

  // A process-wide pool sized to the hardware (or TQ_THREADS).
  static ThreadPool& global();

 private:
  void worker_loop(int id);
  void run_items(int id);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(size_t, int)>* fn_ = nullptr;
  size_t n_items_ = 0;
  std::atomic<size_t> next_{0};
  uint64_t generation_ = 0;
  std::atomic<uint64_t> published_{0};  // generation_, readable without the lock
  int active_ = 0;
  bool stop_ = false;
};

}  // namespace tq
