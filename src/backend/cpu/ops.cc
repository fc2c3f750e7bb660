#include "backend/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/f16.h"
#include "core/thread_pool.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace tq::cpu {

namespace {
float dot(const float* a, const float* b, int64_t n) {
#if defined(__AVX512F__)
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
#else
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
#endif
}

// out[t·ld + k] = ⟨rows[k], x_t⟩ for 4 rows and 4 consecutive tokens (x_t = x + t·n).
void dot4x4(const float* const* rows, const float* x, int64_t n, float* out, int64_t ld) {
#if defined(__AVX512F__)
  __m512 acc[4][4];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 xv[4], rv[4];
    for (int t = 0; t < 4; ++t) xv[t] = _mm512_loadu_ps(x + t * n + j);
    for (int k = 0; k < 4; ++k) rv[k] = _mm512_loadu_ps(rows[k] + j);
    for (int t = 0; t < 4; ++t)
      for (int k = 0; k < 4; ++k) acc[t][k] = _mm512_fmadd_ps(rv[k], xv[t], acc[t][k]);
  }
  for (int t = 0; t < 4; ++t)
    for (int k = 0; k < 4; ++k) {
      float sum = _mm512_reduce_add_ps(acc[t][k]);
      for (int64_t q = j; q < n; ++q) sum += rows[k][q] * x[t * n + q];
      out[t * ld + k] = sum;
    }
#else
  for (int t = 0; t < 4; ++t)
    for (int k = 0; k < 4; ++k) out[t * ld + k] = dot(rows[k], x + t * n, n);
#endif
}

// R rows (r0 .. r0+R-1) of a 4-bit affine weight dotted with x:
//   y_r = Σ_g s_rg·(Σ_j q_rgj x_gj) + β_rg·(Σ_j x_gj).
// xd holds x with each 32-value step reordered as [16 even elements | 16 odd elements],
// matching the low and high nibbles of 16 code bytes. R rows at once give R independent
// FMA chains (the loop is otherwise bound by FMA latency) and share the x loads.
template <int R>
void dot_q4_rows(const Weight& w, int64_t r0, const float* xd, const float* xsum, float* out) {
  const int64_t ng = w.cols / w.group;
  const size_t row_bytes = w.cols / 2, ss = dtype_size(w.sdtype);
  float bias_total[R] = {};
#if defined(__AVX512F__) && defined(__AVX512BW__)
  __m512 total[R];
  for (int i = 0; i < R; ++i) total[i] = _mm512_setzero_ps();
  const __m128i mask = _mm_set1_epi8(0x0F);
  for (int64_t g = 0; g < ng; ++g) {
    const float* xg = xd + g * w.group;
    __m512 acc[R];
    for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
    for (int j = 0; j < w.group; j += 32) {
      const __m512 xe = _mm512_loadu_ps(xg + j), xo = _mm512_loadu_ps(xg + j + 16);
      for (int i = 0; i < R; ++i) {
        const uint8_t* p = w.data + (r0 + i) * row_bytes + (g * w.group + j) / 2;
        _mm_prefetch(reinterpret_cast<const char*>(p + R * row_bytes), _MM_HINT_T0);
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i lo = _mm_and_si128(bytes, mask);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), xe, acc[i]);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), xo, acc[i]);
      }
    }
    for (int i = 0; i < R; ++i) {
      const size_t k = static_cast<size_t>((r0 + i) * ng + g) * ss;
      total[i] = _mm512_fmadd_ps(_mm512_set1_ps(to_float(w.sdtype, w.scales + k)), acc[i], total[i]);
      bias_total[i] += to_float(w.sdtype, w.biases + k) * xsum[g];
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(total[i]) + bias_total[i];
#else
  for (int i = 0; i < R; ++i) {
    const uint8_t* row = w.data + (r0 + i) * row_bytes;
    float t = 0;
    for (int64_t g = 0; g < ng; ++g) {
      const float* xg = xd + g * w.group;
      const uint8_t* p = row + g * w.group / 2;
      float acc = 0;
      for (int j = 0; j < w.group; j += 32)
        for (int b = 0; b < 16; ++b) acc += (p[j / 2 + b] & 15) * xg[j + b] + (p[j / 2 + b] >> 4) * xg[j + 16 + b];
      const size_t k = static_cast<size_t>((r0 + i) * ng + g) * ss;
      t += to_float(w.sdtype, w.scales + k) * acc;
      bias_total[i] += to_float(w.sdtype, w.biases + k) * xsum[g];
    }
    out[i] = t + bias_total[i];
  }
#endif
}
}  // namespace

void matmul_ref(const Weight& w, const float* x, int n, float* y) {
  std::vector<float> row(w.cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    w.dequantize_row(r, row.data());
    for (int i = 0; i < n; ++i) {
      double acc = 0;
      for (int64_t j = 0; j < w.cols; ++j) acc += static_cast<double>(row[j]) * x[i * w.cols + j];
      y[static_cast<int64_t>(i) * w.rows + r] = static_cast<float>(acc);
    }
  }
}

void matmul(const Weight& w, const float* x, int n, float* y, ThreadPool& pool) {
  const int64_t rows = w.rows, cols = w.cols;
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(64, rows / (8 * pool.size()) + 1));
  const size_t n_blocks = static_cast<size_t>((rows + block - 1) / block);
  // Up to 8 tokens (decode, batched decode across sequences): the fused 4-bit kernel, each
  // block of rows read from memory once and reused from cache for the other tokens. More
  // tokens (prefill): each row is dequantized once into floats and dotted with every token.
  const bool q4 = w.quantized() && w.bits == 4 && w.group % 32 == 0 && n <= kPerTokenMaxRows;
  std::vector<float> xsum, xd;
  if (q4) {
    const int64_t ng = cols / w.group;
    xsum.resize(static_cast<size_t>(n) * ng);
    xd.resize(static_cast<size_t>(n) * cols);
    for (int i = 0; i < n; ++i)
      for (int64_t g = 0; g < ng; ++g) {
        const float* src = x + i * cols + g * w.group;
        float* dst = xd.data() + i * cols + g * w.group;
        float s = 0;
        for (int j = 0; j < w.group; ++j) s += src[j];
        xsum[i * ng + g] = s;
        // Within each 32-weight step: the 16 low nibbles are elements j, j+2, ..., the 16
        // high nibbles j+1, j+3, ...
        for (int j = 0; j < w.group; j += 32)
          for (int b = 0; b < 16; ++b) {
            dst[j + b] = src[j + 2 * b];
            dst[j + 16 + b] = src[j + 2 * b + 1];
          }
      }
  }
  pool.parallel_for(n_blocks, [&](size_t b, int) {
    thread_local std::vector<float> buf;
    const int64_t r0 = static_cast<int64_t>(b) * block, r1 = std::min(rows, r0 + block);
    for (int64_t r = r0; r < r1; ++r) {
      if (q4) {
        for (int i = 0; i < n; ++i) {
          float out[4];
          const float* xi = xd.data() + i * cols;
          const float* si = xsum.data() + i * (cols / w.group);
          if (r + 4 <= r1) {
            dot_q4_rows<4>(w, r, xi, si, out);
            for (int k = 0; k < 4; ++k) y[i * rows + r + k] = out[k];
          } else {
            dot_q4_rows<1>(w, r, xi, si, out);
            y[i * rows + r] = out[0];
          }
        }
        if (r + 4 <= r1) r += 3;
        continue;
      }
      // Several tokens: up to 4 rows as floats, then a 4×4 register-blocked kernel.
      const int nr = static_cast<int>(std::min<int64_t>(4, r1 - r));
      const float* rp[4];
      buf.resize(4 * cols);
      for (int k = 0; k < nr; ++k) {
        if (!w.quantized() && w.dtype == DType::f32 && reinterpret_cast<uintptr_t>(w.data) % 4 == 0) {
          rp[k] = reinterpret_cast<const float*>(w.data) + (r + k) * cols;
        } else {
          w.dequantize_row(r + k, buf.data() + k * cols);
          rp[k] = buf.data() + k * cols;
        }
      }
      // The 4×4 kernel for prefill; up to 8 tokens (batched decode) each token alone, so a
      // batched step computes exactly what the token's own step would.
      int i = 0;
      if (nr == 4 && n > kPerTokenMaxRows)
        for (; i + 4 <= n; i += 4) dot4x4(rp, x + i * cols, cols, y + i * rows + r, rows);
      for (; i < n; ++i)
        for (int k = 0; k < nr; ++k) y[i * rows + r + k] = dot(rp[k], x + i * cols, cols);
      r += nr - 1;
    }
  });
}

void rmsnorm(const float* x, const float* w, int rows, int dim, float eps, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * dim;
    float* o = out + static_cast<size_t>(r) * dim;
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
    for (int i = 0; i < dim; ++i) o[i] = xr[i] * inv * (w ? w[i] : 1.0f);
  }
}

void rope(float* x, int n_tok, int n_heads, int head_dim, int rot_dims, const int32_t* pos, double theta) {
  const int half = rot_dims / 2;
  std::vector<double> inv(half);
  for (int d = 0; d < half; ++d) inv[d] = std::pow(theta, -2.0 * d / rot_dims);
  for (int t = 0; t < n_tok; ++t) {
    for (int d = 0; d < half; ++d) {
      const double a = pos[t] * inv[d];
      const float c = static_cast<float>(std::cos(a)), s = static_cast<float>(std::sin(a));
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (static_cast<size_t>(t) * n_heads + h) * head_dim;
        const float x0 = v[d], x1 = v[d + half];
        v[d] = x0 * c - x1 * s;
        v[d + half] = x0 * s + x1 * c;
      }
    }
  }
}

}  // namespace tq::cpu
