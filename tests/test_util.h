// Shared helpers: fresh random seeds per run (printed, and fixed by TQ_TEST_SEED).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace tq::test {

inline uint64_t fresh_seed() {
  static const uint64_t base = [] {
    if (const char* s = std::getenv("TQ_TEST_SEED")) return static_cast<uint64_t>(std::strtoull(s, nullptr, 10));
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  static uint64_t counter = 0;
  uint64_t s = base + 0x9e3779b97f4a7c15ull * ++counter;
  std::printf("[seed] TQ_TEST_SEED=%llu (draw %llu)\n", static_cast<unsigned long long>(base),
              static_cast<unsigned long long>(counter));
  return s;
}

inline std::vector<float> gaussian(size_t n, std::mt19937_64& rng, float sd = 1.0f) {
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

}  // namespace tq::test
