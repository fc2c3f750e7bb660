// The gated delta rule of Gated DeltaNet (Qwen3.5 linear-attention layers), two ways:
// the recurrent form (one token at a time, used for decode) and the chunked form
// (chunks of 64 tokens with a WY-style triangular solve, used for prefill). Both update
// the fp32 state S[hv][dv][dk] and give the same outputs up to rounding.
//   S ← g·S;  S ← S + β·(v − S·k)·kᵀ;  y = S·q        (value head hv reads key head hv / (Hv/Hk))
#pragma once

namespace tq {

class ThreadPool;

constexpr int kDeltaChunk = 64;

struct DeltaInputs {
  int n = 0;                 // tokens
  int hk = 0, hv = 0;        // key heads, value heads
  int dk = 0, dv = 0;        // head dims
  const float* q = nullptr;  // [n][hk][dk], L2-normalized and scaled by 1/√dk
  const float* k = nullptr;  // [n][hk][dk], L2-normalized
  const float* v = nullptr;  // [n][hv][dv]
  const float* beta = nullptr;  // [n][hv]
  const float* g = nullptr;     // [n][hv], decay in (0, 1]
};

// y: [n][hv][dv]. s: [hv][dv][dk], updated in place.
void gated_delta_recurrent(const DeltaInputs& in, float* s, float* y);
void gated_delta_chunked(const DeltaInputs& in, float* s, float* y, int chunk = kDeltaChunk, ThreadPool* pool = nullptr);

}  // namespace tq
