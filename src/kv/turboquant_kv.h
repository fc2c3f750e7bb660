// TurboQuantKV: K and V compressed with TurboQuant_mse, bits chosen per side
// (K ∈ {16, 8, 4, 3, 2}, V ∈ {16, 4, 3, 2}; 16 keeps that side as fp16 rows).
//
// Per token and KV head, a quantized side stores ceil(D·b/8) code bytes + a 2-byte
// fp16 norm (D = head_dim padded to a power of two): 98 bytes at head_dim 256, 3 bits.
// Rotation seeds: one sign vector per (layer, KV head, K or V), derived from the
// policy seed, so errors of different heads and layers are independent.
// Optional window W: a query at position p sees tokens p−W+1 … p as fp16 rows (in the
// rotation's domain) and older tokens from their codes. Every token is quantized on
// arrival; a ring keeps fp16 copies of the tokens any query of the current append can
// still need (W − 1 + n_new rows), so results do not depend on how prefill is chunked.
#pragma once
#include <vector>

#include "core/aligned.h"
#include "kv/block_store.h"
#include "kv/kv_slot.h"
#include "quant/quantizer.h"

namespace tq {

class TurboQuantKV final : public KVSlot {
 public:
  TurboQuantKV(const CachePolicy& p, const KVGeometry& g, int layer);
  void decode(size_t t, int g, float* k, float* v, int64_t as_of = -1) const override;
  size_t resident_bytes() const override;
  size_t bytes_per_token() const override;
  void truncate(size_t n) override;
  // Bytes per stored vector of one side (codes + norm, or fp16 row).
  size_t k_bytes_per_vector() const { return store_.row_bytes(0) + (k_codes() ? 2 : 0); }
  size_t v_bytes_per_vector() const;

 protected:
  void append_impl(const float* k, const float* v, size_t n_new) override;
  void write_state(std::ostream& os) const override;
  void read_state(std::istream& is, size_t n_tokens) override;

  int k_dim() const override { return k_codes() ? kq_[0].padded_dim() : geo_.head_dim; }
  int v_dim() const override { return v_codes() ? vq_[0].padded_dim() : geo_.head_dim; }
  attn::Segment segment(int g, size_t t0, size_t pos) const override;
  bool per_query_view() const override { return policy_.window > 0; }
  void prepare_query(int g, const float* q, float* out) const override;
  void finish(int g, float* acc, float* out) const override;

 private:
  bool k_codes() const { return policy_.k_bits != 16; }
  bool v_codes() const { return policy_.v_bits != 16; }
  // Section indices in store_ for head g: K rows, K norms, V rows, V norms.
  size_t sk(int g) const { return 4 * g; }
  size_t sv(int g) const { return 4 * g + 2; }
  // Stores side x (K or V, domain-transformed) of one token into the compressed store.
  void put_quantized(bool is_v, int g, const float* x_dom, size_t t);
  // Makes the ring hold `rows` rows, keeping the valid ones.
  void resize_ring(size_t rows);
  // x in head_dim → its domain form (rotated, padded, for a quantized side).
  void to_domain(bool is_v, int g, const float* x, float* out) const;
  uint8_t* window_row(bool is_v, int g, size_t t);
  const uint8_t* window_row(bool is_v, int g, size_t t) const;

  std::vector<VectorQuantizer> kq_, vq_;  // per KV head (empty for a dense side)
  BlockStore store_;  // every token, quantized
  // Window ring: ring_rows_ rows per (head, side), fp16, in the side's domain; token t at
  // t % ring_rows_; rows of tokens [ring_lo_, n_tokens_) are valid.
  AlignedBuffer window_;
  size_t wk_row_ = 0, wv_row_ = 0, ring_rows_ = 0, ring_lo_ = 0;
};

}  // namespace tq
