#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "backend/cuda/kernels.cuh"

namespace tq::cuda {

namespace {

constexpr int kWarp = 32;

// Programmatic dependent launch (sm_90): a kernel may be launched while the previous one
// is still running; it waits here for that one to finish (and its writes to be visible)
// before touching memory, then lets the next one launch. Hides the launch gap between
// the many short kernels of a decode step. No-op when launched without the attribute.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// Pulls a weight line into L2 (weights do not depend on the previous kernel, so a kernel
// launched early may do this before pdl_enter).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

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

template <bool kBf16>
__device__ __forceinline__ float scale_of(const void* p, int i) {
  if constexpr (kBf16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return static_cast<const float*>(p)[i];
}
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
  int wpu = 1;  // q4_q8_kernel: warps sharing one unit's columns (1 … 8)
  bool accumulate = false;  // q4_q8_kernel: y += W·x (the residual stream) instead of y = W·x
  bool y_settled = false;   // accumulate: y may be read before the dependency wait (matmul_accumulate)
  RmsNormIn norm;           // q4_q8_kernel: x is RMSNorm(norm.x) · norm.w, built by each block (norm.x set)
  DeltaConvIn conv;         // one token: weight 0's rows through the DeltaNet conv (conv.w set)
  XQ8 q8out;                // q4_q8_kernel, swiglu or accumulate (q8out.q set): its output also as int8 (q8_store_warp)
  const float* q8w = nullptr;  // accumulate with q8out: the next RMSNorm's weight (q8_store_norm_warp)
};

// One token of the DeltaNet causal conv for channel ch (C channels): Σ_j w[j]·in_j over the
// k − 1 stored inputs and the new one v, SiLU; the state shifts by one. The order of the sum
// is delta_conv_prep_kernel's.
// conv_token_from: the channel's weights wr[0, k) and stored inputs in[j · stride] read from
// wherever the caller holds them (the int8 matvec: shared memory); the shifted state written
// to st[j · C].
__device__ __forceinline__ float conv_token_from(const float* wr, const float* in, int stride, float* st, int k, int C,
                                                 float v) {
  float acc = 0;
  for (int j = 0; j < k - 1; ++j) acc += wr[j] * in[j * stride];
  acc += wr[k - 1] * v;
  for (int j = 0; j + 1 < k - 1; ++j) st[static_cast<size_t>(j) * C] = in[(j + 1) * stride];
  if (k > 1) st[static_cast<size_t>(k - 2) * C] = v;
  return siluf_(acc);
}
__device__ __forceinline__ float conv_token(const float* w, float* state, int k, int ch, int C, float v) {
  return conv_token_from(w + static_cast<size_t>(ch) * k, state + ch, C, state + ch, k, C, v);
}

constexpr int kMatvecThreads = 128;  // 4 warps, one unit of rows each

template <int NT>
__global__ void __launch_bounds__(kMatvecThreads) q4_group_kernel(MatvecGroup g, const float* __restrict__ x, int n) {
  pdl_enter();
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
    q4_rows<NT>(rc, sr, br, a.sbf16, a.group, a.cols, x, n, lane, kWarp, acc);
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
  q4_rows<NT>(rc, sr, br, w.sbf16, w.group, w.cols, x, n, lane, kWarp, acc);
  warp_reduce_rows<NT>(acc);
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t)
      if (t < n && r0 + r < w.rows)
        g.y[j][static_cast<size_t>(t) * w.rows + r0 + r] =
            g.conv.w && j == 0 ? conv_token(g.conv.w, g.conv.state, g.conv.k, r0 + r, w.rows, acc[r][t]) : acc[r][t];
}

// ---- decode matvec on int8 activations (dp4a), as llama.cpp's MMVQ does ----
// x in blocks of 32 values: 32 int8 (for each 8-value word its even values, then its odd
// values, so a 4-bit word's low and high nibbles meet them in two dp4a), and per word a
// scale (d = max|x|/127 over its 8 values) and its exact float sum (the group bias
// multiplies the block's).
__device__ __forceinline__ void q8_store_warp(float v, size_t i, XQ8 out, bool store = true) {
  // Every lane of the warp calls it; lanes 8j … 8j + 7 hold the elements of one word, i % 8
  // = lane % 8 (store: this lane's element is written).
  float mx = fabsf(v), sum = v;
#pragma unroll
  for (int o = 4; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o)), sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (!store) return;
  const float inv = mx > 0 ? 127.0f / mx : 0.0f;
  const int k = static_cast<int>(i & 31);
  reinterpret_cast<int8_t*>(out.q)[(i & ~size_t(31)) + (k >> 3) * 8 + (k & 1) * 4 + ((k & 7) >> 1)] =
      static_cast<int8_t>(__float2int_rn(v * inv));
  if ((k & 7) == 0) reinterpret_cast<float*>(out.d)[i >> 3] = mx / 127.0f, out.sum[i >> 3] = sum;
}
// The same for an RMSNorm handed off to the next matvec (XQ8::ss): the word holds v·w, and
// ss its Σ v².
__device__ __forceinline__ void q8_store_norm_warp(float v, float w, size_t i, XQ8 out, bool store) {
  float ss = v * v;
#pragma unroll
  for (int o = 4; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  q8_store_warp(v * w, i, out, store);
  if (store && (i & 7) == 0) out.ss[i >> 3] = ss;
}

__global__ void quantize_q8_kernel(const float* __restrict__ x, size_t n, XQ8 out) {
  pdl_enter();
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) q8_store_warp(x[i], i, out);  // n % 32 == 0: whole warps in or out
}

// Weights are read once per step: stream them past L1 so x stays there.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
// Exact int → float for |v| < 2^22 without the (quarter-rate) conversion unit.
__device__ __forceinline__ float small_int_to_float(int v) { return __int_as_float(v + 0x4B400000) - 12582912.0f; }

// sm_80+ instructions (the tensor-core kernel, the int8 matvec's handed-off norm). Builds for
// older targets compile them to a trap: the host never takes those paths on such a GPU
// (tc_kernel_for, handoff_consumable).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define TQ_SM80(...) __trap()
#else
#define TQ_SM80(...) __VA_ARGS__
#endif
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
// 16 bytes global → shared without registers; zeros when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  TQ_SM80(asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src),
                       "r"(valid ? 16 : 0)
                       : "memory"));
}
// 4 bytes global → shared (through L1).
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  TQ_SM80(asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_addr(dst)), "l"(src) : "memory"));
}
__device__ __forceinline__ void cp_async_commit() { TQ_SM80(asm volatile("cp.async.commit_group;" ::: "memory")); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  TQ_SM80(asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"));
}

// One block of 32 x values as the int8 matvec uses it (c: 8 · the int8 sums of its words).
struct XBlock {
  int4 a, b;
  float4 d;
  float sum;
  int c0, c1, c2, c3;
};
// kShared: x in the block's shared memory (a fused norm), else in global memory.
template <bool kShared = false>
__device__ __forceinline__ XBlock load_xblock(const XQ8& x, int b) {
  XBlock v;
  if constexpr (kShared) {
    const float4 s = reinterpret_cast<const float4*>(x.sum)[b];
    v.a = x.q[2 * b], v.b = x.q[2 * b + 1], v.d = x.d[b], v.sum = (s.x + s.y) + (s.z + s.w);
  } else {
    v.a = __ldg(x.q + 2 * b), v.b = __ldg(x.q + 2 * b + 1);
    v.d = __ldg(x.d + b);
    const float4 s = __ldg(reinterpret_cast<const float4*>(x.sum) + b);
    v.sum = (s.x + s.y) + (s.z + s.w);
  }
  constexpr int ones = 0x01010101;
  v.c0 = 8 * __dp4a(v.a.y, ones, __dp4a(v.a.x, ones, 0)), v.c1 = 8 * __dp4a(v.a.w, ones, __dp4a(v.a.z, ones, 0));
  v.c2 = 8 * __dp4a(v.b.y, ones, __dp4a(v.b.x, ones, 0)), v.c3 = 8 * __dp4a(v.b.w, ones, __dp4a(v.b.z, ones, 0));
  return v;
}
// scale·Σ(q−8)·x̂ + (bias + 8·scale)·Σx over one block of 32 weights (16 bytes of codes).
// Codes centred on 8: the dot carries the int8 rounding of x, the rest uses the exact sum
// (no common-mode rounding error).
__device__ __forceinline__ float q4_block_dot(uint4 q, float sc, float bi, const XBlock& x) {
  constexpr uint32_t m = 0x0f0f0f0fu;
  const int d0 = __dp4a(static_cast<int>((q.x >> 4) & m), x.a.y, __dp4a(static_cast<int>(q.x & m), x.a.x, -x.c0));
  const int d1 = __dp4a(static_cast<int>((q.y >> 4) & m), x.a.w, __dp4a(static_cast<int>(q.y & m), x.a.z, -x.c1));
  const int d2 = __dp4a(static_cast<int>((q.z >> 4) & m), x.b.y, __dp4a(static_cast<int>(q.z & m), x.b.x, -x.c2));
  const int d3 = __dp4a(static_cast<int>((q.w >> 4) & m), x.b.w, __dp4a(static_cast<int>(q.w & m), x.b.z, -x.c3));
  const float dot = (x.d.x * small_int_to_float(d0) + x.d.y * small_int_to_float(d1)) +
                    (x.d.z * small_int_to_float(d2) + x.d.w * small_int_to_float(d3));
  return sc * dot + (bi + 8.0f * sc) * x.sum;
}

// One warp per unit of kQ8Rows rows (swiglu: half gate rows, the same half of up); lane
// reads 16 bytes (32 weights, one x block) of every row per step, one step in flight.
// A block holds whole units: wpu warps each, up to 8 warps. (2 steps in flight per lane
// need 122 registers, 2 blocks per SM: measured 9% slower at depth 0.)
constexpr int kQ8Rows = 4, kQ8Threads = 256;
constexpr int kConvMax = 8;  // the widest DeltaNet conv the backend takes (delta_conv_prep)

// The int8 x of RMSNorm(x)·w (cols values, cols % 256 == 0, at most kNormPer groups of 8 per
// thread) in shared memory: the codes and sums do not depend on the norm's scale r, so
// each group of 8 is quantized from x·w at once and its scale and the block sums take r
// after one block reduction of Σx². Layout and rounding as q8_store_warp.
constexpr int kNormPer = 8;
__host__ __device__ constexpr int norm_smem_bytes(int cols) { return cols + cols / 8 * 4 + cols / 8 * 4 + 32 * 4; }
__device__ XQ8 rmsnorm_q8_shared(const RmsNormIn& n, int cols, unsigned char* sm) {
  int8_t* q = reinterpret_cast<int8_t*>(sm);
  float* d = reinterpret_cast<float*>(sm + cols);
  float* sum = d + cols / 8;
  float* red = sum + cols / 8;
  const int ng = cols / 8;
  float mx[kNormPer], s8[kNormPer], ss = 0;
#pragma unroll
  for (int k = 0; k < kNormPer; ++k) {
    const int gi = threadIdx.x + k * blockDim.x;
    mx[k] = 0, s8[k] = 0;
    if (gi >= ng) continue;
    const float4* xp = reinterpret_cast<const float4*>(n.x) + 2 * gi;
    const float4* wp = reinterpret_cast<const float4*>(n.w) + 2 * gi;
    const float4 x0 = xp[0], x1 = xp[1], w0 = __ldg(wp), w1 = __ldg(wp + 1);
    const float v[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    const float t[8] = {x0.x * w0.x, x0.y * w0.y, x0.z * w0.z, x0.w * w0.w, x1.x * w1.x, x1.y * w1.y, x1.z * w1.z, x1.w * w1.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e], mx[k] = fmaxf(mx[k], fabsf(t[e])), s8[k] += t[e];
    const float inv = mx[k] > 0 ? 127.0f / mx[k] : 0.0f;
    uint32_t c[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) c[e] = static_cast<uint32_t>(__float2int_rn(t[e] * inv)) & 0xFFu;
    // byte (e & 1)·4 + e / 2 of the group holds element e (q8_store_warp's order)
    *reinterpret_cast<uint2*>(q + 8 * gi) =
        make_uint2(c[0] | c[2] << 8 | c[4] << 16 | c[6] << 24, c[1] | c[3] << 8 | c[5] << 16 | c[7] << 24);
  }
  const float r = rsqrtf(block_sum(ss, red) / cols + n.eps);
#pragma unroll
  for (int k = 0; k < kNormPer; ++k) {
    const int gi = threadIdx.x + k * blockDim.x;
    if (gi < ng) d[gi] = r * mx[k] / 127.0f, sum[gi] = r * s8[k];
  }
  __syncthreads();
  return {reinterpret_cast<int4*>(q), reinterpret_cast<float4*>(d), sum};
}

// One column step b of kQ8Rows rows: 16 bytes of codes each, and their scale and bias.
template <bool kBf16>
__device__ __forceinline__ void q8_load_step(const uint32_t* const (&rc32)[kQ8Rows], const uint8_t* const (&sr)[kQ8Rows],
                                             const uint8_t* const (&br)[kQ8Rows], int b, int gshift, uint4 (&wv)[kQ8Rows],
                                             float (&sc)[kQ8Rows], float (&bi)[kQ8Rows]) {
#pragma unroll
  for (int r = 0; r < kQ8Rows; ++r) {
    wv[r] = ld_stream(reinterpret_cast<const uint4*>(rc32[r]) + b);
    sc[r] = scale_of<kBf16>(sr[r], b >> gshift);
    bi[r] = scale_of<kBf16>(br[r], b >> gshift);
  }
}

// A handed-off norm's scale 1/rms over the block: q is this thread's float4 of word sums Σ x²
// (zeros past cols / 32 threads), ssw a shared array of the block's warps; a block barrier.
__device__ __forceinline__ float handed_norm_scale(float4 q, int cols, float eps, float* ssw, int lane, int warp,
                                                   int warps) {
  const float t = warp_sum((q.x + q.y) + (q.z + q.w));
  if (lane == 0) ssw[warp] = t;
  __syncthreads();
  float tot = 0;
  for (int k = 0; k < warps; ++k) tot += ssw[k];
  return rsqrtf(tot / cols + eps);
}

// kBf16: the scales' type (a branch per load otherwise); gshift: log2(group / 32); kMode (one
// instantiation each: the kernel's registers are tight): kQ8Plain; kQ8Norm: x is built from
// g.norm by each block (x is then unused); kQ8Handed: x's norm was handed off (x.ss); kQ8HandOff:
// accumulate, and hand the next norm off through g.q8out.
enum { kQ8Plain = 0, kQ8Norm = 1, kQ8Handed = 2, kQ8HandOff = 3 };
// The kQ8Rows rows of one unit of the int8 kernels (q8_units' layout; swiglu: 2 gate rows
// and the same 2 up rows, else rows of weight j from r0): their code, scale and bias pointers
// (clamped into the weight for a unit past the end, which is then not live).
__device__ __forceinline__ bool q8_unit_rows(const MatvecGroup& g, int unit, const uint32_t* (&rc32)[kQ8Rows],
                                             const uint8_t* (&sr)[kQ8Rows], const uint8_t* (&br)[kQ8Rows], int& j, int& r0) {
  constexpr int R = kQ8Rows, H = R / 2;
  if (g.swiglu) {
    r0 = unit * H;
#pragma unroll
    for (int r = 0; r < R; ++r) q4_row_ptrs(g.w[r / H], max(0, min(r0 + r % H, g.w[0].rows - 1)), rc32[r], sr[r], br[r]);
    return r0 < g.w[0].rows;
  }
  while (j < g.count - 1 && unit >= g.block_end[j]) ++j;
  r0 = (unit - (j ? g.block_end[j - 1] : 0)) * R;
#pragma unroll
  for (int r = 0; r < R; ++r) q4_row_ptrs(g.w[j], max(0, min(r0 + r, g.w[j].rows - 1)), rc32[r], sr[r], br[r]);
  return unit < g.block_end[g.count - 1];
}
template <bool kBf16, int kMode = kQ8Plain>
__global__ void __launch_bounds__(kQ8Threads, 3) q4_q8_kernel(MatvecGroup g, XQ8 x, int gshift) {
  constexpr bool kNorm = kMode == kQ8Norm, kSS = kMode == kQ8Handed, kHand = kMode == kQ8HandOff;
  constexpr int R = kQ8Rows, H = R / 2;
  __shared__ float part[kQ8Threads / 32][R];
  extern __shared__ __align__(16) unsigned char xsm[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wpu = g.wpu;
  const int sub = warp % wpu;  // this warp's share of the unit's columns
  const int unit = blockIdx.x * (static_cast<int>(blockDim.x) / 32 / wpu) + warp / wpu;
  const uint32_t* rc32[R];
  const uint8_t* sr[R];
  const uint8_t* br[R];
  int j = 0, r0 = 0;
  const bool live = q8_unit_rows(g, unit, rc32, sr, br, j, r0);
  const DevWeight& w = g.w[j];
  const int nb = live ? w.cols / 32 : 0, stride = 32 * wpu;
  // Constants of the epilogue copied to shared memory before the wait (after the loop they
  // were a DRAM round trip on the launch's tail): the DeltaNet conv's weights and stored
  // inputs of the unit's rows (the state was written by this layer's launch a step ago), and
  // the next norm's weight for the rows warp 0 hands off.
  __shared__ float cvw[kQ8Threads / 32][kQ8Rows * kConvMax], cvs[kQ8Threads / 32][kQ8Rows * (kConvMax - 1)];
  const bool conv = !g.swiglu && g.conv.w && j == 0 && live && sub == 0;
  if (conv) {
    const int k = g.conv.k, C = w.rows;
    for (int e = lane; e < R * k; e += 32)
      if (r0 + e / k < C) cp_async4(&cvw[warp][e], g.conv.w + static_cast<size_t>(r0) * k + e);
    for (int e = lane; e < R * (k - 1); e += 32)
      if (r0 + e % R < C) cp_async4(&cvs[warp][e], g.conv.state + static_cast<size_t>(e / R) * C + r0 + e % R);
    cp_async_commit();
  }
  // Accumulating into a settled y (its writer completed before the kernel ahead of this one
  // began): the unit's y rows too.
  __shared__ float yres[kQ8Threads / 32][kQ8Rows];
  const bool y_early = (kHand || kMode == kQ8Plain) && g.accumulate && g.y_settled && live && sub == 0;
  if (y_early) {
    if (lane < R && r0 + lane < w.rows) cp_async4(&yres[warp][lane], g.y[j] + r0 + lane);
    cp_async_commit();
  }
  __shared__ float nws[kHand ? 32 : 1];
  // (the rows warp 0 hands off: recomputed at the end, not held through the loop)
  auto hand_row = [&] { return blockIdx.x * (static_cast<int>(blockDim.x) / 32 / wpu * R) + lane; };
  auto hand_mine = [&](int row) { return lane < static_cast<int>(blockDim.x) / 32 / wpu * R && row < w.rows; };
  if constexpr (kHand) {
    if (warp == 0 && hand_mine(hand_row())) cp_async4(&nws[lane], g.q8w + hand_row());
    cp_async_commit();
  }
  // Without a fused norm, the first column step's weights are loaded before the wait: they
  // do not depend on the previous kernel, whose tail they overlap (a chain of read kernels:
  // +7% over loading after the wait, tq_read_bw). With one, they would be held through the
  // norm's registers and spill: its first step is only pulled into L2.
  uint4 wv[R];
  float sc[R], bi[R];
  auto load_step = [&](int b) { q8_load_step<kBf16>(rc32, sr, br, b, gshift, wv, sc, bi); };
  int b = sub * 32 + lane;
  if constexpr (kNorm) {
    if (b < nb && (lane & 7) == 0)  // one lane per 128-byte line
#pragma unroll
      for (int r = 0; r < R; ++r) prefetch_l2(reinterpret_cast<const uint4*>(rc32[r]) + b);
  } else if (b < nb) {
    load_step(b);
  }
  pdl_enter();
  if constexpr (kNorm) x = rmsnorm_q8_shared(g.norm, g.w[0].cols, xsm);
  // A handed-off norm (x.ss): the block adds the words' Σ x² after its dot products; they
  // are copied to shared memory now, without registers held through the loop (one float4,
  // 32 columns' worth, per thread: cols ≤ 32 · threads, host-checked). (A copy per warp,
  // reduced without the block barrier, measured 1.8% slower: v16e.)
  __shared__ float4 ssq[kSS ? kQ8Threads : 1];
  const bool has_ss = kSS && static_cast<int>(threadIdx.x) < g.w[0].cols / 32;
  if constexpr (kSS) {
    if (has_ss) cp_async16(ssq + threadIdx.x, reinterpret_cast<const float4*>(x.ss) + threadIdx.x, true);
    cp_async_commit();
  }
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0;
  for (bool first = true; b < nb; b += stride, first = false) {
    if (kNorm || !first) load_step(b);
    const XBlock xv = load_xblock<kNorm>(x, b);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] += q4_block_dot(wv[r], sc[r], bi[r], xv);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
  __shared__ float gs[kQ8Threads / 32 * R];  // the block's rows (q8out)
  if constexpr (kSS) {
    __shared__ float ssw[kQ8Threads / 32];  // Σ x² per warp
    cp_async_wait<0>();
    const float rn = handed_norm_scale(has_ss ? ssq[threadIdx.x] : make_float4(0, 0, 0, 0), g.w[0].cols, x.eps, ssw, lane,
                                       warp, static_cast<int>(blockDim.x) / 32);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] *= rn;
  }
  bool writer = lane == 0 && live;
  if (wpu > 1) {  // the unit's warps add their column shares (fixed order: deterministic)
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < R; ++r) part[warp][r] = acc[r];
    __syncthreads();
    writer = writer && sub == 0;
    if (sub == 0)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float t = 0;
        for (int k = 0; k < wpu; ++k) t += part[warp + k][r];
        acc[r] = t;
      }
  }
  if (g.swiglu) {
#pragma unroll
    for (int r = 0; r < H; ++r) {
      const float v = acc[r] / (1.0f + expf(-acc[r])) * acc[H + r];
      if (writer && r0 + r < w.rows) g.y[0][r0 + r] = v;
      if (writer) gs[warp / wpu * H + r] = v;
    }
    if (!g.q8out.q) return;
    // Its int8 copy (the next matvec's x): the block's rows are whole 8-value words (host:
    // wpu ≤ 2, rows % 8 == 0), quantized by warp 0 — no separate kernel.
    __syncthreads();
    if (warp != 0) return;
    const int nrows = static_cast<int>(blockDim.x) / 32 / wpu * H;
    const int row = blockIdx.x * nrows + lane;
    const bool mine = lane < nrows && row < w.rows;
    q8_store_warp(mine ? gs[lane] : 0.0f, row, g.q8out, mine);
    return;
  }
  if (conv || y_early) {
    cp_async_wait<0>();
    __syncwarp();
  }
  if (writer)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r0 + r >= w.rows) continue;
      float v = g.accumulate ? (y_early ? yres[warp][r] : g.y[j][r0 + r]) + acc[r] : acc[r];
      if (conv) v = conv_token_from(&cvw[warp][r * g.conv.k], &cvs[warp][r], R, g.conv.state + r0 + r, g.conv.k, w.rows, v);
      g.y[j][r0 + r] = v;
      if (kHand) gs[warp / wpu * R + r] = v;
    }
  if constexpr (!kHand) return;
  // The next RMSNorm's int8 input (accumulate, one weight; host: the block's rows are whole
  // 8-value words), by warp 0 as for swiglu.
  __syncthreads();
  if (warp != 0) return;
  cp_async_wait<0>();
  const int row = hand_row();
  const bool mine = hand_mine(row);
  q8_store_norm_warp(mine ? gs[lane] : 0.0f, mine ? nws[lane] : 0.0f, row, g.q8out, mine);
}

// A matvec of many waves of units (the LM head: ≈ 20 on the H200) with blocks that loop over
// units, so that each block's setup — and a handed-off norm's scale (kSS), reduced once per
// block instead of once per 8 units — is spread over many units. One weight, y = W·x, one
// warp per unit, the int8 x in global memory; the same dot products as q4_q8_kernel.
template <bool kBf16, bool kSS>
__global__ void __launch_bounds__(kQ8Threads, 3) q4_q8_loop_kernel(DevWeight w, float* __restrict__ y, XQ8 x, int gshift) {
  constexpr int R = kQ8Rows;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wpb = static_cast<int>(blockDim.x) / 32;
  const int units = (w.rows + R - 1) / R, nb = w.cols / 32;
  const uint32_t* rc32[R];
  const uint8_t* sr[R];
  const uint8_t* br[R];
  uint4 wv[R];
  float sc[R], bi[R];
  auto rows_of = [&](int unit) {
#pragma unroll
    for (int r = 0; r < R; ++r) q4_row_ptrs(w, min(unit * R + r, w.rows - 1), rc32[r], sr[r], br[r]);
  };
  auto load_step = [&](int b) { q8_load_step<kBf16>(rc32, sr, br, b, gshift, wv, sc, bi); };
  int unit = blockIdx.x * wpb + warp;
  if (unit < units) {  // the first unit's first step before the wait, as q4_q8_kernel
    rows_of(unit);
    if (lane < nb) load_step(lane);
  }
  pdl_enter();
  float rn = 1.0f;
  if constexpr (kSS) {  // Σ x² of the handed-off norm: cols / 8 words, one float4 per thread (host-checked)
    __shared__ float ssw[kQ8Threads / 32];
    rn = handed_norm_scale(static_cast<int>(threadIdx.x) < w.cols / 32 ? reinterpret_cast<const float4*>(x.ss)[threadIdx.x]
                                                                      : make_float4(0, 0, 0, 0),
                           w.cols, x.eps, ssw, lane, warp, wpb);
  }
  for (bool first = true; unit < units; unit += gridDim.x * wpb, first = false) {
    if (!first) rows_of(unit);
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0;
    for (int b = lane; b < nb; b += 32) {
      if (!first || b != lane) load_step(b);
      const XBlock xv = load_xblock(x, b);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] += q4_block_dot(wv[r], sc[r], bi[r], xv);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (unit * R + r < w.rows) y[unit * R + r] = acc[r] * rn;
  }
}

// A forward pass of a few tokens (2 … kTokMax) with the decode step's arithmetic: every
// token's x as int8 (quantize_q8 over the chunk), one warp per unit of kQ8Rows rows (swiglu:
// 2 gate rows and the same 2 up rows), each lane's 16 bytes of codes per row read once and
// dotted with the x block of every token (q4_block_dot): the weights are read once for the
// chunk, at the decode path's stream rate (PERF v21f: 1.9-2× the float kernel it replaced for
// 2-8 tokens). q4_mmq_kernel is faster from 5 tokens (PERF v22: +25-65% at 5-8 with
// TQ_CUDA_TOKENS=4) but its coarser x blocks moved a cross-backend session test's
// continuation past its bound, so 2-8 stay here. T: the tokens compiled in (n ≤ T at run
// time); T = 4 held to 128 registers, 2 blocks per SM, as measured.
constexpr int kTokMax = 8;
template <bool kBf16, int T>
__global__ void __launch_bounds__(kQ8Threads, T <= 4 ? 2 : 1) q4_q8_tokens_kernel(MatvecGroup g, XQ8 x, int n, int gshift) {
  constexpr int R = kQ8Rows, H = R / 2;
  pdl_enter();
  const int lane = threadIdx.x & 31, unit = blockIdx.x * (static_cast<int>(blockDim.x) / 32) + (threadIdx.x >> 5);
  const uint32_t* rc32[R];
  const uint8_t* sr[R];
  const uint8_t* br[R];
  int j = 0, r0 = 0;
  if (!q8_unit_rows(g, unit, rc32, sr, br, j, r0)) return;
  const int rows = g.w[j].rows, nb = g.w[j].cols / 32;
  float acc[R][T];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = 0;
  uint4 wv[R];
  float sc[R], bi[R];
  for (int b = lane; b < nb; b += 32) {
    q8_load_step<kBf16>(rc32, sr, br, b, gshift, wv, sc, bi);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      if (t >= n) break;
      const XBlock xv = load_xblock(x, t * nb + b);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][t] += q4_block_dot(wv[r], sc[r], bi[r], xv);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = warp_sum(acc[r][t]);
  if (lane != 0) return;
#pragma unroll
  for (int t = 0; t < T; ++t) {  // (compile-time indices: acc stays in registers)
    if (t >= n) break;
    float* y = g.y[j] + static_cast<size_t>(t) * rows;
    if (g.swiglu) {
#pragma unroll
      for (int r = 0; r < H; ++r)
        if (r0 + r < rows) y[r0 + r] = acc[r][t] / (1.0f + expf(-acc[r][t])) * acc[H + r][t];
    } else {
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r0 + r < rows) y[r0 + r] = acc[r][t];
    }
  }
}

template <int NT>
__global__ void f32_matvec_kernel(DevWeight w, const float* __restrict__ x, int n, float* __restrict__ y) {
  pdl_enter();
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
  pdl_enter();
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
                               int dim, float eps, float* __restrict__ out, XQ8 q8) {
  pdl_enter();
  __shared__ float red[32];
  float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  const float* ar = add ? add + static_cast<size_t>(blockIdx.x) * dim : nullptr;
  float* o = out + static_cast<size_t>(blockIdx.x) * dim;
  // Up to kKeep values per thread stay in registers between the two passes (every load of
  // the first pass in flight at once, none in the second); longer rows re-read the rest.
  constexpr int kKeep = 8;
  const int bd = blockDim.x;
  float v[kKeep], wv[kKeep];
  float ss = 0;
#pragma unroll
  for (int k = 0; k < kKeep; ++k) {
    const int i = threadIdx.x + k * bd;
    v[k] = 0, wv[k] = 1;
    if (i < dim) {
      v[k] = xr[i] + (ar ? ar[i] : 0.0f);
      if (w) wv[k] = w[i];
    }
  }
#pragma unroll
  for (int k = 0; k < kKeep; ++k) {
    const int i = threadIdx.x + k * bd;
    if (i < dim) {
      if (ar) xr[i] = v[k];
      ss += v[k] * v[k];
    }
  }
  for (int i = threadIdx.x + kKeep * bd; i < dim; i += bd) {
    float u = xr[i];
    if (ar) {
      u += ar[i];
      xr[i] = u;
    }
    ss += u * u;
  }
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / dim + eps);
  const size_t row0 = static_cast<size_t>(blockIdx.x) * dim;
#pragma unroll
  for (int k = 0; k < kKeep; ++k) {
    const int i = threadIdx.x + k * bd;
    if (i >= dim) break;  // (whole warps: dim % 32 == 0 when q8 is on)
    const float u = v[k] * inv * wv[k];
    o[i] = u;
    if (q8.q) q8_store_warp(u, row0 + i, q8);
  }
  for (int i = threadIdx.x + kKeep * bd; i < dim; i += bd) {
    const float u = xr[i] * inv * (w ? w[i] : 1.0f);
    o[i] = u;
    if (q8.q) q8_store_warp(u, row0 + i, q8);
  }
}

// One block per (token, head) of q (heads < n_heads), k (next n_kv_heads) and v (last n_kv_heads).
// The rotary angles' cosines and sines come first, before the wait: positions are copied
// in before the step's first kernel, and the double-precision pow, cos and sin (as the CPU
// computes them) are a long dependent chain that would otherwise follow the q/k/v matvec.
__global__ void attn_prep_kernel(AttnPrep a, const float* qg, float* q, float* gate, float* k, float* v,
                                 const int32_t* pos) {
  extern __shared__ float sh[];  // head_dim + 32 + rot_dims + head_dim
  float* vec = sh;
  float* red = sh + a.head_dim;
  float* rc = red + 32;  // cos, sin of dim d at 2d, 2d + 1
  float* nws = rc + a.rot_dims;  // the head norm's weight (1 without one)
  const int t = blockIdx.x, h = blockIdx.y, hd = a.head_dim;
  const bool is_q = h < a.n_heads, is_k = !is_q && h < a.n_heads + a.n_kv_heads;
  const int half = a.rot_dims / 2;
  if (is_q || is_k) {
    for (int d = threadIdx.x; d < half; d += blockDim.x) {
      double sn, cs;
      sincos(static_cast<double>(pos[t]) * pow(a.theta, -2.0 * d / a.rot_dims), &sn, &cs);
      rc[2 * d] = static_cast<float>(cs), rc[2 * d + 1] = static_cast<float>(sn);
    }
    // (a constant: read before the wait, not after the norm's reduction)
    const float* nw = is_q ? a.q_norm : a.k_norm;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) nws[i] = nw ? nw[i] : 1.0f;
  }
  pdl_enter();
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
  const bool normed = (is_q ? a.q_norm : a.k_norm) != nullptr;
  float ss = 0;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float x = src[i];
    if (bias) x += bias[g * hd + i];
    vec[i] = x;
    ss += x * x;
    if (is_q && a.gate) gate[(static_cast<size_t>(t) * a.n_heads + g) * hd + i] = src[hd + i];
  }
  ss = block_sum(ss, red);  // syncs: vec, rc and nws are complete
  const float inv = normed ? rsqrtf(ss / hd + a.eps) : 1.0f;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float x = vec[i] * inv * nws[i];
    if (i < a.rot_dims) {
      const int d = i < half ? i : i - half;
      const float c = rc[2 * d], s = rc[2 * d + 1];
      const int o = i < half ? i + half : i - half;
      const float y = vec[o] * inv * nws[o];
      x = i < half ? x * c - y * s : y * s + x * c;
    }
    dst[i] = x;
  }
}

// ---- KV append: one block per (token, kv head, side) ----
// In-place FWHT of `count` vectors of D floats, `stride` apart, all at once.
__device__ void fwht_shared_many(float* y, int count, int stride, int D) {
  const int half = D / 2;
  for (int len = 1; len < D; len <<= 1) {
    __syncthreads();
    for (int i = threadIdx.x; i < count * half; i += blockDim.x) {
      float* v = y + (i / half) * stride;
      const int k = i % half, blk = k / len, off = k % len, a = blk * 2 * len + off, b = a + len;
      const float u = v[a], w = v[b];
      v[a] = u + w;
      v[b] = u - w;
    }
  }
  __syncthreads();
}

// The FWHT of a vector of 32·E values (E ≤ 8) held by a warp: lane l holds elements
// l·E … l·E + E − 1 in r; the butterflies within a lane run there, those across lanes
// through shuffles.
__device__ __forceinline__ void fwht_lanes(float (&r)[8], int E, int lane) {
#pragma unroll
  for (int len = 1; len < 8; len <<= 1)
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (len < E && !(e & len)) {
        const float a = r[e], b = r[e | len];
        r[e] = a + b, r[e | len] = a - b;
      }
#pragma unroll
  for (int m = 1; m < 32; m <<= 1)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float o = __shfl_xor_sync(0xffffffffu, r[e], m);
      r[e] = (lane & m) ? o - r[e] : r[e] + o;
    }
}

// The same on powers of two 32 … 256, a warp per vector (fwht_lanes), no block barrier
// between stages. Other sizes: the above. Every thread of the block calls it; y is complete
// on return.
__device__ void fwht_warps(float* y, int count, int stride, int D) {
  if (D < 32 || D > 256 || (D & (D - 1))) {
    fwht_shared_many(y, count, stride, D);
    return;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, E = D / 32;
  for (int c = threadIdx.x >> 5; c < count; c += blockDim.x >> 5) {
    float* v = y + static_cast<size_t>(c) * stride + lane * E;
    float r[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) r[e] = e < E ? v[e] : 0.0f;
    fwht_lanes(r, E, lane);
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (e < E) v[e] = r[e];
  }
  __syncthreads();
}

__device__ void fwht_shared(float* y, int D) { fwht_warps(y, 1, D, D); }

// Pieces of the KV append shared by its block and warp kernels.
// A code side's codebook into shared memory: centroids cen[levels], boundaries bnd[levels − 1]
// (threads `from`, `from + step`, …).
__device__ __forceinline__ void load_codebook(const DevKVSide& S, float* cen, float* bnd, int from, int step) {
  const int levels = 1 << S.bits;
  for (int i = from; i < levels; i += step) {
    cen[i] = S.centroids[i];
    if (i + 1 < levels) bnd[i] = S.boundaries[i];
  }
}
// Where token t (grid x) of kv head g (grid y) comes from and goes to, after the wait: the
// device's first position when given; the first block also advances the window ring's lower
// bound on the device (a captured decode step stays valid: rows [end − ring_rows, end) are live).
struct AppendRow {
  const float* x;  // the new vector (head_dim values)
  size_t pos;      // its position in the cache
};
__device__ __forceinline__ AppendRow append_row(const DevKVLayer& L, const float* k, const float* v, int side,
                                                size_t first, const int32_t* first_dev) {
  const int t = blockIdx.x, g = blockIdx.y;
  if (first_dev) first = static_cast<size_t>(first_dev[0]);
  if (L.ring_rows > 0 && t == 0 && g == 0 && blockIdx.z == 0 && threadIdx.x == 0) {
    const size_t end = first + gridDim.x;
    if (end > static_cast<size_t>(L.ring_rows)) *L.ring_lo = max(*L.ring_lo, static_cast<unsigned long long>(end - L.ring_rows));
  }
  return {(side ? v : k) + (static_cast<size_t>(t) * L.n_kv_heads + g) * L.head_dim, first + t};
}
// A dense side's row (fp16 or f32) by threads `from`, `from + step`, ….
__device__ __forceinline__ void store_dense_row(const DevKVLayer& L, const DevKVSide& S, int g, const AppendRow& r,
                                                int from, int step) {
  uint8_t* row = S.rows + (static_cast<size_t>(g) * L.cap + r.pos) * S.row_bytes;
  for (int i = from; i < L.head_dim; i += step) {
    if (S.bits == 16) reinterpret_cast<__half*>(row)[i] = __float2half_rn(r.x[i]);
    else reinterpret_cast<float*>(row)[i] = r.x[i];
  }
}
// The code of u: the number of the levels − 1 sorted boundaries strictly below it.
__device__ __forceinline__ int code_of(const float* bnd, int levels, float u) {
  int lo = 0, hi = levels - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (bnd[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
// The fp16 norm stored with a row of codes: the vector's norm, divided by the codes' RMS
// centroid (Σc² = c2 over D) when the policy corrects norms.
__device__ __forceinline__ uint16_t stored_norm(const DevKVSide& S, float norm, float c2, int D) {
  float stored = norm;
  if (S.norm_correction && c2 > 0) stored = norm / sqrtf(c2 / D);
  return __half_as_ushort(__float2half_rn(fminf(stored, 65504.0f)));
}

__global__ void kv_append_kernel(DevKVLayer L, const float* k, const float* v, size_t first, const int32_t* first_dev) {
  extern __shared__ float sh[];  // D floats + D bytes idx + 32 red + 256 boundaries + 256 centroids
  const int g = blockIdx.y, side = blockIdx.z;
  const DevKVSide& S = side ? L.v : L.k;
  const int D = S.dim;
  float* bnd = sh + D + (D + 3) / 4 + 32;
  float* cen = bnd + 256;
  float* y = sh;  // the rotation's signs, then the rotated vector
  if (S.bits < 16) {  // (the codebook and signs do not depend on the previous kernel: before the wait)
    load_codebook(S, cen, bnd, threadIdx.x, blockDim.x);
    for (int i = threadIdx.x; i < D; i += blockDim.x) y[i] = S.signs[static_cast<size_t>(g) * D + i];
  }
  pdl_enter();
  const AppendRow src = append_row(L, k, v, side, first, first_dev);
  const float* x = src.x;
  const size_t pos = src.pos;
  const int hd = L.head_dim;
  if (S.bits >= 16) {
    store_dense_row(L, S, g, src, threadIdx.x, blockDim.x);
    return;
  }
  uint8_t* idx = reinterpret_cast<uint8_t*>(sh + D);
  float* red = sh + D + (D + 3) / 4;
  for (int i = threadIdx.x; i < D; i += blockDim.x) y[i] = i < hd ? x[i] * y[i] : 0.0f;  // (each thread its own i)
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
    const int lo = code_of(bnd, levels, y[i] * to_u);
    idx[i] = static_cast<uint8_t>(lo);
    const float c = cen[lo];
    c2 += c * c;
  }
  c2 = block_sum(c2, red);  // syncs: idx complete
  uint8_t* row = S.rows + (static_cast<size_t>(g) * L.cap + pos) * S.row_bytes;
  const int code_bytes = (D * S.bits + 7) / 8;
  if (S.nib3) {
    for (int w = threadIdx.x; w < 3 * D / 32; w += blockDim.x)
      reinterpret_cast<uint32_t*>(row)[w] = nib3_word(idx + 32 * (w / 3), w % 3);  // (w: word w % 3 of group w / 3)
  } else
  for (int byte = threadIdx.x; byte < code_bytes; byte += blockDim.x) {
    unsigned val = 0;
    for (int b = 0; b < 8; ++b) {
      const int bit = byte * 8 + b, d = bit / S.bits;
      if (d < D) val |= ((idx[d] >> (bit % S.bits)) & 1u) << b;
    }
    row[byte] = static_cast<uint8_t>(val);
  }
  if (threadIdx.x == 0) S.norms[static_cast<size_t>(g) * L.cap + pos] = stored_norm(S, norm, c2, D);
}

// The same for layers whose code sides have D = 256 and 3 (nib3), 4 or 8 bits: one warp per
// side of a (token, kv head), lane l holding elements 8l … 8l + 7 in registers through the
// rotation (the butterflies of fwht_warps), the norms and the codes, and writing its own
// words of the row: shuffles only, no block barriers (a decode step's append is a chain of
// latencies). Dense sides are copied by their warp.
__global__ void __launch_bounds__(64) kv_append_warp_kernel(DevKVLayer L, const float* k, const float* v, size_t first,
                                                            const int32_t* first_dev) {
  constexpr int D = 256, E = 8;
  __shared__ float bnd[2][256], cen[2][256];
  const int g = blockIdx.y, side = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const DevKVSide& S = side ? L.v : L.k;
  const int levels = S.bits < 16 ? 1 << S.bits : 0;
  float sgn[E];
  if (levels) load_codebook(S, cen[side], bnd[side], lane, 32);  // (codebook and signs: before the wait)
#pragma unroll
  for (int e = 0; e < E; ++e) sgn[e] = levels ? S.signs[static_cast<size_t>(g) * D + E * lane + e] : 0.0f;
  __syncwarp();
  pdl_enter();
  const AppendRow src = append_row(L, k, v, side, first, first_dev);
  const float* x = src.x;
  const size_t pos = src.pos;
  const int hd = L.head_dim;
  if (S.bits >= 16) {
    store_dense_row(L, S, g, src, lane, 32);
    return;
  }
  float r[E];
#pragma unroll
  for (int e = 0; e < E; ++e) r[e] = E * lane + e < hd ? x[E * lane + e] * sgn[e] : 0.0f;
  fwht_lanes(r, E, lane);
  const float rs = rsqrtf(static_cast<float>(D));
  float ss = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    float u = r[e] * rs;
    if (L.window > 0) {  // codes from the fp16 values the window keeps
      const __half h = __float2half_rn(u);
      S.ring[(static_cast<size_t>(g) * L.ring_rows + pos % L.ring_rows) * D + E * lane + e] = h;
      u = __half2float(h);
    }
    r[e] = u;
    ss += u * u;
  }
  const float norm = sqrtf(warp_sum(ss));
  const float to_u = norm > 0 ? sqrtf(static_cast<float>(D)) / norm : 0.0f;
  uint32_t code[E];
  float c2 = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int lo = code_of(bnd[side], levels, r[e] * to_u);
    code[e] = lo;
    c2 += cen[side][lo] * cen[side][lo];
  }
  c2 = warp_sum(c2);
  uint32_t* words = reinterpret_cast<uint32_t*>(S.rows + (static_cast<size_t>(g) * L.cap + pos) * S.row_bytes);
  if (S.bits == 8) {
    words[2 * lane] = code[0] | code[1] << 8 | code[2] << 16 | code[3] << 24;
    words[2 * lane + 1] = code[4] | code[5] << 8 | code[6] << 16 | code[7] << 24;
  } else {
    uint32_t n = 0;  // this lane's codes in nibbles
#pragma unroll
    for (int e = 0; e < E; ++e) n |= code[e] << (4 * e);
    if (S.bits == 4) {
      words[lane] = n;
    } else {  // nib3: lanes 4q … 4q + 2 write group q's words, with lane 4q + 3's codes sliced into bit 3
      const uint32_t top = __shfl_sync(0xffffffffu, n, lane | 3);
      const int part = lane & 3;
      if (part < 3) words[3 * (lane >> 2) + part] = nib3_word(n, top, part);
    }
  }
  if (lane == 0) S.norms[static_cast<size_t>(g) * L.cap + pos] = stored_norm(S, norm, c2, D);
}

// A prefill chunk over a cache with an fp16 window (code sides): every query of the chunk
// reads its tokens before the cut from codes (bound = max(ring_lo, p + 1 − window) ≥ the
// cut for every position p ≥ pos[0]: a chunk's positions ascend), rounded down to 16.
__device__ __forceinline__ size_t window_cut(const DevKVLayer& L, const int32_t* pos, size_t ring_lo) {
  const size_t p0 = static_cast<size_t>(pos[0]) + 1, w = static_cast<size_t>(L.window);
  return max(ring_lo, p0 > w ? p0 - w : size_t(0)) / 16 * 16;
}

// ---- attention: grid (kv head, query, split), 128 threads; tiles of 128 tokens ----
// Per tile: each thread scores one token against the G query heads (the whole K row), the
// block updates its running max / sum per head (online softmax), then each thread
// accumulates 1-2 value dims over the tile's tokens (all threads read the same V row:
// coalesced). K and V are read where they are: fp16/f32 rows, TurboQuant codes (unpacked
// with a funnel shift, centroids from shared memory, the token's norm applied once), or
// the fp16 window ring (rotated domain). Queries are rotated once per block.
constexpr int kMaxG = 8;        // query heads per KV head
constexpr int kAttnThreads = 128;
constexpr int kStageBytes = 12288;   // value rows staged per sub-tile
constexpr int kKStageBytes = 17408;  // key code rows of a tile (128 tokens of up to 136 bytes: tq4 at D = 256)

// One token's row on one side: format 16 (fp16), 32 (f32) or the code width in bits.
struct RowRef {
  const uint32_t* p;
  int fmt;
  float scale;  // codes: norm/√D; rows: 1
};

__device__ __forceinline__ RowRef row_ref(const DevKVLayer& L, const DevKVSide& S, int g, size_t t, bool from_ring) {
  RowRef r;
  if (S.bits >= 16) {
    r.p = reinterpret_cast<const uint32_t*>(S.rows + (static_cast<size_t>(g) * L.cap + t) * S.row_bytes);
    r.fmt = S.bits, r.scale = 1;
  } else if (from_ring) {
    r.p = reinterpret_cast<const uint32_t*>(S.ring + (static_cast<size_t>(g) * L.ring_rows + t % L.ring_rows) * S.dim);
    r.fmt = 16, r.scale = 1;
  } else {
    r.p = reinterpret_cast<const uint32_t*>(S.rows + (static_cast<size_t>(g) * L.cap + t) * S.row_bytes);
    r.fmt = S.bits;
    const uint16_t n = S.norms[static_cast<size_t>(g) * L.cap + t];
    r.scale = __half2float(*reinterpret_cast<const __half*>(&n)) * rsqrtf(static_cast<float>(S.dim));
  }
  return r;
}

// Values 8·lane … 8·lane + 7 of a row (without its scale): fp16, f32 or codes.
__device__ __forceinline__ void row8(const uint32_t* row, int fmt, bool nib3, int lane, float (&v)[8], const float* cents) {
  if (fmt == 16) {
    const uint4 raw = reinterpret_cast<const uint4*>(row)[lane];
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      v[2 * i] = f.x, v[2 * i + 1] = f.y;
    }
  } else if (fmt == 32) {
    const float4 a = reinterpret_cast<const float4*>(row)[2 * lane], b = reinterpret_cast<const float4*>(row)[2 * lane + 1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else if (fmt == 3 && nib3) {
    const uint32_t sel = nib3_codes8(row, lane / 4, lane % 4);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = cents[(sel >> (4 * i)) & 7];
  } else {
    const uint32_t mask = (1u << fmt) - 1;
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // 4 codes ≤ 32 bits per window
      const int o = (8 * lane + 4 * half) * fmt;
      const uint32_t win = __funnelshift_r(row[o >> 5], row[(o >> 5) + 1], o & 31);
#pragma unroll
      for (int i = 0; i < 4; ++i) v[4 * half + i] = cents[(win >> (i * fmt)) & mask];
    }
  }
}

// Scores of a tile's n tokens against the G query heads into ps[token][head] (scaled),
// TPT threads per token, each taking every TPT-th 4-dim chunk, the tile in passes of
// kAttnThreads / TPT tokens. TPT = 1 issues the fewest instructions (full tiles of codes);
// TPT = 4 has a quarter of the dependent steps per token (a tile with few tokens; fp16
// rows, whose loads then coalesce better).
template <int TPT, int GM, int KB>
__device__ __forceinline__ void score_tile(const DevKVLayer& L, int g, int G, int Dk, size_t base, int n, size_t bound,
                                           bool k_staged, int k_rows, const uint32_t* kstage, const float (&qs)[GM][256],
                                           const float* ck, float scale, float (&ps)[kAttnThreads][GM]) {
  const int tid = threadIdx.x, part = tid % TPT;
  for (int pass = 0; pass * (kAttnThreads / TPT) < n; ++pass) {
    const int tt = pass * (kAttnThreads / TPT) + tid / TPT;
    float sp[GM];
#pragma unroll
    for (int h = 0; h < GM; ++h) sp[h] = 0;
    RowRef kr{nullptr, 16, 1.0f};
    if (tt < n) {
      const size_t t = base + tt;
      kr = row_ref(L, L.k, g, t, t >= bound);
      if (k_staged && tt < k_rows) kr.p = kstage + tt * (L.k.row_bytes / 4);
      // 4 dims per step (Dk % 4 == 0): one float4 of each query head from shared memory.
      const float4* q4 = reinterpret_cast<const float4*>(&qs[0][0]);
      if (kr.fmt == 16) {
#pragma unroll 4
        for (int j = 4 * part; j < Dk; j += 4 * TPT) {
          const uint2 raw = reinterpret_cast<const uint2*>(kr.p)[j >> 2];
          const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
          const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
#pragma unroll
          for (int h = 0; h < GM; ++h) {
            const float4 qv = q4[h * 64 + (j >> 2)];
            if (h < G) sp[h] += (qv.x * a.x + qv.y * a.y) + (qv.z * b.x + qv.w * b.y);
          }
        }
      } else if (!KB && kr.fmt == 32) {
#pragma unroll 4
        for (int j = 4 * part; j < Dk; j += 4 * TPT) {
          const float4 kv = reinterpret_cast<const float4*>(kr.p)[j >> 2];
#pragma unroll
          for (int h = 0; h < GM; ++h) {
            const float4 qv = q4[h * 64 + (j >> 2)];
            if (h < G) sp[h] += (qv.x * kv.x + qv.y * kv.y) + (qv.z * kv.z + qv.w * kv.w);
          }
        }
      } else {
        const int bits = KB ? KB : kr.fmt;
        const bool nib = bits == 3 && L.k.nib3;  // (the nibble window below: 4 codes 4 bits apart)
        const int step = nib ? 4 : bits;
        const uint32_t mask = (1u << bits) - 1;
#pragma unroll 4
        for (int j = 4 * part; j < Dk; j += 4 * TPT) {
          const int o = j * bits;
          const uint32_t win = nib ? nib3_codes8(kr.p, j / 32, (j % 32) / 8) >> (4 * (j % 8))
                                   : __funnelshift_r(kr.p[o >> 5], kr.p[(o >> 5) + 1], o & 31);  // 4 codes ≤ 32 bits
          const float c0 = ck[win & mask], c1 = ck[(win >> step) & mask], c2 = ck[(win >> (2 * step)) & mask],
                      c3 = ck[(win >> (3 * step)) & mask];
#pragma unroll
          for (int h = 0; h < GM; ++h) {
            const float4 qv = q4[h * 64 + (j >> 2)];
            if (h < G) sp[h] += (qv.x * c0 + qv.y * c1) + (qv.z * c2 + qv.w * c3);
          }
        }
      }
    }
#pragma unroll
    for (int h = 0; h < GM; ++h)  // (every lane: tt < n is uniform over a token's threads)
#pragma unroll
      for (int o = 1; o < TPT; o <<= 1) sp[h] += __shfl_xor_sync(0xffffffffu, sp[h], o);
    if (part == 0 && tt < n)
#pragma unroll
      for (int h = 0; h < GM; ++h) ps[tt][h] = sp[h] * kr.scale * scale;
  }
}

// Partial results: m, l per (query, head, split), acc [query][head][split][Dv].
// GM ≥ the query heads per KV head (arrays sized at compile time: registers); KB, VB: the
// code width of K and V when known at compile time (0: read from the layer).
template <int GM, int KB, int VB>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(DevKVLayer L, const float* q, const int32_t* pos,
                                                                 int n_splits, size_t n_tokens, float scale,
                                                                 float* part_ml, float* part_acc) {
  pdl_enter();
  const int g = blockIdx.x, qi = blockIdx.y, split = blockIdx.z, tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int G = L.n_heads / L.n_kv_heads, hd = L.head_dim;
  const int Dk = L.k.dim, Dv = L.v.dim;
  __shared__ float qs[GM][256];
  __shared__ float ck[256], cv[256];  // centroids (codes sides)
  __shared__ __align__(16) float ps[kAttnThreads][GM];  // weights of the tile's tokens per head
  __shared__ float red[kAttnThreads / 32][GM];
  __shared__ float tile_m[GM], tile_l[GM];
  __shared__ __align__(16) uint32_t stage[kStageBytes / 4];
  __shared__ uint32_t kstage[kKStageBytes / 4];
  const size_t ring_lo = L.window > 0 ? static_cast<size_t>(*L.ring_lo) : 0;
  if (L.k.bits < 16)
    for (int i = tid; i < (1 << L.k.bits); i += blockDim.x) ck[i] = L.k.centroids[i];
  if (L.v.bits < 16)
    for (int i = tid; i < (1 << L.v.bits); i += blockDim.x) cv[i] = L.v.centroids[i];
  // Queries in K's domain: rotated (Π_K·q) when K holds codes.
  // (every load of the block's queries in flight at once: Dk ≤ 2 · kAttnThreads)
#pragma unroll
  for (int h = 0; h < GM; ++h) {
    if (h >= G) break;
    const float* qh = q + (static_cast<size_t>(qi) * L.n_heads + g * G + h) * hd;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int i = tid + k * kAttnThreads;
      if (i < Dk) qs[h][i] = i < hd ? qh[i] * (L.k.bits >= 16 ? 1.0f : L.k.signs[static_cast<size_t>(g) * Dk + i]) : 0.0f;
    }
  }
  if (L.k.bits < 16) {  // (the 1/√D of the rotation is applied with each token's scale)
    fwht_warps(&qs[0][0], G, 256, Dk);
    scale *= rsqrtf(static_cast<float>(Dk));
  }
  __syncthreads();
  const size_t p = pos[qi];
  const size_t end_all = min(static_cast<size_t>(p) + 1, n_tokens);
  const size_t per = (end_all + n_splits - 1) / n_splits;
  const size_t t0 = min(static_cast<size_t>(split) * per, end_all), t1 = min(t0 + per, end_all);
  // Window: tokens from `bound` on are read as fp16 ring rows (codes sides).
  size_t bound = end_all;
  if (L.window > 0) bound = max(ring_lo, p + 1 > static_cast<size_t>(L.window) ? p + 1 - L.window : size_t(0));
  // acc: this warp's partial values for dims 8·lane … 8·lane + 7 (warps take turns over tokens).
  const bool lane_live = 8 * lane < Dv;  // Dv % 8 == 0
  float m[GM], l[GM], acc[GM][8];
#pragma unroll
  for (int h = 0; h < GM; ++h) {
    m[h] = -INFINITY, l[h] = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[h][i] = 0;
  }
  for (size_t base = t0; base < t1; base += kAttnThreads) {
    const int n = static_cast<int>(min(static_cast<size_t>(kAttnThreads), t1 - base));
    // Scores: this thread's token against every query head.
    // Code rows of K (not the ring) staged in shared memory with coalesced loads: a thread
    // then reads its own row there (an odd row stride in words: no bank conflicts) instead
    // of 32 rows per load instruction through L1.
    const int k_rows = L.k.bits >= 16 ? 0 : static_cast<int>(min(static_cast<size_t>(n), bound > base ? bound - base : 0));
    const bool k_staged = k_rows > 0 && kAttnThreads * L.k.row_bytes <= kKStageBytes;
    if (k_staged) {
      const uint32_t* src = reinterpret_cast<const uint32_t*>(L.k.rows + (static_cast<size_t>(g) * L.cap + base) * L.k.row_bytes);
      for (int w = tid; w < k_rows * L.k.row_bytes / 4; w += kAttnThreads) kstage[w] = src[w];
      __syncthreads();
    }
    if (L.k.bits < 16 && n == kAttnThreads)
      score_tile<1, GM, KB>(L, g, G, Dk, base, n, bound, k_staged, k_rows, kstage, qs, ck, scale, ps);
    else
      score_tile<4, GM, KB>(L, g, G, Dk, base, n, bound, k_staged, k_rows, kstage, qs, ck, scale, ps);
    __syncthreads();
    float s[GM];  // this thread's token's scores
#pragma unroll
    for (int h = 0; h < GM; ++h) s[h] = tid < n ? ps[tid][h] : -INFINITY;
    // Tile max per head, then the new running max.
#pragma unroll
    for (int h = 0; h < GM; ++h) {
      float v = s[h];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
      if (lane == 0) red[warp][h] = v;
    }
    __syncthreads();
    if (tid < GM) {
      float v = red[0][tid];
      for (int w = 1; w < kAttnThreads / 32; ++w) v = fmaxf(v, red[w][tid]);
      tile_m[tid] = v;
    }
    __syncthreads();
    float corr[GM];
#pragma unroll
    for (int h = 0; h < GM; ++h) {
      const float mn = fmaxf(m[h], tile_m[h]);
      corr[h] = expf(m[h] - mn);  // m = −∞ at first: 0
      m[h] = mn;
      const float pv = tid < n ? expf(s[h] - mn) : 0.0f;
      ps[tid][h] = pv;
      s[h] = pv;
    }
    // Tile sums per head (the red slots are free again after the barrier above).
    __syncthreads();
#pragma unroll
    for (int h = 0; h < GM; ++h) {
      const float v = warp_sum(s[h]);
      if (lane == 0) red[warp][h] = v;
    }
    __syncthreads();
    if (tid < GM) {
      float v = 0;
      for (int w = 0; w < kAttnThreads / 32; ++w) v += red[w][tid];
      tile_l[tid] = v;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < GM; ++h) {
      l[h] = l[h] * corr[h] + tile_l[h];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[h][i] *= corr[h];
    }
    // Values: a warp per token (warps take turns), lane owns dims 8·lane … 8·lane + 7. Rows
    // (not the window ring) are staged in shared memory a few KB at a time, every load of a
    // sub-tile in flight at once; their scales are folded into the tile's weights.
    auto add_token = [&](const uint32_t* row, int fmt, int tt) {
      float val[8];
      if (VB && fmt == VB) row8(row, VB, L.v.nib3, lane, val, cv);  // compile-time width: constant shifts
      else row8(row, fmt, L.v.nib3, lane, val, cv);
      const float* w = ps[tt];
#pragma unroll
      for (int h = 0; h < GM; ++h) {
        if (h >= G) continue;
        const float wh = w[h];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[h][i] += wh * val[i];
      }
    };
    const int n_rows = L.v.bits >= 16 ? n : static_cast<int>(min(static_cast<size_t>(n), bound > base ? bound - base : 0));
    const int rb = L.v.row_bytes, per_sub = max(1, min(kAttnThreads, kStageBytes / rb));
    for (int s0 = 0; s0 < n_rows; s0 += per_sub) {
      const int cnt = min(per_sub, n_rows - s0);
      const uint32_t* src = reinterpret_cast<const uint32_t*>(L.v.rows + (static_cast<size_t>(g) * L.cap + base + s0) * rb);
      for (int w = tid; w < cnt * rb / 4; w += kAttnThreads) stage[w] = src[w];
      if (L.v.bits < 16 && tid < cnt) {
        const uint16_t nb = L.v.norms[static_cast<size_t>(g) * L.cap + base + s0 + tid];
        const float vs = __half2float(*reinterpret_cast<const __half*>(&nb)) * rsqrtf(static_cast<float>(Dv));
#pragma unroll
        for (int h = 0; h < GM; ++h) ps[s0 + tid][h] *= vs;
      }
      __syncthreads();
      if (lane_live)
        for (int tt = warp; tt < cnt; tt += kAttnThreads / 32) add_token(stage + tt * (rb / 4), L.v.bits, s0 + tt);
      __syncthreads();
    }
    if (lane_live)
      for (int tt = n_rows + warp; tt < n; tt += kAttnThreads / 32) add_token(row_ref(L, L.v, g, base + tt, true).p, 16, tt);
    __syncthreads();  // ps, red, tile_* are rewritten by the next tile
  }
  // The warps' partial values, added in shared memory (stage is free), head by head.
  float* sum = reinterpret_cast<float*>(stage);  // [4 warps][256]
#pragma unroll
  for (int h = 0; h < GM; ++h) {
    if (h >= G) continue;
    if (lane_live)
#pragma unroll
      for (int i = 0; i < 8; ++i) sum[warp * 256 + 8 * lane + i] = acc[h][i];
    __syncthreads();
    const size_t base = (static_cast<size_t>(qi) * L.n_heads + g * G + h) * n_splits + split;
    for (int d = tid; d < Dv; d += kAttnThreads)
      part_acc[base * Dv + d] = (sum[d] + sum[256 + d]) + (sum[512 + d] + sum[768 + d]);
    if (tid == 0) part_ml[2 * base] = m[h], part_ml[2 * base + 1] = l[h];
    __syncthreads();
  }
}

// ---- attention on tensor cores (sm_80+: mma.sync m16n8k16, fp16 in, f32 accumulate) ----
// grid (kv head, query, split) as above, kTcWarps warps per block. Each warp owns every
// kTcWarps-th chunk of 16 tokens of the split and streams them through a two-stage cp.async
// pipeline of raw rows: fp16 rows land padded to R halves (ready for ldmatrix), code rows
// land as stored and are decoded, half the dims at a time, into an fp16 tile (3-bit codes
// by prmt from a register table, see nib3; 2/4-bit through a shared table of centroid
// pairs; 8-bit one lookup per code; 3- and 4-bit codes and k8v3 of 256-dim heads with at most
// 4 query heads per KV head skip the tile: the direct path, below). Scores are K̂ (16 tokens × D) · Q (D × 8 query-head
// columns); each warp keeps its own online softmax per head (the running max moves only by
// 2^8, so rescaling is rare); values are added as V̂ᵀ (D × 16 tokens) · P (16 tokens × 8 heads). Queries and weights enter the products as
// fp16 hi + lo pairs (≈ 22 significant bits), so fp16 caches agree with the CPU to float
// rounding; code values are their centroids in fp16 (≤ 2^-11 relative). The warps' partials
// are combined at the end into the split partials attention_merge_kernel reads.
constexpr int kTcWarps = 4, kTcTok = 16;

// Shared memory of attention_tc_kernel, bytes (the host sizes the launch with the same).
struct TcLayout {
  int R;             // halves per tile row: D + 8 (rows 16 bytes apart in banks: conflict-free ldmatrix)
  int k_raw, v_raw;  // a chunk's raw K / V rows in a stage
  int stage;         // K rows, V rows, 16 K norms, 16 V norms
  int tile;          // the decoded fp16 tile, half the dims at a time: [16][D/2 + 8] (0: no code side, direct path)
  int warp;          // per warp: 2 stages, the tile, P as hi/lo [2][8 heads][16 tokens] halves (direct path:
                     // as the values' B words, [8 columns][4][8] words)
  int head;          // before the warps' areas: queries hi/lo [2][8][R] halves, tables [K, V][256] half2
  __host__ __device__ static int raw_bytes(const DevKVSide& S, int R) {
    return S.bits == 16 ? kTcTok * R * 2 : (kTcTok * S.row_bytes + 16 + 15) / 16 * 16;
  }
  __host__ __device__ TcLayout(const DevKVLayer& L, int D, bool direct) : R(D + 8) {
    k_raw = raw_bytes(L.k, R), v_raw = raw_bytes(L.v, R);
    stage = k_raw + v_raw + 64;
    tile = !direct && (L.k.bits < 16 || L.v.bits < 16) ? kTcTok * (D / 2 + 8) * 2 : 0;
    warp = 2 * stage + tile + (direct ? 2 : 1) * 2 * 8 * kTcTok * 2;
    if (warp < 32 * D) warp = 32 * D;  // (the end's combine keeps [8 heads][D] floats per warp)
    head = 2 * 8 * R * 2 + 2 * 256 * 4;
  }
  __host__ __device__ int bytes() const { return head + kTcWarps * warp; }
};

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  TQ_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                       : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                       : "r"(smem_addr(p))
                       : "memory"));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  TQ_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                       : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                       : "r"(smem_addr(p))
                       : "memory"));
}
// c += a (16×16, row) · b (16×8, col); fragments as the PTX ISA lays them out.
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  TQ_SM80(asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}
// 2^x by the SFU alone (ex2.approx.ftz: exp2f's own instruction without its range fix-up,
// 4 instructions → 1), for the softmaxes' weights: x ≤ 8 there, and a result below 2^-126
// flushes to 0 (it is 0 in the fp16 weights the products take anyway). −∞ → 0.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// x = hi + lo to ≈ 22 bits, both fp16.
__device__ __forceinline__ void split_f16(float x, __half& hi, __half& lo) {
  hi = __float2half_rn(x);
  lo = __float2half_rn(x - __half2float(hi));
}

// A 3-bit codebook's fp16 centroids as byte planes for prmt (a register table: no shared
// memory lookups): low bytes of entries 0-3 and 4-7, high bytes likewise.
struct Prmt8 {
  uint32_t lo0, lo1, hi0, hi1;
};
__device__ __forceinline__ Prmt8 prmt8_table(const float* cents) {
  uint32_t lo[2] = {0, 0}, hi[2] = {0, 0};
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const uint32_t h = __half_as_ushort(__float2half_rn(cents[e]));
    lo[e >> 2] |= (h & 0xFFu) << (8 * (e & 3));
    hi[e >> 2] |= (h >> 8) << (8 * (e & 3));
  }
  return {lo[0], lo[1], hi[0], hi[1]};
}
// 8 codes as the nibbles of s (bit 3 clear; prmt reads the low 16 bits) → their 8 centroids
// as 4 half2 words.
__device__ __forceinline__ uint4 decode8_sel(uint32_t s, const Prmt8& t) {
  const uint32_t sb = s >> 16;
  const uint32_t la = __byte_perm(t.lo0, t.lo1, s), ha = __byte_perm(t.hi0, t.hi1, s);
  const uint32_t lb = __byte_perm(t.lo0, t.lo1, sb), hb = __byte_perm(t.hi0, t.hi1, sb);
  return make_uint4(__byte_perm(la, ha, 0x5140), __byte_perm(la, ha, 0x7362), __byte_perm(lb, hb, 0x5140),
                    __byte_perm(lb, hb, 0x7362));
}
// 8 4-bit codes as the nibbles of w (code j at bits 4j) → their 8 centroids as 4 half2 words,
// for a codebook symmetric about 0 (lloyd_max_codebook makes it exactly so: c[k] = −c[15 − k])
// from a table of its upper half t = c[8 … 15]: codes 8-15 are t[k − 8], codes 0-7 are
// −t[7 − k] — the low 3 bits flipped where bit 3 is clear, then the fp16 sign bit set there.
__device__ __forceinline__ uint4 decode8_sym4(uint32_t w, const Prmt8& t) {
  const uint32_t n = ~w & 0x88888888u;  // bit 3 of the codes 0-7 (the negative half)
  uint4 d = decode8_sel((w ^ ((n >> 1) | (n >> 2) | (n >> 3))) & 0x77777777u, t);
  // Word k holds codes 2k and 2k + 1: their sign bits (15, 31) from n's bits 8k + 3 and 8k + 7,
  // i.e. bit 7 of byte k of n << 4 and of n.
  const uint32_t n4 = n << 4;
  d.x ^= __byte_perm(n4, n, 0x4000) & 0x80008000u;
  d.y ^= __byte_perm(n4, n, 0x5010) & 0x80008000u;
  d.z ^= __byte_perm(n4, n, 0x6020) & 0x80008000u;
  d.w ^= __byte_perm(n4, n, 0x7030) & 0x80008000u;
  return d;
}

// The code sides' centroid tables of a block (K, V): 3-bit as register tables (t3), 2/4-bit
// as shared tables of centroid pairs and 8-bit of single centroids (lut: [K, V][256] half2),
// filled by the block's threads (kb, vb: the sides' widths; fp16 sides get none); with regs4,
// 4-bit as register tables of the codebook's upper half (decode8_sym4) instead.
__device__ __forceinline__ void kv_tables(const DevKVLayer& L, int kb, int vb, Prmt8 (&t3)[2], __half2* lut,
                                          bool regs4 = false) {
  for (int side = 0; side < 2; ++side) {
    const DevKVSide& S = side ? L.v : L.k;
    const int b = side ? vb : kb;
    t3[side] = {};
    if (b == 3) {
      t3[side] = prmt8_table(S.centroids);
    } else if (b == 4 && regs4) {  // 4-bit codes by decode8_sym4: the codebook's upper half
      t3[side] = prmt8_table(S.centroids + 8);
    } else if (b == 2 || b == 4) {
      for (int i = threadIdx.x; i < (1 << (2 * b)); i += blockDim.x)
        lut[side * 256 + i] = __floats2half2_rn(S.centroids[i & ((1 << b) - 1)], S.centroids[i >> b]);
    } else if (b == 8) {
      for (int i = threadIdx.x; i < 256; i += blockDim.x)
        reinterpret_cast<__half*>(lut + side * 256)[i] = __float2half_rn(S.centroids[i]);
    }
  }
}

// One nib3 group's 32 codes (its three words w) → their 32 fp16 centroids as 4 uint4 (codes
// 0-7, 8-15, 16-23 from the words' low nibble bits, 24-31 from their top bits).
__device__ __forceinline__ void decode_nib3_group(const uint32_t* w, const Prmt8& t3, uint4* out) {
  const uint32_t w0 = w[0], w1 = w[1], w2 = w[2];
  out[0] = decode8_sel(w0 & 0x77777777u, t3);
  out[1] = decode8_sel(w1 & 0x77777777u, t3);
  out[2] = decode8_sel(w2 & 0x77777777u, t3);
  out[3] = decode8_sel(((w0 >> 3) & 0x11111111u) | ((w1 >> 2) & 0x22222222u) | ((w2 >> 1) & 0x44444444u), t3);
}

// cp.async of a chunk's 16 rows of one side into its stage: fp16 rows padded to D + 8
// halves (rows at or past n_valid zero-filled: their weight is 0, and 0 · garbage could be
// NaN), code rows and their 16 norms as stored. bits, rb: the side's format and bytes per
// stored row (compile-time constants where the format is); row: the chunk's first row of S.
template <int D>
__device__ __forceinline__ void issue_side(const DevKVSide& S, int bits, int rb, size_t row, unsigned char* dst,
                                           unsigned char* ndst, int lane, int n_valid) {
  const uint8_t* src = S.rows + row * rb;
  if (bits == 16) {
    constexpr int LPT = D / 8, RPI = 32 / LPT;
    const int j = lane % LPT, r0 = lane / LPT;
#pragma unroll
    for (int k = 0; k < kTcTok / RPI; ++k) {
      const int r = k * RPI + r0;
      cp_async16(dst + r * (D + 8) * 2 + 16 * j, src + r * 2 * D + 16 * j, r < n_valid);
    }
  } else {
#pragma unroll
    for (int k = 0; k < (rb + 31) / 32; ++k)  // 16 rows = rb pieces
      if (lane + 32 * k < rb) cp_async16(dst + 16 * (lane + 32 * k), src + 16 * (lane + 32 * k), true);
    if (lane < 2) cp_async16(ndst + 16 * lane, S.norms + row + 8 * lane, true);
  }
}

// 8 codes of B bits from bit sh of w[0], w[1] → their fp16 centroids (2 and 4 bits: a
// shared table of centroid pairs; 8 bits: of single centroids).
template <int B>
__device__ __forceinline__ uint4 decode8(const uint32_t* w, int sh, const __half2* lut) {
  if constexpr (B == 8) {
    const __half* c1 = reinterpret_cast<const __half*>(lut);
    uint32_t o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint32_t word = w[e >> 1] >> (16 * (e & 1));
      const __half2 h = __halves2half2(c1[word & 0xFF], c1[(word >> 8) & 0xFF]);
      o[e] = *reinterpret_cast<const uint32_t*>(&h);
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
  } else {
    const uint32_t win = __funnelshift_r(w[0], w[1], sh), pm = (1u << (2 * B)) - 1;
    uint32_t o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const __half2 h = lut[(win >> (2 * B * e)) & pm];
      o[e] = *reinterpret_cast<const uint32_t*>(&h);
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
  }
}

// Dims [half·D/2, half·D/2 + D/2) of the chunk's 16 rows of one code side into the fp16
// tile [16][D/2 + 8] (without the tokens' norms): D/16 lanes per row, 8 codes per lane; rb:
// bytes per stored row (a compile-time constant where the format is). A full chunk of
// stored rows decodes as straight-line code (the tokens interleave; rows past n_valid hold
// whatever codes, which decode to finite centroids and get weight 0); with window tokens,
// tokens at or past n_coded come from the fp16 ring (ring: this head's ring rows; c: the
// chunk's first token, c_mod = c mod ring_rows), at or past n_valid are zeros. The window
// rows are read first, unconditionally (any row of the ring buffer; used only for window
// tokens), so their loads go out together rather than one round trip per token.
template <int D, int B>
__device__ __forceinline__ void decode_tile_b(int half, int rb, const uint32_t* raw, const __half2* lut,
                                              __half* tile, int lane, int n_valid, int n_coded, const __half* ring,
                                              int ring_rows, int c_mod) {
  constexpr int R = D / 2 + 8, LPT = D / 16, TPP = 32 / LPT;
  const int j = lane % LPT, i0 = lane / LPT;
  const int lane_bit = i0 * rb * 8 + 8 * B * (j + half * LPT), sh = lane_bit & 31;
  const uint32_t* wl = raw + (lane_bit >> 5);
  __half* tl = tile + i0 * R + 8 * j;
  if (n_coded >= n_valid) {  // (rows past n_valid decode to finite centroids; their weight is 0)
#pragma unroll
    for (int k = 0; k < kTcTok / TPP; ++k)
      *reinterpret_cast<uint4*>(tl + k * TPP * R) = decode8<B>(wl + k * TPP * rb / 4, sh, lut);
    return;
  }
  constexpr int kRows = kTcTok / TPP, kBatch = kRows < 4 ? kRows : 4;  // rows per lane; window loads in flight together
#pragma unroll
  for (int k0 = 0; k0 < kRows; k0 += kBatch) {
    uint4 win[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
      win[k] = reinterpret_cast<const uint4*>(ring + ((c_mod + (k0 + k) * TPP + i0) % ring_rows) * D)[j + half * LPT];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = (k0 + k) * TPP + i0;
      uint4 out = i < n_valid ? win[k] : make_uint4(0, 0, 0, 0);
      if (i < n_coded) out = decode8<B>(wl + (k0 + k) * TPP * rb / 4, sh, lut);  // (decodes only coded rows)
      *reinterpret_cast<uint4*>(tl + (k0 + k) * TPP * R) = out;
    }
  }
}
// The same for 3-bit codes (nib3 layout, D % 32 == 0): a lane decodes whole groups of 32
// codes: three masks and a gather of the top bits make the prmt selectors of the group's
// 32 centroids (a register table: no shared-memory lookups, short dependency chains).
template <int D>
__device__ __forceinline__ void decode_tile_nib3(int half, int rb, const uint32_t* raw, const Prmt8& t3, __half* tile,
                                                 int lane, int n_valid, int n_coded, const __half* ring, int ring_rows,
                                                 int c_mod) {
  constexpr int R = D / 2 + 8, GPR = D / 64, GROUPS = kTcTok * GPR;  // groups per half row; per pass
  const bool plain = n_coded >= n_valid;  // (rows past n_valid decode to finite centroids; their weight is 0)
#pragma unroll
  for (int q0 = 0; q0 < GROUPS; q0 += 32) {
    const int q = q0 + lane, i = q / GPR, gg = q % GPR, g = half * GPR + gg;
    if (GROUPS % 32 != 0 && q >= GROUPS) break;  // (D = 64: 16 groups)
    uint4 win[4];  // the window row (see decode_tile_b), in chunks that reach the window
    if (!plain) {
      const uint4* src = reinterpret_cast<const uint4*>(ring + ((c_mod + i) % ring_rows) * D) + 4 * g;
#pragma unroll
      for (int e = 0; e < 4; ++e) win[e] = src[e];
    }
    uint4* out = reinterpret_cast<uint4*>(tile + i * R + 32 * gg);
    if (plain || i < n_coded) {
      decode_nib3_group(raw + i * (rb / 4) + 3 * g, t3, out);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e) out[e] = i < n_valid ? win[e] : make_uint4(0, 0, 0, 0);
    }
  }
}
template <int D>
__device__ __forceinline__ void decode_tile(int half, int b, int rb, const uint32_t* raw, const Prmt8& t3,
                                            const __half2* lut, __half* tile, int lane, int n_valid, int n_coded,
                                            const __half* ring, int ring_rows, int c_mod) {
  if (b == 3) decode_tile_nib3<D>(half, rb, raw, t3, tile, lane, n_valid, n_coded, ring, ring_rows, c_mod);
  else if (b == 4) decode_tile_b<D, 4>(half, rb, raw, lut, tile, lane, n_valid, n_coded, ring, ring_rows, c_mod);
  else if (b == 2) decode_tile_b<D, 2>(half, rb, raw, lut, tile, lane, n_valid, n_coded, ring, ring_rows, c_mod);
  else decode_tile_b<D, 8>(half, rb, raw, lut, tile, lane, n_valid, n_coded, ring, ring_rows, c_mod);
}

// The direct path (3- or 4-bit codes on both sides, or 8-bit K with 3-bit V; D = 256): codes
// decode straight into the mma fragments, no fp16 tile (a group of 32 codes is a nib3 group, 4
// words of 4-bit codes or 8 of bytes: direct_decode8). The products' inner and row indices may follow any order of the
// dims as long as both operands (and the output's reader) agree, so each lane is given
// dims that sit together in storage:
// - scores: k-step kk's column 2·tig + (e & 1) + 8·(e >> 1) is stored dim 64·tig + 4·kk + e,
//   so a lane's 64 dims of a row are its two nib3 groups 2·tig and 2·tig + 1, and one
//   selector's 8 centroids are the A words of two k-steps (the queries are laid out in
//   shared memory in this order: direct_q_dim);
// - values: the mma's inner index pairs a token with a dim parity (direct_values), so an A
//   word is two dims of one token; m-tile mt's rows gid and gid + 8 are stored dims
//   32·gid + 4·mt + (0, 1) and (2, 3), so a lane's 32 dims are nib3 group gid.
__host__ __device__ constexpr int direct_q_dim(int p) {  // stored dim at column p of the scores' k order
  return 64 * ((p & 7) >> 1) + 4 * (p >> 4) + (p & 1) + 2 * ((p >> 3) & 1);
}
// A chunk's rows as the direct path reads them: every token coded (kPlain), every token in
// the fp16 window (kRing: no codes are copied or decoded), or both (kMixed).
enum DirectRows { kMixed, kPlain, kRing };
// One chunk row (token r) as the direct path reads it: its code words in the stage and, in
// chunks that reach the window, its fp16 window row — read unconditionally (any row of
// the ring buffer; the value is used only for tokens in the window), so that the loads of
// a row go out together instead of one round trip each behind a branch.
struct DirectRow {
  const uint32_t* raw;
  const __half* ring;
  bool coded, valid;
};
template <int kRows>
__device__ __forceinline__ DirectRow direct_row(const uint32_t* raw, int rw, int r, int n_valid, int n_coded,
                                                const __half* ring, int ring_rows, int c_mod) {
  return {raw + r * rw, kRows == kPlain ? nullptr : ring + ((c_mod + r) % ring_rows) * 256,
          kRows == kPlain || (kRows == kMixed && r < n_coded), r < n_valid};
}
// Codes 8·part … 8·part + 7 of group g (32 codes) of a stored row as the nibbles of one word:
// B = 3, the nib3 layout's selectors (bit 3 clear); B = 4, word 4g + part of the plain layout.
template <int B>
__device__ __forceinline__ uint32_t direct_codes8(const uint32_t* raw, int g, int part) {
  if constexpr (B == 4) return raw[4 * g + part];
  else return nib3_codes8(raw, g, part);
}
// Codes 8·part … 8·part + 7 of group g (32 codes) of a stored row → their 8 centroids: B = 3,
// the nib3 layout (t: the codebook); B = 4, the plain layout, where word 4g + part holds
// them as nibbles (t: the codebook's upper half, decode8_sym4); B = 8, bytes 32g + 8·part …
// looked up one by one in the shared table lut8 (kv_tables: 256 fp16 centroids).
template <int B>
__device__ __forceinline__ uint4 direct_decode8(const uint32_t* raw, int g, int part, const Prmt8& t,
                                                const __half* lut8) {
  if constexpr (B == 8) {
    const uint32_t w[2] = {raw[8 * g + 2 * part], raw[8 * g + 2 * part + 1]};
    uint32_t h[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) h[e] = __half_as_ushort(lut8[(w[e >> 2] >> (8 * (e & 3))) & 0xFFu]);
    return make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
  } else if constexpr (B == 4) {
    return decode8_sym4(direct_codes8<4>(raw, g, part), t);
  } else {
    return decode8_sel(direct_codes8<3>(raw, g, part), t);
  }
}
// 8 centroids of one selector of a row (stored dims d0 … d0 + 7, d0 a multiple of 8): codes
// when coded, the window row's values when valid, else zeros.
template <int kRows, int B>
__device__ __forceinline__ uint4 direct_words(const DirectRow& row, int g, int part, const Prmt8& t, int d0,
                                              const __half* lut8 = nullptr) {
  if constexpr (kRows == kPlain) return direct_decode8<B>(row.raw, g, part, t, lut8);
  const uint4 w = *reinterpret_cast<const uint4*>(row.ring + d0);
  if constexpr (kRows == kRing) return row.valid ? w : make_uint4(0, 0, 0, 0);
  const uint4 d = direct_decode8<B>(row.raw, g, part, t, lut8);
  return row.coded ? d : row.valid ? w : make_uint4(0, 0, 0, 0);
}
// With at most 4 query heads per KV head, the 8 columns of the B operands hold the queries'
// (and the weights') fp16 hi parts in columns 0-3 and lo parts in 4-7: one mma per tile
// gives both, added across lanes tig and tig ^ 2 (the values take them otherwise:
// direct_values).
// s += K̂ · [Q hi | Q lo] over the chunk, K̂ straight from the raw rows (stride rw words).
// Even and odd k-step pairs accumulate apart (s, s2: two independent mma chains of 8).
template <int kRows, int B>
__device__ __forceinline__ void direct_scores(float (&s)[4], float (&s2)[4], const uint32_t* kr, int rw, const __half* qh, int R,
                                              const Prmt8& t, int lane, int n_valid, int n_coded, const __half* ring,
                                              int ring_rows, int c_mod, const __half* lut8 = nullptr) {
  const int gid = lane >> 2, tig = lane & 3;
  const DirectRow r0 = direct_row<kRows>(kr, rw, gid, n_valid, n_coded, ring, ring_rows, c_mod);
  const DirectRow r1 = direct_row<kRows>(kr, rw, gid + 8, n_valid, n_coded, ring, ring_rows, c_mod);
#pragma unroll
  for (int gq = 0; gq < 2; ++gq) {
    uint4 u0[4], u1[4];  // rows gid, gid + 8
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int d0 = 64 * tig + 32 * gq + 8 * j;
      u0[j] = direct_words<kRows, B>(r0, 2 * tig + gq, j, t, d0, lut8);
      u1[j] = direct_words<kRows, B>(r1, 2 * tig + gq, j, t, d0, lut8);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t b[4];
      ldsm_x4(b, qh + (lane & 7) * R + 16 * (8 * gq + 2 * j) + (lane >> 3) * 8);
      const uint32_t a0[4] = {u0[j].x, u1[j].x, u0[j].y, u1[j].y}, a1[4] = {u0[j].z, u1[j].z, u0[j].w, u1[j].w};
      mma_16816(j & 1 ? s2 : s, a0, b[0], b[1]);
      mma_16816(j & 1 ? s2 : s, a1, b[2], b[3]);
    }
  }
}
// 4 4-bit codes (the nibbles of x's low 16 bits) → their 4 int8 centroids from a 16-entry
// table t (codes 0-7 in t[0-1], 8-15 in t[2-3]): both halves by the low 3 bits, bit 3
// choosing between them through a byte mask (a permute of 0 and ~0).
__device__ __forceinline__ uint32_t lookup16_i8(uint32_t x, const uint32_t (&t)[4]) {
  const uint32_t sel = x & 0x7777u, m = __byte_perm(0u, 0xFFFFFFFFu, (x >> 1) & 0x4444u);
  return (__byte_perm(t[2], t[3], sel) & m) | (__byte_perm(t[0], t[1], sel) & ~m);
}
// 4 codes (the low 16 bits of direct_codes8's word) → their 4 int8 table entries: 3-bit one
// permute of the 8-entry table, 4-bit lookup16_i8.
template <int B>
__device__ __forceinline__ uint32_t lookup4_i8(uint32_t x, const uint32_t (&t)[4]) {
  if constexpr (B == 4) return lookup16_i8(x, t);
  else return __byte_perm(t[0], t[1], x);
}
// The values' table of the direct path (PERF v25): V's centroids as bytes u = s + 128 (s: the
// int8 form of direct_scores_i8, V.i8_t) under a constant high byte 0x50, so that a half is
// 32 + u/32 = 36 + s/32 — exact, and one permute per 2 codes after one lookup per 4 (the
// two-plane fp16 table takes 2 lookups per 4 and the same interleaves). The weights enter
// scaled by 32/α, so Σ w·(36 + s/32) = Σ p·ĉ + 36·Σ w: the constant part is taken once per
// k-step by an mma of the same weights against 36 (kBias36) and subtracted at the end. These
// chunks take the weights' fp16 hi parts alone (rounded to 2^-12 relative, as FlashAttention's
// fp16 P; the centroids' int8 grid is off by more, attention_int8_error): half the mmas.
constexpr uint32_t kHi50 = 0x50505050u, kBias36 = 0x50805080u;  // (36.0 = 0x5080 as fp16)
// 8 codes (direct_codes8's word s) → their bytes u, 4 per word (la, lb, lookup4_i8: t the 8
// or 16 entries) → the 4 half2 words.
template <int B>
__device__ __forceinline__ uint4 decode8_v(uint32_t s, const uint32_t (&t)[4]) {
  const uint32_t la = lookup4_i8<B>(s, t), lb = lookup4_i8<B>(s >> 16, t);
  return make_uint4(__byte_perm(la, kHi50, 0x4140), __byte_perm(la, kHi50, 0x4342), __byte_perm(lb, kHi50, 0x4140),
                    __byte_perm(lb, kHi50, 0x4342));
}
// acc += V̂ᵀ · [P hi, P lo] over the chunk, V̂ straight from the raw rows. The mma's inner index
// k = 2·t + e runs over 8 tokens t and a parity e, its columns over (head q, parity e'), and the
// weights sit at e = e' only (b: [hi, lo][k-step ks][b0, b1], words P or P << 16 by the lane's
// e' = gid & 1): so an A word is two dims of one token — what a decode or a window row gives —
// and no permute pairs tokens. Lane (gid, tig) reads tokens 8·ks + tig (+4), dims of nib3
// group gid; acc[mt][k] is head tig, stored dim 32·gid + 4·mt + k. V8: the byte table (vt;
// plain chunks only), its constant part into bias.
template <int kRows, bool V8, int B>
__device__ __forceinline__ void direct_values(float (&acc)[8][4], float (&bias)[4], const uint32_t* vr, int rw,
                                              const uint32_t (&b)[2][2][2], const Prmt8& t, const uint32_t (&vt)[4],
                                              int lane, int n_valid, int n_coded, const __half* ring, int ring_rows,
                                              int c_mod) {
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    const DirectRow r0 = direct_row<kRows>(vr, rw, 8 * ks + tig, n_valid, n_coded, ring, ring_rows, c_mod);
    const DirectRow r4 = direct_row<kRows>(vr, rw, 8 * ks + tig + 4, n_valid, n_coded, ring, ring_rows, c_mod);
#pragma unroll
    for (int part = 0; part < 4; ++part) {
      uint4 w0, w4;
      if constexpr (V8) {
        w0 = decode8_v<B>(direct_codes8<B>(r0.raw, gid, part), vt);
        w4 = decode8_v<B>(direct_codes8<B>(r4.raw, gid, part), vt);
      } else {
        w0 = direct_words<kRows, B>(r0, gid, part, t, 32 * gid + 8 * part);
        w4 = direct_words<kRows, B>(r4, gid, part, t, 32 * gid + 8 * part);
      }
      const uint32_t a0[4] = {w0.x, w0.y, w4.x, w4.y}, a1[4] = {w0.z, w0.w, w4.z, w4.w};
#pragma unroll
      for (int hl = 0; hl < (V8 ? 1 : 2); ++hl) {
        mma_16816(acc[2 * part], a0, b[hl][ks][0], b[hl][ks][1]);
        mma_16816(acc[2 * part + 1], a1, b[hl][ks][0], b[hl][ks][1]);
      }
    }
    if constexpr (V8) {
      const uint32_t a[4] = {kBias36, kBias36, kBias36, kBias36};
      mma_16816(bias, a, b[0][ks][0], b[0][ks][1]);
    }
  }
}

// c += a (16×32, row, int8) · b (32×8, col, int8) in int32.
__device__ __forceinline__ void mma_16832_s8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  TQ_SM80(asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}
// The direct path's scores of a fully coded chunk on the int8 tensor cores: K̂'s centroids as
// int8 from one permute per 4 codes (3-bit: the 8-entry table in two words, K.i8_t; the fp16
// form takes 8 per 8 codes: 4 for the byte planes, 4 to interleave them — the ALU pipe, the
// kernel's busiest, is what it saves: PERF v24; 4-bit: lookup16_i8, 3 permutes and a select
// per 4 codes against decode8_sym4's 24 instructions per 8), queries as int16 in hi and lo
// int8 columns (qi8: the B fragments in lane order). k-step ks (32 dims) of lane (gid, tig)
// holds the 8 codes of group 2·tig + (ks >> 2), part ks & 3 of rows gid and gid + 8 (the same
// stored dims per lane as direct_scores). s: the scores in direct_scores' C layout, each
// column scaled by f (its head's query scale, hi or lo weight, 1/α).
template <int B>
__device__ __forceinline__ void direct_scores_i8(float (&s)[4], const uint32_t* kr, int rw, const uint2* qi8,
                                                 const DevKVSide& K, float2 f, int lane) {
  const int gid = lane >> 2, tig = lane & 3;
  const uint32_t* r0 = kr + gid * rw;
  const uint32_t* r1 = kr + (gid + 8) * rw;
  int c[2][4] = {};  // even and odd k-steps apart: two independent mma chains
#pragma unroll
  for (int ks = 0; ks < 8; ++ks) {
    const int g = 2 * tig + (ks >> 2), part = ks & 3;
    const uint2 b = qi8[ks * 32 + lane];
    const uint32_t s0 = direct_codes8<B>(r0, g, part), s1 = direct_codes8<B>(r1, g, part);
    const uint32_t a[4] = {lookup4_i8<B>(s0, K.i8_t), lookup4_i8<B>(s1, K.i8_t), lookup4_i8<B>(s0 >> 16, K.i8_t),
                           lookup4_i8<B>(s1 >> 16, K.i8_t)};
    mma_16832_s8(c[ks & 1], a, b.x, b.y);
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) s[k] = static_cast<float>(c[0][k] + c[1][k]) * (k & 1 ? f.y : f.x);
}

// D: the padded dim of both sides (64, 128, 256); KB, VB: the sides' formats compiled in
// (16: fp16 rows, else code bits; 0: the layer's, read at run time); DIRECT: the direct
// path above (D = 256, KB = VB = 3 or 4 or KB = 8 with VB = 3, at most 4 query heads per KV head).
// TcTail: after attention_tiled_kernel, the window's part of a prefill chunk — tokens from
// window_cut on, split n_splits ways into the partials' slots [base, base + n_splits) of
// stride per (query, head); {0, 0}: every token, slots [0, n_splits).
struct TcTail {
  int base = 0, stride = 0;
};
template <int D, int KB, int VB, bool DIRECT = false>
// (3 blocks per SM: the direct path compiled for 4, at 128 registers, ran 2.5% slower: PERF v25b)
__global__ void __launch_bounds__(kTcWarps * 32, 3) attention_tc_kernel(DevKVLayer L, const float* q, const int32_t* pos,
                                                                     int n_splits, size_t n_tokens, float scale,
                                                                     float* part_ml, float* part_acc, TcTail tail) {
  extern __shared__ __align__(16) unsigned char sm[];
  constexpr int R = D + 8;
  const TcLayout lay(L, D, DIRECT);
  const int g = blockIdx.x, qi = blockIdx.y, split = blockIdx.z, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tig = lane & 3;
  const int G = L.n_heads / L.n_kv_heads, hd = L.head_dim;
  const int kb = KB ? KB : L.k.bits, vb = VB ? VB : L.v.bits;
  const int rbk = KB ? kv_row_bytes(D, KB) : L.k.row_bytes, rbv = VB ? kv_row_bytes(D, VB) : L.v.row_bytes;
  __half* qh = reinterpret_cast<__half*>(sm);                      // [hi, lo][8][R]
  __half2* lut = reinterpret_cast<__half2*>(sm + 2 * 8 * R * 2);  // [K, V][256]
  unsigned char* area = sm + lay.head;
  unsigned char* mine = area + warp * lay.warp;
  // Tables and queries before waiting on the previous kernel (kv_append): the queries come
  // from the kernel before that one, which has completed and flushed by the time this one
  // launches (kv_append's blocks let it launch only after their own wait). The cache rows
  // and ring_lo are read after the wait.
  Prmt8 t3[2];
  kv_tables(L, kb, vb, t3, lut, DIRECT);  // (the tile path decodes 4-bit codes from the shared table)
  // The direct path reads its fp16 tables (window chunks, the fp16 form) from shared memory
  // where it uses them: 8 registers fewer held across the chunk loop (PERF v25).
  __shared__ Prmt8 dir_t3[2];
  if (DIRECT && tid == 0) dir_t3[0] = t3[0], dir_t3[1] = t3[1];
  // Queries as floats in the warps' area (free until the pipeline starts), in K's domain
  // (rotated, with the rotation's 1/√D, when K holds codes), then as hi/lo halves.
  // Every load is issued before any store (one round trip, not one per element: measured the
  // largest stall of a shallow decode step's attention).
  float* qf = reinterpret_cast<float*>(area);
  constexpr int kQIt = 8 * D / (kTcWarps * 32);  // (blockDim.x = kTcWarps · 32)
  float qv[kQIt];
#pragma unroll
  for (int k = 0; k < kQIt; ++k) {
    const int i = tid + k * kTcWarps * 32, h = i / D, d = i % D;
    qv[k] = 0;
    if (h < G && d < hd)
      qv[k] = q[(static_cast<size_t>(qi) * L.n_heads + g * G + h) * hd + d] *
              (kb >= 16 ? 1.0f : __ldg(L.k.signs + static_cast<size_t>(g) * D + d));
  }
#pragma unroll
  for (int k = 0; k < kQIt; ++k) qf[tid + k * kTcWarps * 32] = qv[k];
  if (kb < 16) fwht_warps(qf, G, D, D);  // (syncs before and after)
  else __syncthreads();
  const float qscale = kb < 16 ? rsqrtf(static_cast<float>(D)) : 1.0f;
  for (int i = tid; i < (DIRECT ? 4 : 8) * D; i += blockDim.x) {  // DIRECT: rows 0-3 hi, 4-7 lo
    const int h = i / D, d = i % D;
    if (DIRECT) split_f16(qf[h * D + direct_q_dim(d)] * qscale, qh[h * R + d], qh[(4 + h) * R + d]);
    else split_f16(qf[i] * qscale, qh[h * R + d], qh[8 * R + h * R + d]);
  }
  // The int8 scores (direct_scores_i8): each head's queries as int16 q = sq·(256·hi + lo) with
  // |q| ≤ 32639·sq (so that hi fits int8), the B fragments in lane order in the tables' area
  // (the direct path keeps its tables in registers): [k-step][lane][8 dims], columns 0-3 the
  // heads' hi parts, 4-7 their lo parts; i8_f: each tig's two columns' scales.
  // Only blocks whose split starts with a fully coded chunk (assuming no rewind: the decode
  // position is written by the host, before the graph, so it is read before the wait) pay for
  // it; a shallow step's window split (the critical one) does not.
  __shared__ float i8_sq[4];
  __shared__ float2 i8_f[4];  // (read per chunk: the registers are full)
  uint2* qi8 = reinterpret_cast<uint2*>(lut);
  bool use_i8 = false;
  if (DIRECT && L.k.i8_inv != 0 && tail.stride == 0) {
    const size_t p0 = pos[qi], end0 = min(p0 + 1, n_tokens);
    const size_t per0 = ((end0 + n_splits - 1) / n_splits + kTcTok - 1) / kTcTok * kTcTok;
    const size_t t00 = min(static_cast<size_t>(split) * per0, end0);
    use_i8 = per0 >= static_cast<size_t>(L.k.i8_min_split) && t00 < end0 &&
             t00 + kTcTok + static_cast<size_t>(L.window) <= p0 + 1;
  }
  if (use_i8) {
    if (warp < 4) {  // (kTcWarps = 4: a warp per head; heads ≥ G hold zeros)
      float mx = 0;
      for (int d = lane; d < D; d += 32) mx = fmaxf(mx, fabsf(qf[warp * D + d]));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      if (lane == 0) i8_sq[warp] = mx > 0 ? mx * qscale / 32639.0f : 1.0f;
    }
    __syncthreads();
    for (int j = tid; j < 8 * 32; j += blockDim.x) {  // fragment (k-step j / 32, lane j % 32): 8 dims
      const int ln = j & 31, col = ln >> 2, h = col & 3;
      const float* src = qf + h * D + 64 * (ln & 3) + 32 * (j >> 7) + 8 * ((j >> 5) & 3);
      const float4 x0 = reinterpret_cast<const float4*>(src)[0], x1 = reinterpret_cast<const float4*>(src)[1];
      const float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w}, r = qscale / i8_sq[h];
      uint32_t w[2] = {0, 0};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int v = max(-32639, min(32639, __float2int_rn(xs[e] * r))), hi = (v + 128) >> 8;
        w[e >> 2] |= (static_cast<uint32_t>(col < 4 ? hi : v - 256 * hi) & 0xFFu) << (8 * (e & 3));
      }
      qi8[j] = make_uint2(w[0], w[1]);
    }
    if (tid < 4)
      i8_f[tid] = make_float2(i8_sq[(2 * tid) & 3] * (tid < 2 ? 256.0f : 1.0f) * L.k.i8_inv,
                              i8_sq[(2 * tid + 1) & 3] * (tid < 2 ? 256.0f : 1.0f) * L.k.i8_inv);
  }
  __syncthreads();
  pdl_enter();
  const size_t ring_lo = L.window > 0 ? static_cast<size_t>(*L.ring_lo) : 0;
  const size_t p = pos[qi];
  const size_t end_all = min(p + 1, n_tokens);
  const size_t from = tail.stride ? min(window_cut(L, pos, ring_lo), end_all) : 0;  // (a multiple of 16)
  // chunks start at multiples of 16
  const size_t per = ((end_all - from + n_splits - 1) / n_splits + kTcTok - 1) / kTcTok * kTcTok;
  const size_t t0 = min(from + static_cast<size_t>(split) * per, end_all), t1 = min(t0 + per, end_all);
  const int slots = tail.stride ? tail.stride : n_splits, slot = tail.base + split;
  size_t bound = end_all;
  if (L.window > 0) bound = max(ring_lo, p + 1 > static_cast<size_t>(L.window) ? p + 1 - L.window : size_t(0));
  const size_t row0 = static_cast<size_t>(g) * L.cap;
  const __half* kring = L.k.ring ? L.k.ring + static_cast<size_t>(g) * L.ring_rows * D : nullptr;
  const __half* vring = L.v.ring ? L.v.ring + static_cast<size_t>(g) * L.ring_rows * D : nullptr;
  // The loop's positions as 32-bit offsets from t0 (a split's span is far below 2^31 tokens:
  // the 64-bit forms held registers the loop needs, PERF v25): bnd, the first offset in the
  // window (clamped to span + kTcTok), t0m = t0 mod the ring's rows.
  const int span = static_cast<int>(t1 - t0);
  const int bnd = bound <= t0 ? 0 : static_cast<int>(min(bound - t0, static_cast<size_t>(span) + kTcTok));
  const int t0m = L.ring_rows > 0 ? static_cast<int>(t0 % L.ring_rows) : 0;
  auto valid_in = [&](int c) { return min(kTcTok, span - c); };
  // The direct path keeps the addresses of the next chunk this warp copies (its code rows and
  // norms) and advances them by 4 chunks per copy: recomputed from the chunk's index at the
  // kernel's register cap they took ≈ 40 more instructions per chunk (PERF v24f).
  const size_t cw = t0 + kTcTok * warp;
  const uint8_t* kp = DIRECT ? L.k.rows + (row0 + cw) * rbk + 16 * lane : nullptr;
  const uint8_t* vp = DIRECT ? L.v.rows + (row0 + cw) * rbv + 16 * lane : nullptr;
  // (the norms' row, lanes 0-1 taking 8 each: 32 bits hold it, as the code rows of 2^32 tokens —
  // ≥ 400 GB — could not be allocated)
  uint32_t nrow = static_cast<uint32_t>(row0 + cw) + 8 * (lane & 1);
  auto issue = [&](int c, int st) {
    unsigned char* sg = mine + st * lay.stage;
    const bool in_window = c >= bnd;  // every token of the chunk in the fp16 ring: a code side's rows unread
    if constexpr (DIRECT) {  // (both sides 3- or 4-bit codes)
      if (!in_window) {
#pragma unroll
        for (int k = 0; k < (rbk + 31) / 32; ++k)  // 16 rows = rb pieces of 16 bytes
          if (lane + 32 * k < rbk) cp_async16(sg + 16 * (lane + 32 * k), kp + 512 * k, true);
#pragma unroll
        for (int k = 0; k < (rbv + 31) / 32; ++k)
          if (lane + 32 * k < rbv) cp_async16(sg + lay.k_raw + 16 * (lane + 32 * k), vp + 512 * k, true);
        if (lane < 2) {
          cp_async16(sg + lay.k_raw + lay.v_raw + 16 * lane, L.k.norms + nrow, true);
          cp_async16(sg + lay.k_raw + lay.v_raw + 32 + 16 * lane, L.v.norms + nrow, true);
        }
      }
      kp += kTcTok * kTcWarps * rbk, vp += kTcTok * kTcWarps * rbv, nrow += kTcTok * kTcWarps;
      return;
    }
    const int nv = valid_in(c);
    if (kb >= 16 || !in_window) issue_side<D>(L.k, kb, rbk, row0 + t0 + c, sg, sg + lay.k_raw + lay.v_raw, lane, nv);
    if (vb >= 16 || !in_window)
      issue_side<D>(L.v, vb, rbv, row0 + t0 + c, sg + lay.k_raw, sg + lay.k_raw + lay.v_raw + 32, lane, nv);
  };

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};  // heads 2·tig, 2·tig + 1
  constexpr int MT = DIRECT ? D / 32 : D / 16;
  float acc[MT][4];  // Oᵀ: dims 16·mt + gid (+8) × heads 2·tig (+1); direct path: see direct_values
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0;
  float bias[4] = {0, 0, 0, 0};  // direct path, V's byte table: 36 · Σ w per column (direct_values)
  // The direct path's byte table of V (direct_values) where the int8 tables are on.
  const bool v8 = DIRECT && L.v.i8_inv != 0;
  const uint32_t vt[4] = {L.v.i8_t[0] ^ 0x80808080u, L.v.i8_t[1] ^ 0x80808080u, L.v.i8_t[2] ^ 0x80808080u,
                          L.v.i8_t[3] ^ 0x80808080u};
  const float v8_scale = 32.0f * L.v.i8_inv;
  __half* tile = reinterpret_cast<__half*>(mine + 2 * lay.stage);
  __half* pb = reinterpret_cast<__half*>(mine + 2 * lay.stage + lay.tile);  // [hi, lo][8 heads][16 tokens]
  uint32_t* pbw = reinterpret_cast<uint32_t*>(pb);  // direct path: [column gid][tig][hi, lo][ks][b0, b1]
  const float rsd = rsqrtf(static_cast<float>(D));
  const float scale2 = scale * 1.44269504088896341f;  // scores in log2 units: exp2 in the softmax; m leaves as natural
  // The direct path reads a window chunk's fp16 ring rows with plain loads after its codes
  // have landed: pull the lines this lane will read into L1 as the chunk's copies are
  // issued, so that they arrive together (a decode step near the window's start is a chain
  // of such round trips).
  auto prefetch_ring = [&](int cc) {
    if constexpr (DIRECT) {
      if (kring && cc < span && cc + kTcTok > bnd) {
        const int cm = (t0m + cc) % L.ring_rows;
        prefetch_l1(kring + static_cast<size_t>((cm + gid) % L.ring_rows) * D + 64 * tig);
        prefetch_l1(kring + static_cast<size_t>((cm + gid + 8) % L.ring_rows) * D + 64 * tig);
#pragma unroll
        for (int u = 0; u < 4; ++u)
          prefetch_l1(vring + static_cast<size_t>((cm + tig + 4 * u) % L.ring_rows) * D + 32 * gid);
      }
    }
  };
  int st = 0;
  int c = kTcTok * warp;
  if (c < span) issue(c, 0), prefetch_ring(c);
  cp_async_commit();
  for (; c < span; c += kTcTok * kTcWarps, st ^= 1) {
    if (c + kTcTok * kTcWarps < span) issue(c + kTcTok * kTcWarps, st ^ 1), prefetch_ring(c + kTcTok * kTcWarps);
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    const unsigned char* sg = mine + st * lay.stage;
    const uint16_t* kn = reinterpret_cast<const uint16_t*>(sg + lay.k_raw + lay.v_raw);
    const uint16_t* vn = kn + 16;
    const int n_valid = valid_in(c), n_coded = bnd > c ? min(kTcTok, bnd - c) : 0;
    float sa[4] = {0, 0, 0, 0}, sb[4] = {0, 0, 0, 0};  // scores by Q's hi and lo parts
    // K̂ · Q over k-steps [k0, k1) with K̂'s column 16·k0 at kt (rows `stride` halves apart).
    auto scores = [&](const __half* kt, int stride, int k0, int k1) {
#pragma unroll
      for (int kk = k0; kk < k1; kk += 2) {
        uint32_t bh[4], bl[4], a0[4], a1[4];
        const int qo = (lane & 7) * R + 16 * kk + (lane >> 3) * 8;
        ldsm_x4(bh, qh + qo);
        ldsm_x4(bl, qh + 8 * R + qo);
        const int ko = (lane & 15) * stride + 16 * (kk - k0) + (lane >> 4) * 8;
        ldsm_x4(a0, kt + ko);
        ldsm_x4(a1, kt + ko + 16);
        mma_16816(sa, a0, bh[0], bh[1]);
        mma_16816(sb, a0, bl[0], bl[1]);
        mma_16816(sa, a1, bh[2], bh[3]);
        mma_16816(sb, a1, bl[2], bl[3]);
      }
    };
    const bool plain = n_coded >= n_valid;  // (rows past n_valid decode to finite centroids; their weight is 0)
    const int c_mod = plain || L.ring_rows == 0 ? 0 : (t0m + c) % L.ring_rows;
    if constexpr (DIRECT) {
      const uint32_t* kr = reinterpret_cast<const uint32_t*>(sg);
      if (plain && use_i8) {
        direct_scores_i8<KB>(sa, kr, rbk / 4, qi8, L.k, i8_f[tig], lane);
      } else {
        const __half* klut = reinterpret_cast<const __half*>(lut);  // (8-bit K: its shared table)
        if (plain)
          direct_scores<kPlain, KB>(sa, sb, kr, rbk / 4, qh, R, dir_t3[0], lane, n_valid, n_coded, nullptr, 1, 0,
                                    klut);
        else if (n_coded == 0)
          direct_scores<kRing, KB>(sa, sb, kr, rbk / 4, qh, R, dir_t3[0], lane, n_valid, 0, kring, L.ring_rows, c_mod,
                                   klut);
        else
          direct_scores<kMixed, KB>(sa, sb, kr, rbk / 4, qh, R, dir_t3[0], lane, n_valid, n_coded, kring, L.ring_rows,
                                    c_mod, klut);
#pragma unroll
        for (int k = 0; k < 4; ++k) sa[k] += sb[k];  // (the even and odd k-steps' chains)
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) sa[k] += __shfl_xor_sync(0xffffffffu, sa[k], 2);  // hi + lo columns
    } else if (kb < 16) {
      auto pass = [&](int half) {  // (called with constants: the k-steps unroll)
        decode_tile<D>(half, kb, rbk, reinterpret_cast<const uint32_t*>(sg), t3[0], lut, tile, lane, n_valid, n_coded,
                       kring, L.ring_rows, c_mod);
        __syncwarp();
        scores(tile, D / 2 + 8, half * D / 32, (half + 1) * D / 32);
        __syncwarp();  // every lane's reads done before the tile is rewritten
      };
      pass(0);
      pass(1);
    } else {
      scores(reinterpret_cast<const __half*>(sg), R, 0, D / 16);
    }
    // Tokens gid and gid + 8 of the chunk: scaled scores (−∞ past t1), then the softmax.
    float sc[4], vs[2];
    bool valid[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = gid + 8 * hf;
      valid[hf] = r < n_valid;
      const bool coded = r < n_coded;
      const float ks = kb < 16 && coded ? __half2float(__ushort_as_half(kn[r])) * rsd : 1.0f;
      vs[hf] = vb < 16 && coded ? __half2float(__ushort_as_half(vn[r])) * rsd : 1.0f;
#pragma unroll
      for (int j = 0; j < 2; ++j) {  // (the direct path's sa holds both parts: x + 0 is an instruction)
        const float sv = DIRECT ? sa[2 * hf + j] : sa[2 * hf + j] + sb[2 * hf + j];
        sc[2 * hf + j] = valid[hf] ? sv * ks * scale2 : -INFINITY;
      }
    }
    float corr[2];
    const float vsc = DIRECT && plain && v8 ? v8_scale : 1.0f;  // (direct_values)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float mx = fmaxf(sc[j], sc[2 + j]);
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      // The running max moves only when the chunk's exceeds it by 2^8 (weights ≤ 256 in between:
      // exact in f32 and fp16 alike): the rescale of acc below is then rare.
      const float mn = mx > m[j] + 8.0f ? mx : m[j];  // finite: token c is valid (m = −∞ at first)
      corr[j] = exp2_ftz(m[j] - mn);
      const float p0 = exp2_ftz(sc[j] - mn), p1 = exp2_ftz(sc[2 + j] - mn);
      float sum = p0 + p1;
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      l[j] = l[j] * corr[j] + sum;
      m[j] = mn;
      const int h = 2 * tig + j;
      if constexpr (DIRECT) {  // head h & 3, its hi (tig < 2) or lo part, as B words of columns (head, e' = 0, 1)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          __half hi, lo;
          split_f16(valid[hf] ? (hf ? p1 : p0) * vs[hf] * vsc : 0.0f, hi, lo);
          const uint32_t w = __half_as_ushort(tig < 2 ? hi : lo);
          const int t = gid + 8 * hf;
          const int o = ((2 * (h & 3) * 4 + (t & 3)) * 2 + (tig >> 1)) * 4 + (t >> 3) * 2 + ((t >> 2) & 1);
          pbw[o] = w, pbw[o + 32] = w << 16;
        }
      } else {
        split_f16(valid[0] ? p0 * vs[0] : 0.0f, pb[h * 16 + gid], pb[128 + h * 16 + gid]);
        split_f16(valid[1] ? p1 * vs[1] : 0.0f, pb[h * 16 + gid + 8], pb[128 + h * 16 + gid + 8]);
      }
    }
    if (__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f)) {
      if constexpr (DIRECT) {  // every column of this lane is head tig: its factor from lane (gid, tig / 2)
        const int src = (lane & ~3) | (tig >> 1);
        const float c0 = __shfl_sync(0xffffffffu, corr[0], src), c1 = __shfl_sync(0xffffffffu, corr[1], src);
        const float cf = tig & 1 ? c1 : c0;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) acc[mt][0] *= cf, acc[mt][1] *= cf, acc[mt][2] *= cf, acc[mt][3] *= cf;
#pragma unroll
        for (int k = 0; k < 4; ++k) bias[k] *= cf;
      } else {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          acc[mt][0] *= corr[0], acc[mt][1] *= corr[1], acc[mt][2] *= corr[0], acc[mt][3] *= corr[1];
      }
    }
    __syncwarp();  // P complete
    const uint32_t* pw = reinterpret_cast<const uint32_t*>(pb);  // words [hi, lo][8 heads][8 token pairs]
    uint32_t bh0 = 0, bh1 = 0, bl0 = 0, bl1 = 0;
    if constexpr (!DIRECT) {
      bh0 = pw[gid * 8 + tig], bh1 = pw[gid * 8 + tig + 4];
      bl0 = pw[64 + gid * 8 + tig], bl1 = pw[64 + gid * 8 + tig + 4];
    }
    // acc[mt] += V̂ᵀ · P for m-tiles [m0, m1) with V̂'s column 16·m0 at vt (rows `stride` halves apart).
    auto values = [&](const __half* vt, int stride, int m0, int m1) {
      const int vo = ((lane & 7) + ((lane >> 4) & 1) * 8) * stride + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int mt = m0; mt < m1; ++mt) {
        uint32_t a[4];
        ldsm_x4_trans(a, vt + vo + 16 * (mt - m0));
        mma_16816(acc[mt], a, bh0, bh1);
        mma_16816(acc[mt], a, bl0, bl1);
      }
    };
    if constexpr (DIRECT) {
      const uint32_t* vr = reinterpret_cast<const uint32_t*>(sg + lay.k_raw);
      const uint4* bw = reinterpret_cast<const uint4*>(pbw) + 2 * lane;  // this lane's [hi, lo] words
      const uint4 bw0 = bw[0], bw1 = bw[1];
      const uint32_t b[2][2][2] = {{{bw0.x, bw0.y}, {bw0.z, bw0.w}}, {{bw1.x, bw1.y}, {bw1.z, bw1.w}}};
      if (plain && v8)
        direct_values<kPlain, true, VB>(acc, bias, vr, rbv / 4, b, dir_t3[1], vt, lane, n_valid, n_coded, nullptr, 1,
                                        0);
      else if (plain)
        direct_values<kPlain, false, VB>(acc, bias, vr, rbv / 4, b, dir_t3[1], vt, lane, n_valid, n_coded, nullptr,
                                         1, 0);
      else if (n_coded == 0)
        direct_values<kRing, false, VB>(acc, bias, vr, rbv / 4, b, dir_t3[1], vt, lane, n_valid, 0, vring,
                                        L.ring_rows, c_mod);
      else
        direct_values<kMixed, false, VB>(acc, bias, vr, rbv / 4, b, dir_t3[1], vt, lane, n_valid, n_coded, vring,
                                         L.ring_rows, c_mod);
    } else if (vb < 16) {
      auto pass = [&](int half) {  // (called with constants: acc stays in registers)
        decode_tile<D>(half, vb, rbv, reinterpret_cast<const uint32_t*>(sg + lay.k_raw), t3[1], lut + 256, tile, lane,
                       n_valid, n_coded, vring, L.ring_rows, c_mod);
        __syncwarp();
        values(tile, D / 2 + 8, half * D / 32, (half + 1) * D / 32);
        __syncwarp();
      };
      pass(0);
      pass(1);
    } else {
      values(reinterpret_cast<const __half*>(sg + lay.k_raw), R, 0, D / 16);
    }
    __syncwarp();  // this stage and the tile are rewritten next
  }
  cp_async_wait<0>();
  // The warps' partials: M = max of their m per head, each scaled by exp(m − M), added.
  __syncthreads();
  float* red = reinterpret_cast<float*>(sm);  // [warp][8 heads][m, l] (the queries are done)
#pragma unroll
  for (int j = 0; j < 2; ++j) m[j] *= 0.693147180559945309f;  // (−∞ stays −∞)
  if (gid == 0 && (!DIRECT || tig < 2))
#pragma unroll
    for (int j = 0; j < 2; ++j) red[(warp * 8 + 2 * tig + j) * 2] = m[j], red[(warp * 8 + 2 * tig + j) * 2 + 1] = l[j];
  __syncthreads();
  float* wacc = reinterpret_cast<float*>(mine);  // [8 heads][D] (32·D bytes ≤ a warp's area)
  if constexpr (DIRECT) {  // lane (gid, tig): head tig, stored dims 32·gid + 4·mt + k
    const int h = tig;
    float M = -INFINITY;
    for (int w = 0; w < kTcWarps; ++w) M = fmaxf(M, red[(w * 8 + h) * 2]);
    const float mh = red[(warp * 8 + h) * 2], f = mh == -INFINITY ? 0.0f : expf(mh - M);
    if (h < G)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        reinterpret_cast<float4*>(wacc + h * D + 32 * gid)[mt] =
            make_float4((acc[mt][0] - bias[0]) * f, (acc[mt][1] - bias[1]) * f, (acc[mt][2] - bias[2]) * f,
                        (acc[mt][3] - bias[3]) * f);
  } else {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int h = 2 * tig + j;
      float M = -INFINITY;
      for (int w = 0; w < kTcWarps; ++w) M = fmaxf(M, red[(w * 8 + h) * 2]);
      const float f = m[j] == -INFINITY ? 0.0f : expf(m[j] - M);
      if (h < G)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {  // (rows gid, gid + 8 of m-tile mt)
          wacc[h * D + 16 * mt + gid] = acc[mt][j] * f;
          wacc[h * D + 16 * mt + gid + 8] = acc[mt][2 + j] * f;
        }
    }
  }
  __syncthreads();
  for (int i = tid; i < G * D; i += blockDim.x) {
    float v = 0;
    for (int w = 0; w < kTcWarps; ++w) v += reinterpret_cast<const float*>(area + w * lay.warp)[i];
    const size_t base = (static_cast<size_t>(qi) * L.n_heads + g * G + i / D) * slots + slot;
    part_acc[base * D + i % D] = v;
  }
  if (tid < G) {
    float M = -INFINITY, Ls = 0;
    for (int w = 0; w < kTcWarps; ++w) M = fmaxf(M, red[(w * 8 + tid) * 2]);
    for (int w = 0; w < kTcWarps; ++w) {
      const float mw = red[(w * 8 + tid) * 2];
      if (mw != -INFINITY) Ls += red[(w * 8 + tid) * 2 + 1] * expf(mw - M);
    }
    const size_t base = (static_cast<size_t>(qi) * L.n_heads + g * G + tid) * slots + slot;
    part_ml[2 * base] = M, part_ml[2 * base + 1] = Ls;
  }
}

// ---- prefill attention, query-tiled (sm_80+: mma.sync m16n8k16, fp16 in, f32 accumulate) ----
// grid (kv head, tile of kPfRows / G query positions, split), kPfWarps warps. A block's rows
// are (query position, head) pairs, 16 per warp (row r: position r / G of the tile, head
// r % G). Each tile of kPfTok tokens of the split is loaded once into shared memory (fp16
// rows by cp.async; code rows as stored, then decoded to their fp16 centroids by the whole
// block) and serves every row: S = Q (16 rows × D) · K̂ᵀ, an online softmax per row, O +=
// P · V̂ — so a chunk's queries read the prefix once per block instead of once each (the
// per-query kernels above read it once per query: quadratic traffic and decode work for a
// prompt appended at depth). Queries and weights enter as fp16 hi + lo pairs and code values
// as their fp16 centroids with each token's norm applied in f32, as in attention_tc_kernel.
// Tokens: [0, window_cut) over a windowed code cache (the window's part by
// attention_tc_kernel in tail mode), else up to each row's own position (causal). Partials
// in attention_tc_kernel's layout: slots [0, gridDim.z) of `stride` per (query, head).
constexpr int kPfWarps = 4, kPfRows = 16 * kPfWarps, kPfTok = 32;
constexpr int kTiledMinQ = 8;  // queries in a chunk from which it takes the tiled kernel (PERF v23)
static_assert(kPfTok % 8 == 0, "pf_decode deals 3-bit rows out 8 at a time");

// Shared memory of attention_tiled_kernel, bytes (the host sizes the launch with the same):
// one stage, so that two blocks fit an SM (one block's loads and decode overlap the other's
// products) — for 256-dim heads ≤ 113 KB.
struct PfLayout {
  int R;         // halves per tile row: D + 8 (rows 16 bytes apart in banks: conflict-free ldmatrix)
  int q, lut;    // queries hi/lo [2][kPfRows][R] halves; tables [K, V][256] half2 (2/4/8-bit sides)
  int tile;      // one side's tile [kPfTok][R] halves (K then V)
  int kraw, raw; // code rows of K then V as stored, with their norms after them
  int scales;    // the tile's token scales [K, V][kPfTok] floats (codes: norm/√D)
  __host__ __device__ PfLayout(const DevKVLayer& L, int D) : R(D + 8) {
    auto lut_side = [](int b) { return b == 2 || b == 4 || b == 8; };
    q = 2 * kPfRows * R * 2;
    lut = lut_side(L.k.bits) || lut_side(L.v.bits) ? 2 * 256 * 4 : 0;
    tile = kPfTok * R * 2;
    kraw = L.k.bits < 16 ? kPfTok * L.k.row_bytes : 0;
    raw = (kraw + (L.v.bits < 16 ? kPfTok * L.v.row_bytes : 0) + 2 * kPfTok * 2 + 15) / 16 * 16;
    scales = 2 * kPfTok * 4;
  }
  __host__ __device__ int bytes() const { return q + lut + 2 * tile + raw + scales + 16 * kPfWarps; }
};

// A tile's kPfTok code rows of one side (as stored, rb bytes each) → their fp16 centroids in
// tile [kPfTok][D + 8] (without the tokens' norms), by the whole block: 3-bit codes a group
// of 32 per job (its three nib3 words), others 8 per job. B: the side's width compiled in
// (0: bits, read at run time).
template <int D, int B>
__device__ __forceinline__ void pf_decode(const uint32_t* raw, int rb, int bits, const Prmt8& t3, const __half2* lut,
                                          __half* tile) {
  if constexpr (B == 16) return;
  constexpr int R = D + 8;
  const int b = B ? B : bits;
  if (b == 3) {  // (3-bit sides are nib3: tc_kernel_for)
    // Job → (row, group) with 8 consecutive jobs on 8 rows of one group: each 16-byte store
    // of a quarter-warp then covers all 32 banks (rows R halves apart), where 8 groups of one
    // row (64 bytes apart) hit 8 banks 4 times over (ncu, v23: 29% of the kernel's
    // shared-memory wavefronts were such conflicts).
    constexpr int J = D / 32;
    for (int job = threadIdx.x; job < kPfTok * J; job += blockDim.x) {
      const int r = job % 8 + 8 * (job / (8 * J)), j = (job / 8) % J;
      decode_nib3_group(raw + r * (rb / 4) + 3 * j, t3, reinterpret_cast<uint4*>(tile + r * R + 32 * j));
    }
    return;
  }
  constexpr int J = D / 8;
  for (int job = threadIdx.x; job < kPfTok * J; job += blockDim.x) {
    const int r = job / J, j = job % J;
    const uint32_t* row = raw + r * (rb / 4);
    uint4 out;
    if (b == 8) out = decode8<8>(row + 2 * j, 0, lut);
    else if (b == 4) out = decode8_sym4(row[j], t3);  // (a register table, kv_tables)
    else out = decode8<2>(row + (j >> 1), 16 * (j & 1), lut);
    *reinterpret_cast<uint4*>(tile + r * R + 8 * j) = out;
  }
}

template <int D, int KB, int VB>
__global__ void __launch_bounds__(kPfWarps * 32, 2)
    attention_tiled_kernel(DevKVLayer L, const float* q, const int32_t* pos, int n_q, int stride, size_t n_tokens,
                           float scale, float* part_ml, float* part_acc) {
  extern __shared__ __align__(16) unsigned char sm[];
  constexpr int R = D + 8, E = D / 32;
  const PfLayout lay(L, D);
  const int g = blockIdx.x, split = blockIdx.z, n_splits = gridDim.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gid = lane >> 2, tig = lane & 3;
  const int G = L.n_heads / L.n_kv_heads, hd = L.head_dim, q0 = blockIdx.y * (kPfRows / G);
  const int kb = KB ? KB : L.k.bits, vb = VB ? VB : L.v.bits;
  const int rbk = KB ? kv_row_bytes(D, KB) : L.k.row_bytes, rbv = VB ? kv_row_bytes(D, VB) : L.v.row_bytes;
  __half* qh = reinterpret_cast<__half*>(sm);             // [hi, lo][kPfRows][R]
  __half2* lut = reinterpret_cast<__half2*>(sm + lay.q);  // [K, V][256]
  __half* kt = reinterpret_cast<__half*>(sm + lay.q + lay.lut);  // the tile's K̂ rows [kPfTok][R], then V̂'s
  __half* vt = kt + kPfTok * R;
  unsigned char* raw = reinterpret_cast<unsigned char*>(vt + kPfTok * R);  // K, V code rows, K, V norms
  const int nrm = lay.kraw + (vb < 16 ? kPfTok * rbv : 0);  // (bytes to the norms)
  float* tsc = reinterpret_cast<float*>(raw + lay.raw);  // [K, V][kPfTok] token scales (codes)
  size_t* red = reinterpret_cast<size_t*>(tsc + 2 * kPfTok);  // [kPfWarps]
  // Tables and queries before waiting on the previous kernel (as attention_tc_kernel: the
  // queries come from attention prep, complete before kv_append let this kernel launch).
  Prmt8 t3[2];
  kv_tables(L, kb, vb, t3, lut, true);  // (4-bit codes: decode8_sym4 in pf_decode)
  // Row r's query in K's domain (rotated, with the rotation's 1/√D, when K holds codes) as
  // hi/lo halves; rows past n_q zero. A warp per row: lane l holds dims l·E … l·E + E − 1.
  const float qscale = kb < 16 ? rsqrtf(static_cast<float>(D)) : 1.0f;
  for (int r = warp; r < kPfRows; r += kPfWarps) {
    const int qi = q0 + r / G, h = r % G;
    float v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int d = lane * E + e;
      v[e] = 0;
      if (e < E && qi < n_q && d < hd)
        v[e] = q[(static_cast<size_t>(qi) * L.n_heads + g * G + h) * hd + d] *
               (kb >= 16 ? 1.0f : __ldg(L.k.signs + static_cast<size_t>(g) * D + d));
    }
    if (kb < 16) fwht_lanes(v, E, lane);
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (e < E) split_f16(v[e] * qscale, qh[r * R + lane * E + e], qh[(kPfRows + r) * R + lane * E + e]);
  }
  pdl_enter();
  // Each of this lane's rows (gid, gid + 8 of the warp's 16) reads tokens [0, lim).
  const size_t ring_lo = L.window > 0 ? static_cast<size_t>(*L.ring_lo) : 0;
  const size_t cut = L.window > 0 && (kb < 16 || vb < 16) ? window_cut(L, pos, ring_lo) : n_tokens;
  size_t lim[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int qi = q0 + (16 * warp + gid + 8 * hf) / G;
    lim[hf] = qi < n_q ? min(min(static_cast<size_t>(pos[qi]) + 1, n_tokens), cut) : 0;
  }
  size_t warp_lim = max(lim[0], lim[1]);
#pragma unroll
  for (int o = 4; o < 32; o <<= 1) {
    const size_t other = __shfl_xor_sync(0xffffffffu, static_cast<unsigned long long>(warp_lim), o);
    warp_lim = max(warp_lim, other);
  }
  if (lane == 0) red[warp] = warp_lim;
  __syncthreads();
  size_t t_end = 0;
#pragma unroll
  for (int w = 0; w < kPfWarps; ++w) t_end = max(t_end, red[w]);
  // tiles start at multiples of 32
  const size_t per = ((t_end + n_splits - 1) / n_splits + kPfTok - 1) / kPfTok * kPfTok;
  const size_t t0 = min(static_cast<size_t>(split) * per, t_end), t1 = min(t0 + per, t_end);
  const size_t row0 = static_cast<size_t>(g) * L.cap;
  // cp.async of tile c: code rows and norms as stored (past t1 they decode to finite
  // centroids; their weights are 0, their norms unused) ...
  auto issue_codes = [&](size_t c) {
#pragma unroll
    for (int side = 0; side < 2; ++side) {
      const DevKVSide& S = side ? L.v : L.k;
      const int rb = side ? rbv : rbk;
      if ((side ? vb : kb) >= 16) continue;
      const uint8_t* src = S.rows + (row0 + c) * rb;
      unsigned char* dst = raw + (side ? lay.kraw : 0);
      for (int i = tid; i < kPfTok * rb / 16; i += blockDim.x) cp_async16(dst + 16 * i, src + 16 * i, true);
      if (tid < kPfTok * 2 / 16)
        cp_async16(raw + nrm + side * kPfTok * 2 + 16 * tid, S.norms + row0 + c + 8 * tid, true);
    }
  };
  // ... and fp16 rows into their tile (rows at or past t1 zero: their weight is 0, and
  // 0 · garbage could be NaN).
  auto issue_rows = [&](size_t c) {
    const int nv = static_cast<int>(min(static_cast<size_t>(kPfTok), t1 - c));
#pragma unroll
    for (int side = 0; side < 2; ++side) {
      const DevKVSide& S = side ? L.v : L.k;
      const int rb = side ? rbv : rbk;
      if ((side ? vb : kb) < 16) continue;
      const uint8_t* src = S.rows + (row0 + c) * rb;
      __half* tile = side ? vt : kt;
      constexpr int P = D / 8;  // 16-byte pieces per row
      for (int i = tid; i < kPfTok * P; i += blockDim.x) {
        const int r = i / P, j = i % P;
        cp_async16(tile + r * R + 8 * j, src + static_cast<size_t>(r) * rb + 16 * j, r < nv);
      }
    }
  };
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};  // rows gid, gid + 8 (log2 units)
  float o[D / 8][4];  // O: rows gid (0, 1), gid + 8 (2, 3) × dims 8·n + 2·tig (+1)
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0;
  const float rsd = rsqrtf(static_cast<float>(D));
  const float scale2 = scale * 1.44269504088896341f;  // scores in log2 units: exp2 in the softmax; m leaves as natural
  const __half* qw = qh + 16 * warp * R;
  const bool codes = kb < 16 || vb < 16, rows = kb >= 16 || vb >= 16;
  if (t0 < t1) issue_codes(t0), issue_rows(t0);
  cp_async_commit();
  // One stage: the next tile's code rows load during this tile's products, its fp16 rows
  // after them (the SM's other block computes meanwhile).
  for (size_t c = t0; c < t1; c += kPfTok) {
    cp_async_wait<0>();
    __syncthreads();  // tile c landed; every warp is past tile c − kPfTok's products
    if (codes) {
      const uint32_t* rw = reinterpret_cast<const uint32_t*>(raw);
      if (kb < 16) pf_decode<D, KB>(rw, rbk, kb, t3[0], lut, kt);
      if (vb < 16) pf_decode<D, VB>(rw + lay.kraw / 4, rbv, vb, t3[1], lut + 256, vt);
      if (tid < 2 * kPfTok && (tid < kPfTok ? kb : vb) < 16)
        tsc[tid] = __half2float(__ushort_as_half(reinterpret_cast<const uint16_t*>(raw + nrm)[tid])) * rsd;
      __syncthreads();  // the codes are consumed: the next tile's load over them
      if (c + kPfTok < t1) issue_codes(c + kPfTok);
      cp_async_commit();
    }
    if (c < warp_lim) {  // (warp-uniform: rows whose tokens all lie before c skip the tile)
      // S = Q · K̂ᵀ: 4 n-tiles of 8 tokens; Q's hi and lo parts into separate accumulators.
      float sh[4][4] = {}, sl[4][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ah[4], al[4];
        const int qo = (lane & 15) * R + 16 * kk + (lane >> 4) * 8;
        ldsm_x4(ah, qw + qo);
        ldsm_x4(al, qw + kPfRows * R + qo);
#pragma unroll
        for (int jp = 0; jp < 2; ++jp) {
          uint32_t b[4];
          ldsm_x4(b, kt + (16 * jp + (lane & 7) + ((lane >> 4) & 1) * 8) * R + 16 * kk + ((lane >> 3) & 1) * 8);
          mma_16816(sh[2 * jp], ah, b[0], b[1]);
          mma_16816(sl[2 * jp], al, b[0], b[1]);
          mma_16816(sh[2 * jp + 1], ah, b[2], b[3]);
          mma_16816(sl[2 * jp + 1], al, b[2], b[3]);
        }
      }
      // Scaled scores (−∞ outside each row's tokens and past the split), the online softmax.
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tt = 8 * j + 2 * tig + (e & 1);
          const size_t t = c + tt;
          const float ks = kb < 16 ? tsc[tt] : 1.0f;
          sh[j][e] = t < t1 && t < lim[e >> 1] ? (sh[j][e] + sl[j][e]) * ks * scale2 : -INFINITY;
        }
      float corr[2];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; ++j) mx = fmaxf(mx, fmaxf(sh[j][2 * hf], sh[j][2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m[hf], mx), base = mn == -INFINITY ? 0.0f : mn;  // (a row with no token yet)
        corr[hf] = exp2_ftz(m[hf] - base);
        m[hf] = mn;
        float sum = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 2 * hf; e < 2 * hf + 2; ++e) sh[j][e] = exp2_ftz(sh[j][e] - base), sum += sh[j][e];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l[hf] = l[hf] * corr[hf] + sum;
      }
      if (__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f))
#pragma unroll
        for (int n = 0; n < D / 8; ++n) o[n][0] *= corr[0], o[n][1] *= corr[0], o[n][2] *= corr[1], o[n][3] *= corr[1];
      // P (with V's token norms) as the A operand of two k-steps of 16 tokens, hi and lo:
      // k-step ks's registers are n-tiles 2·ks (a0: row gid, a1: gid + 8) and 2·ks + 1 (a2, a3).
      uint32_t ph[2][4], pl[2][4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int tt = 8 * j + 2 * tig;
        const float v0 = vb < 16 ? tsc[kPfTok + tt] : 1.0f, v1 = vb < 16 ? tsc[kPfTok + tt + 1] : 1.0f;
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float x0 = sh[j][2 * hf] > 0 ? sh[j][2 * hf] * v0 : 0.0f;  // (a masked token's norm is not read)
          const float x1 = sh[j][2 * hf + 1] > 0 ? sh[j][2 * hf + 1] * v1 : 0.0f;
          const __half2 hi = __floats2half2_rn(x0, x1);
          const __half2 lo = __floats2half2_rn(x0 - __low2float(hi), x1 - __high2float(hi));
          ph[j >> 1][2 * (j & 1) + hf] = *reinterpret_cast<const uint32_t*>(&hi);
          pl[j >> 1][2 * (j & 1) + hf] = *reinterpret_cast<const uint32_t*>(&lo);
        }
      }
      // O += P · V̂: V̂ tile rows are tokens; ldmatrix.trans gives the B fragments of 2 n-tiles of 8 dims.
#pragma unroll
      for (int np = 0; np < D / 16; ++np)
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
          uint32_t b[4];
          ldsm_x4_trans(b, vt + (16 * ks + (lane & 7) + ((lane >> 3) & 1) * 8) * R + 16 * np + ((lane >> 4) & 1) * 8);
          mma_16816(o[2 * np], ph[ks], b[0], b[1]);
          mma_16816(o[2 * np], pl[ks], b[0], b[1]);
          mma_16816(o[2 * np + 1], ph[ks], b[2], b[3]);
          mma_16816(o[2 * np + 1], pl[ks], b[2], b[3]);
        }
    }
    if (rows) {
      __syncthreads();  // every warp is past the fp16 tiles: the next tile's rows over them
      if (c + kPfTok < t1) issue_rows(c + kPfTok);
      cp_async_commit();
    }
  }
  cp_async_wait<0>();
  // Partials of this split for the rows of real queries (m natural, l, O unnormalized).
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = 16 * warp + gid + 8 * hf, qi = q0 + r / G;
    if (qi >= n_q) continue;
    const size_t base = (static_cast<size_t>(qi) * L.n_heads + g * G + r % G) * stride + split;
    if (tig == 0)  // (−∞ stays −∞)
      part_ml[2 * base] = m[hf] * 0.693147180559945309f, part_ml[2 * base + 1] = l[hf];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<float2*>(part_acc + base * D + 8 * n + 2 * tig) = make_float2(o[n][2 * hf], o[n][2 * hf + 1]);
  }
}

// Merges splits, inverse rotation of V codes, head_dim entries, × σ(gate).
__global__ void attention_merge_kernel(DevKVLayer L, int n_splits, const float* part_ml, const float* part_acc,
                                       const float* gate, float* att, XQ8 q8) {
  extern __shared__ float sh[];  // y[Dv], w[n_splits], part[blockDim / Dv][Dv]
  __shared__ float red[32];
  const int qi = blockIdx.x, h = blockIdx.y, Dv = L.v.dim, hd = L.head_dim;
  // This thread's first sign and gate before the wait: the signs are constants, the gate
  // comes from attention prep, complete before the kernel ahead of this one could launch it.
  const int t0 = threadIdx.x;
  const float sign0 = L.v.bits < 16 && t0 < Dv ? L.v.signs[static_cast<size_t>(h / (L.n_heads / L.n_kv_heads)) * Dv + t0] : 1.0f;
  const float gate0 = gate && t0 < hd ? gate[(static_cast<size_t>(qi) * L.n_heads + h) * hd + t0] : 0.0f;
  pdl_enter();
  float* y = sh;
  float* w = sh + Dv;
  const int g = h / (L.n_heads / L.n_kv_heads);
  const size_t base = (static_cast<size_t>(qi) * L.n_heads + h) * n_splits;
  // Split weights exp(m_s − M) (0 for empty splits) and the total Σ w_s·l_s, in parallel.
  float mx = -INFINITY;
  for (int s = threadIdx.x; s < n_splits; s += blockDim.x) mx = fmaxf(mx, part_ml[2 * (base + s)]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  float M = -INFINITY;
  for (int i = 0; i < static_cast<int>((blockDim.x + 31) >> 5); ++i) M = fmaxf(M, red[i]);
  float ls = 0;
  for (int s = threadIdx.x; s < n_splits; s += blockDim.x) {
    const float m = part_ml[2 * (base + s)];
    const float ws = m == -INFINITY ? 0.0f : expf(m - M);
    w[s] = ws;
    ls += ws * part_ml[2 * (base + s) + 1];
  }
  const float Ls = block_sum(ls, red);  // (syncs: w complete)
  const float inv = 1.0f / Ls;
  // Thread (j, k) adds the splits s ≡ k (mod groups) of dim j, 8 loads in flight; then the
  // groups are added in a fixed order.
  const int groups = max(1, static_cast<int>(blockDim.x) / Dv);
  float* part = w + n_splits;  // [groups][Dv]
  for (int idx = threadIdx.x; idx < groups * Dv; idx += blockDim.x) {
    const int j = idx % Dv, k = idx / Dv;
    const float* pa = part_acc + base * Dv + j;
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int s = k;
    for (; s + 7 * groups < n_splits; s += 8 * groups)
#pragma unroll
      for (int u = 0; u < 8; ++u) a[u] += pa[static_cast<size_t>(s + u * groups) * Dv] * w[s + u * groups];
    for (; s < n_splits; s += groups) a[0] += pa[static_cast<size_t>(s) * Dv] * w[s];
    part[k * Dv + j] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
  __syncthreads();
  for (int j = threadIdx.x; j < Dv; j += blockDim.x) {
    float t = 0;
    for (int k = 0; k < groups; ++k) t += part[k * Dv + j];
    y[j] = t * inv;
  }
  if (L.v.bits < 16) {
    fwht_shared(y, Dv);
    const float rs = rsqrtf(static_cast<float>(Dv));
    for (int j = threadIdx.x; j < Dv; j += blockDim.x) y[j] *= rs * (j == t0 ? sign0 : L.v.signs[static_cast<size_t>(g) * Dv + j]);
  }
  __syncthreads();
  float* out = att + (static_cast<size_t>(qi) * L.n_heads + h) * hd;
  for (int j = threadIdx.x; j < hd; j += blockDim.x) {
    float o = y[j];
    if (gate) o *= sigmoidf_(j == t0 ? gate0 : gate[(static_cast<size_t>(qi) * L.n_heads + h) * hd + j]);
    out[j] = o;
    if (q8.q) q8_store_warp(o, (static_cast<size_t>(qi) * L.n_heads + h) * hd + j, q8);  // hd % 32 == 0
  }
}

// ---- Gated DeltaNet ----
// The delta rule's per-head inputs (qwen35.cc's formulas): the decay g = exp(−e^{a_log} ·
// softplus(a + dt_bias)) of a value head, and the l2 norm's factor of a q (· 1/√dk) or k head
// from its Σx².
__device__ __forceinline__ float delta_decay(float a, float dt_bias, float a_log) {
  const float sp = a + dt_bias;
  const float softplus = sp > 20 ? sp : log1pf(expf(sp));
  return expf(-expf(a_log) * softplus);
}
__device__ __forceinline__ float delta_l2_inv(float ss, bool is_q, int dk) {
  return rsqrtf(ss + 1e-6f) * (is_q ? rsqrtf(static_cast<float>(dk)) : 1.0f);
}

// Causal depthwise conv (+ SiLU) over the n new tokens, then the per-head inputs of the
// delta rule: grid (n, 2·hk + hv), block (token t, head of the conv output): q heads
// (l2-normalized, · 1/√dk), k heads (l2-normalized), v heads (copied; β and g of the head).
// Reads qkv's raw inputs (tokens t − K + 1 … t; before token 0 from conv_state) and leaves
// them as they are, so tokens run in parallel; delta_conv_state_kernel then advances
// conv_state.
__global__ void delta_conv_prep_kernel(DeltaDims d, const float* qkv, const float* conv_state, const float* conv_w,
                                       const float* b, const float* a, const float* a_log, const float* dt_bias,
                                       float* q, float* k, float* v, float* beta, float* g) {
  pdl_enter();
  __shared__ float red[32];
  const int kd = d.hk * d.dk, vd = d.hv * d.dv, C = 2 * kd + vd, K = d.conv_k;
  const int t = blockIdx.x, h = blockIdx.y;
  const int kind = h < d.hk ? 0 : h < 2 * d.hk ? 1 : 2;
  const int hh = kind == 0 ? h : kind == 1 ? h - d.hk : h - 2 * d.hk;
  const int c0 = kind == 0 ? hh * d.dk : kind == 1 ? kd + hh * d.dk : 2 * kd + hh * d.dv;
  const int width = kind == 2 ? d.dv : d.dk;
  float* dst = kind == 2 ? v + (static_cast<size_t>(t) * d.hv + hh) * d.dv
                         : (kind == 0 ? q : k) + (static_cast<size_t>(t) * d.hk + hh) * d.dk;
  float ss = 0;
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    const int ch = c0 + c;
    float acc = 0;
    for (int j = 0; j < K; ++j) {
      const int tau = t - (K - 1) + j;
      const float in = tau >= 0 ? qkv[static_cast<size_t>(tau) * C + ch] : conv_state[static_cast<size_t>(tau + K - 1) * C + ch];
      acc += conv_w[static_cast<size_t>(ch) * K + j] * in;
    }
    const float o = siluf_(acc);
    dst[c] = o;
    ss += o * o;
  }
  if (kind == 2) {
    if (threadIdx.x == 0) {
      const size_t i = static_cast<size_t>(t) * d.hv + hh;
      beta[i] = sigmoidf_(b[i]);
      g[i] = delta_decay(a[i], dt_bias[hh], a_log[hh]);
    }
    return;
  }
  const float inv = delta_l2_inv(block_sum(ss, red), kind == 0, d.dk);
  for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] *= inv;  // (each thread its own values)
}

// conv_state ← the last K − 1 inputs after n new tokens (old state rows shifted in when n < K − 1).
__global__ void delta_conv_state_kernel(DeltaDims d, const float* qkv, float* conv_state) {
  pdl_enter();
  const int C = 2 * d.hk * d.dk + d.hv * d.dv, K = d.conv_k;
  const int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= C) return;
  for (int j = 0; j < K - 1; ++j) {  // row j + n is read before row j + n is written (ascending j)
    const int tau = d.n - (K - 1) + j;
    conv_state[static_cast<size_t>(j) * C + ch] =
        tau >= 0 ? qkv[static_cast<size_t>(tau) * C + ch] : conv_state[static_cast<size_t>(j + d.n) * C + ch];
  }
}

// State layout on the GPU: S[hv][dk][dv] (a column i of S^T per dv index, so lanes that
// own consecutive i read consecutive floats). grid (hv, dv/32), 4 warps: lane owns column
// i = 32·blockIdx.y + lane, warp w the key dims [w·DK/4, (w+1)·DK/4) of it, in registers;
// the dot products over the key dims add the 4 warps' parts in shared memory.
template <int DK>
__global__ void __launch_bounds__(128) delta_rule_kernel(DeltaDims d, const float* q, const float* k, const float* v,
                                                         const float* beta, const float* g, float* state, float* y) {
  pdl_enter();
  // Tokens in batches of kT: their k, q, decays and β staged in shared memory and this
  // thread's v in registers at once, then two block reductions per token (red alternates
  // between the two, so a barrier per reduction suffices).
  constexpr int W = 4, J = DK / W, kT = 8;
  __shared__ float ks[kT][DK], qs[kT][DK], gb[2][kT], red[2][W][32];
  const int hv = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int i = blockIdx.y * 32 + lane, j0 = warp * J;
  const int rep = d.hv / d.hk, hk = hv / rep;
  const bool live = i < d.dv;
  float* S = state + (static_cast<size_t>(hv) * DK + j0) * d.dv + i;
  float s[J];
#pragma unroll
  for (int jj = 0; jj < J; ++jj) s[jj] = live ? S[static_cast<size_t>(jj) * d.dv] : 0.0f;
  for (int b0 = 0; b0 < d.n; b0 += kT) {
    const int nb = min(kT, d.n - b0);
    __syncthreads();  // the previous batch's readers of ks, qs, gb are done
    for (int e = threadIdx.x; e < nb * DK; e += blockDim.x) {
      const size_t at = (static_cast<size_t>(b0 + e / DK) * d.hk + hk) * DK + e % DK;
      ks[e / DK][e % DK] = k[at], qs[e / DK][e % DK] = q[at];
    }
    if (threadIdx.x < nb) {
      const size_t at = static_cast<size_t>(b0 + threadIdx.x) * d.hv + hv;
      gb[0][threadIdx.x] = g[at], gb[1][threadIdx.x] = beta[at];
    }
    float vb[kT];
#pragma unroll
    for (int u = 0; u < kT; ++u) vb[u] = live && u < nb ? v[(static_cast<size_t>(b0 + u) * d.hv + hv) * d.dv + i] : 0.0f;
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kT; ++u) {
      if (u >= nb) break;
      const float gt = gb[0][u], bt = gb[1][u];
      float m = 0;
#pragma unroll
      for (int jj = 0; jj < J; ++jj) m += (s[jj] *= gt) * ks[u][j0 + jj];
      red[0][warp][lane] = m;
      __syncthreads();
      m = (red[0][0][lane] + red[0][1][lane]) + (red[0][2][lane] + red[0][3][lane]);
      const float delta = (vb[u] - m) * bt;
      float o = 0;
#pragma unroll
      for (int jj = 0; jj < J; ++jj) o += (s[jj] += delta * ks[u][j0 + jj]) * qs[u][j0 + jj];
      red[1][warp][lane] = o;
      __syncthreads();  // (also: everyone has read red[0] before the next token writes it)
      if (warp == 0 && live)
        y[(static_cast<size_t>(b0 + u) * d.hv + hv) * d.dv + i] =
            (red[1][0][lane] + red[1][1][lane]) + (red[1][2][lane] + red[1][3][lane]);
    }
  }
  if (live)
#pragma unroll
    for (int jj = 0; jj < J; ++jj) S[static_cast<size_t>(jj) * d.dv] = s[jj];
}

// One token, grid C / 256: conv_token per channel in place (the decode path where the
// in-projection could not take the conv).
__global__ void delta_conv_kernel(DeltaDims d, float* qkv, float* conv_state, const float* conv_w) {
  pdl_enter();
  const int C = 2 * d.hk * d.dk + d.hv * d.dv, ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch < C) qkv[ch] = conv_token(conv_w, conv_state, d.conv_k, ch, C, qkv[ch]);
}

// The chunked form of the rule for prefill (deltanet.cc's gated_delta_chunked, in float):
// chunks of kDeltaC tokens; per chunk and value head, with γ_i = Σ_{t≤i} log g_t,
//   T = (I + strict_lower(β_i ⟨k_i, k_j⟩ e^{γ_i − γ_j}))⁻¹,  U = T·(β⊙V),  W = T·(β⊙K⊙e^{γ}),
//   M = lower_incl(⟨q_i, k_j⟩ e^{γ_i − γ_j}),
// which do not depend on the state (delta_chunk_prep_kernel, every chunk at once); then in
// order over the chunks (delta_chunk_state_kernel, a block per value head and 32 value
// columns, S[dk][32 columns] in shared memory):
//   V' = U − W·S,  O = e^{γ}⊙(Q·S) + M·V',  S ← e^{γ_last}·S + (K⊙e^{γ_last − γ})ᵀ·V'.
// Rows past the last token are zeros (β = 0, g = 1), so a short last chunk needs no case.
// e^{γ} alone may underflow (a small decay over 64 tokens): only to 0, where its terms are
// that small; nothing divides by it.
// (A pass of fewer than two chunks keeps the recurrent kernel: over 64 tokens it took 55 µs against
// the chunked form's 45 + 21 µs on the H200, ncu; over 512, 375 µs against ≈ 250.)
constexpr int kDeltaC = 64, kDeltaChunkMin = 2 * kDeltaC;
__host__ __device__ constexpr int delta_chunk_floats(int dk, int dv) { return kDeltaC * (dv + dk + kDeltaC + 1); }
// The two kernels' shared memory, in floats (their layouts are listed where they start).
constexpr size_t delta_prep_smem_floats(int dk, int dv) {
  return 2 * kDeltaC * (dk + 1) + kDeltaC * dv + 2 * kDeltaC * (kDeltaC + 1) + 3 * kDeltaC;
}
constexpr size_t delta_state_smem_floats(int dk) { return dk * 32 + 2 * kDeltaC * dk + kDeltaC * 32 + kDeltaC * kDeltaC + 2 * kDeltaC; }
// Per (chunk, value head): U [C][dv], W [C][dk], M [C][C], γ [C].
struct DeltaChunkBufs {
  float* base;
  int dk, dv, hv;
  __device__ float* at(int c, int h) const { return base + (static_cast<size_t>(c) * hv + h) * delta_chunk_floats(dk, dv); }
};
template <int DK>
__global__ void __launch_bounds__(256) delta_chunk_prep_kernel(DeltaDims d, const float* q, const float* k, const float* v,
                                                               const float* beta, const float* g, DeltaChunkBufs out) {
  constexpr int C = kDeltaC, P = DK + 1;  // (rows padded: threads on different rows, one column, other banks)
  extern __shared__ __align__(16) unsigned char dsm_raw[];
  float* sm = reinterpret_cast<float*>(dsm_raw);
  float* Ks = sm;                          // [C][P]
  float* Qs = Ks + C * P;                  // [C][P]
  float* Vs = Qs + C * P;                  // [C][dv]
  float* A = Vs + C * d.dv;                // [C][C + 1]
  float* T = A + C * (C + 1);              // [C][C + 1]
  float* gam = T + C * (C + 1);            // [C]
  float* bs = gam + C;                     // [C]: β
  float* be = bs + C;                      // [C]: β·e^{γ}
  const int c = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, c0 = c * C, cn = min(C, d.n - c0);
  const int hk = h / (d.hv / d.hk), dv = d.dv;
  pdl_enter();
  // The chunk's rows by 4-byte asynchronous copies, every one in flight at once (plain loads
  // in a loop went out a few at a time: a DRAM round trip each); rows past the end zeroed.
  for (int e = tid; e < C * DK; e += blockDim.x) {
    const int i = e / DK, x = e % DK;
    const size_t at = (static_cast<size_t>(c0 + i) * d.hk + hk) * DK + x;
    if (i < cn) cp_async4(Ks + i * P + x, k + at), cp_async4(Qs + i * P + x, q + at);
    else Ks[i * P + x] = 0, Qs[i * P + x] = 0;
  }
  for (int e = tid; e < C * dv; e += blockDim.x) {
    const int i = e / dv;
    if (i < cn) cp_async4(Vs + e, v + (static_cast<size_t>(c0 + i) * d.hv + h) * dv + e % dv);
    else Vs[e] = 0;
  }
  cp_async_commit();
  if (tid < 32) {  // γ: a warp's inclusive scan of log g over the chunk, two tokens per lane
    const int i0 = 2 * tid;
    const float l0 = i0 < cn ? logf(g[static_cast<size_t>(c0 + i0) * d.hv + h]) : 0.0f;
    const float l1 = i0 + 1 < cn ? logf(g[static_cast<size_t>(c0 + i0 + 1) * d.hv + h]) : 0.0f;
    const float sum = l0 + l1;
    float x = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, x, o);
      if (tid >= o) x += y;
    }
    gam[i0] = x - sum + l0, gam[i0 + 1] = x;
    const float b0 = i0 < cn ? beta[static_cast<size_t>(c0 + i0) * d.hv + h] : 0.0f;
    const float b1 = i0 + 1 < cn ? beta[static_cast<size_t>(c0 + i0 + 1) * d.hv + h] : 0.0f;
    bs[i0] = b0, bs[i0 + 1] = b1;
    be[i0] = b0 * expf(x - sum + l0), be[i0 + 1] = b1 * expf(x);
  }
  cp_async_wait<0>();
  __syncthreads();
  float* U = out.at(c, h);
  float* W = U + C * dv;
  float* M = W + C * DK;
  // A (strictly lower) and M (lower with the diagonal), a 4×4 tile of each per thread: rows
  // 4·ib …, columns 4·jb … (every product of the tile from one load of its 12 rows' values).
  {
    const int ib = tid >> 4, jb = tid & 15;
    float kk[4][4] = {}, qk[4][4] = {};
    if (jb <= ib) {
#pragma unroll 4
      for (int x = 0; x < DK; ++x) {
        float ki[4], kj[4], qi[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) ki[r] = Ks[(4 * ib + r) * P + x], qi[r] = Qs[(4 * ib + r) * P + x], kj[r] = Ks[(4 * jb + r) * P + x];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int u = 0; u < 4; ++u) kk[r][u] += ki[r] * kj[u], qk[r][u] += qi[r] * kj[u];
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = 4 * ib + r, j = 4 * jb + u;
        const float decay = j <= i ? expf(gam[i] - gam[j]) : 0.0f;
        A[i * (C + 1) + j] = j < i ? bs[i] * kk[r][u] * decay : 0.0f;
        M[i * C + j] = qk[r][u] * decay;
      }
  }
  __syncthreads();
  // T = (I + A)⁻¹ by forward substitution, column j by thread j, the column in registers:
  // t_i = [i = j] − Σ_{m<i} A[i][m]·t_m (zero above row j by itself), the same instructions on
  // every lane (A's rows broadcast), two partial sums per row.
  if (tid < C) {
    float t[C];
#pragma unroll
    for (int i = 0; i < C; ++i) {
      float s0 = 0, s1 = 0;
#pragma unroll
      for (int m = 0; m + 1 < i; m += 2) s0 += A[i * (C + 1) + m] * t[m], s1 += A[i * (C + 1) + m + 1] * t[m + 1];
      if (i & 1) s0 += A[i * (C + 1) + i - 1] * t[i - 1];
      t[i] = (i == tid ? 1.0f : 0.0f) - (s0 + s1);
      T[i * (C + 1) + tid] = t[i];
    }
  }
  __syncthreads();
  // U = T·(β⊙V), W = T·(β⊙e^{γ}⊙K): thread (column group of 4, row group of 8) keeps its 32
  // sums; each source row m adds to all of them (T[i][m] = 0 for i < m).
  {
    const int cg = tid & 31, rg = tid >> 5;
    for (int side = 0; side < 2; ++side) {
      const int width = side ? DK : dv;
      if (4 * cg >= width) continue;
      float acc[8][4] = {};
      for (int m = 0; m < C; ++m) {
        float src[4], tt[8];
#pragma unroll
        for (int u = 0; u < 4; ++u) src[u] = side ? be[m] * Ks[m * P + 4 * cg + u] : bs[m] * Vs[m * dv + 4 * cg + u];
#pragma unroll
        for (int r = 0; r < 8; ++r) tt[r] = T[(8 * rg + r) * (C + 1) + m];
#pragma unroll
        for (int r = 0; r < 8; ++r)
#pragma unroll
          for (int u = 0; u < 4; ++u) acc[r][u] += tt[r] * src[u];
      }
      float* dst = side ? W : U;
#pragma unroll
      for (int r = 0; r < 8; ++r)
        *reinterpret_cast<float4*>(dst + (8 * rg + r) * width + 4 * cg) = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
    }
  }
  if (tid < C) M[C * C + tid] = gam[tid];
}

// Grid (hv, dv / 32), 256 threads: thread (warp w, lane) owns value column 32·blockIdx.y + lane
// and rows w, w + 8, … of each product, their sums side by side (one load of the shared
// operand per step for all of them). A chunk's W, M and Q arrive by asynchronous copies
// issued together, K's while O is computed.
template <int DK>
__global__ void __launch_bounds__(256) delta_chunk_state_kernel(DeltaDims d, const float* q, const float* k,
                                                                DeltaChunkBufs bufs, float* state, float* y) {
  constexpr int C = kDeltaC, NW = 8, RI = C / NW, RJ = DK / NW;
  extern __shared__ __align__(16) unsigned char dsm_raw[];
  float* sm = reinterpret_cast<float*>(dsm_raw);
  float* S = sm;                 // [DK][32]
  float* X0 = S + DK * 32;       // [C][DK]: W, then K
  float* X1 = X0 + C * DK;       // [C][DK]: Q
  float* Vp = X1 + C * DK;       // [C][32]
  float* Mc = Vp + C * 32;       // [C][C], then γ [C]
  float* ek = Mc + C * C + C;    // [C]: e^{γ_last − γ_i}
  const int h = blockIdx.x, col0 = blockIdx.y * 32, lane = threadIdx.x & 31, w = threadIdx.x >> 5, tid = threadIdx.x;
  const int hk = h / (d.hv / d.hk), dv = d.dv, col = col0 + lane;
  pdl_enter();
  for (int j = w; j < DK; j += NW) S[j * 32 + lane] = state[(static_cast<size_t>(h) * DK + j) * dv + col];
  // rows [c0, c0 + C) of q or k (key head hk) into dst [C][DK], zeros past the end
  auto rows = [&](float* dst, const float* src, int c0, int cn) {
    for (int e = tid; e < C * DK / 4; e += blockDim.x) {
      const int i = 4 * e / DK;
      cp_async16(dst + 4 * e, src + ((static_cast<size_t>(c0 + min(i, cn - 1))) * d.hk + hk) * DK + 4 * e % DK, i < cn);
    }
  };
  const int nc = (d.n + C - 1) / C;
  for (int c = 0; c < nc; ++c) {
    const int c0 = c * C, cn = min(C, d.n - c0);
    const float* U = bufs.at(c, h);
    const float* W = U + C * dv;
    const float* M = W + C * DK;
    for (int e = tid; e < C * DK / 4; e += blockDim.x) cp_async16(X0 + 4 * e, W + 4 * e, true);
    for (int e = tid; e < (C * C + C) / 4; e += blockDim.x) cp_async16(Mc + 4 * e, M + 4 * e, true);
    cp_async_commit();
    rows(X1, q, c0, cn);
    cp_async_commit();
    float a[RI];
#pragma unroll
    for (int r = 0; r < RI; ++r) a[r] = U[(w + NW * r) * dv + col];
    cp_async_wait<1>();
    __syncthreads();
    const float* gam = Mc + C * C;
    if (tid < C) ek[tid] = expf(gam[C - 1] - gam[tid]);
    // V' = U − W·S
    for (int j = 0; j < DK; ++j) {
      const float sj = S[j * 32 + lane];
#pragma unroll
      for (int r = 0; r < RI; ++r) a[r] -= X0[(w + NW * r) * DK + j] * sj;
    }
#pragma unroll
    for (int r = 0; r < RI; ++r) Vp[(w + NW * r) * 32 + lane] = a[r];
    __syncthreads();  // (V' complete; X0 free)
    rows(X0, k, c0, cn);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();  // (Q landed)
    // O = e^{γ}⊙(Q·S) + M·V'
    float o[RI] = {}, b[RI] = {};
    for (int j = 0; j < DK; ++j) {
      const float sj = S[j * 32 + lane];
#pragma unroll
      for (int r = 0; r < RI; ++r) o[r] += X1[(w + NW * r) * DK + j] * sj;
    }
    for (int j = 0; j < C; ++j) {
      const float vj = Vp[j * 32 + lane];
#pragma unroll
      for (int r = 0; r < RI; ++r) b[r] += Mc[(w + NW * r) * C + j] * vj;  // (M is 0 above the diagonal)
    }
#pragma unroll
    for (int r = 0; r < RI; ++r) {
      const int i = w + NW * r;
      if (i < cn) y[(static_cast<size_t>(c0 + i) * d.hv + h) * dv + col] = o[r] * expf(gam[i]) + b[r];
    }
    cp_async_wait<0>();
    __syncthreads();  // (K landed; every reader of S for this chunk done)
    // S ← e^{γ_last}·S + (K⊙e^{γ_last − γ})ᵀ·V'
    const float eC = expf(gam[C - 1]);
    float sn[RJ];
#pragma unroll
    for (int r = 0; r < RJ; ++r) sn[r] = S[(w + NW * r) * 32 + lane] * eC;
    for (int i = 0; i < C; ++i) {
      const float vi = Vp[i * 32 + lane] * ek[i];
#pragma unroll
      for (int r = 0; r < RJ; ++r) sn[r] += X0[i * DK + w + NW * r] * vi;
    }
#pragma unroll
    for (int r = 0; r < RJ; ++r) S[(w + NW * r) * 32 + lane] = sn[r];
    __syncthreads();  // (S complete; X0, X1, Mc, Vp free for the next chunk)
  }
  for (int j = w; j < DK; j += NW) state[(static_cast<size_t>(h) * DK + j) * dv + col] = S[j * 32 + lane];
}

// A decode step of the mixer after the conv, one block per value head hv: warps as CG column
// groups (lane: value column i = 32·cg + lane) × 4 quarters of the key dims (the state's
// [dk][dv] slice in registers, as delta_rule_kernel); q and k of the key head normalized by
// warp 0 (delta_l2_inv), β and the decay by its lane 0; then the rule's
// two reductions; then the gated norm over the head's dv values (delta_rule_kernel and
// gated_norm_kernel's orders of summation).
template <int DK>
__global__ void __launch_bounds__(512) delta_step_kernel(DeltaDims d, const float* qkv, const float* b, const float* a,
                                                         const float* a_log, const float* dt_bias, float* state,
                                                         const float* z, const float* nw, float eps, float* y, XQ8 q8) {
  constexpr int W = 4, J = DK / W;
  __shared__ float ks[DK], qs[DK], gb[2], red[2][W][128], rn[4];
  const int hv = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, CG = d.dv / 32;
  const int cg = warp % CG, quarter = warp / CG, i = 32 * cg + lane, j0 = quarter * J;
  const int hk = hv / (d.hv / d.hk), kd = d.hk * DK;
  float* S = state + (static_cast<size_t>(hv) * DK + j0) * d.dv + i;
  float s[J];  // the state: written by this kernel one step ago, long complete
#pragma unroll
  for (int jj = 0; jj < J; ++jj) s[jj] = S[static_cast<size_t>(jj) * d.dv];
  const float alog = a_log[hv], dtb = dt_bias[hv], nwi = nw[i];  // (constants)
  pdl_enter();
  // Every input from the in-projection loaded at once, before any reduction: b, a and z were
  // loads after the q/k sums and after the output's (an L2 round trip each on the chain).
  const float vi = qkv[2 * kd + static_cast<size_t>(hv) * d.dv + i];
  const size_t at = static_cast<size_t>(hv) * d.dv + i;
  const float zi = quarter == 0 ? z[at] : 0.0f;
  if (warp == 0) {
    constexpr int P = (DK + 31) / 32;
    float qv[P], kv[P], sq = 0, sk = 0;
    const float bh = b[hv], ah = a[hv];
#pragma unroll
    for (int e = 0; e < P; ++e) {
      const int c = lane + 32 * e;
      qv[e] = c < DK ? qkv[hk * DK + c] : 0.0f, kv[e] = c < DK ? qkv[kd + hk * DK + c] : 0.0f;
      sq += qv[e] * qv[e], sk += kv[e] * kv[e];
    }
    sq = warp_sum(sq), sk = warp_sum(sk);
    const float iq = delta_l2_inv(sq, true, DK), ik = delta_l2_inv(sk, false, DK);
#pragma unroll
    for (int e = 0; e < P; ++e)
      if (lane + 32 * e < DK) qs[lane + 32 * e] = qv[e] * iq, ks[lane + 32 * e] = kv[e] * ik;
    if (lane == 0) {
      gb[1] = sigmoidf_(bh);
      gb[0] = delta_decay(ah, dtb, alog);
    }
  }
  __syncthreads();
  const float gt = gb[0], bt = gb[1];
  float m = 0;
#pragma unroll
  for (int jj = 0; jj < J; ++jj) m += (s[jj] *= gt) * ks[j0 + jj];
  red[0][quarter][i] = m;
  __syncthreads();
  m = (red[0][0][i] + red[0][1][i]) + (red[0][2][i] + red[0][3][i]);
  const float delta = (vi - m) * bt;
  float o = 0;
#pragma unroll
  for (int jj = 0; jj < J; ++jj) o += (s[jj] += delta * ks[j0 + jj]) * qs[j0 + jj];
  red[1][quarter][i] = o;
#pragma unroll
  for (int jj = 0; jj < J; ++jj) S[static_cast<size_t>(jj) * d.dv] = s[jj];
  __syncthreads();
  o = (red[1][0][i] + red[1][1][i]) + (red[1][2][i] + red[1][3][i]);
  // gated norm over the head's dv values (the quarter-0 warps hold one each)
  if (quarter == 0) {
    const float ss = warp_sum(o * o);
    if (lane == 0) rn[cg] = ss;
  }
  __syncthreads();
  if (quarter != 0) return;
  float ss = 0;
  for (int c = 0; c < CG; ++c) ss += rn[c];
  const float inv = rsqrtf(ss / d.dv + eps);
  const float out = o * inv * nwi * siluf_(zi);
  y[at] = out;
  if (q8.q) q8_store_warp(out, at, q8);
}

// grid (token·hv): y ← w · y/rms(y) · silu(z).
__global__ void gated_norm_kernel(int dv, float* y, const float* z, const float* w, float eps, XQ8 q8) {
  pdl_enter();
  __shared__ float red[32];
  float* yr = y + static_cast<size_t>(blockIdx.x) * dv;
  const float* zr = z + static_cast<size_t>(blockIdx.x) * dv;
  float ss = 0;
  for (int i = threadIdx.x; i < dv; i += blockDim.x) ss += yr[i] * yr[i];
  ss = block_sum(ss, red);
  const float inv = rsqrtf(ss / dv + eps);
  for (int i = threadIdx.x; i < dv; i += blockDim.x) {
    const float o = yr[i] * inv * w[i] * siluf_(zr[i]);
    yr[i] = o;
    if (q8.q) q8_store_warp(o, static_cast<size_t>(blockIdx.x) * dv + i, q8);  // dv % 32 == 0
  }
}

__global__ void swiglu_kernel(float* g, const float* u, size_t n) {
  pdl_enter();
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) g[i] = siluf_(g[i]) * u[i];
}
__global__ void add_kernel(float* x, const float* o, size_t n) {
  pdl_enter();
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += o[i];
}

__global__ void fill_random_kernel(float* x, size_t n, uint64_t seed) {
  pdl_enter();
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  x[i] = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// Greedy sampling on the GPU: the largest value's index as one 64-bit key, folded in with
// ---- prefill matmul on tensor cores (mma.sync m16n8k16, fp16 in, f32 accumulate) ----
// y[t][r] = Σ_g scale[r][g] · Σ_{k∈g} q[r][k] · x[t][k] + bias[r][g] · Σ_{k∈g} x[t][k], the
// MLX affine form taken apart so that nothing is rounded to fp16 but x: the 4-bit codes are
// exact fp16 integers (A), x enters as fp16 after a power-of-2 scale per token (its largest
// |x| below 2^14: no fp16 overflow, no subnormals in the parts that matter), and each
// 32-column piece's code sums are folded into f32 accumulators with its group's scale and
// bias (the bias times the piece's float sum of x, exact). x as fp16 hi + lo (≈ 22
// significant bits, twice the products: kLo, the exact mode) gives the CPU's float32 result
// up to rounding; hi alone (the default, with the decode's int8 x) moves each product by at
// most 2^-11 of Σ|scale·code·x| (x's fp16 rounding; the bias term stays exact).
//
// The products may take the columns of a k-step in any order A and B share. A tile is 64
// columns, two pieces of 32 (one MLX group of 32, or part of a larger one); piece p is two
// k-steps whose A fragment for one row is one word of codes per thread (word 4·p + tig:
// columns 32·p + 8·tig … + 7): k-step k2 takes nibbles (k2, k2 + 4) and (k2 + 2, k2 + 6),
// each pair one half2 by a mask. x is stored with each 8-column group permuted to that
// order (gemm_prep_kernel), so one 16-byte shared load gives a thread the B fragments of
// both k-steps of a piece.
constexpr int kGemmBM = 128, kGemmBN = 64, kGemmBK = 64, kGemmThreads = 256;
constexpr int kGemmCodeRow = 48;  // bytes per row of codes in shared memory (32 + 16: conflict-free word loads)
// A stage holds one column tile; kLo: x's lo parts too (4 stages), else hi only: smaller
// stages, 5 of them (measured on the H200 against 4 and 6, PERF v21: +3–4% over both at 512
// and 8192 tokens; 6 leave two blocks 203 KB of shared memory and L1 little).
constexpr int kGemmStagesHi = 5;
template <bool kLo>
struct GemmLayout {
  static constexpr int part = kGemmBN * kGemmBK * 2;          // hi or lo tile: 128-byte rows, 16-byte pieces swizzled
  static constexpr int sums = (kLo ? 2 : 1) * part;           // x sums per 32 columns [BN][2] floats
  static constexpr int codes = sums + kGemmBN * 2 * 4;        // [BM][kGemmCodeRow] bytes
  static constexpr int scales = codes + kGemmBM * kGemmCodeRow;  // [BM][2 pieces] (scale, bias) floats
  static constexpr int stage = scales + kGemmBM * 2 * 8;
  static constexpr int stages = kLo ? 4 : kGemmStagesHi;
  static constexpr int bytes = stages * stage;
};
// Position of column i (0-7) of a group of 8 in the stored order 0,4,2,6,1,5,3,7.
__device__ __forceinline__ int gemm_perm8(int i) { return ((i & 1) << 2) | ((i >> 2) & 1) | (i & 2); }
// Byte offset of 16-byte piece c (0-7) of token t's row in a B tile: odd tokens' pieces
// swapped by halves, so the 8 threads of a quarter warp (two tokens, four pieces each) hit
// distinct banks.
__device__ __forceinline__ int gemm_b_at(int t, int c) { return t * 128 + 16 * (c ^ ((t & 1) << 2)); }

// grid n tokens, one block each: x (cols floats per token) → scaled fp16 hi, lo (when xl) in
// the permuted order, the scaled float sum of every 32 columns, and the inverse scale.
__global__ void gemm_prep_kernel(const float* __restrict__ x, int cols, __half* xh, __half* xl, float* xs, float* inv) {
  pdl_enter();
  __shared__ float red[32];
  const float* row = x + static_cast<size_t>(blockIdx.x) * cols;
  float mx = 0;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) mx = fmaxf(mx, fabsf(row[i]));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  mx = 0;
  for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) mx = fmaxf(mx, red[i]);
  int e = 0;
  frexpf(mx, &e);  // mx < 2^e
  const int sh = min(14 - e, 126);
  const float scale = ldexpf(1.0f, sh);
  if (threadIdx.x == 0) inv[blockIdx.x] = ldexpf(1.0f, -sh);
  const int lane = threadIdx.x & 31;
  for (int c = threadIdx.x >> 5; c < cols / 32; c += blockDim.x >> 5) {
    const float v = row[32 * c + lane] * scale;
    __half hi, lo;
    split_f16(v, hi, lo);
    const size_t at = static_cast<size_t>(blockIdx.x) * cols + 32 * c + (lane & ~7) + gemm_perm8(lane & 7);
    xh[at] = hi;
    if (xl) xl[at] = lo;
    const float s = warp_sum(v);
    if (lane == 0) xs[static_cast<size_t>(blockIdx.x) * (cols / 32) + c] = s;
  }
}

__device__ __forceinline__ void cp_async8(void* dst, const void* src, bool valid) {
  TQ_SM80(asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(smem_addr(dst)), "l"(src),
                       "r"(valid ? 8 : 0)
                       : "memory"));
}
// A word's 8 codes as exact fp16 integers, paired for the A fragments: r[k2] = nibbles
// (k2, k2 + 4), r[2 + k2] = nibbles (k2 + 2, k2 + 6). A nibble at bits 0-3 of a half is
// 1024 + q under the exponent of 1024 (subtract 1024); at bits 4-7, 1024 + 16·q (÷ 16, − 64).
__device__ __forceinline__ void q4_word_f16(uint32_t w, uint32_t magic, uint32_t (&r)[4]) {
  const __half2 k1024 = __half2half2(__ushort_as_half(0x6400)), k16th = __half2half2(__ushort_as_half(0x2C00)),
                k64 = __half2half2(__ushort_as_half(0xD400));  // 1024, 1/16, −64
  const uint32_t w8 = w >> 8;
  uint32_t h[4];  // pairs (0,4), (1,5), (2,6), (3,7) under the exponent of 1024 (magic = 0x64006400
                  // in a register, so that the mask and the or are one LOP3)
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xEA;" : "=r"(h[0]) : "r"(w), "r"(magic));
  asm("lop3.b32 %0, %1, 0x00F000F0, %2, 0xEA;" : "=r"(h[1]) : "r"(w), "r"(magic));
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xEA;" : "=r"(h[2]) : "r"(w8), "r"(magic));
  asm("lop3.b32 %0, %1, 0x00F000F0, %2, 0xEA;" : "=r"(h[3]) : "r"(w8), "r"(magic));
  const __half2* hh = reinterpret_cast<const __half2*>(h);
  const __half2 p0 = __hsub2(hh[0], k1024), p1 = __hfma2(hh[1], k16th, k64), p2 = __hsub2(hh[2], k1024),
                p3 = __hfma2(hh[3], k16th, k64);
  r[0] = *reinterpret_cast<const uint32_t*>(&p0), r[1] = *reinterpret_cast<const uint32_t*>(&p1);
  r[2] = *reinterpret_cast<const uint32_t*>(&p2), r[3] = *reinterpret_cast<const uint32_t*>(&p3);
}
// c = a · b (the accumulator starts at zero).
__device__ __forceinline__ void mma_16816_first(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  TQ_SM80(asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
      : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f)));
}

// Up to 4 weights of one shape class (cols, group, scale type) over the same x in one
// launch, so that small ones share the GPU: grid.y is their row blocks in order.
struct GemmGroup {
  int cols = 0, group = 0, count = 0;
  int rows[4], end[4];  // end: exclusive prefix of row blocks
  const uint8_t* codes[4];
  const void* scales[4];
  const void* biases[4];
  float* y[4];        // [n][rows] each; split: [splits][n][rows] partial sums (slice_reduce_kernel)
  int split_tiles = 0;  // column tiles per grid.z slice (all of them: no split)
};

// grid (token blocks of kGemmBN, row blocks of the group's weights, column slices of
// split_tiles tiles); 8 warps as 4 (rows) × 2 (tokens), each 32 rows × 32 tokens (2 × 4 mma
// tiles). Codes and x (hi, lo, sums) stream through cp.async stages (GemmLayout); each tile's
// scales and biases are loaded into registers three tiles ahead by one half of the block
// (even tiles the first 128 threads, odd the others; one row each) and stored into its stage
// one tile ahead: two iterations for the loads to land. kGroup32: MLX groups of 32 (a fold
// per piece), else ≥ 64 (one fold per tile). kLo: x's lo parts too (the exact mode).
template <bool kBf16, bool kGroup32, bool kLo>
__global__ void __launch_bounds__(kGemmThreads, 2)
    q4_gemm_kernel(GemmGroup gg, const __half* __restrict__ xh, const __half* __restrict__ xl,
                   const float* __restrict__ xs, const float* __restrict__ inv, int n) {
  using Lay = GemmLayout<kLo>;
  pdl_enter();
  extern __shared__ __align__(16) unsigned char gsm[];
  int j = 0;
  while (j < gg.count - 1 && static_cast<int>(blockIdx.y) >= gg.end[j]) ++j;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gid = lane >> 2, tig = lane & 3;
  const int wm = warp & 3, wn = warp >> 2;
  const int t0 = blockIdx.x * kGemmBN, rb = (blockIdx.y - (j ? gg.end[j - 1] : 0)) * kGemmBM, rows = gg.rows[j];
  const int cols = gg.cols, gpr = cols / gg.group, gshift = 31 - __clz(gg.group);
  const int kt0 = blockIdx.z * gg.split_tiles, tiles = min(cols / kGemmBK, kt0 + gg.split_tiles);  // this slice: [kt0, tiles)
  // This thread's cp.async pieces, as offsets fixed for every tile: 4 of x (16 tokens apart;
  // hi or lo, piece p), one of codes (row tid / 2, half tid % 2), one of sums (tid < 64).
  const int bpart = (tid >> 3) & 1, bp = tid & 7, bt = tid >> 4;
  const __half* bsrc = bpart ? xl : xh;
  int boff[4];
  unsigned bvalid = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int t = bt + 16 * i;
    boff[i] = min(t0 + t, n - 1) * cols + 8 * bp;
    if (t0 + t < n) bvalid |= 1u << i;
  }
  const int bdst = bpart * Lay::part + gemm_b_at(bt, bp);  // + 2048·i (16 tokens of 128 bytes)
  const unsigned char* csrc = gg.codes[j] + static_cast<size_t>(min(rb + (tid >> 1), rows - 1)) * (cols / 2) + 16 * (tid & 1);
  const int cdst = Lay::codes + (tid >> 1) * kGemmCodeRow + 16 * (tid & 1);
  const float* ssrc = xs + static_cast<size_t>(min(t0 + (tid & 63), n - 1)) * (cols / 32);
  const bool svalid = t0 + (tid & 63) < n;
  auto load_tile = [&](int kt, int stage) {  // cp.async of tile kt's x and codes into a stage
    if (kt < tiles) {
      unsigned char* st = gsm + stage * Lay::stage;
      if (kLo || bpart == 0)
#pragma unroll
        for (int i = 0; i < 4; ++i) cp_async16(st + bdst + 2048 * i, bsrc + boff[i] + kt * kGemmBK, (bvalid >> i) & 1);
      cp_async16(st + cdst, csrc + kt * (kGemmBK / 2), true);
      if (tid < kGemmBN) cp_async8(st + Lay::sums + tid * 8, ssrc + 2 * kt, svalid);
    }
    cp_async_commit();
  };
  float2 sb[2];  // row rb + tid % 128's (scale, bias) of a tile's two pieces (tiles of this half's parity)
  const size_t srow = static_cast<size_t>(min(rb + (tid & 127), rows - 1)) * gpr;
  const void* const scales = static_cast<const char*>(gg.scales[j]) + srow * (kBf16 ? 2 : 4);
  const void* const biases = static_cast<const char*>(gg.biases[j]) + srow * (kBf16 ? 2 : 4);
  const int half = tid / kGemmBM;
  auto load_scales = [&](int kt) {
    if ((kt & 1) != half || kt >= tiles) return;
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int g = (kt * kGemmBK + 32 * p) >> gshift;
      sb[p] = make_float2(scale_of<kBf16>(scales, g), scale_of<kBf16>(biases, g));
    }
  };
  auto store_scales = [&](int kt, int stage) {
    if ((kt & 1) != half || kt >= tiles) return;
    *reinterpret_cast<float4*>(gsm + stage * Lay::stage + Lay::scales + 16 * (tid & 127)) =
        make_float4(sb[0].x, sb[0].y, sb[1].x, sb[1].y);
  };
  // This thread's shared-memory reads, from a stage's start: B of token wn·32 + gid (+ 8·nt:
  // + 1024·nt), piece 4·p + tig (swizzled by the token's parity); codes of rows
  // wm·32 + gid (+ 16·mt, + 8); scales of the same rows; sums of tokens wn·32 + 2·tig (+ 8·nt).
  const int rd_b[2] = {gemm_b_at(wn * 32 + gid, tig), gemm_b_at(wn * 32 + gid, 4 + tig)};
  const int rd_c = Lay::codes + (wm * 32 + gid) * kGemmCodeRow + 4 * tig;
  const int rd_s = Lay::scales + (wm * 32 + gid) * 16;
  const int rd_x = Lay::sums + (wn * 32 + 2 * tig) * 8;
  uint32_t magic = 0x64006400u;
  asm volatile("" : "+r"(magic));  // kept in a register (see q4_word_f16)
  float acc[2][4][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0;
#pragma unroll
  for (int k = 0; k < Lay::stages - 1; ++k) load_tile(kt0 + k, k);
  load_scales(kt0), load_scales(kt0 + 1);
  store_scales(kt0, 0);
  load_scales(kt0 + 2);
  int stage = 0;
  for (int kt = kt0; kt < tiles; ++kt) {
    cp_async_wait<Lay::stages - 2>();
    __syncthreads();  // tile kt landed for everyone; everyone is done with tile kt − 1's stage
    const int next = stage == Lay::stages - 1 ? 0 : stage + 1;
    load_tile(kt + Lay::stages - 1, stage == 0 ? Lay::stages - 1 : stage - 1);
    const unsigned char* st = gsm + stage * Lay::stage;
    uint32_t af[2][2][4][2];  // [m-tile][piece][pair (k2 | k2+2 ·2)][row gid, gid + 8]
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int p = 0; p < 2; ++p)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t r[4];
          q4_word_f16(*reinterpret_cast<const uint32_t*>(st + rd_c + (16 * mt + 8 * h) * kGemmCodeRow + 16 * p), magic, r);
#pragma unroll
          for (int j = 0; j < 4; ++j) af[mt][p][j][h] = r[j];
        }
    float4 rs[2][2];  // (scale, bias) of both pieces, rows gid, gid + 8 of each m-tile
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) rs[mt][h] = *reinterpret_cast<const float4*>(st + rd_s + (16 * mt + 8 * h) * 16);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const float4 sx = *reinterpret_cast<const float4*>(st + rd_x + 64 * nt);  // tokens 2·tig, +1: both pieces
      float g[2][4];
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const uint4 bh = *reinterpret_cast<const uint4*>(st + rd_b[p] + 1024 * nt);
        const uint4 bl = kLo ? *reinterpret_cast<const uint4*>(st + Lay::part + rd_b[p] + 1024 * nt) : uint4{};
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const uint32_t a0[4] = {af[mt][p][0][0], af[mt][p][0][1], af[mt][p][2][0], af[mt][p][2][1]};
          const uint32_t a1[4] = {af[mt][p][1][0], af[mt][p][1][1], af[mt][p][3][0], af[mt][p][3][1]};
          if (p == 0 || kGroup32) mma_16816_first(g[mt], a0, bh.x, bh.y);
          else mma_16816(g[mt], a0, bh.x, bh.y);
          if (kLo) mma_16816(g[mt], a0, bl.x, bl.y);
          mma_16816(g[mt], a1, bh.z, bh.w);
          if (kLo) mma_16816(g[mt], a1, bl.z, bl.w);
          if (kGroup32 || p == 1) {  // fold: the piece's (or tile's) code sums · scale, + bias · Σx
            const float s0 = kGroup32 ? (p ? sx.y : sx.x) : sx.x + sx.y, s1 = kGroup32 ? (p ? sx.w : sx.z) : sx.z + sx.w;
            const float sc0 = p ? rs[mt][0].z : rs[mt][0].x, bi0 = p ? rs[mt][0].w : rs[mt][0].y;
            const float sc1 = p ? rs[mt][1].z : rs[mt][1].x, bi1 = p ? rs[mt][1].w : rs[mt][1].y;
            float* c = acc[mt][nt];
            c[0] = fmaf(sc0, g[mt][0], fmaf(bi0, s0, c[0]));
            c[1] = fmaf(sc0, g[mt][1], fmaf(bi0, s1, c[1]));
            c[2] = fmaf(sc1, g[mt][2], fmaf(bi1, s0, c[2]));
            c[3] = fmaf(sc1, g[mt][3], fmaf(bi1, s1, c[3]));
          }
        }
      }
    }
    store_scales(kt + 1, next);  // tile kt + 1's stage: not read before the next iteration's barrier
    load_scales(kt + 3);         // (the same half: stored two iterations from now)
    stage = next;
  }
  cp_async_wait<0>();
  const int r0 = rb + wm * 32;
  float* const yo = gg.y[j] + static_cast<size_t>(blockIdx.z) * n * rows;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int t = t0 + wn * 32 + nt * 8 + 2 * tig;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (t + e >= n) continue;
      const float iv = inv[t + e];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = r0 + 16 * mt + gid + 8 * h;
          if (r < rows) yo[static_cast<size_t>(t + e) * rows + r] = acc[mt][nt][2 * h + e] * iv;
        }
    }
  }
}

// Column slices' partial sums (the prefill GEMM's and q4_mmq_kernel's): every weight of a
// group added in slice order (deterministic) into its output; swiglu: y0 = silu(gate) ⊙ up
// from the two weights' partial sums.
struct SliceReduce {
  const float* part[4];  // [slices][len[j]]
  float* y[4];
  size_t end[4];  // exclusive prefix of len
  int count = 0, slices = 1;
  bool swiglu = false;
};
__global__ void slice_reduce_kernel(SliceReduce r) {
  pdl_enter();
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= r.end[r.count - 1]) return;
  int j = 0;
  while (i >= r.end[j]) ++j;
  const size_t len = r.end[j] - (j ? r.end[j - 1] : 0);
  i -= j ? r.end[j - 1] : 0;
  float v = r.part[j][i];
  for (int k = 1; k < r.slices; ++k) v += r.part[j][k * len + i];
  if (r.swiglu) {
    float u = r.part[1][i];
    for (int k = 1; k < r.slices; ++k) u += r.part[1][k * len + i];
    v = siluf_(v) * u;
  }
  r.y[j][i] = v;
}

// ---- prefill chunks of 9 … kMmqMaxTok tokens on the int8 tensor cores (mma m16n8k32) ----
// The GEMM above walks its 64-column tiles one round trip after another and decodes every
// code to fp16 per warp: a 9-64-token chunk took 11-13 ms against ≈ 1.1 ms of weights
// (PERF v21). Here the codes go to the tensor cores as they are stored, widened to bytes by
// two masks: a 32-bit word of codes k … k + 7 gives the bytes of codes k, k + 2, k + 4, k + 6
// (w & 0x0F0F0F0F) and k + 1, k + 3, k + 5, k + 7 (w >> 4 & 0x0F0F0F0F) — x's int8 bytes are
// stored in that order (mmq_quantize_kernel), so one mma of k = 32 takes 32 columns of x
// under one scale (x's blocks: min(group, 64) columns). Per x block: y += s·d·Σ (q − 8)·x̂ +
// (b + 8s)·Σx (codes centred on 8 through x's rounding residual: mmq_quantize_kernel), with
// s, b the weight group's scale and bias, d the block's scale, Σx its exact sum.
// A block (kMmqWarps warps, 16 rows each) takes kMmqRows rows of one weight over a slice of
// the columns; stages of kMmqCols columns (the rows' codes, scales and biases, and every
// token's x bytes and block scales, shared by the warps) stream in by cp.async (PERF v22).
constexpr int kMmqMaxTok = 64, kMmqWarps = 8, kMmqRows = 16 * kMmqWarps, kMmqCols = 256;
constexpr int kMmqRowBytes = kMmqCols / 2 + 16;  // a row's codes in a stage, padded: conflict-free ldmatrix
constexpr int kMmqXRow = kMmqCols + 32;          // a token's x bytes in a stage, padded: 8-byte loads in 2 wavefronts
// Stages per NT (tiles of 8 tokens): 3, or 2 where x's share would leave one block per SM.
__host__ __device__ constexpr int mmq_stages(int nt) { return nt <= 4 ? 3 : 2; }
// A stage's layout: codes [kMmqRows][kMmqRowBytes], scales then biases [kMmqRows][sb] (sb:
// a row's bytes of them per stage), x [8·NT tokens][kMmqXRow], x's ds [≤ 8 blocks][8·NT] float4.
struct MmqLayout {
  int scales, biases, xq, xds, stage;
  __host__ __device__ MmqLayout(int sb, int nt) {
    scales = kMmqRows * kMmqRowBytes;
    biases = scales + kMmqRows * sb;
    xq = (biases + kMmqRows * sb + 15) / 16 * 16;
    xds = xq + 8 * nt * kMmqXRow;
    stage = xds + (kMmqCols / 32) * 8 * nt * 16;
  }
};

struct MmqGroup {
  DevWeight w[4];
  float* y[4];           // [n][rows] each; slices > 1: [slices][n][rows] partial sums (slice_reduce_kernel)
  int count = 0;
  int end[4];            // exclusive prefix of kMmqRows-row blocks per weight
  int slices = 1;        // column slices per row block
  int slice_stages = 0;  // stages of kMmqCols columns per slice
};

// x of n tokens (n_pad rows: the rows past n zero) as int8 per block of XB = 32 or 64 columns
// (the weights' group or 64, whichever is less: a block's mma products then share one scale):
// q [token][32-column piece] 32 bytes, each 8-value word in the order 0, 2, 4, 6, 1, 3, 5, 7
// (the codes' byte order above); ds [block][token]: d = max|x|/127 over the block, its exact
// Σx (a float sum), and 8·Σ(x − d·x̂), which centres the codes on 8 as the decode path does
// (q4_mmq_kernel: y += s·(d·Σ q·x̂ + 8·Σ(x − d·x̂)) + b·Σx = s·d·Σ (q − 8)·x̂ + (b + 8s)·Σx, so a
// product's error is Σ s·(q − 8)·e, not Σ s·q·e). One warp per (token, block).
__global__ void mmq_quantize_kernel(const float* __restrict__ x, int n, int n_pad, int cols, int xb,
                                    int8_t* __restrict__ q, float4* __restrict__ ds) {
  pdl_enter();
  const int nb = cols / xb;
  const size_t wi = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (wi >= static_cast<size_t>(n_pad) * nb) return;
  const int lane = threadIdx.x & 31, t = static_cast<int>(wi / nb), b = static_cast<int>(wi % nb);
  const float* xr = x + static_cast<size_t>(t) * cols + xb * b;
  const float v0 = t < n ? xr[lane] : 0.0f, v1 = t < n && xb == 64 ? xr[32 + lane] : 0.0f;
  float mx = fmaxf(fabsf(v0), fabsf(v1)), sum = v0 + v1;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o)), sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float inv = mx > 0 ? 127.0f / mx : 0.0f, d = mx / 127.0f;
  const int q0 = __float2int_rn(v0 * inv), q1 = __float2int_rn(v1 * inv);
  float e = (v0 - d * static_cast<float>(q0)) + (v1 - d * static_cast<float>(q1));  // this lane's rounding residual
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) e += __shfl_xor_sync(0xffffffffu, e, o);
  int8_t* qr = q + static_cast<size_t>(t) * cols + xb * b + (lane >> 3) * 8 + (lane & 1) * 4 + ((lane & 7) >> 1);
  qr[0] = static_cast<int8_t>(q0);
  if (xb == 64) qr[32] = static_cast<int8_t>(q1);
  if (lane == 0) ds[static_cast<size_t>(b) * n_pad + t] = make_float4(d, sum, 8.0f * e, 0.0f);
}

// c += a (16×32 int8, row) · b (32×8 int8, col), int32.
__device__ __forceinline__ void mma_s8_16832(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  TQ_SM80(asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}

// grid: row blocks × column slices (slice-major); x padded to 8·NT tokens (n_pad). Per 64
// columns a warp takes one ldmatrix.x4 (two 32-column pieces' words of rows gid and gid + 8)
// and per 8 tokens one mma per piece; kPair (groups of 64 or 128, x in blocks of 64): the two
// pieces' products add in int32 before the one float epilogue of their block, else (groups
// of 32) each piece has its own. gshift: log2(group / 32) (cols % 256 == 0, host-checked).
template <bool kBf16, int NT, bool kPair>
__global__ void __launch_bounds__(kMmqWarps * 32, 2) q4_mmq_kernel(MmqGroup g, const int8_t* __restrict__ xq,
                                                                   const float4* __restrict__ xds, int n, int gshift) {
  extern __shared__ __align__(16) unsigned char sm[];
  constexpr int S = mmq_stages(NT), TP = 8 * NT, es = kBf16 ? 2 : 4, XB = kPair ? 64 : 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gid = lane >> 2, tig = lane & 3;
  const int blocks = g.end[g.count - 1], rb = blockIdx.x % blocks, slice = blockIdx.x / blocks;
  int j = 0;
  while (j < g.count - 1 && rb >= g.end[j]) ++j;
  const DevWeight& w = g.w[j];
  const int rbase = (rb - (j ? g.end[j - 1] : 0)) * kMmqRows, rows = w.rows, cols = w.cols;
  const int s0 = slice * g.slice_stages, s1 = min(cols / kMmqCols, s0 + g.slice_stages);
  const int sw = (8 >> gshift) * es / 4, gpr = cols / w.group;  // a row's scale words per stage (8 >> gshift groups)
  const MmqLayout lay(4 * sw, NT);
  const unsigned char* xds_bytes = reinterpret_cast<const unsigned char*>(xds);
  // Stage s into buffer buf: the weights' part (wpart) and x's (xpart).
  auto issue = [&](int s, int buf, bool wpart, bool xpart) {
    unsigned char* st = sm + buf * lay.stage;
    const int k0 = s * kMmqCols;
#pragma unroll
    for (int i = 0; i < kMmqRows * 8 / (kMmqWarps * 32); ++i) {
      if (!wpart) break;  // codes: kMmqRows rows × 8 pieces of 16 bytes
      const int c = tid + kMmqWarps * 32 * i, r = c >> 3, piece = c & 7, row = min(rbase + r, rows - 1);
      const uint8_t* src = w.codes + static_cast<size_t>(row) * (cols / 2) + k0 / 2 + 16 * piece;
      cp_async16(st + r * kMmqRowBytes + 16 * piece, src, true);
    }
    for (int e = wpart ? tid : kMmqRows * sw; e < kMmqRows * sw; e += kMmqWarps * 32) {
      const int r = e / sw, k = e % sw, row = min(rbase + r, rows - 1);
      const size_t off = (static_cast<size_t>(row) * gpr + ((k0 / 32) >> gshift)) * es + 4 * k;
      cp_async4(st + lay.scales + 4 * e, static_cast<const uint8_t*>(w.scales) + off);
      cp_async4(st + lay.biases + 4 * e, static_cast<const uint8_t*>(w.biases) + off);
    }
    if (!xpart) return;
    for (int e = tid; e < TP * 16; e += kMmqWarps * 32) {  // x: the tokens' 256 bytes of this stage
      const int t = e >> 4, piece = e & 15;
      cp_async16(st + lay.xq + t * kMmqXRow + 16 * piece, xq + static_cast<size_t>(t) * cols + k0 + 16 * piece, true);
    }
    for (int e = tid; e < TP * (kMmqCols / XB); e += kMmqWarps * 32)  // ds of the stage's blocks × TP tokens
      cp_async16(st + lay.xds + 16 * e, xds_bytes + static_cast<size_t>(k0 / XB) * TP * 16 + 16 * e, true);
  };
  // The first stages' codes, scales and biases before the wait (they do not depend on the
  // kernel ahead), their x after it (written by the quantize kernel ahead). Commit group i
  // then holds stage i's x (group 0 every prologue stage's weights too).
#pragma unroll
  for (int i = 0; i < S - 1; ++i)
    if (s0 + i < s1) issue(s0 + i, i, true, false);
  pdl_enter();
#pragma unroll
  for (int i = 0; i < S - 1; ++i) {
    if (s0 + i < s1) issue(s0 + i, i, false, true);
    cp_async_commit();
  }
  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0;
  const int m = lane >> 3, r0 = 16 * warp;
  for (int s = s0; s < s1; ++s) {
    const int buf = (s - s0) % S;
    cp_async_wait<S - 2>();
    __syncthreads();  // stage s landed for every thread; stage s − 1's buffer read by every warp
    if (s + S - 1 < s1) issue(s + S - 1, (s - s0 + S - 1) % S, true, true);
    cp_async_commit();
    const unsigned char* st = sm + buf * lay.stage;
#pragma unroll
    for (int p = 0; p < kMmqCols / 64; ++p) {  // pairs of 32-column blocks
      uint32_t rw[4];                          // rows gid, gid + 8 of block 2p; the same of block 2p + 1
      ldsm_x4(rw, st + (r0 + (m & 1) * 8 + (lane & 7)) * kMmqRowBytes + 16 * (2 * p + (m >> 1)));
      // The pieces' A fragments: bytes of codes k, k+2, k+4, k+6 (lo) and k+1, … (hi).
      constexpr uint32_t kLo = 0x0F0F0F0Fu;
      const uint32_t a0[4] = {rw[0] & kLo, rw[1] & kLo, (rw[0] >> 4) & kLo, (rw[1] >> 4) & kLo};
      const uint32_t a1[4] = {rw[2] & kLo, rw[3] & kLo, (rw[2] >> 4) & kLo, (rw[3] >> 4) & kLo};
#pragma unroll
      for (int h = 0; h < (kPair ? 1 : 2); ++h) {
        const int bl = 2 * p + h, gl = bl >> gshift, xbl = kPair ? p : bl;  // piece, its group, x's block
        const float sa = scale_of<kBf16>(st + lay.scales + (r0 + gid) * 4 * sw, gl);
        const float sb = scale_of<kBf16>(st + lay.scales + (r0 + gid + 8) * 4 * sw, gl);
        const float ba = scale_of<kBf16>(st + lay.biases + (r0 + gid) * 4 * sw, gl);
        const float bb = scale_of<kBf16>(st + lay.biases + (r0 + gid + 8) * 4 * sw, gl);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          const unsigned char* xt = st + lay.xq + (8 * t + gid) * kMmqXRow + 32 * bl + 8 * tig;
          const float4* dd = reinterpret_cast<const float4*>(st + lay.xds) + xbl * TP + 8 * t + 2 * tig;
          const float4 d0 = dd[0], d1 = dd[1];  // tokens 2·tig, 2·tig + 1: (d, Σx, 8·Σ(x − d·x̂))
          int c[4] = {0, 0, 0, 0};
          const uint2 x0 = *reinterpret_cast<const uint2*>(xt);
          mma_s8_16832(c, h ? a1 : a0, x0.x, x0.y);
          if constexpr (kPair) {  // (|c| ≤ 64 · 15 · 127 < 2^22: small_int_to_float holds)
            const uint2 x1 = *reinterpret_cast<const uint2*>(xt + 32);
            mma_s8_16832(c, a1, x1.x, x1.y);
          }
          acc[t][0] += sa * fmaf(d0.x, small_int_to_float(c[0]), d0.z) + ba * d0.y;
          acc[t][1] += sa * fmaf(d1.x, small_int_to_float(c[1]), d1.z) + ba * d1.y;
          acc[t][2] += sb * fmaf(d0.x, small_int_to_float(c[2]), d0.z) + bb * d0.y;
          acc[t][3] += sb * fmaf(d1.x, small_int_to_float(c[3]), d1.z) + bb * d1.y;
        }
      }
    }
  }
  cp_async_wait<0>();
  float* y = g.y[j] + static_cast<size_t>(slice) * n * rows;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int tok = 8 * t + 2 * tig + (e & 1), row = rbase + r0 + gid + 8 * (e >> 1);
      if (tok < n && row < rows) y[static_cast<size_t>(tok) * rows + row] = acc[t][e];
    }
}

// atomicMax: the value's bits made orderable as unsigned (negatives flipped, the sign bit
// set on the rest) in the high word, and ~index in the low word so that ties go to the
// first index (as std::max_element).
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ unsigned long long argmax_key(float v, uint32_t i) {
  return (static_cast<unsigned long long>(order_key(v)) << 32) | (0xFFFFFFFFu - i);
}

__global__ void argmax_kernel(const float* __restrict__ y, int n, unsigned long long* slot) {
  pdl_enter();
  unsigned long long best = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    best = max(best, argmax_key(y[i], static_cast<uint32_t>(i)));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  if ((threadIdx.x & 31) == 0 && best) atomicMax(slot, best);
}

// Sampling from softmax(y / T) over the whole row (no top-k, top-p or min-p) on the GPU:
// the row in `parts` ranges of `per` values, each range's max, then each range's Σ w_i
// with w_i = exp((y_i − M) / T) and M the row's max, then one block walks the ranges'
// sums in order to the one where the cumulative sum passes u · Σ w and scans its w_i for
// the first index that does (the inverse CDF at u; an index whose cumulative sum rounds
// past the range's total falls back to the range's last nonzero weight).
__device__ float block_max(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int i = 0; i < static_cast<int>((blockDim.x + 31) >> 5); ++i) m = fmaxf(m, red[i]);
  return m;
}
__device__ float row_max(const float* part_max, int parts, float* red) {
  float m = -INFINITY;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) m = fmaxf(m, part_max[i]);
  return block_max(m, red);
}
__global__ void sample_max_kernel(const float* __restrict__ y, int n, int per, float* part_max) {
  pdl_enter();
  __shared__ float red[32];
  const int lo = blockIdx.x * per, hi = min(n, lo + per);
  float m = -INFINITY;
  for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) m = fmaxf(m, y[i]);
  m = block_max(m, red);
  if (threadIdx.x == 0) part_max[blockIdx.x] = m;
}
__global__ void sample_sum_kernel(const float* __restrict__ y, int n, int per, float inv_t, const float* part_max,
                                  float* part_sum) {
  pdl_enter();
  __shared__ float red[32];
  const float M = row_max(part_max, gridDim.x, red);
  const int lo = blockIdx.x * per, hi = min(n, lo + per);
  float t = 0;
  for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) t += expf((y[i] - M) * inv_t);
  t = block_sum(t, red);
  if (threadIdx.x == 0) part_sum[blockIdx.x] = t;
}
__global__ void sample_pick_kernel(const float* __restrict__ y, int n, int per, int parts, float inv_t, double u,
                                   const float* part_max, const float* part_sum, int32_t* out) {
  pdl_enter();
  __shared__ float red[32], wsum[32];
  __shared__ int sel_part, found, last;
  __shared__ double rem;
  const float M = row_max(part_max, parts, red);
  if (threadIdx.x == 0) {
    double total = 0;
    for (int p = 0; p < parts; ++p) total += part_sum[p];
    double left = u * total;
    int p = 0;
    while (p + 1 < parts && left >= part_sum[p]) left -= part_sum[p++];
    while (p > 0 && part_sum[p] == 0) left = part_sum[--p];  // (u · total rounded past the last weight)
    sel_part = p, rem = left, found = INT_MAX, last = -1;
  }
  __syncthreads();
  const int lo = sel_part * per, hi = min(n, lo + per), lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  double before = 0;  // the weights of the range's earlier tiles
  for (int t0 = lo; t0 < hi; t0 += blockDim.x) {
    const int i = t0 + threadIdx.x;
    const float w = i < hi ? expf((y[i] - M) * inv_t) : 0.0f;
    float c = w;  // inclusive scan: within the warp, then over the warps' totals
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float v = __shfl_up_sync(0xffffffffu, c, o);
      if (lane >= o) c += v;
    }
    if (lane == 31) wsum[wid] = c;
    __syncthreads();
    float off = 0, tile = 0;
    for (int k = 0; k < static_cast<int>(blockDim.x >> 5); ++k) {
      if (k < wid) off += wsum[k];
      tile += wsum[k];
    }
    c += off;
    if (w > 0 && before + c > rem && before + (c - w) <= rem) atomicMin(&found, i);
    if (w > 0) atomicMax(&last, i);
    __syncthreads();
    if (found != INT_MAX) break;
    before += tile;
    __syncthreads();  // (wsum is rewritten)
  }
  if (threadIdx.x == 0) *out = found != INT_MAX ? found : last >= 0 ? last : lo;
}

// Top-k sampling on the GPU: the k-th largest key by a radix select, 8 bits per pass from
// the top (a histogram of the next 8 bits among keys with the bits fixed so far, then the
// bin holding the k-th), then every value with a key at or above it gathered.
__global__ void topk_init_kernel(TopKSelect* t, int k) {
  pdl_enter();
  t->hist[threadIdx.x] = 0;
  if (threadIdx.x == 0) t->prefix = 0, t->mask = 0, t->need = k, t->count = 0;
}

__global__ void topk_hist_kernel(const float* __restrict__ y, int n, TopKSelect* t, int shift) {
  pdl_enter();
  __shared__ uint32_t h[256];
  h[threadIdx.x] = 0;
  __syncthreads();
  const uint32_t prefix = t->prefix, mask = t->mask;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const uint32_t key = order_key(y[i]);
    if ((key & mask) != prefix) continue;
    const uint32_t bin = (key >> shift) & 255u;
    // Logits share few exponents: lanes with one bin add once (not 32 atomics on one word).
    const uint32_t same = __match_any_sync(__activemask(), bin);
    if ((threadIdx.x & 31) == __ffs(same) - 1) atomicAdd(&h[bin], __popc(same));
  }
  __syncthreads();
  if (h[threadIdx.x]) atomicAdd(&t->hist[threadIdx.x], h[threadIdx.x]);
}

__global__ void topk_pick_kernel(TopKSelect* t, int shift) {
  pdl_enter();
  if (threadIdx.x == 0) {
    uint32_t above = 0;
    int b = 255;
    for (; b > 0 && above + t->hist[b] < static_cast<uint32_t>(t->need); --b) above += t->hist[b];
    t->need -= static_cast<int>(above);
    t->prefix |= static_cast<uint32_t>(b) << shift;
    t->mask |= 255u << shift;
  }
  __syncthreads();
  t->hist[threadIdx.x] = 0;  // for the next pass
}

__global__ void topk_gather_kernel(const float* __restrict__ y, int n, TopKSelect* t, float* vals, int32_t* ids, int cap) {
  pdl_enter();
  const uint32_t kth = t->prefix;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float v = y[i];
    if (order_key(v) < kth) continue;
    const uint32_t at = atomicAdd(&t->count, 1u);
    if (at < static_cast<uint32_t>(cap)) vals[at] = v, ids[at] = i;
  }
}

// On by default where the device has it (sm_90+); TQ_CUDA_PDL=0 turns it off.
// The current device's compute capability major (0 if it cannot be read), read once.
int device_major() {
  static const int major = [] {
    int dev = 0, m = 0;
    const bool ok = cudaGetDevice(&dev) == cudaSuccess &&
                    cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess;
    return ok ? m : 0;
  }();
  return major;
}
// An attribute of the current GPU.
int device_attr(cudaDeviceAttr a) {
  int dev = 0, v = 0;
  TQ_CUDA_CHECK(cudaGetDevice(&dev));
  TQ_CUDA_CHECK(cudaDeviceGetAttribute(&v, a, dev));
  return v;
}
// The GPU's SM count (at least 1).
int sm_count() {
  static const int sms = std::max(1, device_attr(cudaDevAttrMultiProcessorCount));
  return sms;
}

bool pdl_enabled() {
  static const bool on = !(std::getenv("TQ_CUDA_PDL") && std::getenv("TQ_CUDA_PDL")[0] == '0') && device_major() >= 9;
  return on;
}

// kernel<<<grid, block, shared, s>>>(args...) with programmatic dependent launch allowed.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shared, cudaStream_t s, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = shared;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  TQ_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));  // (launch errors included)
}

int threads_for(int n) { return std::min(256, std::max(32, (n + 31) / 32 * 32)); }

}  // namespace

bool g_decode_int8 = std::getenv("TQ_CUDA_EXACT") == nullptr;
bool g_prefill_int8 = !(std::getenv("TQ_CUDA_MMQ") && std::strcmp(std::getenv("TQ_CUDA_MMQ"), "0") == 0);

namespace {
// How a decode matvec of `units` warps' worth of rows and nb blocks of 32 columns is laid
// out: wpu warps share a unit's columns. Chosen so that every lane has the same number of
// steps and the warps fill the GPU's warp slots in whole waves (a last wave that is mostly
// empty leaves the memory system idle for its duration; measured +2% at depth 0 over a
// fixed target of 4096 warps).
// Blocks of the int8 matvec resident at once on this GPU (its register use bounds them).
int q8_block_slots() {
  static const int slots = [] {
    int blocks = 0;
    TQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, q4_q8_kernel<true>, kQ8Threads, 0));
    return sm_count() * blocks;
  }();
  return slots;
}

int warps_per_unit(int units, int nb) {
  const double slots = static_cast<double>(q8_block_slots()) * kQ8Threads / 32;
  // The fewest warps per unit whose layout scores within 3% of the best: more steps per
  // lane spread each warp's fixed costs (setup, reductions, the combine); measured +3.7% at
  // depth 0 over the best score alone (lm_head: 4 → 1 warp per unit).
  double score[9] = {}, best_score = 0;
  for (int wpu = 1; wpu <= 8 && 32 * wpu <= nb; ++wpu) {
    const int steps = (nb + 32 * wpu - 1) / (32 * wpu);
    const double within = static_cast<double>(nb) / (32.0 * wpu * steps);
    const double waves = units * wpu / slots;
    score[wpu] = within * (waves < 1 ? waves : waves / std::ceil(waves));
    best_score = std::max(best_score, score[wpu]);
  }
  int best = 1;
  while (score[best] < best_score - 0.03) ++best;
  return best;
}

// The int8 matvec takes one scale type per launch and finds a block's group by a shift.
bool int8_shape_ok(const MatvecGroup& g) {
  bool ok = (g.w[0].group & (g.w[0].group - 1)) == 0;
  for (int j = 1; j < g.count; ++j) ok = ok && g.w[j].sbf16 == g.w[0].sbf16;
  return ok;
}

// Every weight of the group 4-bit with equal cols and groups, and int8_shape_ok.
bool q4_uniform(const MatvecGroup& g) {
  for (int j = 0; j < g.count; ++j)
    if (!g.w[j].q4 || g.w[j].cols != g.w[0].cols || g.w[j].group != g.w[0].group) return false;
  return int8_shape_ok(g);
}

// Prefill (n > 8 tokens) on tensor cores: every weight of the group 4-bit with cols % 64 == 0
// (int8_shape_ok: one scale type, power-of-2 groups), sm_80+.
bool gemm_ok(const MatvecGroup& g, int n) {
  if (n <= 8 || device_major() < 8 || g.w[0].group < 32 || g.w[0].cols % kGemmBK != 0) return false;
  if (static_cast<int64_t>(n) * g.w[0].cols >= (int64_t{1} << 31)) return false;  // (x offsets are 32-bit)
  return q4_uniform(g);
}

// Units of the int8 kernels (one warp each, kQ8Rows rows; swiglu: half of them of gate, the
// same half of up), block_end set for plain groups.
int q8_units(MatvecGroup& g) {
  int units = 0;
  if (g.swiglu) {
    units = (g.w[0].rows + kQ8Rows / 2 - 1) / (kQ8Rows / 2);
  } else {
    for (int j = 0; j < g.count; ++j) g.block_end[j] = (units += (g.w[j].rows + kQ8Rows - 1) / kQ8Rows);
  }
  return units;
}
// log2(group / 32): a column step's scale index is b >> shift.
int q8_group_shift(int group) {
  int shift = 0;
  while ((32 << shift) < group) ++shift;
  return shift;
}

// A chunk of 2 … tokens_max() tokens in the default mode (more: q4_mmq_kernel, then the
// GEMM): every weight of the group 4-bit with equal cols and groups (int8_shape_ok).
// TQ_CUDA_TOKENS sets the most (0 … kTokMax, default kTokMax); below it, chunks from 2 tokens
// take q4_mmq_kernel where it applies (0 with it off: the float kernel, as before v21f).
int tokens_max() {
  static const int tok_max = [] {
    const char* e = std::getenv("TQ_CUDA_TOKENS");
    return e ? std::clamp(std::atoi(e), 0, kTokMax) : kTokMax;
  }();
  return tok_max;
}
bool tokens_ok(const MatvecGroup& g, int n) {
  if (!g_decode_int8 || n < 2 || n > tokens_max() || g.w[0].cols % 32 != 0) return false;
  return q4_uniform(g);
}
// x of the chunk → int8 (stream-ordered scratch), then one q4_q8_tokens_kernel launch.
void tokens_group(MatvecGroup& g, const float* x, int n, cudaStream_t s) {
  const size_t len = static_cast<size_t>(n) * g.w[0].cols;
  void* scratch = nullptr;
  TQ_CUDA_CHECK(cudaMallocAsync(&scratch, xq8_bytes(len), s));
  const XQ8 xq = xq8_in(scratch, len);
  quantize_q8(x, len, xq, s);
  const int blocks = (q8_units(g) * 32 + kQ8Threads - 1) / kQ8Threads, gshift = q8_group_shift(g.w[0].group);
  const bool b16 = g.w[0].sbf16;
  static_assert(kTokMax == 8, "instantiations below");
  auto k = n <= 4 ? (b16 ? q4_q8_tokens_kernel<true, 4> : q4_q8_tokens_kernel<false, 4>)
                  : (b16 ? q4_q8_tokens_kernel<true, 8> : q4_q8_tokens_kernel<false, 8>);
  launch(k, blocks, kQ8Threads, 0, s, g, xq, n, gshift);
  TQ_CUDA_CHECK(cudaFreeAsync(scratch, s));
}

template <bool kBf16, bool kGroup32, bool kLo>
void launch_gemm(const GemmGroup& gg, const __half* xh, const __half* xl, const float* xs, const float* inv, int n,
                 cudaStream_t s) {
  static const bool sized = [] {
    TQ_CUDA_CHECK(cudaFuncSetAttribute(q4_gemm_kernel<kBf16, kGroup32, kLo>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       GemmLayout<kLo>::bytes));
    return true;
  }();
  (void)sized;
  const int tiles = gg.cols / kGemmBK;
  const dim3 grid((n + kGemmBN - 1) / kGemmBN, gg.end[gg.count - 1], (tiles + gg.split_tiles - 1) / gg.split_tiles);
  launch(q4_gemm_kernel<kBf16, kGroup32, kLo>, grid, kGemmThreads, GemmLayout<kLo>::bytes, s, gg, xh, xl, xs, inv, n);
}
template <bool kBf16, bool kGroup32>
void launch_gemm_x(const GemmGroup& gg, const __half* xh, const __half* xl, const float* xs, const float* inv, int n,
                   cudaStream_t s) {
  (xl ? launch_gemm<kBf16, kGroup32, true> : launch_gemm<kBf16, kGroup32, false>)(gg, xh, xl, xs, inv, n, s);
}

// Column slices per launch of `blocks` blocks over `tiles` column tiles: a launch that
// fills at most half of split_waves × the GPU's block slots (few tokens: one token block)
// is cut along its columns until it fills them, at least 4 tiles per slice; 1 otherwise.
// TQ_CUDA_GEMM_SPLIT sets split_waves (default 1; 0: never split).
int gemm_splits(int blocks, int tiles) {
  static const int split_waves = [] {
    const char* e = std::getenv("TQ_CUDA_GEMM_SPLIT");
    return e ? std::atoi(e) : 1;
  }();
  static const int slots = [] {
    int per_sm = 0;
    TQ_CUDA_CHECK(cudaFuncSetAttribute(q4_gemm_kernel<true, false, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       GemmLayout<false>::bytes));
    TQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, q4_gemm_kernel<true, false, false>, kGemmThreads,
                                                                GemmLayout<false>::bytes));
    return std::max(1, sm_count() * per_sm);
  }();
  const int target = split_waves * slots;
  if (split_waves <= 0 || 2 * blocks > target) return 1;
  return std::max(1, std::min(tiles / 4, (target + blocks - 1) / blocks));
}

// Partial sums of a group's launch cut into `slices` column slices: weight j's at part +
// slices·n·(rows of the weights before j), [slice][n][rows]. Points y[j] (the kernel's outputs)
// there, or at g's outputs (swiglu: up into u) when there is one slice; after the launch,
// add_slices adds them into g's outputs (applying swiglu), or applies swiglu to u.
void slice_outputs(const MatvecGroup& g, int slices, int n, float* part, float* u, float** y) {
  for (int j = 0, at = 0; j < g.count; at += g.w[j].rows, ++j)
    y[j] = slices > 1 ? part + static_cast<size_t>(slices) * n * at : g.swiglu && j == 1 ? u : g.y[j];
}
void add_slices(const MatvecGroup& g, int slices, int n, float* const* y, const float* u, cudaStream_t s) {
  if (slices <= 1) {
    if (g.swiglu) swiglu(g.y[0], u, static_cast<size_t>(n) * g.w[0].rows, s);
    return;
  }
  SliceReduce r;
  r.count = g.swiglu ? 1 : g.count;  // (swiglu: thread i takes gate's and up's element i)
  r.slices = slices, r.swiglu = g.swiglu;
  for (int j = 0; j < g.count; ++j) {
    r.part[j] = y[j], r.y[j] = g.y[j];
    r.end[j] = (j ? r.end[j - 1] : 0) + static_cast<size_t>(n) * g.w[j].rows;
  }
  launch(slice_reduce_kernel, static_cast<unsigned>((r.end[r.count - 1] + 255) / 256), 256, 0, s, r);
}

// x converted once (gemm_prep_kernel, into stream-ordered scratch), then every weight in
// one launch; swiglu: gate and up, then y0 = silu(gate·x) ⊙ (up·x). x as fp16 hi + lo only
// in the exact mode (!g_decode_int8). A launch cut into column slices (gemm_splits) writes
// each slice's partial sums, added in slice order by slice_reduce_kernel (deterministic).
void gemm_group(const MatvecGroup& g, const float* x, int n, cudaStream_t s) {
  const int cols = g.w[0].cols, tiles = cols / kGemmBK;
  GemmGroup gg;
  gg.cols = cols, gg.group = g.w[0].group, gg.count = g.count;
  size_t rows_all = 0;
  for (int j = 0, blocks = 0; j < g.count; ++j) {
    const DevWeight& w = g.w[j];
    gg.rows[j] = w.rows, gg.codes[j] = w.codes, gg.scales[j] = w.scales, gg.biases[j] = w.biases;
    gg.end[j] = blocks += (w.rows + kGemmBM - 1) / kGemmBM;
    rows_all += w.rows;
  }
  const int splits_want = gemm_splits((n + kGemmBN - 1) / kGemmBN * gg.end[g.count - 1], tiles);
  gg.split_tiles = (tiles + splits_want - 1) / splits_want;
  const int splits = (tiles + gg.split_tiles - 1) / gg.split_tiles;
  const size_t nh = static_cast<size_t>(n) * cols, ns = nh / 32, parts = g_decode_int8 ? 1 : 2;
  const size_t up = g.swiglu && splits == 1 ? static_cast<size_t>(n) * g.w[1].rows : 0;
  const size_t part = splits > 1 ? static_cast<size_t>(splits) * n * rows_all : 0;
  void* scratch = nullptr;
  TQ_CUDA_CHECK(cudaMallocAsync(&scratch, parts * nh * sizeof(__half) + (ns + n + up + part) * sizeof(float), s));
  __half* xh = static_cast<__half*>(scratch);
  __half* xl = parts == 2 ? xh + nh : nullptr;
  float* xs = reinterpret_cast<float*>(xh + parts * nh);
  float* inv = xs + ns;
  float* u = inv + n;
  slice_outputs(g, splits, n, u + up, u, gg.y);
  launch(gemm_prep_kernel, n, 256, 0, s, x, cols, xh, xl, xs, inv);
  const bool g32 = gg.group == 32;
  if (g.w[0].sbf16) (g32 ? launch_gemm_x<true, true> : launch_gemm_x<true, false>)(gg, xh, xl, xs, inv, n, s);
  else (g32 ? launch_gemm_x<false, true> : launch_gemm_x<false, false>)(gg, xh, xl, xs, inv, n, s);
  add_slices(g, splits, n, gg.y, u, s);
  TQ_CUDA_CHECK(cudaFreeAsync(scratch, s));
}

// Chunks of tokens_max() + 1 … kMmqMaxTok tokens in the default mode on the int8 tensor
// cores: every weight of the group 4-bit with equal cols and groups (q4_uniform), cols %
// kMmqCols == 0, groups of 32 … 128, sm_80+. g_prefill_int8 off (TQ_CUDA_MMQ=0,
// set_prefill_int8(false)): the GEMM, as before v22.
bool mmq_ok(const MatvecGroup& g, int n) {
  if (!g_decode_int8 || !g_prefill_int8 || n < 2 || n <= tokens_max() || n > kMmqMaxTok) return false;
  if (device_major() < 8) return false;
  if (g.w[0].cols % kMmqCols != 0 || g.w[0].group < 32 || g.w[0].group > 128) return false;
  return q4_uniform(g);
}

// Shared memory of q4_mmq_kernel<·, NT, ·> for groups of 32 << gshift and scales of es bytes.
int mmq_bytes(int nt, int gshift, int es) { return mmq_stages(nt) * MmqLayout((8 >> gshift) * es, nt).stage; }
// Blocks of q4_mmq_kernel<kBf16, NT, kPair> resident at once per SM with `bytes` of shared memory.
template <bool kBf16, int NT, bool kPair>
int mmq_blocks_per_sm(int bytes) {
  static const bool sized = [] {  // (the most any layout takes: f32 scales, groups of 32)
    TQ_CUDA_CHECK(cudaFuncSetAttribute(q4_mmq_kernel<kBf16, NT, kPair>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       mmq_bytes(NT, 0, 4)));
    return true;
  }();
  (void)sized;
  int per_sm = 0;
  TQ_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, q4_mmq_kernel<kBf16, NT, kPair>, kMmqWarps * 32, bytes));
  return std::max(1, per_sm);
}
// Column slices per row block. The blocks resident on one SM share its issue slots, so the
// time goes as the most blocks an SM gets × stages per block (+ 2 for a block's pipeline
// fill); least wins, and on a tie the count that puts more blocks on the GPU at once (up to
// what it holds: two per SM hide more latency than one).
int mmq_slices(int blocks, int stages, int per_sm) {
  const int sms = sm_count();
  int best = 1, best_cost = INT32_MAX;
  for (int ks = 1; ks <= std::min(stages, 16); ++ks) {
    const int per = (stages + ks - 1) / ks;
    if ((stages + per - 1) / per != ks) continue;  // (the same slices as a smaller count)
    const int total = blocks * ks, cost = (total + sms - 1) / sms * per + 2;
    if (cost < best_cost || (cost == best_cost && total <= sms * per_sm)) best_cost = cost, best = ks;
  }
  return best;
}
template <bool kBf16, int NT, bool kPair>
void launch_mmq(const MmqGroup& mg, const int8_t* xq, const float4* ds, int n, int gshift, int bytes, cudaStream_t s) {
  launch(q4_mmq_kernel<kBf16, NT, kPair>, mg.end[mg.count - 1] * mg.slices, kMmqWarps * 32, bytes, s, mg, xq, ds, n,
         gshift);
}
using MmqLaunch = void (*)(const MmqGroup&, const int8_t*, const float4*, int, int, int, cudaStream_t);
using MmqOccupancy = int (*)(int);
template <bool kBf16, bool kPair>
std::pair<MmqLaunch, MmqOccupancy> mmq_kernel_nt(int nt) {
  if (nt == 1) return {launch_mmq<kBf16, 1, kPair>, mmq_blocks_per_sm<kBf16, 1, kPair>};
  if (nt == 2) return {launch_mmq<kBf16, 2, kPair>, mmq_blocks_per_sm<kBf16, 2, kPair>};
  if (nt == 4) return {launch_mmq<kBf16, 4, kPair>, mmq_blocks_per_sm<kBf16, 4, kPair>};
  return {launch_mmq<kBf16, 8, kPair>, mmq_blocks_per_sm<kBf16, 8, kPair>};
}

// x of the chunk → int8 blocks (mmq_quantize_kernel, into stream-ordered scratch, padded to
// the kernel's 8·NT tokens), then every weight in one launch; slices and swiglu as gemm_group.
void mmq_group(const MatvecGroup& g, const float* x, int n, cudaStream_t s) {
  const int cols = g.w[0].cols, stages = cols / kMmqCols, gshift = q8_group_shift(g.w[0].group);
  const int nt = n <= 8 ? 1 : n <= 16 ? 2 : n <= 32 ? 4 : 8, n_pad = 8 * nt;
  const bool b16 = g.w[0].sbf16, pair = gshift > 0;
  const int bytes = mmq_bytes(nt, gshift, b16 ? 2 : 4), xb = pair ? 64 : 32;
  MmqGroup mg;
  mg.count = g.count;
  size_t rows_all = 0;
  for (int j = 0, blocks = 0; j < g.count; ++j) {
    mg.w[j] = g.w[j];
    mg.end[j] = blocks += (g.w[j].rows + kMmqRows - 1) / kMmqRows;
    rows_all += g.w[j].rows;
  }
  const auto [k, per_sm] = b16 ? (pair ? mmq_kernel_nt<true, true>(nt) : mmq_kernel_nt<true, false>(nt))
                               : (pair ? mmq_kernel_nt<false, true>(nt) : mmq_kernel_nt<false, false>(nt));
  mg.slices = mmq_slices(mg.end[g.count - 1], stages, per_sm(bytes));
  mg.slice_stages = (stages + mg.slices - 1) / mg.slices;
  const bool sliced = mg.slices > 1;
  const size_t qb = static_cast<size_t>(n_pad) * cols, dsb = static_cast<size_t>(cols / xb) * n_pad * sizeof(float4);
  const size_t up = g.swiglu && !sliced ? static_cast<size_t>(n) * g.w[1].rows : 0;
  const size_t part = sliced ? static_cast<size_t>(mg.slices) * n * rows_all : 0;
  void* scratch = nullptr;
  TQ_CUDA_CHECK(cudaMallocAsync(&scratch, qb + dsb + (up + part) * sizeof(float), s));
  int8_t* xq = static_cast<int8_t*>(scratch);
  float4* ds = reinterpret_cast<float4*>(xq + qb);  // (qb: a multiple of 4096 bytes)
  float* u = reinterpret_cast<float*>(reinterpret_cast<char*>(ds) + dsb);
  slice_outputs(g, mg.slices, n, u + up, u, mg.y);
  const size_t q_threads = static_cast<size_t>(n_pad) * (cols / xb) * 32;  // a warp per (token, block)
  launch(mmq_quantize_kernel, static_cast<unsigned>((q_threads + 255) / 256), 256, 0, s, x, n, n_pad, cols, xb, xq, ds);
  k(mg, xq, ds, n, gshift, bytes, s);
  add_slices(g, mg.slices, n, mg.y, u, s);
  TQ_CUDA_CHECK(cudaFreeAsync(scratch, s));
}

// An int8 matvec launch of more than 4 waves of blocks (the LM head: ≈ 20 on the H200): it
// takes no fused norm (a norm kernel ahead costs less than one per block) and runs as
// blocks that loop over units.
bool many_waves(int blocks) { return blocks > 4 * q8_block_slots(); }

// Units (kQ8Rows rows, g.wpu warps each) per block of the int8 matvec.
int q8_per_block(const MatvecGroup& g) { return std::max(1, kQ8Threads / 32 / g.wpu); }
// A handed-off norm's Σx² (cols / 8 floats) fit one float4 per thread of the launch.
bool q8_handed_fits(const MatvecGroup& g) { return g.w[0].cols <= 32 * (32 * g.wpu * q8_per_block(g)); }

// The int8 matvec's layout of g (w, count, swiglu set): block_end and wpu into g; returns
// the blocks of the launch.
int q8_layout(MatvecGroup& g) {
  const int units = q8_units(g);
  g.wpu = warps_per_unit(units, g.w[0].cols / 32);
  const int per_block = q8_per_block(g);
  return (units + per_block - 1) / per_block;
}

void launch_group(MatvecGroup& g, const float* x, int n, const XQ8* xq, cudaStream_t s, const RmsNormIn* norm = nullptr) {
  if (n == 1 && xq && g_decode_int8 && int8_shape_ok(g)) {
    const int blocks = q8_layout(g), per_block = q8_per_block(g);
    // int8 output: blocks of whole 8-row words, and not into the x this launch reads
    const bool words = g.w[0].rows % 8 == 0 && (norm || xq->q != g.q8out.q);
    const bool q8_swiglu = g.swiglu && g.wpu <= 2 && words;
    const bool q8_accum = g.accumulate && g.count == 1 && g.q8w && g.q8out.ss && !xq->ss && words && device_major() >= 8 &&
                          (per_block * kQ8Rows) % 8 == 0;
    if (g.q8out.q && !q8_swiglu && !q8_accum) g.q8out = XQ8{};
    const int threads = 32 * g.wpu * per_block;
    if (xq->ss && (norm || !q8_handed_fits(g))) cuda_unsupported("int8 matvec: a handed-off norm it cannot read");
    const int gshift = q8_group_shift(g.w[0].group);
    // One weight of many waves (the LM head), nothing fused: blocks that loop over units.
    static const int loop_waves = [] {
      const char* e = std::getenv("TQ_CUDA_LOOP_WAVES");
      return e ? std::atoi(e) : 2;
    }();
    if (!norm && g.count == 1 && !g.swiglu && !g.accumulate && !g.conv.w && !g.q8out.q && loop_waves > 0 &&
        many_waves(blocks)) {  // (a handed-off norm fits: checked above)
      const int grid = std::min(blocks, loop_waves * q8_block_slots());
      const bool ss = xq->ss != nullptr, b16 = g.w[0].sbf16;
      auto k = ss ? (b16 ? q4_q8_loop_kernel<true, true> : q4_q8_loop_kernel<false, true>)
                  : (b16 ? q4_q8_loop_kernel<true, false> : q4_q8_loop_kernel<false, false>);
      launch(k, grid, kQ8Threads, 0, s, g.w[0], g.y[0], *xq, gshift);
      return;
    }
    if (norm) {
      if (g.w[0].cols % 256 != 0 || g.w[0].cols / 8 > kNormPer * threads) cuda_unsupported("fused RMSNorm: unsupported width");
      g.norm = *norm;
      launch(g.w[0].sbf16 ? q4_q8_kernel<true, kQ8Norm> : q4_q8_kernel<false, kQ8Norm>, blocks, threads,
             norm_smem_bytes(g.w[0].cols), s, g, XQ8{}, gshift);
    } else if (xq->ss) {
      launch(g.w[0].sbf16 ? q4_q8_kernel<true, kQ8Handed> : q4_q8_kernel<false, kQ8Handed>, blocks, threads, 0, s, g, *xq, gshift);
    } else if (q8_accum) {
      launch(g.w[0].sbf16 ? q4_q8_kernel<true, kQ8HandOff> : q4_q8_kernel<false, kQ8HandOff>, blocks, threads, 0, s, g, *xq, gshift);
    } else {
      launch(g.w[0].sbf16 ? q4_q8_kernel<true> : q4_q8_kernel<false>, blocks, threads, 0, s, g, *xq, gshift);
    }
    return;
  }
  if (norm || g.accumulate) cuda_unsupported("fused RMSNorm / accumulate: only on the int8 decode path");
  g.q8out = XQ8{};
  if (tokens_ok(g, n)) {
    tokens_group(g, x, n, s);
    return;
  }
  if (mmq_ok(g, n)) {
    mmq_group(g, x, n, s);
    return;
  }
  if (gemm_ok(g, n)) {
    gemm_group(g, x, n, s);
    return;
  }
  int units = 0;  // warps, one per 4 rows (block_end: exclusive prefix of units per weight)
  if (g.swiglu) {
    units = (g.w[0].rows + 1) / 2;
  } else {
    for (int j = 0; j < g.count; ++j) g.block_end[j] = (units += (g.w[j].rows + kRowsPerWarp - 1) / kRowsPerWarp);
  }
  const int threads = kMatvecThreads, blocks = (units * 32 + threads - 1) / threads;
  const int cols = g.w[0].cols;
  for (int t0 = 0; t0 < n; t0 += 8) {
    const int nt = std::min(8, n - t0);
    MatvecGroup gt = g;
    for (int j = 0; j < 4; ++j)
      if (gt.y[j]) gt.y[j] += static_cast<size_t>(t0) * gt.w[j].rows;
    const float* xt = x + static_cast<size_t>(t0) * cols;
    if (nt == 1) launch(q4_group_kernel<1>, blocks, threads, 0, s, gt, xt, nt);
    else if (nt <= 2) launch(q4_group_kernel<2>, blocks, threads, 0, s, gt, xt, nt);
    else if (nt <= 4) launch(q4_group_kernel<4>, blocks, threads, 0, s, gt, xt, nt);
    else launch(q4_group_kernel<8>, blocks, threads, 0, s, gt, xt, nt);
  }
}

// The weights as one launch of the int8 matvec (into g: weights, count, swiglu), if they can
// be: 4-bit with equal cols and groups (swiglu: equal rows), int8_shape_ok.
bool q8_group(const DevWeight* const* w, int count, bool swiglu, MatvecGroup& g) {
  if (!g_decode_int8 || count < 1 || count > 4) return false;
  g.count = count, g.swiglu = swiglu;
  for (int j = 0; j < count; ++j) {
    if (!w[j]->q4 || w[j]->cols != w[0]->cols || w[j]->group != w[0]->group) return false;
    if (swiglu && w[j]->rows != w[0]->rows) return false;
    g.w[j] = *w[j];
  }
  return int8_shape_ok(g);
}
}  // namespace

void quantize_q8(const float* x, size_t n, const XQ8& out, cudaStream_t s) {
  if (!g_decode_int8 || n % 32 != 0) return;  // (a 4-bit weight has cols % 32 == 0)
  launch(quantize_q8_kernel, (n + 255) / 256, 256, 0, s, x, n, out);
}

bool norm_fusable(const DevWeight* const* w, int count, bool swiglu) {
  MatvecGroup g;
  // (threads per block ≥ 160 for any warps-per-unit: kNormPer groups of 8 each cover 10240)
  if (!q8_group(w, count, swiglu, g) || w[0]->cols % 256 != 0 || w[0]->cols > 8 * kNormPer * 160) return false;
  // Every block builds the norm before its first dot product: past a few waves of blocks
  // (the LM head: ≈ 20 on the H200) one norm kernel ahead of the matvec costs less.
  return !many_waves(q8_layout(g));
}

bool matmul_many(const DevWeight* const* w, float* const* y, int count, const float* x, int n, cudaStream_t s,
                 const XQ8* xq, const RmsNormIn* norm, const DeltaConvIn* conv) {
  bool all_q4 = true;
  for (int j = 0; j < count; ++j) all_q4 = all_q4 && w[j]->q4 && w[j]->cols == w[0]->cols && w[j]->group == w[0]->group;
  if (!all_q4 || count > 4) {
    if (norm) cuda_unsupported("fused RMSNorm: the weights are not one 4-bit group");
    for (int j = 0; j < count; ++j) matmul(*w[j], x, n, y[j], s, xq);
    return false;
  }
  MatvecGroup g;
  g.count = count;
  for (int j = 0; j < 4; ++j) g.y[j] = nullptr;
  for (int j = 0; j < count; ++j) g.w[j] = *w[j], g.y[j] = y[j];
  // (both n == 1 paths take it: the int8 and the float matvec; the int8 one copies up to
  // kConvMax taps with cp.async, sm_80+)
  const bool take_conv = conv && n == 1 && conv->k <= kConvMax && device_major() >= 8;
  if (take_conv) g.conv = *conv;
  launch_group(g, x, n, xq, s, norm);
  return take_conv;
}

bool matmul_accumulate(const DevWeight& w, float* y, cudaStream_t s, const XQ8& xq, const XQ8* next,
                       const float* next_w, bool* handed, bool y_settled) {
  MatvecGroup g;
  g.count = 1;
  g.w[0] = w;
  for (int j = 0; j < 4; ++j) g.y[j] = nullptr;
  g.y[0] = y;
  g.accumulate = true;
  g.y_settled = y_settled && device_major() >= 8;  // (cp.async)
  if (handed) *handed = false;
  if (!w.q4 || !g_decode_int8 || !int8_shape_ok(g)) return false;
  if (next && next->ss && next_w) g.q8out = *next, g.q8w = next_w;
  launch_group(g, nullptr, 1, &xq, s);
  if (handed) *handed = g.q8out.q != nullptr;
  return true;
}

bool handoff_consumable(const DevWeight* const* w, int count, bool swiglu) {
  MatvecGroup g;
  if (device_major() < 8 || !q8_group(w, count, swiglu, g)) return false;  // (cp.async)
  q8_layout(g);  // (its warps per unit)
  return q8_handed_fits(g);
}

bool swiglu_matmul(const DevWeight& gate, const DevWeight& up, const float* x, int n, float* g_out, float* u_scratch,
                   cudaStream_t s, const XQ8* xq, const RmsNormIn* norm, const XQ8* q8_out) {
  if (!(gate.q4 && up.q4 && gate.rows == up.rows && gate.cols == up.cols && gate.group == up.group &&
        gate.sbf16 == up.sbf16)) {
    if (norm) cuda_unsupported("fused RMSNorm: gate and up are not one 4-bit pair");
    matmul(gate, x, n, g_out, s, xq);
    matmul(up, x, n, u_scratch, s, xq);
    swiglu(g_out, u_scratch, static_cast<size_t>(n) * gate.rows, s);
    return false;
  }
  MatvecGroup g;
  g.swiglu = true;
  g.count = 2;
  g.w[0] = gate, g.w[1] = up;
  g.y[0] = g_out, g.y[1] = nullptr, g.y[2] = nullptr, g.y[3] = nullptr;
  if (q8_out && n == 1 && g_decode_int8) g.q8out = *q8_out;
  launch_group(g, x, n, xq, s, norm);
  return g.q8out.q != nullptr;
}

void matmul(const DevWeight& w, const float* x, int n, float* y, cudaStream_t s, const XQ8* xq, const RmsNormIn* norm) {
  if (w.q4) {
    const DevWeight* ws[1] = {&w};
    float* ys[1] = {y};
    matmul_many(ws, ys, 1, x, n, s, xq, norm);
    return;
  }
  if (norm) cuda_unsupported("fused RMSNorm: not a 4-bit weight");
  const int threads = 256, blocks = (w.rows * 32 + threads - 1) / threads;
  for (int t0 = 0; t0 < n; t0 += 8) {
    const int nt = std::min(8, n - t0);
    const float* xt = x + static_cast<size_t>(t0) * w.cols;
    float* yt = y + static_cast<size_t>(t0) * w.rows;
    if (nt == 1) launch(f32_matvec_kernel<1>, blocks, threads, 0, s, w, xt, nt, yt);
    else launch(f32_matvec_kernel<8>, blocks, threads, 0, s, w, xt, nt, yt);
  }
}

namespace {
// Blocks of 256 threads for a grid-stride pass over a logits row (about 4 values per thread, at most 2 per SM).
int row_scan_blocks(int n) { return std::max(1, std::min(264, (n + 1023) / 1024)); }
}  // namespace

void argmax(const float* y, int n, unsigned long long* slot, cudaStream_t s) {
  launch(argmax_kernel, row_scan_blocks(n), 256, 0, s, y, n, slot);
}

void sample_row(const float* y, int n, float temperature, double u, float* scratch, int32_t* out, cudaStream_t s) {
  const int parts = std::min(kSampleParts, std::max(1, (n + 1023) / 1024)), per = (n + parts - 1) / parts;
  const float inv_t = 1.0f / temperature;
  launch(sample_max_kernel, parts, 256, 0, s, y, n, per, scratch);
  launch(sample_sum_kernel, parts, 256, 0, s, y, n, per, inv_t, static_cast<const float*>(scratch), scratch + parts);
  launch(sample_pick_kernel, 1, 1024, 0, s, y, n, per, parts, inv_t, u, static_cast<const float*>(scratch),
         static_cast<const float*>(scratch + parts), out);
}

void top_k(const float* y, int n, int k, TopKSelect* sel, float* vals, int32_t* ids, int cap, cudaStream_t s) {
  const int blocks = row_scan_blocks(n);
  launch(topk_init_kernel, 1, 256, 0, s, sel, k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    launch(topk_hist_kernel, blocks, 256, 0, s, y, n, sel, shift);
    launch(topk_pick_kernel, 1, 256, 0, s, sel, shift);
  }
  launch(topk_gather_kernel, blocks, 256, 0, s, y, n, sel, vals, ids, cap);
}

int32_t argmax_index(unsigned long long key) { return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key)); }

void embed(const DevWeight& w, const int32_t* tokens, int n, float* x, cudaStream_t s) {
  launch(embed_kernel, n, 1024, 0, s, w, tokens, x);
}

void rmsnorm(float* x, const float* add, const float* w, int rows, int dim, float eps, float* out, cudaStream_t s,
             const XQ8* q8) {
  XQ8 q = q8 && g_decode_int8 && dim % 32 == 0 ? *q8 : XQ8{};
  launch(rmsnorm_kernel, rows, std::min(1024, std::max(32, (dim / 4 + 31) / 32 * 32)), 0, s, x, add, w, dim, eps, out, q);
}

void attn_prep(const AttnPrep& a, const float* qg, float* q, float* gate, float* k, float* v, const int32_t* pos,
               cudaStream_t s) {
  dim3 grid(a.n, a.n_heads + 2 * a.n_kv_heads);
  launch(attn_prep_kernel, grid, threads_for(a.head_dim), (2 * a.head_dim + 32 + a.rot_dims) * sizeof(float), s, a, qg, q,
         gate, k, v, pos);
}

void kv_append(DevKVLayer& L, const float* k, const float* v, int n, size_t first, cudaStream_t s,
               const int32_t* first_dev) {
  auto by_warp = [](const DevKVSide& S) {
    return S.bits >= 16 || (S.dim == 256 && (S.bits == 4 || S.bits == 8 || (S.bits == 3 && S.nib3)));
  };
  if (by_warp(L.k) && by_warp(L.v)) {
    launch(kv_append_warp_kernel, dim3(n, L.n_kv_heads), 64, 0, s, L, k, v, first, first_dev);
    return;
  }
  const int D = std::max(L.k.dim, L.v.dim);
  dim3 grid(n, L.n_kv_heads, 2);
  const size_t sh = (D + (D + 3) / 4 + 32 + 2 * 256) * sizeof(float);
  launch(kv_append_kernel, grid, threads_for(D), sh, s, L, k, v, first, first_dev);
}

namespace {
// The common widths (tq3, tq4: both sides alike) get kernels with the width compiled in.
template <int GM>
void launch_attention(const DevKVLayer& L, dim3 grid, cudaStream_t s, const float* q, const int32_t* pos, int sp,
                      size_t n_tokens, float scale, float* ml, float* acc) {
  if (L.k.bits == 3 && L.v.bits == 3)
    launch(attention_kernel<GM, 3, 3>, grid, kAttnThreads, 0, s, L, q, pos, sp, n_tokens, scale, ml, acc);
  else if (L.k.bits == 4 && L.v.bits == 4)
    launch(attention_kernel<GM, 4, 4>, grid, kAttnThreads, 0, s, L, q, pos, sp, n_tokens, scale, ml, acc);
  else
    launch(attention_kernel<GM, 0, 0>, grid, kAttnThreads, 0, s, L, q, pos, sp, n_tokens, scale, ml, acc);
}
}  // namespace

bool g_attention_tc = !(std::getenv("TQ_CUDA_ATTN_TC") && std::getenv("TQ_CUDA_ATTN_TC")[0] == '0');
bool g_attention_tiled = !(std::getenv("TQ_CUDA_ATTN_TILED") && std::getenv("TQ_CUDA_ATTN_TILED")[0] == '0');

Int8Centroids int8_centroids(const float* c, int n) {
  Int8Centroids r;
  if (n != 8 && n != 16) cuda_unsupported("int8_centroids: a table of 8 or 16 entries");
  float mx = 0;
  for (int e = 0; e < n; ++e) mx = std::max(mx, std::fabs(c[e]));
  if (mx == 0) return r;
  // The α ≤ 127 / max|c| whose grid c·α ≈ integer fits all n entries best (for the 3-bit
  // Gaussian levels α ≈ 40.9: each off by ≤ 1.6e-3, against ≤ 1.1e-3 for fp16).
  auto error_at = [&](double a) {
    double e = 0;
    for (int i = 0; i < n; ++i) e = std::max(e, std::fabs(std::nearbyint(a * c[i]) / a - c[i]));
    return e;
  };
  double alpha = 127.0 / mx, best = error_at(alpha);
  for (int i = 0; i < 4096; ++i) {
    const double a = 127.0 / mx * (0.25 + 0.75 * i / 4095.0), e = error_at(a);
    if (e < best) alpha = a, best = e;
  }
  for (int e = 0; e < n; ++e) {
    const double t = std::nearbyint(alpha * c[e]);
    r.t[e >> 2] |= (static_cast<uint32_t>(static_cast<int>(t)) & 0xFFu) << (8 * (e & 3));
    r.err = std::max(r.err, std::fabs(t / alpha - c[e]));
  }
  r.inv = static_cast<float>(1.0 / alpha);
  return r;
}

namespace {
using TcKernelFn = void (*)(DevKVLayer, const float*, const int32_t*, int, size_t, float, float*, float*, TcTail);
struct TcKernel {
  TcKernelFn fn = nullptr;
  int bytes = 0;  // dynamic shared memory
};
// Opts kernel into `bytes` of dynamic shared memory when more than it was allowed so far
// (`allowed`: one per kernel, starting at the default 48 KB).
template <typename... A>
void allow_smem(void (*kernel)(A...), size_t bytes, size_t& allowed) {
  if (bytes <= allowed) return;
  TQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  allowed = bytes;
}
template <int D, int KB, int VB, bool DIRECT = false>
TcKernel tc_kernel(const DevKVLayer& L) {
  TcKernel k{attention_tc_kernel<D, KB, VB, DIRECT>, TcLayout(L, D, DIRECT).bytes()};
  // (per instantiation) The 48 KB a launch gets without opting in hold the kernel's static
  // shared memory too (the 4-bit direct path's dynamic part is 48 KB exactly).
  static size_t allowed = [&] {
    cudaFuncAttributes a{};
    TQ_CUDA_CHECK(cudaFuncGetAttributes(&a, k.fn));
    return (size_t{48} << 10) - a.sharedSizeBytes;
  }();
  allow_smem(k.fn, k.bytes, allowed);
  return k;
}
template <int D>
TcKernel tc_kernel_dim(const DevKVLayer& L) {
  auto is = [&](int kb, int vb) {
    return L.k.bits == kb && L.v.bits == vb && L.k.row_bytes == kv_row_bytes(D, kb) && L.v.row_bytes == kv_row_bytes(D, vb);
  };
  auto both = [&](int b) { return is(b, b); };
  if constexpr (D == 256) {
    if (both(3) && L.n_heads <= 4 * L.n_kv_heads) return tc_kernel<D, 3, 3, true>(L);
    // (TQ_CUDA_DIRECT4=0: 4-bit codes and k8v3 through the tile path, for comparison)
    static const bool direct4 = !(std::getenv("TQ_CUDA_DIRECT4") && std::getenv("TQ_CUDA_DIRECT4")[0] == '0');
    if (direct4 && both(4) && L.n_heads <= 4 * L.n_kv_heads) return tc_kernel<D, 4, 4, true>(L);
    if (direct4 && is(8, 3) && L.n_heads <= 4 * L.n_kv_heads) return tc_kernel<D, 8, 3, true>(L);  // (k8v3)
    if (is(8, 3)) return tc_kernel<D, 8, 3>(L);  // (k8v3)
  }
  if (both(3)) return tc_kernel<D, 3, 3>(L);
  if (both(4)) return tc_kernel<D, 4, 4>(L);
  if (both(16)) return tc_kernel<D, 16, 16>(L);
  return tc_kernel<D, 0, 0>(L);
}
// The tensor-core kernel for this layer: fp16 rows and 2-, 3-, 4- and 8-bit codes, both
// sides of one dim 64, 128 or 256, on sm_80+ (none: f32 rows, small heads, older GPUs →
// attention_kernel).
TcKernel tc_kernel_for(const DevKVLayer& L) {
  auto side_ok = [](const DevKVSide& S) {
    return S.bits == 16 || S.bits == 8 || S.bits == 2 || S.bits == 4 || (S.bits == 3 && S.nib3);
  };
  if (device_major() < 8 || !g_attention_tc || !side_ok(L.k) || !side_ok(L.v) || L.v.dim != L.k.dim || L.n_heads > kMaxG * L.n_kv_heads)
    return {};
  if (L.k.dim == 256) return tc_kernel_dim<256>(L);
  if (L.k.dim == 128) return tc_kernel_dim<128>(L);
  if (L.k.dim == 64) return tc_kernel_dim<64>(L);
  return {};
}
using TiledFn = void (*)(DevKVLayer, const float*, const int32_t*, int, int, size_t, float, float*, float*);
struct TiledKernel {
  TiledFn fn = nullptr;
  size_t bytes = 0;
};
template <int D, int KB, int VB>
TiledKernel tiled_kernel(const DevKVLayer& L) {
  static const int optin = device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  TiledKernel k{attention_tiled_kernel<D, KB, VB>, static_cast<size_t>(PfLayout(L, D).bytes())};
  if (k.bytes > static_cast<size_t>(optin)) return {};
  static size_t allowed = 48 << 10;  // (per instantiation)
  allow_smem(k.fn, k.bytes, allowed);
  return k;
}
// The query-tiled prefill kernel for this layer: where the tensor-core kernel takes it, with
// a whole number of rows of heads per block (G divides kPfRows).
TiledKernel tiled_kernel_for(const DevKVLayer& L) {
  if (!g_attention_tiled || !tc_kernel_for(L).fn || L.n_heads % L.n_kv_heads != 0 ||
      kPfRows % (L.n_heads / L.n_kv_heads) != 0)
    return {};
  const bool fp16 = L.k.bits == 16 && L.v.bits == 16;
  switch (L.k.dim) {
    case 256:
      if (fp16) return tiled_kernel<256, 16, 16>(L);
      if (L.k.bits == 3 && L.v.bits == 3) return tiled_kernel<256, 3, 3>(L);
      if (L.k.bits == 4 && L.v.bits == 4) return tiled_kernel<256, 4, 4>(L);
      return tiled_kernel<256, 0, 0>(L);
    case 128: return fp16 ? tiled_kernel<128, 16, 16>(L) : tiled_kernel<128, 0, 0>(L);
    case 64: return fp16 ? tiled_kernel<64, 16, 16>(L) : tiled_kernel<64, 0, 0>(L);
    default: return {};
  }
}

// Splits of the per-query kernels (decode steps, and prefill chunks the tiled kernel does not take).
int query_splits(const DevKVLayer& L, int n_q, size_t n_tokens) {
  // Enough blocks to fill the GPU several times over (132 SMs × 8), at least 128 tokens per
  // split (measured: 528 or 2112 blocks, 256 or 512 tokens were no better). The tensor-core
  // kernel: at most as many, in whole waves of the blocks its shared memory lets reside —
  // and for one query (a decode step) one wave, every block resident at once (no later
  // wave's tail, fewer partials for the merge): as many blocks as fit for code caches, whose
  // decode is bound by instruction issue (more warps hide more of its latency), one per SM
  // for fp16 rows, which are bound by memory (four warps per SM keep it busy). Measured on
  // the H200 (PERF.md v13d): against two or more waves, tq3 +5% at 32K–128K, fp16 +7% at 128K.
  constexpr int max_blocks = 1056, min_tokens = 128;
  int blocks = max_blocks;
  if (const TcKernel tc = tc_kernel_for(L); tc.fn) {
    int per_sm = 0;
    TQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, tc.fn, kTcWarps * 32, tc.bytes));
    const int slots = std::max(1, sm_count() * per_sm);
    blocks = std::min(max_blocks, slots * std::max(1, max_blocks / slots));
    if (n_q == 1) blocks = L.k.bits >= 16 && L.v.bits >= 16 ? sm_count() : slots;
  }
  const int want = std::max(1, blocks / std::max(1, n_q * L.n_kv_heads));
  return static_cast<int>(std::max<size_t>(1, std::min<size_t>(want, (n_tokens + min_tokens - 1) / min_tokens)));
}
// The split slots per (query, head) of a prefill chunk through the tiled kernel and of its
// window tail ({0, 0}: the per-query kernels). At most 1024 / n_q and 512 / n_q, so n_q ×
// slots ≤ 3 · max(n_q, 512) (the model's scratch); the tiled kernel's splits fill the SMs
// once (two blocks per SM) with at least 64 tokens each.
struct TiledPlan {
  int tiled = 0, tail = 0;
  TiledKernel kernel;  // (the tiled kernel for the layer, when tiled > 0)
};
TiledPlan tiled_plan(const DevKVLayer& L, int n_q, size_t n_tokens) {
  if (n_q < kTiledMinQ || n_tokens == SIZE_MAX) return {};
  const TiledKernel tk = tiled_kernel_for(L);
  if (!tk.fn) return {};
  const bool windowed = L.window > 0 && (L.k.bits < 16 || L.v.bits < 16);
  // A windowed code cache whose first query's window reaches token 0 has nothing before the
  // cut (but after a rewind, ring_lo's): the per-query kernel takes all of it.
  if (windowed && n_tokens < static_cast<size_t>(L.window) + n_q) return {};
  const int rows_of = kPfRows / (L.n_heads / L.n_kv_heads);
  const int blocks = L.n_kv_heads * ((n_q + rows_of - 1) / rows_of);
  TiledPlan p;
  p.kernel = tk;
  p.tiled = std::min({std::max(1, 1024 / n_q), (2 * sm_count() + blocks - 1) / blocks,
                      static_cast<int>(std::max<size_t>(1, n_tokens / 64))});
  if (windowed)
    p.tail = std::min(std::max(1, 512 / n_q),
                      query_splits(L, n_q, std::min(n_tokens, static_cast<size_t>(L.window) + n_q + 16)));
  return p;
}
}  // namespace

int splits_for(const DevKVLayer& L, int n_q, size_t n_tokens) {
  if (const TiledPlan p = tiled_plan(L, n_q, n_tokens); p.tiled) return p.tiled + p.tail;
  return query_splits(L, n_q, n_tokens);
}

size_t attention_scratch_floats(const DevKVLayer& L, int n_q, int n_splits) {
  return static_cast<size_t>(n_q) * L.n_heads * n_splits * (2 + L.v.dim);
}


void attention(const DevKVLayer& L, const float* q, const int32_t* pos, int n_q, size_t n_tokens, int n_splits,
               const float* gate, float scale, float* scratch, float* att, cudaStream_t s, const XQ8* q8) {
  if (L.n_heads / L.n_kv_heads > kMaxG || L.k.dim > 256 || L.v.dim > 256 || L.head_dim % 8 != 0)
    cuda_unsupported("CUDA attention: at most 8 query heads per KV head and a head_dim <= 256, a multiple of 8");
  const int sp = n_splits;
  float* ml = scratch;
  float* acc = scratch + static_cast<size_t>(n_q) * L.n_heads * sp * 2;
  const dim3 grid(L.n_kv_heads, n_q, sp);
  const int G = L.n_heads / L.n_kv_heads;
  const TiledPlan plan = tiled_plan(L, n_q, n_tokens);
  if (plan.tiled && plan.tiled + plan.tail == sp) {  // a prefill chunk: the tiled kernel, then the window's part
    const int rows_of = kPfRows / G;
    launch(plan.kernel.fn, dim3(L.n_kv_heads, (n_q + rows_of - 1) / rows_of, plan.tiled), kPfWarps * 32,
           plan.kernel.bytes, s, L, q, pos, n_q, sp, n_tokens, scale, ml, acc);
    if (plan.tail) {
      const TcKernel tc = tc_kernel_for(L);
      launch(tc.fn, dim3(L.n_kv_heads, n_q, plan.tail), kTcWarps * 32, tc.bytes, s, L, q, pos, plan.tail, n_tokens,
             scale, ml, acc, TcTail{plan.tiled, sp});
    }
  } else if (const TcKernel tc = tc_kernel_for(L); tc.fn)
    launch(tc.fn, grid, kTcWarps * 32, tc.bytes, s, L, q, pos, sp, n_tokens, scale, ml, acc, TcTail{});
  else if (G == 1) launch_attention<1>(L, grid, s, q, pos, sp, n_tokens, scale, ml, acc);
  else if (G == 2) launch_attention<2>(L, grid, s, q, pos, sp, n_tokens, scale, ml, acc);
  else if (G <= 4) launch_attention<4>(L, grid, s, q, pos, sp, n_tokens, scale, ml, acc);
  else launch_attention<8>(L, grid, s, q, pos, sp, n_tokens, scale, ml, acc);
  const int merge_threads = std::min(1024, std::max(32, L.v.dim * std::min(8, (sp + 7) / 8)) / 32 * 32);
  const size_t merge_groups = std::max(1, merge_threads / L.v.dim);
  launch(attention_merge_kernel, dim3(n_q, L.n_heads), merge_threads,
         (L.v.dim * (1 + merge_groups) + sp) * sizeof(float), s,
      L, sp, ml, acc, gate, att, q8 && g_decode_int8 && L.head_dim % 32 == 0 ? *q8 : XQ8{});
}

void delta_conv_prep(const DeltaDims& d, float* qkv, float* conv_state, const float* conv_w, const float* b,
                     const float* a, const float* a_log, const float* dt_bias, float* q, float* k, float* v, float* beta,
                     float* g, cudaStream_t s) {
  if (d.conv_k > 8) cuda_unsupported("CUDA DeltaNet: conv kernel wider than 8");
  const int heads = 2 * d.hk + d.hv, threads = threads_for(std::max(d.dk, d.dv));
  launch(delta_conv_prep_kernel, dim3(d.n, heads), threads, 0, s, d, static_cast<const float*>(qkv),
         static_cast<const float*>(conv_state), conv_w, b, a, a_log, dt_bias, q, k, v, beta, g);
  const int C = 2 * d.hk * d.dk + d.hv * d.dv;
  launch(delta_conv_state_kernel, (C + 255) / 256, 256, 0, s, d, static_cast<const float*>(qkv), conv_state);
}

bool delta_chunked_ok(const DeltaDims& d) {
  static const bool on = !(std::getenv("TQ_CUDA_DELTA_CHUNKED") && std::getenv("TQ_CUDA_DELTA_CHUNKED")[0] == '0');
  return on && d.n >= kDeltaChunkMin && (d.dk == 32 || d.dk == 64 || d.dk == 128) && d.dv % 32 == 0 && d.dv <= 128 &&
         d.hk > 0 && d.hv % d.hk == 0;
}
size_t delta_chunk_scratch_floats(int n, int hv, int dk, int dv) {
  return static_cast<size_t>((n + kDeltaC - 1) / kDeltaC) * hv * delta_chunk_floats(dk, dv);
}
namespace {
template <int DK>
void delta_chunked(const DeltaDims& d, const float* q, const float* k, const float* v, const float* beta, const float* g,
                   float* state, float* y, float* scratch, cudaStream_t s) {
  constexpr int C = kDeltaC;
  const size_t prep = delta_prep_smem_floats(DK, d.dv) * sizeof(float), pass = delta_state_smem_floats(DK) * sizeof(float);
  static size_t prep_ok = 48 << 10, pass_ok = 48 << 10;
  allow_smem(delta_chunk_prep_kernel<DK>, prep, prep_ok);
  allow_smem(delta_chunk_state_kernel<DK>, pass, pass_ok);
  const DeltaChunkBufs bufs{scratch, d.dk, d.dv, d.hv};
  launch(delta_chunk_prep_kernel<DK>, dim3((d.n + C - 1) / C, d.hv), 256, prep, s, d, q, k, v, beta, g, bufs);
  launch(delta_chunk_state_kernel<DK>, dim3(d.hv, d.dv / 32), 256, pass, s, d, q, k, bufs, state, y);
}
}  // namespace

void delta_rule(const DeltaDims& d, const float* q, const float* k, const float* v, const float* beta, const float* g,
                float* state, float* y, cudaStream_t s, float* scratch, size_t scratch_floats) {
  if (scratch && delta_chunked_ok(d) && scratch_floats >= delta_chunk_scratch_floats(d.n, d.hv, d.dk, d.dv)) {
    if (d.dk == 128) delta_chunked<128>(d, q, k, v, beta, g, state, y, scratch, s);
    else if (d.dk == 64) delta_chunked<64>(d, q, k, v, beta, g, state, y, scratch, s);
    else delta_chunked<32>(d, q, k, v, beta, g, state, y, scratch, s);
    return;
  }
  dim3 grid(d.hv, (d.dv + 31) / 32);
  if (d.dk == 128) launch(delta_rule_kernel<128>, grid, 128, 0, s, d, q, k, v, beta, g, state, y);
  else if (d.dk == 64) launch(delta_rule_kernel<64>, grid, 128, 0, s, d, q, k, v, beta, g, state, y);
  else if (d.dk == 32) launch(delta_rule_kernel<32>, grid, 128, 0, s, d, q, k, v, beta, g, state, y);
  else cuda_unsupported("CUDA DeltaNet: key head dim must be 32, 64 or 128");
}

bool delta_step_ok(const DeltaDims& d) {
  return d.n == 1 && (d.dk == 32 || d.dk == 64 || d.dk == 128) && d.dv % 32 == 0 && d.dv <= 128 && d.hk > 0 &&
         d.hv % d.hk == 0;
}

void delta_step(const DeltaDims& d, const float* qkv, const float* b, const float* a, const float* a_log,
                const float* dt_bias, float* state, const float* z, const float* norm_w, float eps, float* y,
                cudaStream_t s, const XQ8* q8) {
  if (!delta_step_ok(d)) cuda_unsupported("CUDA DeltaNet step: unsupported head dims");
  const int threads = 4 * d.dv;  // 4 quarters × dv / 32 warps
  const XQ8 o8 = q8 && g_decode_int8 ? *q8 : XQ8{};
  if (d.dk == 128) launch(delta_step_kernel<128>, d.hv, threads, 0, s, d, qkv, b, a, a_log, dt_bias, state, z, norm_w, eps, y, o8);
  else if (d.dk == 64) launch(delta_step_kernel<64>, d.hv, threads, 0, s, d, qkv, b, a, a_log, dt_bias, state, z, norm_w, eps, y, o8);
  else launch(delta_step_kernel<32>, d.hv, threads, 0, s, d, qkv, b, a, a_log, dt_bias, state, z, norm_w, eps, y, o8);
}

void delta_conv(const DeltaDims& d, float* qkv, float* conv_state, const float* conv_w, cudaStream_t s) {
  const int C = 2 * d.hk * d.dk + d.hv * d.dv;
  launch(delta_conv_kernel, (C + 255) / 256, 256, 0, s, d, qkv, conv_state, conv_w);
}

void gated_norm(const DeltaDims& d, float* y, const float* z, const float* w, float eps, cudaStream_t s, const XQ8* q8) {
  launch(gated_norm_kernel, d.n * d.hv, threads_for(d.dv), 0, s, d.dv, y, z, w, eps,
                                                            q8 && g_decode_int8 && d.dv % 32 == 0 ? *q8 : XQ8{});
}

void swiglu(float* g, const float* u, size_t n, cudaStream_t s) {
  launch(swiglu_kernel, (n + 255) / 256, 256, 0, s, g, u, n);
}

void fill_random(float* x, size_t n, uint64_t seed, cudaStream_t s) {
  launch(fill_random_kernel, (n + 255) / 256, 256, 0, s, x, n, seed);
}

void add(float* x, const float* o, size_t n, cudaStream_t s) {
  launch(add_kernel, (n + 255) / 256, 256, 0, s, x, o, n);
}

}  // namespace tq::cuda
