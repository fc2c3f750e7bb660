#include "kv/dense_kv.h"

#include <algorithm>
#include <cstring>
#include <istream>
#include <ostream>

#include "core/error.h"
#include "core/f16.h"

namespace tq {

DenseKV::DenseKV(const CachePolicy& p, const KVGeometry& g, int layer) : KVSlot(p, g, layer) {
  switch (p.dense_type) {
    case DenseType::f32: fmt_ = attn::RowFormat::f32; elem_ = 4; break;
    case DenseType::bf16: fmt_ = attn::RowFormat::bf16; elem_ = 2; break;
    case DenseType::f16: fmt_ = attn::RowFormat::f16; elem_ = 2; break;
  }
  store_ = BlockStore(std::vector<size_t>(2 * g.n_kv_heads, g.head_dim * elem_));
}

size_t DenseKV::bytes_per_token() const { return 2 * geo_.n_kv_heads * geo_.head_dim * elem_; }

static void store_row(attn::RowFormat fmt, const float* x, int n, uint8_t* out) {
  switch (fmt) {
    case attn::RowFormat::f32: std::memcpy(out, x, n * sizeof(float)); break;
    case attn::RowFormat::f16:
      for (int j = 0; j < n; ++j) {
        uint16_t h = f32_to_f16(x[j]);
        std::memcpy(out + 2 * j, &h, 2);
      }
      break;
    case attn::RowFormat::bf16:
      for (int j = 0; j < n; ++j) {
        uint16_t h = f32_to_bf16(x[j]);
        std::memcpy(out + 2 * j, &h, 2);
      }
      break;
    case attn::RowFormat::codes: break;
  }
}

void DenseKV::append_impl(const float* k, const float* v, size_t n_new) {
  const int G = geo_.n_kv_heads, hd = geo_.head_dim;
  store_.reserve(n_tokens_ + n_new);
  for (size_t i = 0; i < n_new; ++i)
    for (int g = 0; g < G; ++g) {
      const size_t src = (i * G + g) * hd;
      store_row(fmt_, k + src, hd, store_.row(2 * g, n_tokens_ + i));
      store_row(fmt_, v + src, hd, store_.row(2 * g + 1, n_tokens_ + i));
    }
}

attn::Segment DenseKV::segment(int g, size_t t0, size_t) const {
  attn::Segment s;
  s.n = std::min(store_.run(t0), n_tokens_ - t0);
  s.k = {fmt_, store_.row(2 * g, t0), store_.row_bytes(2 * g), nullptr, 0, nullptr, 1};
  s.v = {fmt_, store_.row(2 * g + 1, t0), store_.row_bytes(2 * g + 1), nullptr, 0, nullptr, 1};
  return s;
}

void DenseKV::prepare_query(int, const float* q, float* out) const { std::copy(q, q + geo_.head_dim, out); }
void DenseKV::finish(int, float* acc, float* out) const { std::copy(acc, acc + geo_.head_dim, out); }

void DenseKV::decode(size_t t, int g, float* k, float* v, int64_t) const {
  attn::Segment s = segment(g, t);
  attn::decode_row(s.k, 0, geo_.head_dim, k);
  attn::decode_row(s.v, 0, geo_.head_dim, v);
}

void DenseKV::truncate(size_t n) {
  n_tokens_ = std::min(n, n_tokens_);
  store_.shrink(n_tokens_);
}

void DenseKV::write_state(std::ostream& os) const {
  for (size_t t = 0; t < n_tokens_; ++t)
    for (size_t s = 0; s < store_.n_sections(); ++s)
      os.write(reinterpret_cast<const char*>(store_.row(s, t)), static_cast<std::streamsize>(store_.row_bytes(s)));
}

void DenseKV::read_state(std::istream& is, size_t n_tokens) {
  store_.shrink(0);
  store_.reserve(n_tokens);
  for (size_t t = 0; t < n_tokens; ++t)
    for (size_t s = 0; s < store_.n_sections(); ++s)
      is.read(reinterpret_cast<char*>(store_.row(s, t)), static_cast<std::streamsize>(store_.row_bytes(s)));
  n_tokens_ = n_tokens;
}

}  // namespace tq
