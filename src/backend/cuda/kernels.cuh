// CUDA kernels of the backend and their launch helpers. Activations are float32; weights
// are MLX affine 4-bit (codes + bf16/f32 scale and bias per group) or float32; KV caches
// are fp16 rows or TurboQuant codes with an fp16 norm. Each kernel mirrors a CPU op
// (src/backend/cpu/ops.cc, src/kv, src/model/deltanet.cc) so the two agree up to rounding.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace tq::cuda {

// Throw tq::Error (defined in cuda_model.cc: nvcc never sees fmt).
[[noreturn]] void cuda_error(cudaError_t e, const char* file, int line);
[[noreturn]] void cuda_unsupported(const char* what);

#define TQ_CUDA_CHECK(expr)                                           \
  do {                                                                \
    cudaError_t err_ = (expr);                                        \
    if (err_ != cudaSuccess) ::tq::cuda::cuda_error(err_, __FILE__, __LINE__); \
  } while (0)

// A weight on the device. kind q4: codes [rows][cols/2] bytes (value j: nibble j of the
// row's little-endian stream), scales/biases [rows][cols/group] (bf16 if sbf16 else f32).
struct DevWeight {
  int rows = 0, cols = 0, group = 0;
  bool q4 = false, sbf16 = true;
  const uint8_t* codes = nullptr;
  const void* scales = nullptr;
  const void* biases = nullptr;
  const float* f32 = nullptr;  // dense kind
};

// One side (K or V) of a KV cache layer on the device.
struct DevKVSide {
  int bits = 16;          // 16 / 32: fp16 / f32 rows of the original vector; else TurboQuant codes
  int dim = 0;            // head_dim (fp16) or padded D (codes)
  int row_bytes = 0;      // bytes per token per head in `rows`
  // 3-bit codes with D % 32 == 0 are stored in groups of 32 as 3 words whose nibbles hold
  // codes 0-23 of the group in their low 3 bits and codes 24-31 bit-sliced in their top
  // bits (word b: bit b), so that a mask makes prmt selectors (nib3_* below); other
  // widths as a little-endian bit stream (code d at bit d·bits).
  bool nib3 = false;
  uint8_t* rows = nullptr;   // [n_kv_heads][cap][row_bytes]
  uint16_t* norms = nullptr; // [n_kv_heads][cap] (codes)
  const float* signs = nullptr;      // [n_kv_heads][D] rotation signs (codes)
  const float* centroids = nullptr;  // [2^bits] (codes)
  const float* boundaries = nullptr; // [2^bits − 1] (codes)
  bool norm_correction = true;
  __half* ring = nullptr;  // window: [n_kv_heads][ring_rows][D], rotated domain (codes with window)
  // 3- and 4-bit K of the direct path: the centroids as int8 for its scores on the int8 tensor
  // cores (int8_centroids), c ≈ t / α with the entries t 4 per word (8 or 16 entries); i8_inv =
  // 1 / α (0: fp16 form). (V: the values' byte table of the same grid, direct_values.)
  uint32_t i8_t[4] = {0, 0, 0, 0};
  int i8_min_split = 0;  // ... in splits of at least this many tokens (the query's int8 form costs a prologue)
  float i8_inv = 0;
};

// Bytes per token row of a side: fp16 rows of D values, or D codes of B bits + 2 bytes (a
// two-word read of the last codes may reach past them), rounded up to 4.
__host__ __device__ constexpr int kv_row_bytes(int D, int B) { return B == 16 ? 2 * D : ((D * B + 7) / 8 + 2 + 3) / 4 * 4; }

// The nib3 layout of 3-bit codes (DevKVSide::nib3): group g of 32 codes is words 3g … 3g+2;
// word b holds codes 8b … 8b + 7 in the low 3 bits of its nibbles and bit b of codes 24-31
// in their top bits. Word `part` (0-2) of a group from its codes as nibbles (code k at bit
// 4k): own = codes 8·part …, top = codes 24 … 31.
__host__ __device__ inline uint32_t nib3_word(uint32_t own, uint32_t top, int part) {
  return own | (((top >> part) & 0x11111111u) << 3);
}
// Word b of a group from its 32 codes c[0..31].
__host__ __device__ inline uint32_t nib3_word(const uint8_t* c, int b) {
  uint32_t own = 0, top = 0;
  for (int k = 0; k < 8; ++k) own |= static_cast<uint32_t>(c[8 * b + k] & 7u) << (4 * k), top |= static_cast<uint32_t>(c[24 + k] & 7u) << (4 * k);
  return nib3_word(own, top, b);
}
// Codes 8·part … 8·part + 7 of group g of a row as the nibbles of one word, bit 3 of each
// clear (prmt selectors): a mask of word `part` for parts 0-2, the top bits of the three
// words for part 3.
__host__ __device__ inline uint32_t nib3_codes8(const uint32_t* row, int g, int part) {
  const uint32_t* w = row + 3 * g;
  if (part < 3) return w[part] & 0x77777777u;
  return ((w[0] >> 3) & 0x11111111u) | ((w[1] >> 2) & 0x22222222u) | ((w[2] >> 1) & 0x44444444u);
}

struct DevKVLayer {
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  size_t cap = 0;    // tokens allocated
  int window = 0;    // fp16 window (TurboQuant), 0 = none
  int ring_rows = 0;  // ring slots (token t at t % ring_rows)
  // Ring rows of tokens [*ring_lo, n_tokens) are valid. On the device, so that a captured
  // decode step stays valid: kv_append advances it, the host writes it only on truncation.
  unsigned long long* ring_lo = nullptr;
  DevKVSide k, v;
};

// x of a decode step as int8 in blocks of 32 values (see q8_store_warp in kernels.cu):
// q: 2 int4 per block, d: the scales of its four 8-value words, sum: their exact sums
// (cols / 8 floats, read as a float4 per block).
// ss set (an RMSNorm handed off by the matvec that produced x, see matmul_accumulate): the
// words hold x·w un-normalized and ss[i] = Σ x² over word i; a matvec reading it scales its
// outputs by r = 1/√(Σ ss / cols + eps), which is the norm (the matvec is linear in x).
struct XQ8 {
  int4* q = nullptr;
  float4* d = nullptr;
  float* sum = nullptr;
  float* ss = nullptr;
  float eps = 0;
};
// Decode (n == 1) 4-bit matvecs read x as int8 (xq, filled by quantize_q8 or a fused
// producer such as rmsnorm) and use dp4a when g_decode_int8 (default; TQ_CUDA_EXACT=1 or
// set_decode_int8(false) turns it off), else float x (exact to rounding). The prefill GEMM
// (more than 8 tokens) takes x as fp16 when g_decode_int8, as fp16 hi + lo (exact to
// rounding) when not.
extern bool g_decode_int8;
// Prefill chunks of 9 … 64 tokens take x as int8 per min(group, 64) columns on the int8
// tensor cores (q4_mmq_kernel) when g_decode_int8 and g_prefill_int8 (default; TQ_CUDA_MMQ=0
// or set_prefill_int8(false): the GEMM).
extern bool g_prefill_int8;
// An XQ8 of n values (rounded up to blocks of 32) in one allocation of xq8_bytes: q (32 bytes
// per block), then d and sum (a float4 each per block), then ss when normed.
inline size_t xq8_bytes(size_t n, bool normed = false) {
  return (n + 31) / 32 * (2 * sizeof(int4) + (normed ? 3 : 2) * sizeof(float4));
}
inline XQ8 xq8_in(void* mem, size_t n, bool normed = false, float eps = 0) {
  int4* q = static_cast<int4*>(mem);
  const size_t blocks = (n + 31) / 32;
  XQ8 x{q, reinterpret_cast<float4*>(q + 2 * blocks), reinterpret_cast<float*>(q + 3 * blocks)};
  if (normed) x.ss = reinterpret_cast<float*>(q + 4 * blocks), x.eps = eps;
  return x;
}
// out ← x [n values, n % 32 == 0] as int8 blocks (nothing when g_decode_int8 is off).
void quantize_q8(const float* x, size_t n, const XQ8& out, cudaStream_t s);
// A decode step's RMSNorm fused into the int8 matvec that consumes it: each block builds
// the int8 x of RMSNorm(x)·w in shared memory (no norm kernel, no float copy). Only where
// norm_fusable (4-bit weights on the int8 path, cols % 256 == 0, cols ≤ 10240, and at most
// 4 waves of blocks on this GPU: each block repeats the norm).
struct RmsNormIn {
  const float* x = nullptr;  // the residual stream, cols floats
  const float* w = nullptr;  // the norm's weight
  float eps = 0;
};
bool norm_fusable(const DevWeight* const* w, int count, bool swiglu = false);
void matmul(const DevWeight& w, const float* x, int n, float* y, cudaStream_t s, const XQ8* xq = nullptr,
            const RmsNormIn* norm = nullptr);
// A decode step's DeltaNet conv fused into the in-projection that produces its input: the
// rows of the first weight (the conv's channels) leave as silu(conv) and the conv state
// [k − 1][rows] advances, by the one thread that writes each row.
struct DeltaConvIn {
  const float* w = nullptr;  // [rows][k]
  float* state = nullptr;
  int k = 0;
};
// Several weights over the same x in one launch (all MLX 4-bit with equal cols; else one by
// one). conv (n == 1 only): true if it was applied (4-bit weights), false if the caller
// must run delta_conv.
bool matmul_many(const DevWeight* const* w, float* const* y, int count, const float* x, int n, cudaStream_t s,
                 const XQ8* xq = nullptr, const RmsNormIn* norm = nullptr, const DeltaConvIn* conv = nullptr);
// g_out = silu(gate·x) ⊙ (up·x), one launch for 4-bit weights (u_scratch used otherwise).
// q8_out (decode): g_out also as int8 by the same launch where it can (its input norm fused,
// rows in whole 8-value words); true if it did, else the caller runs quantize_q8.
bool swiglu_matmul(const DevWeight& gate, const DevWeight& up, const float* x, int n, float* g_out, float* u_scratch,
                   cudaStream_t s, const XQ8* xq = nullptr, const RmsNormIn* norm = nullptr,
                   const XQ8* q8_out = nullptr);
// Decode: y += W·x (a sublayer's output added to the residual stream by its matvec) on the
// int8 path; false, with nothing launched, where that path does not apply.
// next (its ss set) with next_w: the same launch also writes RMSNorm's int8 input for the
// matvec that follows (y·next_w and the words' Σ y², see XQ8); *handed tells whether it did
// (blocks of whole 8-row words: not every shape). y_settled: y's last writer completed
// before the kernel ahead of this launch began (it is two or more launches back, or the
// host wrote it), so the launch may read y before its dependency wait.
bool matmul_accumulate(const DevWeight& w, float* y, cudaStream_t s, const XQ8& xq, const XQ8* next = nullptr,
                       const float* next_w = nullptr, bool* handed = nullptr, bool y_settled = false);
// Whether the int8 matvec of these weights (one launch) can read an x whose norm was handed
// off (XQ8::ss): 4-bit weights on the int8 path, sm_80+, cols ≤ 32 · its threads per block (one float4 of word sums per thread).
bool handoff_consumable(const DevWeight* const* w, int count, bool swiglu = false);
void embed(const DevWeight& w, const int32_t* tokens, int n, float* x, cudaStream_t s);
// *slot ← max(*slot, the key of y's largest value [n values], ties: the first); with *slot
// zeroed before, argmax_index(*slot) is that value's index. Greedy sampling without
// copying the logits to the host.
void argmax(const float* y, int n, unsigned long long* slot, cudaStream_t s);
int32_t argmax_index(unsigned long long key);
// Top-k on the GPU (sampling without copying the logits): every value of y[n] at or above
// its k-th largest (1 ≤ k ≤ n) into vals/ids (unordered; ties at the k-th included), up to
// cap of them; sel->count ends as how many there were (more than cap: some were not written).
struct TopKSelect {
  uint32_t prefix, mask;  // the bits of the k-th largest's orderable key found so far
  int need;               // how many keys with that prefix are still wanted
  uint32_t count;         // values gathered
  uint32_t hist[256];
};
void top_k(const float* y, int n, int k, TopKSelect* sel, float* vals, int32_t* ids, int cap, cudaStream_t s);
// A draw from softmax(y / temperature) over all n values (sampling with no top-k, top-p or
// min-p, without copying the logits): the index at which the cumulative weight passes
// u · Σ (u in [0, 1): the inverse CDF) into *out. scratch: kSampleScratch floats (a max and a
// weight sum per range of the row, at most kSampleParts ranges).
constexpr int kSampleParts = 256, kSampleScratch = 2 * kSampleParts;
void sample_row(const float* y, int n, float temperature, double u, float* scratch, int32_t* out, cudaStream_t s);
// out = rmsnorm(x (+= add when add != nullptr)) · w, rows × dim; also as int8 into q8 when
// given (and g_decode_int8, dim % 32 == 0).
void rmsnorm(float* x, const float* add, const float* w, int rows, int dim, float eps, float* out, cudaStream_t s,
             const XQ8* q8 = nullptr);
// Attention inputs: split q/gate, biases, q/k RMSNorm, partial RoPE, in place; pos device array.
struct AttnPrep {
  int n, n_heads, n_kv_heads, head_dim, rot_dims;
  double theta;
  float eps;
  bool gate;
  const float *q_norm, *k_norm, *q_bias, *k_bias, *v_bias;  // device or null
};
void attn_prep(const AttnPrep& a, const float* qg, float* q, float* gate, float* k, float* v, const int32_t* pos,
               cudaStream_t s);
// Appends n tokens (positions first..first+n−1; first_dev[0] instead when given, a device
// value) of k, v [n][n_kv_heads][head_dim].
void kv_append(DevKVLayer& L, const float* k, const float* v, int n, size_t first, cudaStream_t s,
               const int32_t* first_dev = nullptr);
// att[n_q][n_heads][head_dim] for queries at pos (device; ascending, as a chunk's are) over
// tokens [0, pos]; n_tokens cached (SIZE_MAX: every query's own pos + 1, as in a decode step); gate (optional):
// att ·= σ(gate); q8: also att as int8 (decode). The tokens are split n_splits ways (splits_for); scratch holds
// attention_scratch_floats.
// Attention on tensor cores where the layer fits (fp16 rows or 2/3/4/8-bit codes, dim 64,
// 128 or 256; default) else the float kernel; TQ_CUDA_ATTN_TC=0 or set_attention_tc(false):
// the float kernel everywhere. Prefill chunks of ≥ 8 queries on tensor cores take the
// query-tiled kernel (each tile of the prefix read once per 64 (position, head) rows, not
// once per query; a windowed code cache's window by the per-query kernel); g_attention_tiled
// = false or TQ_CUDA_ATTN_TILED=0: the per-query kernel for them too.
extern bool g_attention_tc;
extern bool g_attention_tiled;
extern bool g_attention_i8;     // new caches' K tables for the direct path's int8 scores (cuda_backend.h)
extern int g_attention_i8_min;  // ... taken in splits of at least this many tokens
// K's centroid table for the direct path's int8 scores (DevKVSide::i8_*), from the n = 8 or 16
// centroids of a 3- or 4-bit codebook; err: the largest |ĉ − c| over the entries.
struct Int8Centroids {
  uint32_t t[4] = {0, 0, 0, 0};
  float inv = 0;
  double err = 0;
};
Int8Centroids int8_centroids(const float* c, int n = 8);
int splits_for(const DevKVLayer& L, int n_q, size_t n_tokens);
size_t attention_scratch_floats(const DevKVLayer& L, int n_q, int n_splits);
void attention(const DevKVLayer& L, const float* q, const int32_t* pos, int n_q, size_t n_tokens, int n_splits,
               const float* gate, float scale, float* scratch, float* att, cudaStream_t s, const XQ8* q8 = nullptr);
// Gated DeltaNet pieces.
struct DeltaDims {
  int n, hk, hv, dk, dv, conv_k;
};
// Causal conv + SiLU of the n new tokens (conv_state advanced, qkv left as it is), then the
// delta rule's inputs: q, k l2-normalized per head (q · 1/√dk), v, β = σ(b), g = decay.
void delta_conv_prep(const DeltaDims& d, float* qkv, float* conv_state, const float* conv_w, const float* b,
                     const float* a, const float* a_log, const float* dt_bias, float* q, float* k, float* v, float* beta,
                     float* g, cudaStream_t s);
// state: [hv][dk][dv] on the GPU (the CPU's S[hv][dv][dk] transposed per head).
// Passes of at least 128 tokens (delta_chunked_ok) take the chunked form when scratch holds
// delta_chunk_scratch_floats(n, …) floats; otherwise (and TQ_CUDA_DELTA_CHUNKED=0) the
// recurrent one in batches of 8 tokens.
void delta_rule(const DeltaDims& d, const float* q, const float* k, const float* v, const float* beta,
                const float* g, float* state, float* y, cudaStream_t s, float* scratch = nullptr,
                size_t scratch_floats = 0);
bool delta_chunked_ok(const DeltaDims& d);
size_t delta_chunk_scratch_floats(int n, int hv, int dk, int dv);
// A decode step (one token) of the linear-attention mixer after its in-projections, as one
// kernel per value head: the conv's output in qkv (matmul_many with DeltaConvIn, or
// delta_conv), q and k l2-normalized, β and the decay from b and a, the delta rule, then the
// gated norm with z into y (q8: also as int8). Where delta_step_ok(d): key head dims 32, 64,
// 128; value head dims 32, 64, 96 or 128.
bool delta_step_ok(const DeltaDims& d);
void delta_step(const DeltaDims& d, const float* qkv, const float* b, const float* a, const float* a_log,
                const float* dt_bias, float* state, const float* z, const float* norm_w, float eps, float* y,
                cudaStream_t s, const XQ8* q8 = nullptr);
// One token's conv + SiLU in place in qkv, conv_state advanced (where the in-projection could not take it).
void delta_conv(const DeltaDims& d, float* qkv, float* conv_state, const float* conv_w, cudaStream_t s);
// (q8: also the int8 copy of y, for a decode step's next matvec.)
void gated_norm(const DeltaDims& d, float* y, const float* z, const float* w, float eps, cudaStream_t s,
                const XQ8* q8 = nullptr);
void swiglu(float* g, const float* u, size_t n, cudaStream_t s);
void add(float* x, const float* o, size_t n, cudaStream_t s);
// x[i] = pseudo-random in [-1, 1) from (seed, i).
void fill_random(float* x, size_t n, uint64_t seed, cudaStream_t s);

}  // namespace tq::cuda
