#include "kv/turboquant_kv.h"

#include <algorithm>
#include <cstring>
#include <istream>
#include <ostream>

#include "core/error.h"
#include "core/f16.h"
#include "core/rng.h"

namespace tq {

namespace {
void to_f16(const float* x, int n, uint8_t* out) {
  for (int j = 0; j < n; ++j) {
    uint16_t h = f32_to_f16(x[j]);
    std::memcpy(out + 2 * j, &h, 2);
  }
}
void from_f16(const uint8_t* in, int n, float* x) {
  for (int j = 0; j < n; ++j) {
    uint16_t h;
    std::memcpy(&h, in + 2 * j, 2);
    x[j] = f16_to_f32(h);
  }
}
}  // namespace

TurboQuantKV::TurboQuantKV(const CachePolicy& p, const KVGeometry& g, int layer) : KVSlot(p, g, layer) {
  check(!p.dense, "TurboQuantKV needs a TurboQuant policy, got '{}'", p.name());
  for (int h = 0; h < g.n_kv_heads; ++h) {
    if (k_codes()) kq_.emplace_back(g.head_dim, p.k_bits, derive_seed(p.seed, layer, h, 0), p.norm_correction);
    if (v_codes()) vq_.emplace_back(g.head_dim, p.v_bits, derive_seed(p.seed, layer, h, 1), p.norm_correction);
  }
  const size_t k_row = k_codes() ? kq_[0].code_bytes() : 2 * g.head_dim;
  const size_t v_row = v_codes() ? vq_[0].code_bytes() : 2 * g.head_dim;
  std::vector<size_t> sections;
  for (int h = 0; h < g.n_kv_heads; ++h) {
    sections.push_back(k_row);
    sections.push_back(k_codes() ? 2 : 0);
    sections.push_back(v_row);
    sections.push_back(v_codes() ? 2 : 0);
  }
  store_ = BlockStore(sections);
  if (p.window > 0) {
    wk_row_ = 2 * static_cast<size_t>(k_dim());
    wv_row_ = 2 * static_cast<size_t>(v_dim());
    resize_ring(static_cast<size_t>(p.window));
  }
}

size_t TurboQuantKV::v_bytes_per_vector() const { return store_.row_bytes(2) + (v_codes() ? 2 : 0); }

size_t TurboQuantKV::bytes_per_token() const {
  return geo_.n_kv_heads * (k_bytes_per_vector() + v_bytes_per_vector());
}

size_t TurboQuantKV::resident_bytes() const {
  size_t b = store_.resident_bytes() + window_.bytes();
  for (const auto& q : kq_) b += q.rotation().resident_bytes();
  for (const auto& q : vq_) b += q.rotation().resident_bytes();
  return b;
}

uint8_t* TurboQuantKV::window_row(bool is_v, int g, size_t t) {
  return const_cast<uint8_t*>(static_cast<const TurboQuantKV*>(this)->window_row(is_v, g, t));
}
const uint8_t* TurboQuantKV::window_row(bool is_v, int g, size_t t) const {
  const size_t R = ring_rows_;
  const size_t k_area = R * geo_.n_kv_heads * wk_row_;
  const size_t r = t % R;
  return is_v ? window_.data() + k_area + (g * R + r) * wv_row_ : window_.data() + (g * R + r) * wk_row_;
}

void TurboQuantKV::resize_ring(size_t rows) {
  if (rows == ring_rows_) return;
  AlignedBuffer old = std::move(window_);
  const size_t old_rows = ring_rows_;
  window_ = AlignedBuffer(rows * geo_.n_kv_heads * (wk_row_ + wv_row_) + kAlign);
  const size_t keep_from = std::max(ring_lo_, n_tokens_ > rows ? n_tokens_ - rows : 0);
  ring_rows_ = rows;
  if (old_rows > 0) {
    const size_t k_area = old_rows * geo_.n_kv_heads * wk_row_;
    for (size_t t = keep_from; t < n_tokens_; ++t)
      for (int g = 0; g < geo_.n_kv_heads; ++g) {
        std::memcpy(window_row(false, g, t), old.data() + (g * old_rows + t % old_rows) * wk_row_, wk_row_);
        std::memcpy(window_row(true, g, t), old.data() + k_area + (g * old_rows + t % old_rows) * wv_row_, wv_row_);
      }
  }
  ring_lo_ = std::max(ring_lo_, keep_from);
}

void TurboQuantKV::to_domain(bool is_v, int g, const float* x, float* out) const {
  const auto& qs = is_v ? vq_ : kq_;
  if (qs.empty())
    std::copy(x, x + geo_.head_dim, out);
  else
    qs[g].rotation().forward(x, out);
}

void TurboQuantKV::put_quantized(bool is_v, int g, const float* x_dom, size_t t) {
  const size_t s = is_v ? sv(g) : sk(g);
  const auto& qs = is_v ? vq_ : kq_;
  if (qs.empty()) {
    to_f16(x_dom, geo_.head_dim, store_.row(s, t));
  } else {
    uint16_t n = qs[g].encode_rotated(x_dom, store_.row(s, t));
    std::memcpy(store_.row(s + 1, t), &n, 2);
  }
}

void TurboQuantKV::append_impl(const float* k, const float* v, size_t n_new) {
  const int G = geo_.n_kv_heads, hd = geo_.head_dim;
  const size_t W = policy_.window;
  if (W > 0) {
    // Queries of this append reach back W − 1 tokens before its first token.
    const size_t need = W - 1 + n_new;
    if (ring_rows_ < need || ring_rows_ > 2 * need) resize_ring(need);
    ring_lo_ = std::max(ring_lo_, n_tokens_ + n_new > ring_rows_ ? n_tokens_ + n_new - ring_rows_ : 0);
  }
  store_.reserve(n_tokens_ + n_new);
  std::vector<float> dom(std::max(k_dim(), v_dim()));
  for (size_t i = 0; i < n_new; ++i) {
    const size_t t = n_tokens_ + i;
    for (int g = 0; g < G; ++g)
      for (int side = 0; side < 2; ++side) {
        const bool is_v = side == 1;
        to_domain(is_v, g, (is_v ? v : k) + (i * G + g) * hd, dom.data());
        if (W > 0) {
          // The window row is what full precision means here (fp16); the codes are made
          // from the same fp16 values, so the two views of a token differ by quantization only.
          uint8_t* row = window_row(is_v, g, t);
          const int n = is_v ? v_dim() : k_dim();
          to_f16(dom.data(), n, row);
          from_f16(row, n, dom.data());
        }
        put_quantized(is_v, g, dom.data(), t);
      }
  }
}

attn::Segment TurboQuantKV::segment(int g, size_t t0, size_t pos) const {
  // Tokens from `boundary` on are seen as fp16 window rows by a query at `pos`.
  const size_t W = policy_.window;
  size_t boundary = n_tokens_;
  if (W > 0) boundary = std::max(ring_lo_, pos + 1 > W ? pos + 1 - W : 0);
  const bool from_window = t0 >= boundary;
  attn::Segment s;
  auto side = [&](bool is_v) {
    attn::Rows r;
    const auto& qs = is_v ? vq_ : kq_;
    if (from_window) {
      r.fmt = attn::RowFormat::f16;
      r.data = window_row(is_v, g, t0);
      r.stride = is_v ? wv_row_ : wk_row_;
      return r;
    }
    const size_t sec = is_v ? sv(g) : sk(g);
    r.data = store_.row(sec, t0);
    r.stride = store_.row_bytes(sec);
    if (qs.empty()) {
      r.fmt = attn::RowFormat::f16;
    } else {
      r.fmt = attn::RowFormat::codes;
      r.norms = reinterpret_cast<const uint16_t*>(store_.row(sec + 1, t0));
      r.bits = qs[g].bits();
      r.codebook = qs[g].codebook().centroids_f.data();
      r.norm_scale = 1.0f / std::sqrt(static_cast<float>(qs[g].padded_dim()));
    }
    return r;
  };
  if (from_window)
    s.n = std::min(ring_rows_ - t0 % ring_rows_, n_tokens_ - t0);
  else
    s.n = std::min({store_.run(t0), n_tokens_ - t0, boundary - t0});
  s.k = side(false);
  s.v = side(true);
  return s;
}

void TurboQuantKV::prepare_query(int g, const float* q, float* out) const { to_domain(false, g, q, out); }

void TurboQuantKV::finish(int g, float* acc, float* out) const {
  if (v_codes()) vq_[g].rotation().inverse_inplace(acc);
  std::copy(acc, acc + geo_.head_dim, out);
}

void TurboQuantKV::decode(size_t t, int g, float* k, float* v, int64_t as_of) const {
  attn::Segment s = segment(g, t, as_of < 0 ? n_tokens_ - 1 : static_cast<size_t>(as_of));
  std::vector<float> buf(std::max(k_dim(), v_dim()));
  attn::decode_row(s.k, 0, k_dim(), buf.data());
  if (k_codes()) kq_[g].rotation().inverse_inplace(buf.data());
  std::copy(buf.begin(), buf.begin() + geo_.head_dim, k);
  attn::decode_row(s.v, 0, v_dim(), buf.data());
  if (v_codes()) vq_[g].rotation().inverse_inplace(buf.data());
  std::copy(buf.begin(), buf.begin() + geo_.head_dim, v);
}

void TurboQuantKV::truncate(size_t n) {
  n_tokens_ = std::min(n, n_tokens_);
  ring_lo_ = std::min(ring_lo_, n_tokens_);
  store_.shrink(n_tokens_);
}

// State: every token's codes (and norms), then u64 count and the fp16 window rows of the
// newest `count` tokens (at most W: all that queries at later positions can need).
void TurboQuantKV::write_state(std::ostream& os) const {
  for (size_t t = 0; t < n_tokens_; ++t)
    for (size_t s = 0; s < store_.n_sections(); ++s)
      os.write(reinterpret_cast<const char*>(store_.row(s, t)), static_cast<std::streamsize>(store_.row_bytes(s)));
  const size_t W = policy_.window;
  const size_t from = W == 0 ? n_tokens_ : std::max(ring_lo_, n_tokens_ > W ? n_tokens_ - W : 0);
  const uint64_t count = n_tokens_ - from, rows = ring_rows_;
  // The ring's size fixes where it wraps, which is where attention splits the window
  // into segments: restoring it makes a loaded slot compute bit-identically.
  os.write(reinterpret_cast<const char*>(&rows), sizeof(rows));
  os.write(reinterpret_cast<const char*>(&count), sizeof(count));
  for (size_t t = from; t < n_tokens_; ++t)
    for (int g = 0; g < geo_.n_kv_heads; ++g) {
      os.write(reinterpret_cast<const char*>(window_row(false, g, t)), static_cast<std::streamsize>(wk_row_));
      os.write(reinterpret_cast<const char*>(window_row(true, g, t)), static_cast<std::streamsize>(wv_row_));
    }
}

void TurboQuantKV::read_state(std::istream& is, size_t n_tokens) {
  store_.shrink(0);
  store_.reserve(n_tokens);
  for (size_t t = 0; t < n_tokens; ++t)
    for (size_t s = 0; s < store_.n_sections(); ++s)
      is.read(reinterpret_cast<char*>(store_.row(s, t)), static_cast<std::streamsize>(store_.row_bytes(s)));
  uint64_t count = 0, rows = 0;
  is.read(reinterpret_cast<char*>(&rows), sizeof(rows));
  is.read(reinterpret_cast<char*>(&count), sizeof(count));
  const size_t W = policy_.window;
  check(is.good() && count <= n_tokens && count <= W, "KV slot state: window row count {} is inconsistent with {} tokens and window {}",
        count, n_tokens, W);
  check(W == 0 ? rows == 0 : rows >= W && rows <= W + n_tokens,
        "KV slot state: window ring of {} rows is inconsistent with {} tokens and window {}", rows, n_tokens, W);
  n_tokens_ = 0;
  ring_lo_ = 0;
  if (W > 0) resize_ring(rows);
  n_tokens_ = n_tokens;
  ring_lo_ = n_tokens - count;
  for (size_t t = ring_lo_; t < n_tokens; ++t)
    for (int g = 0; g < geo_.n_kv_heads; ++g) {
      is.read(reinterpret_cast<char*>(window_row(false, g, t)), static_cast<std::streamsize>(wk_row_));
      is.read(reinterpret_cast<char*>(window_row(true, g, t)), static_cast<std::streamsize>(wv_row_));
    }
}

}  // namespace tq
