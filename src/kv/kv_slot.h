// A KV slot: the cache of one attention layer. It owns its storage and computes
// attention itself, so a compressed slot never hands out dequantized K/V.
//
// Storage grows in blocks of kBlockTokens tokens (the allocation granularity):
// resident_bytes() = fixed tables + ceil(tokens/256) × block bytes (+ window).
#pragma once
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>

#include "kv/attention.h"
#include "kv/cache_policy.h"

namespace tq {

class ThreadPool;

struct KVGeometry {
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // K/V heads (GQA: n_heads % n_kv_heads == 0)
  int head_dim = 0;
  void validate() const;  // throws tq::Error naming the bad field
};

constexpr size_t kBlockTokens = 256;

class KVSlot : protected attn::Source {
 public:
  ~KVSlot() override = default;
  const KVGeometry& geometry() const { return geo_; }
  const CachePolicy& policy() const { return policy_; }
  int layer() const { return layer_; }
  size_t size() const { return n_tokens_; }

  // Appends post-RoPE k, v: [n_new][n_kv_heads][head_dim] each.
  void append(std::span<const float> k, std::span<const float> v, size_t n_new);
  // q, out: [n_q][n_heads][head_dim]; positions[n_q] absolute positions (>= 0).
  // Query i attends to cached tokens t <= positions[i]. scale 0 means 1/√head_dim.
  void attend(std::span<const float> q, std::span<const int32_t> positions, std::span<float> out,
              float scale, ThreadPool& pool) const;
  // The slot's view of token t of KV head g, head_dim floats each, as a query at position
  // `as_of` sees it (default: the newest position). Attention computes exactly this.
  virtual void decode(size_t t, int g, float* k, float* v, int64_t as_of = -1) const = 0;
  // Bytes of every allocation the slot holds (storage blocks, window, rotation tables).
  virtual size_t resident_bytes() const = 0;
  // Bytes one token takes in the compressed (or dense) store, all KV heads, K and V.
  virtual size_t bytes_per_token() const = 0;
  // Keeps the first n tokens.
  virtual void truncate(size_t n) = 0;

  // Versioned, checksummed binary form (see kv_slot.cc for the layout).
  void save(std::ostream& os) const;
  // The raw state alone (the record's body after its header: the slot type's own layout),
  // and a slot of this policy and geometry set from one for n tokens (a device backend's
  // caches convert to and from it).
  std::string state() const;
  void restore(const std::string& state, size_t n_tokens, const std::string& what);
  static std::unique_ptr<KVSlot> load(std::istream& is, const std::string& what = "KV slot stream");

 protected:
  KVSlot(const CachePolicy& p, const KVGeometry& g, int layer) : policy_(p), geo_(g), layer_(layer) {}
  virtual void append_impl(const float* k, const float* v, size_t n_new) = 0;
  // Raw state for save/load: a list of byte spans in a fixed order for the current size.
  virtual void write_state(std::ostream& os) const = 0;
  virtual void read_state(std::istream& is, size_t n_tokens) = 0;

  size_t n_tokens() const override { return n_tokens_; }
  int n_heads() const override { return geo_.n_heads; }
  int n_kv_heads() const override { return geo_.n_kv_heads; }
  int head_dim() const override { return geo_.head_dim; }

  CachePolicy policy_;
  KVGeometry geo_;
  int layer_ = 0;
  size_t n_tokens_ = 0;
};

// The slot a policy asks for: DenseKV or TurboQuantKV. `layer` selects the rotation seeds.
std::unique_ptr<KVSlot> make_kv_slot(const CachePolicy& policy, const KVGeometry& geo, int layer = 0);

}  // namespace tq
