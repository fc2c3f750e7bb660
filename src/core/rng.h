// Deterministic seeding helpers. std::mt19937_64 is fully specified by the C++
// standard, so a seed gives the same stream on every platform and compiler.
#pragma once
#include <cstdint>

namespace tq {

// splitmix64 finalizer: mixes a 64-bit value into a well-distributed one.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Derive a child seed from a parent seed and up to three indices.
inline uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  return mix64(mix64(mix64(seed ^ mix64(a + 1)) ^ (b + 0x51ull)) ^ (c + 0x3bull));
}

}  // namespace tq
