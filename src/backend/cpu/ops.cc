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

// Row r of a 4-bit affine weight dotted with x, using per-group sums of x:
// Σ_j (s·q_j + β)·x_j = s·Σ q_j x_j + β·Σ x_j.
float dot_q4(const Weight& w, int64_t r, const float* x, const float* xsum) {
  const int64_t ng = w.cols / w.group;
  const uint8_t* row = w.data + static_cast<size_t>(r) * (w.cols / 2);
  const size_t ss = dtype_size(w.sdtype);
  float total = 0;
  for (int64_t g = 0; g < ng; ++g) {
    const float s = to_float(w.sdtype, w.scales + (r * ng + g) * ss);
    const float b = to_float(w.sdtype, w.biases + (r * ng + g) * ss);
    const uint8_t* p = row + g * w.group / 2;
    const float* xg = x + g * w.group;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    __m512 acc = _mm512_setzero_ps();
    for (int j = 0; j < w.group; j += 16) {
      // 16 codes = 8 bytes: low nibble is the even element.
      uint64_t v;
      std::memcpy(&v, p + j / 2, 8);
      __m128i bytes = _mm_cvtsi64_si128(static_cast<long long>(v));
      __m128i lo = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
      __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
      __m128i inter = _mm_unpacklo_epi8(lo, hi);
      __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(inter));
      acc = _mm512_fmadd_ps(q, _mm512_loadu_ps(xg + j), acc);
    }
    total += s * _mm512_reduce_add_ps(acc) + b * xsum[g];
#else
    float acc = 0;
    for (int j = 0; j < w.group; ++j) acc += static_cast<float>((p[j / 2] >> (4 * (j & 1))) & 15) * xg[j];
    total += s * acc + b * xsum[g];
#endif
  }
  return total;
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
  const bool q4 = w.quantized() && w.bits == 4 && w.group % 16 == 0;
  std::vector<float> xsum;
  if (q4) {
    const int64_t ng = cols / w.group;
    xsum.resize(static_cast<size_t>(n) * ng);
    for (int i = 0; i < n; ++i)
      for (int64_t g = 0; g < ng; ++g) {
        float s = 0;
        for (int j = 0; j < w.group; ++j) s += x[i * cols + g * w.group + j];
        xsum[i * ng + g] = s;
      }
  }
  pool.parallel_for(n_blocks, [&](size_t b, int) {
    thread_local std::vector<float> buf;
    const int64_t r0 = static_cast<int64_t>(b) * block, r1 = std::min(rows, r0 + block);
    for (int64_t r = r0; r < r1; ++r) {
      if (q4) {
        for (int i = 0; i < n; ++i)
          y[i * rows + r] = dot_q4(w, r, x + i * cols, xsum.data() + i * (cols / w.group));
        continue;
      }
      const float* row;
      if (!w.quantized() && w.dtype == DType::f32 && reinterpret_cast<uintptr_t>(w.data) % 4 == 0) {
        row = reinterpret_cast<const float*>(w.data) + r * cols;
      } else {
        buf.resize(cols);
        w.dequantize_row(r, buf.data());
        row = buf.data();
      }
      for (int i = 0; i < n; ++i) y[i * rows + r] = dot(row, x + i * cols, cols);
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
