// DenseKV: K and V stored as f32, bf16 or f16 rows; attention reads them directly.
#pragma once
#include "kv/block_store.h"
#include "kv/kv_slot.h"

namespace tq {

class DenseKV final : public KVSlot {
 public:
  DenseKV(const CachePolicy& p, const KVGeometry& g, int layer);
  void decode(size_t t, int g, float* k, float* v, int64_t as_of = -1) const override;
  size_t resident_bytes() const override { return store_.resident_bytes(); }
  size_t bytes_per_token() const override;
  void truncate(size_t n) override;

 protected:
  void append_impl(const float* k, const float* v, size_t n_new) override;
  void write_state(std::ostream& os) const override;
  void read_state(std::istream& is, size_t n_tokens) override;

  int k_dim() const override { return geo_.head_dim; }
  int v_dim() const override { return geo_.head_dim; }
  attn::Segment segment(int g, size_t t0, size_t pos = 0) const override;
  void prepare_query(int g, const float* q, float* out) const override;
  void finish(int g, float* acc, float* out) const override;

 private:
  attn::RowFormat fmt_;
  size_t elem_ = 4;
  BlockStore store_;  // sections: K of head g at 2g, V of head g at 2g+1
};

}  // namespace tq
