// The CUDA backend: the Llama-family and Qwen3.5 forward passes on an NVIDIA GPU, with
// the weights uploaded once and every sequence's state (KV caches, compressed or fp16,
// and DeltaNet states) in GPU memory. Attention reads TurboQuant codes directly (queries
// rotated once, codebook dot products, values accumulated in the rotated domain, one
// inverse rotation per head); new K/V are encoded on the GPU. Same results as the CPU
// backend up to float rounding (tests/test_cuda.cc).
//
// This header needs no CUDA: builds without it (TQ_CUDA off) get cuda_stub.cc, whose
// functions say why CUDA is unavailable.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kv/kv_slot.h"
#include "model/deltanet.h"
#include "model/model.h"

namespace tq::cuda {

// "" when the backend can run here; otherwise why not (no CUDA build, no GPU).
std::string unavailable_reason();
// Throws tq::Error ("--device cuda: " and that reason) unless the backend can run here.
void require_device();
// Loads a checkpoint directory onto the GPU. Throws tq::Error when CUDA is unavailable
// or for what the backend does not support yet (naming it).
std::unique_ptr<Model> load_model(const std::string& dir);

// Decode-step 4-bit matvecs quantize their input to int8 (a scale per 8 values, codes
// centred on 8, the exact sum kept for the bias) and use dp4a, as llama.cpp's MMVQ does:
// ≈ 0.4% relative error per product, measured (tests/test_cuda.cc); prefill's 4-bit
// matmuls take x as fp16 (each value within 2^-11 of itself, the bias term exact). On by
// default; set_decode_int8(false) or TQ_CUDA_EXACT=1: float activations (prefill's x as
// fp16 hi + lo, twice the tensor-core products), equal to the CPU up to rounding (2.1×
// slower decode).
void set_decode_int8(bool on);
bool decode_int8();
// Prefill chunks of 9 … 64 tokens (a chat turn, a short prompt) in the default mode: x as int8
// per block of min(group, 64) columns (scale max|x|/127, the exact sum kept for the bias,
// codes centred on 8) on the int8 tensor cores, as llama.cpp's MMQ; longer chunks take the
// GEMM with x as fp16, 2 … 8 tokens the decode step's dp4a kernel. On by default;
// set_prefill_int8(false) or TQ_CUDA_MMQ=0: the GEMM for these too.
void set_prefill_int8(bool on);
bool prefill_int8();
// Attention on tensor cores (mma.sync; queries and weights as fp16 hi + lo pairs, so fp16
// caches agree with the CPU to float rounding, code values as fp16 centroids) for layers
// of fp16 rows or 2/3/4/8-bit codes with a dim of 64, 128 or 256; on by default.
// set_attention_tc(false) or TQ_CUDA_ATTN_TC=0: the float kernel for every layer.
void set_attention_tc(bool on);
bool attention_tc();
// Prefill chunks of ≥ 8 queries: the query-tiled tensor-core kernel (a tile of the cache
// read once per 64 (position, head) rows, not once per query); on by default.
// set_attention_tiled(false) or TQ_CUDA_ATTN_TILED=0: the per-query kernel for them too.
void set_attention_tiled(bool on);
bool attention_tiled();
// The per-query kernel's direct path (3- and 4-bit codes, dim 256, ≤ 4 query heads per KV
// head) takes the scores of fully coded chunks on the int8 tensor cores: K's centroids as
// int8 at the scale that fits them best (each off by ≤ attention_int8_error), the queries as
// int16 (hi + lo int8), in splits of at least min_split tokens (the queries' int8 form is a
// prologue per block: below about 8 chunks per warp it costs more than it saves, PERF v24);
// and V's centroids of fully coded chunks on the same grid, in every split (as fp16 values
// 36 + s/32: one permute per 2 codes; the weights as fp16 hi parts alone, PERF v25). On by default for
// caches made after the call; set_attention_int8(false) or TQ_CUDA_ATTN_I8=0: the fp16 form of
// both (centroids off by ≤ 2^-11 relative); TQ_CUDA_ATTN_I8_MIN sets min_split's default.
constexpr int kAttentionI8MinSplit = 512;
void set_attention_int8(bool on, int min_split = kAttentionI8MinSplit);
bool attention_int8();
int attention_int8_min_split();
// The largest |ĉ − c| of the int8 centroid table for the codebook of dim D and 3 or 4 bits,
// relative to the codebook's root mean square entry.
double attention_int8_error(int D, int bits = 3);

// Bytes of GPU memory in use on the device (cudaMemGetInfo: total − free).
size_t device_memory_used();
// Device-to-device copy bandwidth, GB/s counting bytes read + written (median of 7).
double copy_bandwidth_gbs(size_t bytes = size_t(2) << 30);

// Single ops on the GPU with host data, for parity tests against the CPU ops.
namespace ops {
// y[n][rows] = W · x[n][cols].
std::vector<float> matmul(const Weight& w, const std::vector<float>& x, int n);
// The gated delta rule over in.n tokens; s updated in place. chunked: the chunked form
// where it applies (≥ 128 tokens, supported dims: as a prefill), else the recurrent kernel.
void gated_delta(const DeltaInputs& in, std::vector<float>& s, std::vector<float>& y, bool chunked = true);
// One decode step of a DeltaNet mixer after its conv (the GPU's fused delta_step): qkv
// [2·hk·dk + hv·dv] (the conv's output), b, a, a_log, dt_bias [hv], z [hv·dv], norm_w [dv];
// s [hv][dv][dk] (the CPU's layout) updated; returns y [hv·dv] after the gated norm.
struct DeltaStepIn {
  int hk = 0, hv = 0, dk = 0, dv = 0;
  std::vector<float> qkv, b, a, a_log, dt_bias, z, norm_w;
  float eps = 1e-6f;
};
std::vector<float> delta_step(const DeltaStepIn& in, std::vector<float>& s);
// A KV cache of this policy on the GPU: appends k, v ([n_kv][n_kv_heads][head_dim]) in
// chunks of at most `chunk` tokens, then attends q ([n_q][n_heads][head_dim]) at `pos`.
// state (optional): the cache after the appends, as the CPU slot's state bytes (KVSlot::restore
// makes a CPU slot holding exactly the GPU's codes, norms and window rows).
std::vector<float> attention(const CachePolicy& p, const KVGeometry& g, int layer, const std::vector<float>& k,
                             const std::vector<float>& v, size_t n_kv, size_t chunk, const std::vector<float>& q,
                             const std::vector<int32_t>& pos, std::string* state = nullptr);
// A decode step's MLP input stage on the int8 path: g = silu(gate·n) ⊙ (up·n) with n =
// RMSNorm(x)·norm_w built by the matvec's blocks, and the int8 copy of g the next matvec
// reads — written by the same launch where it can (fused), else by the quantize kernel:
// q [rows] (each 32-value block's bytes in the GPU's order: byte (k/8)·8 + (k%2)·4 + (k%8)/2
// holds value k), d and sum [rows / 8] (scale max|g|/127 and exact sum of each 8 values).
struct SwigluInt8 {
  std::vector<float> g;
  std::vector<int8_t> q;
  std::vector<float> d, sum;
  bool fused = false;
};
SwigluInt8 swiglu_int8(const Weight& gate, const Weight& up, const std::vector<float>& x, const std::vector<float>& norm_w,
                       float eps);
// A decode step's residual add with the next RMSNorm handed off (int8 path): y = y0 + W·x by
// matmul_accumulate, which also writes y·norm_w as int8 words with their Σ y² (handed: it
// did; the words' layout as SwigluInt8's, ss [rows / 8]); then, reading those words, g =
// silu(gate·n) ⊙ (up·n) and lin = gate·n with n = RMSNorm(y)·norm_w (empty when not handed,
// or when gate/up cannot read a handed-off norm: handoff_consumable).
struct NormHandoff {
  bool handed = false;
  std::vector<float> y, g, lin;
  std::vector<int8_t> q;
  std::vector<float> d, sum, ss;
};
NormHandoff norm_handoff(const Weight& w, const std::vector<float>& x, const std::vector<float>& y0,
                         const std::vector<float>& norm_w, float eps, const Weight& gate, const Weight& up);
// W·(RMSNorm(y)·norm_w) on the int8 decode path with the norm handed off (XQ8::ss, as
// a sublayer's last matvec hands it to the next): the words written by an accumulating launch
// that adds zero to y; empty where W cannot read a handed-off norm (handoff_consumable).
std::vector<float> matmul_handed(const Weight& w, const std::vector<float>& y, const std::vector<float>& norm_w,
                                 float eps);
// Index of y's largest value (the first of equal ones), found on the GPU.
int32_t argmax(const std::vector<float>& y);
// The k largest of y selected on the GPU (Model::forward_top's selection), in ranks_before order.
std::vector<Candidate> top_k(const std::vector<float>& y, int k);
// A draw from softmax(y / temperature) at u on the GPU (Model::forward_sample's draw).
int32_t sample(const std::vector<float>& y, float temperature, double u);
}  // namespace ops

}  // namespace tq::cuda
