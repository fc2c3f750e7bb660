#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "backend/cuda/kernels.cuh"

namespace tq::cuda {

namespace {

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets it.
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float t = 0;
  for (int i = 0; i < nw; ++i) t += red[i];
  return t;
}
__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float siluf_(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float scale_at(const void* p, bool bf16, size_t i) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]) : static_cast<const float*>(p)[i];
}

// ---- matmul: one warp per 4 output rows; lane reads one 32-bit word (8 values) of each
// row per step, so the warp's weight loads are 128-byte coalesced and the 8 x values a
// lane loads serve all 4 rows (x from L1 is the other stream: reuse it) ----
constexpr int kRowsPerWarp = 4;

// acc[r][t] = Σ_j W[row r][j] · x[t][j] over this warp's words (word wi = w0 + 32·k·step):
// 4 rows given by their code/scale/bias rows; the caller reduces across lanes and warps.
template <int NT>
__device__ __forceinline__ void q4_rows(const uint32_t* const (&rc)[kRowsPerWarp], const uint8_t* const (&sr)[kRowsPerWarp],
                                        const uint8_t* const (&br)[kRowsPerWarp], bool sbf16, int group, int cols,
                                        const float* __restrict__ x, int n, int w0, int step,
                                        float (&acc)[kRowsPerWarp][NT]) {
  const int words = cols / 8, wpg = group / 8;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0;
#pragma unroll 4
  for (int wi = w0; wi < words; wi += step) {
    uint32_t u[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) u[r] = __ldg(rc[r] + wi);
    const int gi = wi / wpg;
    float sc[kRowsPerWarp], bi[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) sc[r] = scale_at(sr[r], sbf16, gi), bi[r] = scale_at(br[r], sbf16, gi);
    float xs[NT][8], sx[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t < n) {
        const float4* xp = reinterpret_cast<const float4*>(x + static_cast<size_t>(t) * cols + wi * 8);
        const float4 a = __ldg(xp), b = __ldg(xp + 1);
        xs[t][0] = a.x, xs[t][1] = a.y, xs[t][2] = a.z, xs[t][3] = a.w;
        xs[t][4] = b.x, xs[t][5] = b.y, xs[t][6] = b.z, xs[t][7] = b.w;
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) xs[t][i] = 0;
      }
      sx[t] = ((xs[t][0] + xs[t][1]) + (xs[t][2] + xs[t][3])) + ((xs[t][4] + xs[t][5]) + (xs[t][6] + xs[t][7]));
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float q[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) q[i] = static_cast<float>((u[r] >> (4 * i)) & 15u);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        float d = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) d += xs[t][i] * q[i];
        acc[r][t] += sc[r] * d + bi[r] * sx[t];
      }
    }
  }
}

// Decode (one token): x quantized per 8-value word to int8 (its own scale), laid out so a
// 4-bit word's even and odd nibbles meet their x bytes in two dp4a instructions:
// {x0,x2,x4,x6 | x1,x3,x5,x7 | scale d | Σx (exact)} = 16 bytes per word.
__global__ void quantize_x8_kernel(const float* __restrict__ x, int words, int4* __restrict__ xq) {
  const int wi = blockIdx.x * blockDim.x + threadIdx.x;
  if (wi >= words) return;
  const float4 a = reinterpret_cast<const float4*>(x)[2 * wi], b = reinterpret_cast<const float4*>(x)[2 * wi + 1];
  const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  float mx = 0, sum = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) mx = fmaxf(mx, fabsf(v[i])), sum += v[i];
  const float d = mx / 127.0f, inv = mx > 0 ? 127.0f / mx : 0.0f;
  int q[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) q[i] = __float2int_rn(v[i] * inv) & 0xff;
  int4 o;
  o.x = q[0] | (q[2] << 8) | (q[4] << 16) | (q[6] << 24);
  o.y = q[1] | (q[3] << 8) | (q[5] << 16) | (q[7] << 24);
  o.z = __float_as_int(d);
  o.w = __float_as_int(sum);
  xq[wi] = o;
}

__device__ __forceinline__ void q4_rows_q8(const uint32_t* const (&rc)[kRowsPerWarp], const uint8_t* const (&sr)[kRowsPerWarp],
                                           const uint8_t* const (&br)[kRowsPerWarp], bool sbf16, int group, int cols,
                                           const int4* __restrict__ xq, int w0, int step, float (&acc)[kRowsPerWarp][1]) {
  const int words = cols / 8, wpg = group / 8;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) acc[r][0] = 0;
#pragma unroll 4
  for (int wi = w0; wi < words; wi += step) {
    uint32_t u[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) u[r] = __ldg(rc[r] + wi);
    const int4 xv = __ldg(xq + wi);
    const float d = __int_as_float(xv.z), sx = __int_as_float(xv.w);
    const int gi = wi / wpg;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int lo = static_cast<int>(u[r] & 0x0f0f0f0fu), hi = static_cast<int>((u[r] >> 4) & 0x0f0f0f0fu);
      const int dot = __dp4a(hi, xv.y, __dp4a(lo, xv.x, 0));
      acc[r][0] += scale_at(sr[r], sbf16, gi) * (d * static_cast<float>(dot)) + scale_at(br[r], sbf16, gi) * sx;
    }
  }
}

template <int NT>
__device__ __forceinline__ void warp_reduce_rows(float (&acc)[kRowsPerWarp][NT]) {
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = warp_sum(acc[r][t]);
}

__device__ __forceinline__ void q4_row_ptrs(const DevWeight& w, int row, const uint32_t*& rc, const uint8_t*& sr,
                                            const uint8_t*& br) {
  const int gpr = w.cols / w.group, es = w.sbf16 ? 2 : 4;
  rc = reinterpret_cast<const uint32_t*>(w.codes) + static_cast<size_t>(row) * (w.cols / 8);
  sr = static_cast<const uint8_t*>(w.scales) + static_cast<size_t>(row) * gpr * es;
  br = static_cast<const uint8_t*>(w.biases) + static_cast<size_t>(row) * gpr * es;
}

// Up to 4 weights with the same input (x, cols) in one launch. One block (8 warps, which
// split the row's words) per 4 rows; blocks are dealt to the weights in order. swiglu:
// weights 0 and 1 (gate, up) of equal shape, each block takes 2 rows of both and writes
// y0 = silu(gate·x) ⊙ (up·x).
struct MatvecGroup {
  DevWeight w[4];
  float* y[4];
  int count = 0;
  int block_end[4];  // exclusive prefix of row units (warps) per weight
  bool swiglu = false;
};

constexpr int kMatvecThreads = 128;  // 4 warps, one unit of rows each

template <int NT, bool Q8>
__global__ void __launch_bounds__(kMatvecThreads) q4_group_kernel(MatvecGroup g, const float* __restrict__ x, int n,
                                                                  const int4* __restrict__ xq) {
  // One warp per unit of 4 rows (swiglu: 2 rows of gate and the same 2 of up); lanes take
  // the row's words in turn, 4 iterations unrolled so each lane has 16 weight loads in flight.
  const int lane = threadIdx.x & 31;
  const int unit = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const uint32_t* rc[kRowsPerWarp];
  const uint8_t* sr[kRowsPerWarp];
  const uint8_t* br[kRowsPerWarp];
  float acc[kRowsPerWarp][NT];
  if (g.swiglu) {
    const DevWeight& a = g.w[0];
    const int r0 = unit * 2;
    if (r0 >= a.rows) return;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) q4_row_ptrs(g.w[r / 2], min(r0 + (r & 1), a.rows - 1), rc[r], sr[r], br[r]);
    if constexpr (Q8) q4_rows_q8(rc, sr, br, a.sbf16, a.group, a.cols, xq, lane, kWarp, acc);
    else q4_rows<NT>(rc, sr, br, a.sbf16, a.group, a.cols, x, n, lane, kWarp, acc);
    warp_reduce_rows<NT>(acc);
    if (lane != 0) return;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t >= n || r0 + r >= a.rows) continue;
        const float gv = acc[r][t];
        g.y[0][static_cast<size_t>(t) * a.rows + r0 + r] = gv / (1.0f + expf(-gv)) * acc[2 + r][t];
      }
    return;
  }
  if (unit >= g.block_end[g.count - 1]) return;
  int j = 0;
  while (j < g.count - 1 && unit >= g.block_end[j]) ++j;
  const DevWeight& w = g.w[j];
  const int r0 = (unit - (j ? g.block_end[j - 1] : 0)) * kRowsPerWarp;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) q4_row_ptrs(w, min(r0 + r, w.rows - 1), rc[r], sr[r], br[r]);
  if constexpr (Q8) q4_rows_q8(rc, sr, br, w.sbf16, w.group, w.cols, xq, lane, kWarp, acc);
  else q4_rows<NT>(rc, sr, br, w.sbf16, w.group, w.cols, x, n, lane, kWarp, acc);
  warp_reduce_rows<NT>(acc);
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t)
      if (t < n && r0 + r < w.rows) g.y[j][static_cast<size_t>(t) * w.rows + r0 + r] = acc[r][t];
}

template <int NT>
__global__ void f32_matvec_kernel(DevWeight w, const float* __restrict__ x, int n, float* __restrict__ y) {
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (row >= w.rows) return;
  const float* wr = w.f32 + static_cast<size_t>(row) * w.cols;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0;
  for (int c = lane; c < w.cols; c += kWarp) {
    const float a = __ldg(wr + c);
#pragma unroll
    for (int t = 0; t < NT; ++t)
      if (t < n) acc[t] += a * __ldg(x + static_cast<size_t>(t) * w.cols + c);
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    if (t >= n) break;
    const float v = warp_sum(acc[t]);
    if (lane == 0) y[static_cast<size_t>(t) * w.rows + row] = v;
  }
}

__global__ void embed_kernel(DevWeight w, const int32_t* tokens, float* x) {
  const int t = blockIdx.x;
  const int64_t r = tokens[t];
  float* out = x + static_cast<size_t>(t) * w.cols;
  for (int j = threadIdx.x; j < w.cols; j += blockDim.x) {
    if (w.q4) {
      const uint8_t byte = w.codes[static_cast<size_t>(r) * (w.cols / 2) + j / 2];
      const int q = (j & 1) ? byte >> 4 : byte & 15;
      const size_t gi = static_cast<size_t>(r) * (w.cols / w.group) + j / w.group;
      out[j] = scale_at(w.scales, w.sbf16, gi) * q + scale_at(w.biases, w.sbf16, gi);
    } else {
      out[j] = w.f32[static_cast<size_t>(r) * w.cols + j];
    }
  }
}

__global__ void rmsnorm_kernel(float* __restrict__ x, const float* __restrict__ add, const float* __restrict__ w,
                               int dim, float eps, float* __restrict__ out) {
  __shared__ float red[32];
  float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  const float* ar = add ? add + static_cast<size_t>(blockIdx.x) * dim : nullptr;
  float ss = 0;
#pragma unroll 4
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = xr[i];
    if (ar) {
      v += ar[i];
      xr[i] = v;
    }
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / dim + eps);
  float* o = out + static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = xr[i] * inv * (w ? w[i] : 1.0f);
}

// One block per (token, head) of q (heads < n_heads), k (next n_kv_heads) and v (last n_kv_heads).
__global__ void attn_prep_kernel(AttnPrep a, const float* qg, float* q, float* gate, float* k, float* v,
                                 const int32_t* pos) {
  extern __shared__ float sh[];  // head_dim + 32
  float* vec = sh;
  float* red = sh + a.head_dim;
  const int t = blockIdx.x, h = blockIdx.y, hd = a.head_dim;
  const bool is_q = h < a.n_heads, is_k = !is_q && h < a.n_heads + a.n_kv_heads;
  if (!is_q && !is_k) {  // v: bias only
    const int g = h - a.n_heads - a.n_kv_heads;
    float* vr = v + (static_cast<size_t>(t) * a.n_kv_heads + g) * hd;
    if (a.v_bias)
      for (int i = threadIdx.x; i < hd; i += blockDim.x) vr[i] += a.v_bias[g * hd + i];
    return;
  }
  const int g = is_q ? h : h - a.n_heads;
  float* dst = is_q ? q + (static_cast<size_t>(t) * a.n_heads + g) * hd : k + (static_cast<size_t>(t) * a.n_kv_heads + g) * hd;
  const float* src = dst;
  if (is_q) src = a.gate ? qg + (static_cast<size_t>(t) * a.n_heads + g) * 2 * hd : qg + (static_cast<size_t>(t) * a.n_heads + g) * hd;
  const float* bias = is_q ? a.q_bias : a.k_bias;
  const float* nw = is_q ? a.q_norm : a.k_norm;
  float ss = 0;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float x = src[i];
    if (bias) x += bias[g * hd + i];
    vec[i] = x;
    ss += x * x;
    if (is_q && a.gate) gate[(static_cast<size_t>(t) * a.n_heads + g) * hd + i] = src[hd + i];
  }
  ss = block_sum(ss, red);  // syncs: vec is complete
  const float inv = nw ? rsqrtf(ss / hd + a.eps) : 1.0f;
  const int half = a.rot_dims / 2;
  const double p = pos[t];
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float x = vec[i] * inv * (nw ? nw[i] : 1.0f);
    if (i < a.rot_dims) {
      const int d = i < half ? i : i - half;
      const double ang = p * pow(a.theta, -2.0 * d / a.rot_dims);
      const float c = static_cast<float>(cos(ang)), s = static_cast<float>(sin(ang));
      const int o = i < half ? i + half : i - half;
      const float y = vec[o] * inv * (nw ? nw[o] : 1.0f);
      x = i < half ? x * c - y * s : y * s + x * c;
    }
    dst[i] = x;
  }
}

// ---- KV append: one block per (token, kv head, side) ----
__device__ void fwht_shared(float* y, int D) {
  for (int len = 1; len < D; len <<= 1) {
    __syncthreads();
    for (int i = threadIdx.x; i < D / 2; i += blockDim.x) {
      const int blk = i / len, off = i % len, a = blk * 2 * len + off, b = a + len;
      const float u = y[a], v = y[b];
      y[a] = u + v;
      y[b] = u - v;
    }
  }
  __syncthreads();
}

__global__ void kv_append_kernel(DevKVLayer L, const float* k, const float* v, size_t first) {
  extern __shared__ float sh[];  // D floats + D bytes idx + 32 red
  const int t = blockIdx.x, g = blockIdx.y, side = blockIdx.z;
  const DevKVSide& S = side ? L.v : L.k;
  const float* x = (side ? v : k) + (static_cast<size_t>(t) * L.n_kv_heads + g) * L.head_dim;
  const size_t pos = first + t;
  const int hd = L.head_dim;
  if (S.bits == 16) {
    __half* row = reinterpret_cast<__half*>(S.rows + (static_cast<size_t>(g) * L.cap + pos) * S.row_bytes);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) row[i] = __float2half_rn(x[i]);
    return;
  }
  if (S.bits == 32) {
    float* row = reinterpret_cast<float*>(S.rows + (static_cast<size_t>(g) * L.cap + pos) * S.row_bytes);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) row[i] = x[i];
    return;
  }
  const int D = S.dim;
  float* y = sh;
  uint8_t* idx = reinterpret_cast<uint8_t*>(sh + D);
  float* red = sh + D + (D + 3) / 4;
  const float* sg = S.signs + static_cast<size_t>(g) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) y[i] = i < hd ? x[i] * sg[i] : 0.0f;
  fwht_shared(y, D);
  const float rs = rsqrtf(static_cast<float>(D));
  float ss = 0;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float u = y[i] * rs;
    if (L.window > 0) {  // codes from the fp16 values the window keeps
      const __half h = __float2half_rn(u);
      S.ring[(static_cast<size_t>(g) * L.ring_rows + pos % L.ring_rows) * D + i] = h;
      u = __half2float(h);
    }
    y[i] = u;
    ss += u * u;
  }
  ss = block_sum(ss, red);
  const float norm = sqrtf(ss);
  const float to_u = norm > 0 ? sqrtf(static_cast<float>(D)) / norm : 0.0f;
  const int levels = 1 << S.bits;
  float c2 = 0;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float u = y[i] * to_u;
    int lo = 0, hi = levels - 1;  // number of boundaries strictly below u
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (S.boundaries[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    idx[i] = static_cast<uint8_t>(lo);
    const float c = S.centroids[lo];
    c2 += c * c;
  }
  c2 = block_sum(c2, red);  // syncs: idx complete
  uint8_t* row = S.rows + (static_cast<size_t>(g) * L.cap + pos) * S.row_bytes;
  const int code_bytes = (D * S.bits + 7) / 8;
  for (int byte = threadIdx.x; byte < code_bytes; byte += blockDim.x) {
    unsigned val = 0;
    for (int b = 0; b < 8; ++b) {
      const int bit = byte * 8 + b, d = bit / S.bits;
      if (d < D) val |= ((idx[d] >> (bit % S.bits)) & 1u) << b;
    }
    row[byte] = static_cast<uint8_t>(val);
  }
  if (threadIdx.x == 0) {
    float stored = norm;
    if (S.norm_correction && c2 > 0) stored = norm / sqrtf(c2 / D);
    stored = fminf(stored, 65504.0f);
    const __half h = __float2half_rn(stored);
    S.norms[static_cast<size_t>(g) * L.cap + pos] = *reinterpret_cast<const uint16_t*>(&h);
  }
}

// ---- attention: grid (kv head, query, split), 4 warps; lanes own dims lane + 32·r ----
constexpr int kMaxG = 8;     // query heads per KV head
constexpr int kMaxR = 8;     // dims per lane: D ≤ 256
constexpr int kAttnWarps = 4;

__device__ __forceinline__ float code_value(const uint8_t* row, int j, int bits) {
  const int o = j * bits;
  const unsigned two = row[o >> 3] | (static_cast<unsigned>(row[(o >> 3) + 1]) << 8);
  return static_cast<float>((two >> (o & 7)) & ((1u << bits) - 1));
}

// The token's value at dim j as attention sees it: codes → centroid · n/√D (domain
// rotated), fp16 rows → value; ring rows (window) → fp16 rotated values.
struct SideView {
  const uint8_t* row;
  float scale;
  bool codes, f32;
  int bits;
  const float* centroids;
};

__device__ __forceinline__ SideView side_view(const DevKVLayer& L, const DevKVSide& S, int g, size_t t,
                                              bool from_ring) {
  SideView v;
  v.bits = S.bits;
  v.centroids = S.centroids;
  v.f32 = S.bits == 32;
  if (S.bits >= 16) {
    v.row = S.rows + (static_cast<size_t>(g) * L.cap + t) * S.row_bytes;
    v.codes = false;
    v.scale = 1;
  } else if (from_ring) {
    v.row = reinterpret_cast<const uint8_t*>(S.ring + (static_cast<size_t>(g) * L.ring_rows + t % L.ring_rows) * S.dim);
    v.codes = false;
    v.scale = 1;
  } else {
    v.row = S.rows + (static_cast<size_t>(g) * L.cap + t) * S.row_bytes;
    v.codes = true;
    const uint16_t n = S.norms[static_cast<size_t>(g) * L.cap + t];
    v.scale = __half2float(*reinterpret_cast<const __half*>(&n)) * rsqrtf(static_cast<float>(S.dim));
  }
  return v;
}

__device__ __forceinline__ float side_value(const SideView& v, int j) {
  if (v.codes) return v.centroids[static_cast<int>(code_value(v.row, j, v.bits))] * v.scale;
  if (v.f32) return reinterpret_cast<const float*>(v.row)[j];
  return __half2float(reinterpret_cast<const __half*>(v.row)[j]);
}

// Partial results: m, l per (query, head, split), acc [query][head][split][Dv].
__global__ void attention_kernel(DevKVLayer L, const float* q, const int32_t* pos, int n_splits, size_t n_tokens,
                                 float scale, float* part_ml, float* part_acc) {
  const int g = blockIdx.x, qi = blockIdx.y, split = blockIdx.z;
  const int G = L.n_heads / L.n_kv_heads, hd = L.head_dim;
  const int Dk = L.k.dim, Dv = L.v.dim;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __shared__ float qs[kMaxG][256];
  __shared__ float wm[kAttnWarps][kMaxG], wl[kAttnWarps][kMaxG];
  __shared__ float wacc[kAttnWarps][kMaxG][256];
  // Queries in K's domain: rotated (Π_K·q) when K holds codes.
  for (int h = 0; h < G; ++h) {
    const float* qh = q + (static_cast<size_t>(qi) * L.n_heads + g * G + h) * hd;
    for (int i = threadIdx.x; i < Dk; i += blockDim.x)
      qs[h][i] = i < hd ? qh[i] * (L.k.bits >= 16 ? 1.0f : L.k.signs[static_cast<size_t>(g) * Dk + i]) : 0.0f;
  }
  if (L.k.bits < 16) {
    const float rs = rsqrtf(static_cast<float>(Dk));
    for (int h = 0; h < G; ++h) {
      fwht_shared(qs[h], Dk);
      for (int i = threadIdx.x; i < Dk; i += blockDim.x) qs[h][i] *= rs;
    }
  }
  __syncthreads();
  const size_t p = pos[qi];
  const size_t end_all = min(static_cast<size_t>(p) + 1, n_tokens);
  const size_t per = (end_all + n_splits - 1) / n_splits;
  const size_t t0 = min(static_cast<size_t>(split) * per, end_all), t1 = min(t0 + per, end_all);
  // Window: tokens from `bound` on are read as fp16 ring rows (codes sides).
  size_t bound = n_tokens;
  if (L.window > 0) bound = max(L.ring_lo, p + 1 > static_cast<size_t>(L.window) ? p + 1 - L.window : size_t(0));
  float m[kMaxG], l[kMaxG], acc[kMaxG][kMaxR];
#pragma unroll
  for (int h = 0; h < kMaxG; ++h) {
    m[h] = -INFINITY;
    l[h] = 0;
#pragma unroll
    for (int r = 0; r < kMaxR; ++r) acc[h][r] = 0;
  }
  for (size_t t = t0 + warp; t < t1; t += kAttnWarps) {
    const bool ring = t >= bound;
    const SideView kv = side_view(L, L.k, g, t, ring);
    const SideView vv = side_view(L, L.v, g, t, ring);
    float kx[kMaxR];
#pragma unroll
    for (int r = 0; r < kMaxR; ++r) {
      const int j = lane + 32 * r;
      kx[r] = j < Dk ? side_value(kv, j) : 0.0f;
    }
    float vx[kMaxR];
#pragma unroll
    for (int r = 0; r < kMaxR; ++r) {
      const int j = lane + 32 * r;
      vx[r] = j < Dv ? side_value(vv, j) : 0.0f;
    }
#pragma unroll
    for (int h = 0; h < kMaxG; ++h) {
      if (h >= G) break;
      float d = 0;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) {
        const int j = lane + 32 * r;
        if (j < Dk) d += qs[h][j] * kx[r];
      }
      const float s = warp_sum(d) * scale;
      const float mn = fmaxf(m[h], s), corr = expf(m[h] - mn), w = expf(s - mn);
      l[h] = l[h] * corr + w;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) acc[h][r] = acc[h][r] * corr + w * vx[r];
      m[h] = mn;
    }
  }
  // Merge the warps.
  for (int h = 0; h < G; ++h) {
    if (lane == 0) wm[warp][h] = m[h], wl[warp][h] = l[h];
#pragma unroll
    for (int r = 0; r < kMaxR; ++r) {
      const int j = lane + 32 * r;
      if (j < Dv) wacc[warp][h][j] = acc[h][r];
    }
  }
  __syncthreads();
  for (int h = 0; h < G; ++h) {
    float M = -INFINITY;
    for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, wm[w][h]);
    const size_t base = (static_cast<size_t>(qi) * L.n_heads + g * G + h) * n_splits + split;
    float Lsum = 0;
    for (int w = 0; w < kAttnWarps; ++w) Lsum += wm[w][h] == -INFINITY ? 0.0f : wl[w][h] * expf(wm[w][h] - M);
    for (int j = threadIdx.x; j < Dv; j += blockDim.x) {
      float a = 0;
      for (int w = 0; w < kAttnWarps; ++w)
        if (wm[w][h] != -INFINITY) a += wacc[w][h][j] * expf(wm[w][h] - M);
      part_acc[base * Dv + j] = a;
    }
    if (threadIdx.x == 0) part_ml[2 * base] = M, part_ml[2 * base + 1] = Lsum;
  }
}

// Merges splits, inverse rotation of V codes, head_dim entries, × σ(gate).
__global__ void attention_merge_kernel(DevKVLayer L, int n_splits, const float* part_ml, const float* part_acc,
                                       const float* gate, float* att) {
  extern __shared__ float y[];  // Dv
  const int qi = blockIdx.x, h = blockIdx.y, Dv = L.v.dim, hd = L.head_dim;
  const int g = h / (L.n_heads / L.n_kv_heads);
  const size_t base = (static_cast<size_t>(qi) * L.n_heads + h) * n_splits;
  float M = -INFINITY;
  for (int s = 0; s < n_splits; ++s) M = fmaxf(M, part_ml[2 * (base + s)]);
  float Ls = 0;
  for (int s = 0; s < n_splits; ++s)
    if (part_ml[2 * (base + s)] != -INFINITY) Ls += part_ml[2 * (base + s) + 1] * expf(part_ml[2 * (base + s)] - M);
  for (int j = threadIdx.x; j < Dv; j += blockDim.x) {
    float a = 0;
    for (int s = 0; s < n_splits; ++s)
      if (part_ml[2 * (base + s)] != -INFINITY) a += part_acc[(base + s) * Dv + j] * expf(part_ml[2 * (base + s)] - M);
    y[j] = a / Ls;
  }
  if (L.v.bits < 16) {
    fwht_shared(y, Dv);
    const float rs = rsqrtf(static_cast<float>(Dv));
    for (int j = threadIdx.x; j < Dv; j += blockDim.x) y[j] *= rs * L.v.signs[static_cast<size_t>(g) * Dv + j];
  }
  __syncthreads();
  float* out = att + (static_cast<size_t>(qi) * L.n_heads + h) * hd;
  for (int j = threadIdx.x; j < hd; j += blockDim.x) {
    float o = y[j];
    if (gate) o *= sigmoidf_(gate[(static_cast<size_t>(qi) * L.n_heads + h) * hd + j]);
    out[j] = o;
  }
}

// ---- Gated DeltaNet ----
__global__ void delta_conv_kernel(DeltaDims d, float* qkv, float* state, const float* w) {
  const int C = 2 * d.hk * d.dk + d.hv * d.dv, K = d.conv_k;
  const int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= C) return;
  float win[8];  // K ≤ 8: the last K−1 inputs, then the new one
  for (int k = 0; k < K - 1; ++k) win[k] = state[static_cast<size_t>(k) * C + ch];
  for (int t = 0; t < d.n; ++t) {
    win[K - 1] = qkv[static_cast<size_t>(t) * C + ch];
    float acc = 0;
    for (int k = 0; k < K; ++k) acc += w[static_cast<size_t>(ch) * K + k] * win[k];
    qkv[static_cast<size_t>(t) * C + ch] = siluf_(acc);
    for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
  }
  for (int k = 0; k < K - 1; ++k) state[static_cast<size_t>(k) * C + ch] = win[k];
}

// grid (token, hk + hv): l2-normalized q (· 1/√dk), k per key head; v, β, g per value head.
__global__ void delta_prep_kernel(DeltaDims d, const float* qkv, const float* b, const float* a, const float* a_log,
                                  const float* dt_bias, float* q, float* k, float* v, float* beta, float* g) {
  __shared__ float red[32];
  const int t = blockIdx.x, h = blockIdx.y;
  const int kd = d.hk * d.dk, vd = d.hv * d.dv, C = 2 * kd + vd;
  const float* r = qkv + static_cast<size_t>(t) * C;
  if (h < d.hk) {
    for (int which = 0; which < 2; ++which) {
      const float* src = r + which * kd + h * d.dk;
      float ss = 0;
      for (int i = threadIdx.x; i < d.dk; i += blockDim.x) ss += src[i] * src[i];
      ss = block_sum(ss, red);
      const float inv = rsqrtf(ss + 1e-6f) * (which == 0 ? rsqrtf(static_cast<float>(d.dk)) : 1.0f);
      float* dst = (which == 0 ? q : k) + (static_cast<size_t>(t) * d.hk + h) * d.dk;
      for (int i = threadIdx.x; i < d.dk; i += blockDim.x) dst[i] = src[i] * inv;
    }
    return;
  }
  const int hv = h - d.hk;
  for (int i = threadIdx.x; i < d.dv; i += blockDim.x)
    v[(static_cast<size_t>(t) * d.hv + hv) * d.dv + i] = r[2 * kd + hv * d.dv + i];
  if (threadIdx.x == 0) {
    const size_t i = static_cast<size_t>(t) * d.hv + hv;
    beta[i] = sigmoidf_(b[i]);
    const float sp = a[i] + dt_bias[hv];
    const float softplus = sp > 20 ? sp : log1pf(expf(sp));
    g[i] = expf(-expf(a_log[hv]) * softplus);
  }
}

// grid (hv, dv/32), 32 threads: thread i owns row i of S[hv] (DK floats in registers).
template <int DK>
__global__ void delta_rule_kernel(DeltaDims d, const float* q, const float* k, const float* v, const float* beta,
                                  const float* g, float* state, float* y) {
  __shared__ float ks[DK], qs[DK];
  const int hv = blockIdx.x, i = blockIdx.y * 32 + threadIdx.x;
  const int rep = d.hv / d.hk, hk = hv / rep;
  float s[DK];
  float* S = state + (static_cast<size_t>(hv) * d.dv + i) * DK;
  const bool live = i < d.dv;
#pragma unroll
  for (int j = 0; j < DK; ++j) s[j] = live ? S[j] : 0.0f;
  for (int t = 0; t < d.n; ++t) {
    __syncthreads();
    for (int j = threadIdx.x; j < DK; j += 32) {
      ks[j] = k[(static_cast<size_t>(t) * d.hk + hk) * DK + j];
      qs[j] = q[(static_cast<size_t>(t) * d.hk + hk) * DK + j];
    }
    __syncthreads();
    const float gt = g[static_cast<size_t>(t) * d.hv + hv], bt = beta[static_cast<size_t>(t) * d.hv + hv];
    const float vi = live ? v[(static_cast<size_t>(t) * d.hv + hv) * d.dv + i] : 0.0f;
    float m = 0;
#pragma unroll
    for (int j = 0; j < DK; ++j) m += (s[j] *= gt) * ks[j];
    const float delta = (vi - m) * bt;
    float o = 0;
#pragma unroll
    for (int j = 0; j < DK; ++j) o += (s[j] += delta * ks[j]) * qs[j];
    if (live) y[(static_cast<size_t>(t) * d.hv + hv) * d.dv + i] = o;
  }
  if (live)
#pragma unroll
    for (int j = 0; j < DK; ++j) S[j] = s[j];
}

// grid (token·hv): y ← w · y/rms(y) · silu(z).
__global__ void gated_norm_kernel(int dv, float* y, const float* z, const float* w, float eps) {
  __shared__ float red[32];
  float* yr = y + static_cast<size_t>(blockIdx.x) * dv;
  const float* zr = z + static_cast<size_t>(blockIdx.x) * dv;
  float ss = 0;
  for (int i = threadIdx.x; i < dv; i += blockDim.x) ss += yr[i] * yr[i];
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / dv + eps);
  for (int i = threadIdx.x; i < dv; i += blockDim.x) yr[i] = yr[i] * inv * w[i] * siluf_(zr[i]);
}

__global__ void swiglu_kernel(float* g, const float* u, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) g[i] = siluf_(g[i]) * u[i];
}
__global__ void add_kernel(float* x, const float* o, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += o[i];
}

__global__ void fill_random_kernel(float* x, size_t n, uint64_t seed) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  x[i] = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

int threads_for(int n) { return std::min(256, std::max(32, (n + 31) / 32 * 32)); }

}  // namespace

namespace {
// Scratch for the int8 copy of x (grown, never freed; one stream uses it at a time).
int4* x8_scratch(int words) {
  static int4* p = nullptr;
  static int cap = 0;
  if (words > cap) {
    if (p) TQ_CUDA_CHECK(cudaFree(p));
    cap = std::max(words, 8192);
    TQ_CUDA_CHECK(cudaMalloc(&p, static_cast<size_t>(cap) * sizeof(int4)));
  }
  return p;
}
}  // namespace

bool g_decode_int8 = std::getenv("TQ_CUDA_INT8") != nullptr;  // opt-in: measured no faster yet

namespace {
void launch_group(MatvecGroup& g, const float* x, int n, cudaStream_t s) {
  int units = 0;  // warps, one per 4 rows (block_end: exclusive prefix of units per weight)
  if (g.swiglu) {
    units = (g.w[0].rows + 1) / 2;
  } else {
    for (int j = 0; j < g.count; ++j) g.block_end[j] = (units += (g.w[j].rows + kRowsPerWarp - 1) / kRowsPerWarp);
  }
  const int words = g.w[0].cols / 8;
  const int threads = kMatvecThreads, blocks = (units * 32 + threads - 1) / threads;
  const int cols = g.w[0].cols;
  for (int t0 = 0; t0 < n; t0 += 8) {
    const int nt = std::min(8, n - t0);
    MatvecGroup gt = g;
    for (int j = 0; j < 4; ++j)
      if (gt.y[j]) gt.y[j] += static_cast<size_t>(t0) * gt.w[j].rows;
    const float* xt = x + static_cast<size_t>(t0) * cols;
    if (nt == 1 && g_decode_int8) {
      int4* xq = x8_scratch(words);
      quantize_x8_kernel<<<(words + 127) / 128, 128, 0, s>>>(xt, words, xq);
      q4_group_kernel<1, true><<<blocks, threads, 0, s>>>(gt, xt, nt, xq);
    } else if (nt == 1) {
      q4_group_kernel<1, false><<<blocks, threads, 0, s>>>(gt, xt, nt, nullptr);
    } else if (nt <= 2) {
      q4_group_kernel<2, false><<<blocks, threads, 0, s>>>(gt, xt, nt, nullptr);
    } else if (nt <= 4) {
      q4_group_kernel<4, false><<<blocks, threads, 0, s>>>(gt, xt, nt, nullptr);
    } else {
      q4_group_kernel<8, false><<<blocks, threads, 0, s>>>(gt, xt, nt, nullptr);
    }
    TQ_CUDA_LAUNCHED();
  }
}
}  // namespace

void matmul_many(const DevWeight* const* w, float* const* y, int count, const float* x, int n, cudaStream_t s) {
  bool all_q4 = true;
  for (int j = 0; j < count; ++j) all_q4 = all_q4 && w[j]->q4 && w[j]->cols == w[0]->cols;
  if (!all_q4 || count > 4) {
    for (int j = 0; j < count; ++j) matmul(*w[j], x, n, y[j], s);
    return;
  }
  MatvecGroup g;
  g.count = count;
  for (int j = 0; j < 4; ++j) g.y[j] = nullptr;
  for (int j = 0; j < count; ++j) g.w[j] = *w[j], g.y[j] = y[j];
  launch_group(g, x, n, s);
}

void swiglu_matmul(const DevWeight& gate, const DevWeight& up, const float* x, int n, float* g_out, float* u_scratch,
                   cudaStream_t s) {
  if (!(gate.q4 && up.q4 && gate.rows == up.rows && gate.cols == up.cols && gate.group == up.group &&
        gate.sbf16 == up.sbf16)) {
    matmul(gate, x, n, g_out, s);
    matmul(up, x, n, u_scratch, s);
    swiglu(g_out, u_scratch, static_cast<size_t>(n) * gate.rows, s);
    return;
  }
  MatvecGroup g;
  g.swiglu = true;
  g.count = 2;
  g.w[0] = gate, g.w[1] = up;
  g.y[0] = g_out, g.y[1] = nullptr, g.y[2] = nullptr, g.y[3] = nullptr;
  launch_group(g, x, n, s);
}

void matmul(const DevWeight& w, const float* x, int n, float* y, cudaStream_t s) {
  if (w.q4) {
    const DevWeight* ws[1] = {&w};
    float* ys[1] = {y};
    matmul_many(ws, ys, 1, x, n, s);
    return;
  }
  const int threads = 256, blocks = (w.rows * 32 + threads - 1) / threads;
  for (int t0 = 0; t0 < n; t0 += 8) {
    const int nt = std::min(8, n - t0);
    const float* xt = x + static_cast<size_t>(t0) * w.cols;
    float* yt = y + static_cast<size_t>(t0) * w.rows;
    if (nt == 1) f32_matvec_kernel<1><<<blocks, threads, 0, s>>>(w, xt, nt, yt);
    else f32_matvec_kernel<8><<<blocks, threads, 0, s>>>(w, xt, nt, yt);
    TQ_CUDA_LAUNCHED();
  }
}

void embed(const DevWeight& w, const int32_t* tokens, int n, float* x, cudaStream_t s) {
  embed_kernel<<<n, 256, 0, s>>>(w, tokens, x);
  TQ_CUDA_LAUNCHED();
}

void rmsnorm(float* x, const float* add, const float* w, int rows, int dim, float eps, float* out, cudaStream_t s) {
  rmsnorm_kernel<<<rows, std::min(1024, std::max(32, (dim / 4 + 31) / 32 * 32)), 0, s>>>(x, add, w, dim, eps, out);
  TQ_CUDA_LAUNCHED();
}

void attn_prep(const AttnPrep& a, const float* qg, float* q, float* gate, float* k, float* v, const int32_t* pos,
               cudaStream_t s) {
  dim3 grid(a.n, a.n_heads + 2 * a.n_kv_heads);
  attn_prep_kernel<<<grid, threads_for(a.head_dim), (a.head_dim + 32) * sizeof(float), s>>>(a, qg, q, gate, k, v, pos);
  TQ_CUDA_LAUNCHED();
}

void kv_append(DevKVLayer& L, const float* k, const float* v, int n, size_t first, cudaStream_t s) {
  const int D = std::max(L.k.dim, L.v.dim);
  dim3 grid(n, L.n_kv_heads, 2);
  const size_t sh = D * sizeof(float) + (D + 3) / 4 * sizeof(float) + 32 * sizeof(float);
  kv_append_kernel<<<grid, threads_for(D), sh, s>>>(L, k, v, first);
  TQ_CUDA_LAUNCHED();
}

namespace {
int splits_for(const DevKVLayer& L, int n_q, size_t n_tokens) {
  // Enough blocks to fill the GPU several times over (132 SMs × 8), at least 128 tokens per split.
  const int want = std::max(1, 1056 / std::max(1, n_q * L.n_kv_heads));
  return static_cast<int>(std::max<size_t>(1, std::min<size_t>(want, (n_tokens + 127) / 128)));
}
}  // namespace

size_t attention_scratch_floats(const DevKVLayer& L, int n_q, size_t n_tokens) {
  const size_t sp = splits_for(L, n_q, n_tokens);
  return static_cast<size_t>(n_q) * L.n_heads * sp * (2 + L.v.dim);
}

void attention(const DevKVLayer& L, const float* q, const int32_t* pos, int n_q, int max_pos, size_t n_tokens,
               const float* gate, float scale, float* scratch, float* att, cudaStream_t s) {
  if (L.n_heads / L.n_kv_heads > kMaxG || L.k.dim > 256 || L.v.dim > 256)
    cuda_unsupported("CUDA attention: at most 8 query heads per KV head and head_dim <= 256");
  const int sp = splits_for(L, n_q, n_tokens);
  float* ml = scratch;
  float* acc = scratch + static_cast<size_t>(n_q) * L.n_heads * sp * 2;
  attention_kernel<<<dim3(L.n_kv_heads, n_q, sp), kAttnWarps * 32, 0, s>>>(L, q, pos, sp, n_tokens, scale, ml, acc);
  TQ_CUDA_LAUNCHED();
  attention_merge_kernel<<<dim3(n_q, L.n_heads), threads_for(L.v.dim), L.v.dim * sizeof(float), s>>>(L, sp, ml, acc,
                                                                                                     gate, att);
  TQ_CUDA_LAUNCHED();
  (void)max_pos;
}

void delta_conv(const DeltaDims& d, float* qkv, float* conv_state, const float* conv_w, cudaStream_t s) {
  if (d.conv_k > 8) cuda_unsupported("CUDA DeltaNet: conv kernel wider than 8");
  const int C = 2 * d.hk * d.dk + d.hv * d.dv;
  delta_conv_kernel<<<(C + 127) / 128, 128, 0, s>>>(d, qkv, conv_state, conv_w);
  TQ_CUDA_LAUNCHED();
}

void delta_prep(const DeltaDims& d, const float* qkv, const float* b, const float* a, const float* a_log,
                const float* dt_bias, float* q, float* k, float* v, float* beta, float* g, cudaStream_t s) {
  delta_prep_kernel<<<dim3(d.n, d.hk + d.hv), threads_for(std::max(d.dk, d.dv)), 0, s>>>(d, qkv, b, a, a_log, dt_bias,
                                                                                       q, k, v, beta, g);
  TQ_CUDA_LAUNCHED();
}

void delta_rule(const DeltaDims& d, const float* q, const float* k, const float* v, const float* beta, const float* g,
                float* state, float* y, cudaStream_t s) {
  dim3 grid(d.hv, (d.dv + 31) / 32);
  if (d.dk == 128) delta_rule_kernel<128><<<grid, 32, 0, s>>>(d, q, k, v, beta, g, state, y);
  else if (d.dk == 64) delta_rule_kernel<64><<<grid, 32, 0, s>>>(d, q, k, v, beta, g, state, y);
  else if (d.dk == 32) delta_rule_kernel<32><<<grid, 32, 0, s>>>(d, q, k, v, beta, g, state, y);
  else cuda_unsupported("CUDA DeltaNet: key head dim must be 32, 64 or 128");
  TQ_CUDA_LAUNCHED();
}

void gated_norm(const DeltaDims& d, float* y, const float* z, const float* w, float eps, cudaStream_t s) {
  gated_norm_kernel<<<d.n * d.hv, threads_for(d.dv), 0, s>>>(d.dv, y, z, w, eps);
  TQ_CUDA_LAUNCHED();
}

void swiglu(float* g, const float* u, size_t n, cudaStream_t s) {
  swiglu_kernel<<<(n + 255) / 256, 256, 0, s>>>(g, u, n);
  TQ_CUDA_LAUNCHED();
}

void fill_random(float* x, size_t n, uint64_t seed, cudaStream_t s) {
  fill_random_kernel<<<(n + 255) / 256, 256, 0, s>>>(x, n, seed);
  TQ_CUDA_LAUNCHED();
}

void add(float* x, const float* o, size_t n, cudaStream_t s) {
  add_kernel<<<(n + 255) / 256, 256, 0, s>>>(x, o, n);
  TQ_CUDA_LAUNCHED();
}

}  // namespace tq::cuda
