#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kv/kv_slot.h"
#include "kv/turboquant_kv.h"
#include "quant/reference.h"
#include "test_util.h"

namespace tq {
namespace {

struct Case {
  const char* policy;
  KVGeometry geo;
};

// Relative L2 error ‖out − ref‖ / ‖ref‖ over the whole output [n_q][n_heads][hd].
double worst_rel(const std::vector<float>& out, const std::vector<double>& ref, int) {
  double e = 0, r = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    e += (out[i] - ref[i]) * (out[i] - ref[i]);
    r += ref[i] * ref[i];
  }
  return std::sqrt(e / std::max(r, 1e-300));
}

struct Filled {
  std::unique_ptr<KVSlot> slot;
  std::vector<float> k, v;  // originals [T][G][hd]
};

Filled fill(const CachePolicy& p, const KVGeometry& g, size_t T, std::mt19937_64& rng) {
  Filled f{make_kv_slot(p, g, 3), {}, {}};
  const size_t row = static_cast<size_t>(g.n_kv_heads) * g.head_dim;
  f.k = test::gaussian(T * row, rng, 2.0f);
  f.v = test::gaussian(T * row, rng);
  // A few large key channels, as real keys have.
  for (size_t i = 0; i < f.k.size(); i += g.head_dim) f.k[i] *= 6;
  size_t t = 0;
  while (t < T) {  // uneven chunks, crossing block boundaries
    size_t n = std::min<size_t>(T - t, 1 + rng() % 200);
    f.slot->append(std::span<const float>(&f.k[t * row], n * row), std::span<const float>(&f.v[t * row], n * row), n);
    t += n;
  }
  return f;
}

// Must show 3: attention over the compressed cache equals float64 attention over the
// slot's own decoded K/V within 1e-5 relative error, for every policy, GQA shape and
// head_dim; decode (one query) and prefill (causal block of queries) alike.
TEST(KV, AttentionEqualsFloat64OverDecodedKV) {
  std::mt19937_64 rng(test::fresh_seed());
  const std::vector<const char*> policies = {"f32",  "bf16",   "fp16",  "tq2+w0", "tq3+w0",  "tq4+w0",       "k8v3+w0",
                                             "k4v3", "k16v3+w0", "k3v16", "k2v4+w0", "tq3+w16", "k8v4+w300+nc0", "tq3"};
  const std::vector<KVGeometry> geos = {{16, 4, 256}, {8, 2, 128}, {4, 4, 64}, {6, 2, 80}, {4, 2, 8}};
  ThreadPool pool(3);
  for (bool scalar : {false, true}) {
    attn::set_force_scalar(scalar);
    for (const auto& g : geos) {
      for (const char* name : policies) {
        const auto p = CachePolicy::parse(name);
        const size_t T = 200 + rng() % 500;
        auto f = fill(p, g, T, rng);
        ASSERT_EQ(f.slot->size(), T);
        // Decoded view of the cache, as a query at position `as_of` sees it.
        auto decoded = [&](int64_t as_of, std::vector<double>& kd, std::vector<double>& vd) {
          kd.assign(T * g.n_kv_heads * g.head_dim, 0.0);
          vd.assign(kd.size(), 0.0);
          std::vector<float> kr(g.head_dim), vr(g.head_dim);
          for (size_t t = 0; t < T; ++t)
            for (int h = 0; h < g.n_kv_heads; ++h) {
              f.slot->decode(t, h, kr.data(), vr.data(), as_of);
              for (int j = 0; j < g.head_dim; ++j) {
                kd[(t * g.n_kv_heads + h) * g.head_dim + j] = kr[j];
                vd[(t * g.n_kv_heads + h) * g.head_dim + j] = vr[j];
              }
            }
        };
        std::vector<double> kd, vd;
        decoded(-1, kd, vd);
        for (size_t n_q : {size_t{1}, size_t{37}}) {
          auto q = test::gaussian(n_q * g.n_heads * g.head_dim, rng, 0.5f);
          std::vector<int32_t> pos(n_q);
          for (size_t i = 0; i < n_q; ++i) pos[i] = static_cast<int32_t>(T - n_q + i);
          if (n_q > 1) pos[0] = 0;  // a query that sees a single token
          std::vector<float> out(q.size());
          const double scale = 1.0 / std::sqrt(static_cast<double>(g.head_dim));
          f.slot->attend(q, pos, out, 0, pool);
          std::vector<double> qd(q.begin(), q.end());
          std::vector<double> ref;
          if (p.window > 0 && n_q > 1) {
            // With a window, each query sees its own recent tokens at full precision.
            const size_t qsz = static_cast<size_t>(g.n_heads) * g.head_dim;
            std::vector<double> kq, vq;
            for (size_t i = 0; i < n_q; ++i) {
              decoded(pos[i], kq, vq);
              std::vector<double> qi(qd.begin() + i * qsz, qd.begin() + (i + 1) * qsz);
              auto r = ref::attention(qi, {pos[i]}, kq, vq, g.n_heads, g.n_kv_heads, g.head_dim, scale);
              ref.insert(ref.end(), r.begin(), r.end());
            }
          } else {
            ref = ref::attention(qd, pos, kd, vd, g.n_heads, g.n_kv_heads, g.head_dim, scale);
          }
          const double err = worst_rel(out, ref, g.head_dim);
          EXPECT_LT(err, 1e-5) << name << " hd=" << g.head_dim << " H=" << g.n_heads << " G=" << g.n_kv_heads
                               << " n_q=" << n_q << " scalar=" << scalar;
          // Error against exact attention over the original K/V: reported, not asserted.
          if (!scalar && n_q == 1 && g.head_dim >= 128) {
            std::vector<double> ko(f.k.begin(), f.k.end()), vo(f.v.begin(), f.v.end());
            auto exact = ref::attention(qd, pos, ko, vo, g.n_heads, g.n_kv_heads, g.head_dim, scale);
            std::printf("[error vs exact] %-14s hd=%-3d T=%-4zu rel L2 %.3e\n", name, g.head_dim, T,
                        worst_rel(out, exact, g.head_dim));
          }
        }
      }
    }
  }
  attn::set_force_scalar(false);
}

// Must show 2: TQ3 at head_dim 256 is 98 bytes per vector, and the slot's resident
// bytes are exactly what that predicts at the documented granularity: blocks of 256
// tokens, each section padded to 64 bytes, 64 bytes of slack per block, plus the
// rotation sign tables (padded_dim floats per KV head and side).
TEST(KV, ResidentBytesMatchPrediction) {
  std::mt19937_64 rng(test::fresh_seed());
  const KVGeometry g{16, 4, 256};
  auto tq3 = make_kv_slot(CachePolicy::parse("tq3+w0"), g);
  auto fp16 = make_kv_slot(CachePolicy::parse("fp16"), g);
  auto* tqs = dynamic_cast<TurboQuantKV*>(tq3.get());
  ASSERT_NE(tqs, nullptr);
  EXPECT_EQ(tqs->k_bytes_per_vector(), 98u);
  EXPECT_EQ(tqs->v_bytes_per_vector(), 98u);
  EXPECT_EQ(tq3->bytes_per_token(), 4u * 2 * 98);
  const size_t T = 1000 + rng() % 3000;
  const size_t row = 4 * 256;
  auto k = test::gaussian(T * row, rng), v = test::gaussian(T * row, rng);
  tq3->append(k, v, T);
  fp16->append(k, v, T);
  auto round64 = [](size_t b) { return (b + 63) / 64 * 64; };
  const size_t blocks = (T + 255) / 256;
  // Per block: per head, K codes (256×96), K norms (256×2), V codes, V norms; + 64 slack.
  const size_t tq_block = 4 * (2 * round64(256 * 96) + 2 * round64(256 * 2)) + 64;
  const size_t signs = 2 * 4 * 256 * sizeof(float);
  EXPECT_EQ(tq3->resident_bytes(), blocks * tq_block + signs);
  EXPECT_EQ(fp16->resident_bytes(), blocks * (8 * round64(256 * 512) + 64));
  const double ratio = static_cast<double>(fp16->resident_bytes()) / tq3->resident_bytes();
  std::printf("[memory] T=%zu fp16 %zu B, tq3 %zu B, ratio %.3f\n", T, fp16->resident_bytes(),
              tq3->resident_bytes(), ratio);
  EXPECT_GT(ratio, 5.0);
  tq3->truncate(100);
  EXPECT_EQ(tq3->resident_bytes(), tq_block + signs);
  // The default tq3 adds an fp16 ring for its 128-token window: after a decode step it holds
  // 128 rows × 4 heads × (256 + 256) values × 2 bytes (+ 64 bytes of alignment slack).
  auto tq3w = make_kv_slot(CachePolicy::parse("tq3"), g);
  tq3w->append(k, v, T);
  std::vector<float> k1(row), v1(row);
  tq3w->append(k1, v1, 1);
  EXPECT_EQ(tq3w->resident_bytes(), (T + 1 + 255) / 256 * tq_block + signs + 128 * 4 * 512 * 2 + 64);
}

TEST(KV, TruncateThenAppendEqualsFresh) {
  std::mt19937_64 rng(test::fresh_seed());
  const KVGeometry g{8, 2, 128};
  for (const char* name : {"fp16", "tq3", "k8v3+w32"}) {
    const auto p = CachePolicy::parse(name);
    const size_t row = 2 * 128;
    auto a = test::gaussian(300 * row, rng), b = test::gaussian(50 * row, rng), c = test::gaussian(80 * row, rng);
    auto s1 = make_kv_slot(p, g), s2 = make_kv_slot(p, g);
    s1->append(a, a, 300);
    s1->append(b, b, 50);
    s1->truncate(300);
    EXPECT_EQ(s1->size(), 300u);
    s1->append(c, c, 80);
    s2->append(a, a, 300);
    s2->append(c, c, 80);
    std::vector<float> k1(128), v1(128), k2(128), v2(128);
    // With a window, tokens quantized before the truncation stay quantized; compare
    // only where both took the same path (no window, or tokens after the window).
    for (size_t t = 0; t < size_t{380}; ++t)
      for (int h = 0; h < 2; ++h) {
        s1->decode(t, h, k1.data(), v1.data());
        s2->decode(t, h, k2.data(), v2.data());
        if (p.window == 0 || t + p.window >= 380) {
          EXPECT_EQ(k1, k2) << name << " t=" << t;
          EXPECT_EQ(v1, v2) << name << " t=" << t;
        }
      }
  }
}

TEST(KV, SaveLoadRoundTripAndCorruption) {
  std::mt19937_64 rng(test::fresh_seed());
  const KVGeometry g{8, 2, 128};
  ThreadPool pool(2);
  for (const char* name : {"fp16", "bf16", "tq3", "k16v3", "tq4+w40"}) {
    const auto p = CachePolicy::parse(name);
    auto f = fill(p, g, 333, rng);
    std::stringstream ss;
    f.slot->save(ss);
    const std::string bytes = ss.str();
    std::istringstream in(bytes);
    auto back = KVSlot::load(in);
    EXPECT_EQ(back->size(), 333u);
    EXPECT_EQ(back->policy().name(), p.name());
    auto q = test::gaussian(g.n_heads * g.head_dim, rng);
    std::vector<int32_t> pos{332};
    std::vector<float> o1(q.size()), o2(q.size());
    f.slot->attend(q, pos, o1, 0, pool);
    back->attend(q, pos, o2, 0, pool);
    // Same bytes; a loaded window ring may be sized differently, which changes only the
    // order of float sums (≤ a few ulps of the output's scale).
    double scale = 0;
    for (float x : o1) scale = std::max(scale, static_cast<double>(std::fabs(x)));
    for (size_t i = 0; i < o1.size(); ++i) EXPECT_NEAR(o1[i], o2[i], 1e-6 * scale) << name;
    std::vector<float> k1(g.head_dim), v1(g.head_dim), k2(g.head_dim), v2(g.head_dim);
    for (size_t t = 0; t < 333; t += 37) {
      f.slot->decode(t, 1, k1.data(), v1.data());
      back->decode(t, 1, k2.data(), v2.data());
      EXPECT_EQ(k1, k2) << name << " t=" << t;
      EXPECT_EQ(v1, v2) << name << " t=" << t;
    }
    // A flipped byte, a truncated file and a bad magic are each a clear error.
    std::string bad = bytes;
    bad[bad.size() / 2] ^= 0x40;
    std::istringstream b1(bad);
    EXPECT_THROW(KVSlot::load(b1), Error);
    std::istringstream b2(bytes.substr(0, bytes.size() - 17));
    EXPECT_THROW(KVSlot::load(b2), Error);
    std::istringstream b3("XXXX" + bytes.substr(4));
    try {
      KVSlot::load(b3, "test.kv");
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("test.kv"), std::string::npos);
    }
  }
}

TEST(KV, MismatchedShapesAreClearErrors) {
  const KVGeometry g{8, 2, 64};
  ThreadPool pool(1);
  for (const char* name : {"fp16", "tq3"}) {
    auto s = make_kv_slot(CachePolicy::parse(name), g);
    std::vector<float> k(2 * 64 * 3), v(2 * 64 * 2);
    EXPECT_THROW(s->append(k, k, 2), Error);  // 3 tokens' worth for 2
    EXPECT_THROW(s->append(k, v, 3), Error);  // v too short
    s->append(v, v, 2);
    std::vector<float> q(8 * 64), out(8 * 64), small(10);
    std::vector<int32_t> pos{1}, neg{-1};
    EXPECT_THROW(s->attend(small, pos, out, 0, pool), Error);
    EXPECT_THROW(s->attend(q, pos, small, 0, pool), Error);
    EXPECT_THROW(s->attend(q, neg, out, 0, pool), Error);
    try {
      s->append(k, k, 2);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace tq
