#include "kv/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/f16.h"
#include "core/thread_pool.h"
#include "quant/packing.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__)
#define TQ_AVX512 1
#include <immintrin.h>
#endif

namespace tq::attn {
namespace {

std::atomic<bool> g_force_scalar{false};
constexpr int kTile = 64;       // tokens scored per softmax update
constexpr int kQueryGroup = 8;  // queries sharing one decode of a row

float row_norm(const Rows& r, size_t t) { return f16_to_f32(r.norms[t]) * r.norm_scale; }

}  // namespace

void set_force_scalar(bool on) { g_force_scalar = on; }

void decode_row(const Rows& r, size_t t, int dim, float* out) {
  const uint8_t* row = r.data + t * r.stride;
  switch (r.fmt) {
    case RowFormat::f32:
      std::memcpy(out, row, dim * sizeof(float));
      break;
    case RowFormat::f16:
      for (int j = 0; j < dim; ++j) {
        uint16_t h;
        std::memcpy(&h, row + 2 * j, 2);
        out[j] = f16_to_f32(h);
      }
      break;
    case RowFormat::bf16:
      for (int j = 0; j < dim; ++j) {
        uint16_t h;
        std::memcpy(&h, row + 2 * j, 2);
        out[j] = bf16_to_f32(h);
      }
      break;
    case RowFormat::codes: {
      uint8_t idx[1 << 16];
      unpack_codes(row, dim, r.bits, idx);
      const float n = row_norm(r, t);
      for (int j = 0; j < dim; ++j) out[j] = r.codebook[idx[j]] * n;
      break;
    }
  }
}

namespace {

// ---------------------------------------------------------------------------
// Tile kernels. score: s[q][t] = ⟨Q[q], row_t⟩ for nq queries and nt rows.
// accum: acc[q] += Σ_t w[q][t] · row_t. Both see rows in their domain, norm applied.

struct TileArgs {
  const Rows* rows;
  size_t t0;
  int nt;
  int dim;
  int nq;
  const float* const* q;  // score: prepared queries
  float* const* acc;      // accum: accumulators
  const float* w;         // accum: weights [nq][kTile]
  float* s;               // score: output [nq][kTile]
};

void score_scalar(const TileArgs& a, float* buf) {
  for (int t = 0; t < a.nt; ++t) {
    decode_row(*a.rows, a.t0 + t, a.dim, buf);
    for (int qi = 0; qi < a.nq; ++qi) {
      const float* q = a.q[qi];
      float dot = 0;
      for (int j = 0; j < a.dim; ++j) dot += q[j] * buf[j];
      a.s[qi * kTile + t] = dot;
    }
  }
}

void accum_scalar(const TileArgs& a, float* buf) {
  for (int t = 0; t < a.nt; ++t) {
    decode_row(*a.rows, a.t0 + t, a.dim, buf);
    for (int qi = 0; qi < a.nq; ++qi) {
      const float w = a.w[qi * kTile + t];
      if (w == 0) continue;
      float* acc = a.acc[qi];
      for (int j = 0; j < a.dim; ++j) acc[j] += w * buf[j];
    }
  }
}

#ifdef TQ_AVX512
// Decoder of 16 consecutive values of a row into one register.
struct Dec {
  RowFormat fmt;
  int bits;
  __m512 cb;       // codebook replicated to 16 entries (indices use the low 4 bits)
  __m512i ctrl;    // vpermb control: lane i gets bytes [floor(b·i/8), +1]
  __m512i shifts;  // lane i: (b·i) mod 8
  const float* cb256;
};

Dec make_dec(const Rows& r) {
  Dec d{};
  d.fmt = r.fmt;
  d.bits = r.bits;
  if (r.fmt == RowFormat::codes) {
    alignas(64) float cb[16];
    alignas(64) uint8_t ctrl[64];
    alignas(64) int32_t sh[16];
    const int n = 1 << r.bits;
    for (int i = 0; i < 16; ++i) cb[i] = r.codebook[i % std::min(n, 16)];
    std::memset(ctrl, 0, sizeof(ctrl));
    for (int i = 0; i < 16; ++i) {
      int bit = r.bits * i;
      ctrl[4 * i] = static_cast<uint8_t>(bit / 8);
      ctrl[4 * i + 1] = static_cast<uint8_t>(bit / 8 + 1);
      ctrl[4 * i + 2] = 63;  // a byte we never need; masked off below by the shift width
      ctrl[4 * i + 3] = 63;
      sh[i] = bit % 8;
    }
    d.cb = _mm512_load_ps(cb);
    d.ctrl = _mm512_load_si512(ctrl);
    d.shifts = _mm512_load_si512(sh);
    d.cb256 = r.codebook;
  }
  return d;
}

// 16 values at group j of `row`. Template on the format so the switch folds away.
template <RowFormat F, int B>
inline __m512 dec16(const Dec& d, const uint8_t* row, int j) {
  if constexpr (F == RowFormat::f32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + 16 * j);
  } else if constexpr (F == RowFormat::f16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * j)));
  } else if constexpr (F == RowFormat::bf16) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * j)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  } else if constexpr (B == 8) {
    __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * j)));
    return _mm512_i32gather_ps(idx, d.cb256, 4);
  } else {
    // 16 codes of B bits = 2B bytes; an 8-byte load covers them (rows have slack).
    __m512i raw = _mm512_zextsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 2 * B * j)));
    __m512i lanes = _mm512_permutexvar_epi8(d.ctrl, raw);
    __m512i idx = _mm512_srlv_epi32(lanes, d.shifts);
    return _mm512_permutexvar_ps(idx, d.cb);  // uses the low 4 bits; cb is replicated
  }
}

template <RowFormat F, int B, int NQ>
void score_avx512(const TileArgs& a, const Dec& d) {
  const Rows& r = *a.rows;
  const int groups = a.dim / 16;
  for (int t = 0; t < a.nt; ++t) {
    const uint8_t* row = r.data + (a.t0 + t) * r.stride;
    __m512 acc[NQ];
    for (int qi = 0; qi < NQ; ++qi) acc[qi] = _mm512_setzero_ps();
    for (int j = 0; j < groups; ++j) {
      __m512 x = dec16<F, B>(d, row, j);
      for (int qi = 0; qi < NQ; ++qi) acc[qi] = _mm512_fmadd_ps(_mm512_loadu_ps(a.q[qi] + 16 * j), x, acc[qi]);
    }
    const float n = F == RowFormat::codes ? row_norm(r, a.t0 + t) : 1.0f;
    for (int qi = 0; qi < NQ; ++qi) a.s[qi * kTile + t] = _mm512_reduce_add_ps(acc[qi]) * n;
  }
}

template <RowFormat F, int B, int NQ>
void accum_avx512(const TileArgs& a, const Dec& d) {
  const Rows& r = *a.rows;
  const int groups = a.dim / 16;
  alignas(64) float w[NQ][kTile];
  for (int qi = 0; qi < NQ; ++qi)
    for (int t = 0; t < a.nt; ++t)
      w[qi][t] = a.w[qi * kTile + t] * (F == RowFormat::codes ? row_norm(r, a.t0 + t) : 1.0f);
  for (int j = 0; j < groups; ++j) {
    __m512 acc[NQ];
    for (int qi = 0; qi < NQ; ++qi) acc[qi] = _mm512_loadu_ps(a.acc[qi] + 16 * j);
    const uint8_t* row = r.data + a.t0 * r.stride;
    for (int t = 0; t < a.nt; ++t, row += r.stride) {
      __m512 x = dec16<F, B>(d, row, j);
      for (int qi = 0; qi < NQ; ++qi) acc[qi] = _mm512_fmadd_ps(_mm512_set1_ps(w[qi][t]), x, acc[qi]);
    }
    for (int qi = 0; qi < NQ; ++qi) _mm512_storeu_ps(a.acc[qi] + 16 * j, acc[qi]);
  }
}

using TileFn = void (*)(const TileArgs&, const Dec&);

template <RowFormat F, int B>
TileFn pick(bool score, int nq) {
#define TQ_CASE(N) \
  case N: return score ? &score_avx512<F, B, N> : &accum_avx512<F, B, N>;
  switch (nq) {
    TQ_CASE(1) TQ_CASE(2) TQ_CASE(3) TQ_CASE(4) TQ_CASE(5) TQ_CASE(6) TQ_CASE(7) TQ_CASE(8)
    default: return nullptr;
  }
#undef TQ_CASE
}

TileFn pick_tile_fn(const Rows& r, int dim, bool score, int nq) {
  if (g_force_scalar || dim % 16 != 0) return nullptr;
  switch (r.fmt) {
    case RowFormat::f32: return pick<RowFormat::f32, 0>(score, nq);
    case RowFormat::f16: return pick<RowFormat::f16, 0>(score, nq);
    case RowFormat::bf16: return pick<RowFormat::bf16, 0>(score, nq);
    case RowFormat::codes:
      switch (r.bits) {
        case 2: return pick<RowFormat::codes, 2>(score, nq);
        case 3: return pick<RowFormat::codes, 3>(score, nq);
        case 4: return pick<RowFormat::codes, 4>(score, nq);
        case 8: return pick<RowFormat::codes, 8>(score, nq);
        default: return nullptr;
      }
  }
  return nullptr;
}

// exp(x) for a vector, |rel err| < 2e-7; x = -inf gives 0.
inline __m512 exp512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-104.0f);
  __m512 xc = _mm512_max_ps(x, lo);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  __m512 res = _mm512_scalef_ps(p, n);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), res, _mm512_setzero_ps());
}
#endif

// p[i] = exp(s[i] - m) for n values.
void exp_shifted(float* s, int n, float m) {
#ifdef TQ_AVX512
  if (!g_force_scalar) {
    const __m512 vm = _mm512_set1_ps(m);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(s + i, exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm)));
    if (i < n) {
      __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
      _mm512_mask_storeu_ps(s + i, k, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + i), vm)));
    }
    return;
  }
#endif
  for (int i = 0; i < n; ++i) s[i] = std::exp(s[i] - m);
}

void run_tile(const Rows& rows, size_t t0, int nt, int dim, bool score, int nq, const float* const* q,
              float* const* acc, const float* w, float* s, float* buf) {
  for (int q0 = 0; q0 < nq; q0 += kQueryGroup) {
    const int n = std::min(kQueryGroup, nq - q0);
    TileArgs a{&rows, t0, nt, dim, n, q ? q + q0 : nullptr, acc ? acc + q0 : nullptr,
               w ? w + q0 * kTile : nullptr, s ? s + q0 * kTile : nullptr};
#ifdef TQ_AVX512
    if (TileFn fn = pick_tile_fn(rows, dim, score, n)) {
      fn(a, make_dec(rows));
      continue;
    }
#endif
    if (score)
      score_scalar(a, buf);
    else
      accum_scalar(a, buf);
  }
}

}  // namespace

void attend(const Source& src, const float* q, const int32_t* positions, size_t n_q, float* out, float scale,
            ThreadPool& pool) {
  const int H = src.n_heads(), G = src.n_kv_heads(), hd = src.head_dim();
  const int rep = H / G, kd = src.k_dim(), vd = src.v_dim();
  const size_t T = src.n_tokens();

  // Queries of KV head g, in blocks of qb query tokens: local query index = i·rep + r.
  const int qb = src.per_query_view() && n_q > 1 ? 1 : std::max(1, 32 / rep);
  const size_t n_qblocks = (n_q + qb - 1) / qb;
  const size_t base_items = n_qblocks * G;
  size_t n_chunks = 1;
  if (base_items < static_cast<size_t>(4 * pool.size()))
    n_chunks = std::max<size_t>(1, std::min<size_t>((4 * pool.size() + base_items - 1) / base_items, T / 512));
  const size_t chunk = ((T + n_chunks - 1) / n_chunks + kTile - 1) / kTile * kTile;
  const int max_local = qb * rep;

  // Prepared queries: [n_q][H][kd].
  std::vector<float> qp(n_q * H * kd);
  pool.parallel_for(n_q * H, [&](size_t i, int) {
    src.prepare_query(static_cast<int>(i % H) / rep, q + i * hd, qp.data() + i * kd);
  });

  const size_t n_items = base_items * n_chunks;
  std::vector<float> part_m(n_items * max_local), part_l(n_items * max_local), part_acc(n_items * max_local * vd);
  std::vector<size_t> limit(n_q);
  for (size_t i = 0; i < n_q; ++i) limit[i] = std::min<size_t>(T, static_cast<size_t>(positions[i]) + 1);

  pool.parallel_for(n_items, [&](size_t item, int) {
    const size_t c = item % n_chunks;
    const size_t blk = (item / n_chunks) % n_qblocks;
    const int g = static_cast<int>(item / n_chunks / n_qblocks);
    const size_t i0 = blk * qb, i1 = std::min(n_q, i0 + qb);
    const int nq = static_cast<int>((i1 - i0) * rep);
    float* m = &part_m[item * max_local];
    float* l = &part_l[item * max_local];
    float* acc = &part_acc[item * max_local * vd];
    std::fill(m, m + nq, -std::numeric_limits<float>::infinity());
    std::fill(l, l + nq, 0.0f);
    std::fill(acc, acc + static_cast<size_t>(nq) * vd, 0.0f);
    size_t max_limit = 0;
    for (size_t i = i0; i < i1; ++i) max_limit = std::max(max_limit, limit[i]);
    const size_t t_begin = c * chunk, t_end = std::min({T, t_begin + chunk, max_limit});

    thread_local std::vector<float> s, buf;
    s.resize(static_cast<size_t>(max_local) * kTile);
    buf.resize(std::max(kd, vd));
    std::vector<const float*> qptr(nq);
    std::vector<float*> aptr(nq);
    std::vector<size_t> qlimit(nq);
    for (int lq = 0; lq < nq; ++lq) {
      const size_t i = i0 + lq / rep;
      const int h = g * rep + lq % rep;
      qptr[lq] = &qp[(i * H + h) * kd];
      aptr[lq] = acc + static_cast<size_t>(lq) * vd;
      qlimit[lq] = limit[i];
    }
    for (size_t t = t_begin; t < t_end;) {
      Segment seg = src.segment(g, t, max_limit - 1);
      const int nt = static_cast<int>(std::min<size_t>({static_cast<size_t>(kTile), seg.n, t_end - t}));
      run_tile(seg.k, 0, nt, kd, true, nq, qptr.data(), nullptr, nullptr, s.data(), buf.data());
      // Scale, mask, online softmax update.
      for (int lq = 0; lq < nq; ++lq) {
        float* sq = &s[static_cast<size_t>(lq) * kTile];
        const int valid = static_cast<int>(std::min<size_t>(nt, qlimit[lq] > t ? qlimit[lq] - t : 0));
        if (valid == 0) {
          std::fill(sq, sq + nt, 0.0f);
          continue;
        }
        float mx = m[lq];
        for (int k = 0; k < valid; ++k) mx = std::max(mx, sq[k] *= scale);
        const float corr = std::exp(m[lq] - mx);  // 0 on the first tile (m = -inf)
        if (corr != 1.0f) {
          float* a = aptr[lq];
          for (int j = 0; j < vd; ++j) a[j] *= corr;
          l[lq] *= corr;
        }
        m[lq] = mx;
        exp_shifted(sq, valid, mx);
        std::fill(sq + valid, sq + nt, 0.0f);
        float sum = 0;
        for (int k = 0; k < valid; ++k) sum += sq[k];
        l[lq] += sum;
      }
      run_tile(seg.v, 0, nt, vd, false, nq, nullptr, aptr.data(), s.data(), nullptr, buf.data());
      t += nt;
    }
  });

  // Merge the chunks of each (KV head, query block) and finish each query head.
  pool.parallel_for(base_items * max_local, [&](size_t idx, int) {
    const int lq = static_cast<int>(idx % max_local);
    const size_t base = idx / max_local;  // = g·n_qblocks + blk
    const size_t blk = base % n_qblocks;
    const int g = static_cast<int>(base / n_qblocks);
    const size_t i = blk * qb + lq / rep;
    if (i >= n_q) return;
    const int h = g * rep + lq % rep;
    float M = -std::numeric_limits<float>::infinity();
    for (size_t c = 0; c < n_chunks; ++c) M = std::max(M, part_m[(base * n_chunks + c) * max_local + lq]);
    float* o = out + (i * H + h) * hd;
    if (M == -std::numeric_limits<float>::infinity()) {
      std::fill(o, o + hd, 0.0f);
      return;
    }
    thread_local std::vector<float> accv;
    accv.assign(vd, 0.0f);
    double L = 0;
    for (size_t c = 0; c < n_chunks; ++c) {
      const size_t it = base * n_chunks + c;
      const float mc = part_m[it * max_local + lq];
      if (mc == -std::numeric_limits<float>::infinity()) continue;
      const float f = std::exp(mc - M);
      L += static_cast<double>(part_l[it * max_local + lq]) * f;
      const float* a = &part_acc[(it * max_local + lq) * vd];
      for (int j = 0; j < vd; ++j) accv[j] += f * a[j];
    }
    const float inv = static_cast<float>(1.0 / L);
    for (int j = 0; j < vd; ++j) accv[j] *= inv;
    src.finish(g, accv.data(), o);
  });
}

}  // namespace tq::attn
