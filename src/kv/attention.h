// The attention kernel shared by every KV slot. A slot describes its storage as
// runs of rows (f32/f16/bf16 values, or packed TurboQuant codes with an fp16 norm);
// the kernel never materializes a dequantized cache: it decodes 16 values at a time
// into registers, scores them against the prepared queries and accumulates values
// with an online (flash-style) softmax in fp32.
//
// For TurboQuant rows the work happens in the rotation's domain:
//   score_i = n_i/√D · ⟨Π_K·q, c[idx_i]⟩  (query rotated once per head),
//   acc     = Σ_i w_i · n_i/√D · c[idx_i] (values accumulated rotated),
//   out     = Π_Vᵀ · acc / Σ w             (one inverse rotation per head).
#pragma once
#include <cstddef>
#include <cstdint>

namespace tq {
class ThreadPool;
}

namespace tq::attn {

enum class RowFormat : uint8_t { f32, f16, bf16, codes };

// Consecutive tokens of one KV head, stored alike.
struct Rows {
  RowFormat fmt = RowFormat::f32;
  const uint8_t* data = nullptr;    // row t at data + t·stride
  size_t stride = 0;                // bytes between rows
  const uint16_t* norms = nullptr;  // codes only: fp16 norm per row
  int bits = 0;                     // codes only
  const float* codebook = nullptr;  // codes only: 2^bits centroids (u units)
  float norm_scale = 1;             // codes only: multiplies each norm (1/√D)
};

struct Segment {
  size_t n = 0;  // tokens available from the requested start
  Rows k, v;
};

// What a KV slot exposes to the kernel.
class Source {
 public:
  virtual ~Source() = default;
  virtual size_t n_tokens() const = 0;
  virtual int n_heads() const = 0;
  virtual int n_kv_heads() const = 0;
  virtual int head_dim() const = 0;
  virtual int k_dim() const = 0;  // length of a prepared query (K's domain)
  virtual int v_dim() const = 0;  // length of the value accumulator (V's domain)
  // The run of rows of KV head g starting at token t0 < n_tokens(), as seen by a query
  // at position `pos` (only slots with per_query_view() look at it).
  virtual Segment segment(int g, size_t t0, size_t pos) const = 0;
  // True when what a token looks like depends on the query's position (a window of
  // recent tokens kept at full precision): the kernel then gives each query token its
  // own work item.
  virtual bool per_query_view() const { return false; }
  // q[head_dim] of a query head attached to KV head g → out[k_dim()].
  virtual void prepare_query(int g, const float* q, float* out) const = 0;
  // acc[v_dim()] (already divided by the softmax sum; may be overwritten) → out[head_dim].
  virtual void finish(int g, float* acc, float* out) const = 0;
};

// Causal GQA attention over `src`. q, out: [n_q][n_heads][head_dim]; query i sees
// cached token t iff t <= positions[i] (positions >= 0). A query that sees no token
// gets zeros. scale multiplies q·k (usually 1/√head_dim).
void attend(const Source& src, const float* q, const int32_t* positions, size_t n_q, float* out, float scale,
            ThreadPool& pool);

// Decodes row t of `r` into out[dim] in the row's domain, norm applied (reference path).
void decode_row(const Rows& r, size_t t, int dim, float* out);

// Set by tests to force the portable scalar path.
void set_force_scalar(bool on);

}  // namespace tq::attn
