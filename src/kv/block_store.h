// Token-major storage in blocks of kBlockTokens tokens. A block holds one array of
// rows per section (e.g. "K codes of head 0", "K norms of head 0", ...), each
// 64-byte aligned, plus 64 bytes of slack so SIMD decoders may read a few bytes
// past the last row. Blocks are allocated as tokens arrive and freed on truncate.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/aligned.h"
#include "kv/kv_slot.h"

namespace tq {

class BlockStore {
 public:
  BlockStore() = default;
  explicit BlockStore(std::vector<size_t> row_bytes, size_t block_tokens = kBlockTokens)
      : row_bytes_(std::move(row_bytes)), block_tokens_(block_tokens) {
    size_t off = 0;
    for (size_t rb : row_bytes_) {
      offsets_.push_back(off);
      off = (off + rb * block_tokens_ + kAlign - 1) / kAlign * kAlign;
    }
    block_bytes_ = off + kAlign;  // slack for over-reading decoders
  }
  size_t block_tokens() const { return block_tokens_; }
  size_t block_bytes() const { return block_bytes_; }
  size_t row_bytes(size_t section) const { return row_bytes_[section]; }
  size_t n_sections() const { return row_bytes_.size(); }
  size_t capacity() const { return blocks_.size() * block_tokens_; }

  void reserve(size_t n_tokens) {
    while (capacity() < n_tokens) blocks_.emplace_back(block_bytes_);
  }
  void shrink(size_t n_tokens) {
    size_t keep = (n_tokens + block_tokens_ - 1) / block_tokens_;
    if (blocks_.size() > keep) blocks_.resize(keep);
  }
  uint8_t* row(size_t section, size_t t) {
    return blocks_[t / block_tokens_].data() + offsets_[section] + (t % block_tokens_) * row_bytes_[section];
  }
  const uint8_t* row(size_t section, size_t t) const {
    return blocks_[t / block_tokens_].data() + offsets_[section] + (t % block_tokens_) * row_bytes_[section];
  }
  // Rows stored contiguously from token t on (to the end of its block).
  size_t run(size_t t) const { return block_tokens_ - t % block_tokens_; }
  size_t resident_bytes() const {
    size_t b = 0;
    for (const auto& blk : blocks_) b += blk.bytes();
    return b;
  }

 private:
  std::vector<size_t> row_bytes_, offsets_;
  size_t block_tokens_ = kBlockTokens;
  size_t block_bytes_ = 0;
  std::vector<AlignedBuffer> blocks_;
};

}  // namespace tq
