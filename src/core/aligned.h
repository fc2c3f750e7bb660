// Cache-line aligned, zero-initialized byte buffers whose size is what they hold.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace tq {

constexpr size_t kAlign = 64;

struct AlignedFree {
  void operator()(void* p) const noexcept { std::free(p); }
};

// A heap block of `bytes` bytes (rounded up to kAlign), aligned to kAlign, zeroed.
// `bytes()` returns the allocated size: resident-memory accounting reads it.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) { resize(bytes); }
  void resize(size_t bytes) {
    size_t n = (bytes + kAlign - 1) / kAlign * kAlign;
    if (n == 0) {
      ptr_.reset();
      bytes_ = 0;
      return;
    }
    void* p = std::aligned_alloc(kAlign, n);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, n);
    ptr_.reset(p);
    bytes_ = n;
  }
  template <typename T = unsigned char>
  T* data() {
    return static_cast<T*>(ptr_.get());
  }
  template <typename T = unsigned char>
  const T* data() const {
    return static_cast<const T*>(ptr_.get());
  }
  size_t bytes() const { return bytes_; }

 private:
  std::unique_ptr<void, AlignedFree> ptr_;
  size_t bytes_ = 0;
};

}  // namespace tq
