// CPU ops the models call. Each has a plain loop version; hot ones get SIMD.
#pragma once
#include <cstdint>

#include "io/checkpoint.h"

namespace tq {
class ThreadPool;
}

namespace tq::cpu {

// Up to this many tokens, matmul computes each token's row exactly as it would alone
// (batched decode relies on it); more tokens (prefill) share 4×4 blocked dot products.
constexpr int kPerTokenMaxRows = 8;
// y[n][w.rows] = x[n][w.cols] · Wᵀ (dense F32/F16/BF16 or MLX affine quantized).
void matmul(const Weight& w, const float* x, int n, float* y, ThreadPool& pool);
// Reference: dequantize each row, accumulate in double.
void matmul_ref(const Weight& w, const float* x, int n, float* y);

// out[i] = x[i] / rms(x) · w[i] over rows of `dim`; w may be null (no scale).
void rmsnorm(const float* x, const float* w, int rows, int dim, float eps, float* out);
// Rotate-half RoPE on the first rot_dims of each head: pairs (d, d + rot_dims/2).
// x: [n_tok][n_heads][head_dim]; pos[n_tok] absolute positions.
void rope(float* x, int n_tok, int n_heads, int head_dim, int rot_dims, const int32_t* pos, double theta);
inline float silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
inline float sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }

}  // namespace tq::cpu
