// A progress bar on stderr: redrawn in place on a terminal, a line every 10% otherwise.
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace tq::cli {

class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)), tty_(::isatty(2)), t0_(Clock::now()) {}
  void update(size_t done, size_t total, const std::string& what = "") {
    if (total == 0) return;
    const int pct = static_cast<int>(100.0 * done / total);
    if (!tty_ && pct / 10 == last_ / 10 && done != total) return;
    last_ = pct;
    const int w = 30, fill = w * pct / 100;
    const double secs = std::chrono::duration<double>(Clock::now() - t0_).count();
    std::fprintf(stderr, "%s%s [%.*s%*s] %3d%% %zu/%zu %.0fs %s%s", tty_ ? "\r" : "", label_.c_str(), fill,
                 "##############################", w - fill, "", pct, done, total, secs, what.c_str(),
                 tty_ ? "\033[K" : "\n");
    if (tty_ && done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_;
  bool tty_;
  Clock::time_point t0_;
  int last_ = -100;
};

}  // namespace tq::cli
