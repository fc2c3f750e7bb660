// The decode int8 matvec of the CUDA backend timed the way a decode step runs it: chains of
// dependent launches (programmatic dependent launch, as every backend launch allows), each
// launch over its own copy of the weights so that none comes from L2. Variants: the MLP
// gate/up launch reading a handed-off norm (decode since v16) and with parts of the fused
// one taken away (its int8 output, its fused RMSNorm, SwiGLU) so that their cost inside the
// chain shows; the down projection with the next norm handed off (decode), without it, and
// without the residual add. Shapes of the 9b preset
// (hidden 4096, intermediate 12288, MLX 4-bit, group 64, bf16 scales); the weights' values
// do not change the speed. Compare with tq_read_bw's chains (the same bytes, pure reads).
//   tq_matvec_chain [launches per chain = 32] [repeats = 15]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <vector>

#include "backend/cuda/kernels.cuh"

using namespace tq::cuda;

namespace {

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t bytes, int fill) {
    TQ_CUDA_CHECK(cudaMalloc(&p, bytes));
    TQ_CUDA_CHECK(cudaMemset(p, fill, bytes));
  }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

constexpr int kGroup = 64;

// A 4-bit weight with bf16 scales and biases (0x3c3c: a small finite bf16).
struct Weight {
  Buf codes, scales, biases;
  DevWeight w;
  Weight(int rows, int cols)
      : codes(size_t(rows) * cols / 2, 0x5a),
        scales(size_t(rows) * cols / kGroup * 2, 0x3c),
        biases(size_t(rows) * cols / kGroup * 2, 0x3c) {
    w.rows = rows, w.cols = cols, w.group = kGroup, w.q4 = true, w.sbf16 = true;
    w.codes = codes.as<uint8_t>(), w.scales = scales.p, w.biases = biases.p;
  }
  size_t bytes() const { return size_t(w.rows) * w.cols / 2 + 2 * size_t(w.rows) * w.cols / kGroup * 2; }
};

// int8 x of `cols` values (XQ8 layout), filled from random-ish floats by quantize_q8;
// handed: with the Σ x² per word of a handed-off norm (XQ8::ss).
struct XInt8 {
  Buf q, d, sum, ss;
  XQ8 x;
  explicit XInt8(int cols, bool handed = false)
      : q(cols, 0), d(cols / 8 * 4, 0), sum(cols / 8 * 4, 0), ss(handed ? cols / 8 * 4 : 0, 0) {
    x.q = q.as<int4>(), x.d = d.as<float4>(), x.sum = sum.as<float>();
    if (handed) x.ss = ss.as<float>(), x.eps = 1e-6f;
  }
};

double median_us(int reps, cudaStream_t s, const std::function<void()>& chain) {
  cudaEvent_t a, b;
  TQ_CUDA_CHECK(cudaEventCreate(&a));
  TQ_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    TQ_CUDA_CHECK(cudaEventRecord(a, s));
    chain();
    TQ_CUDA_CHECK(cudaEventRecord(b, s));
    TQ_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    TQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.0f);
  }
  TQ_CUDA_CHECK(cudaEventDestroy(a));
  TQ_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int run(int argc, char** argv) {
  const int launches = argc > 1 ? std::atoi(argv[1]) : 32, reps = argc > 2 ? std::atoi(argv[2]) : 15;
  if (launches < 1 || reps < 1) {
    std::fprintf(stderr, "usage: tq_matvec_chain [launches per chain >= 1] [repeats >= 1]\n");
    return 2;
  }
  const int H = 4096, I = 12288;
  cudaStream_t s;
  TQ_CUDA_CHECK(cudaStreamCreate(&s));
  std::vector<std::unique_ptr<Weight>> gate, up, down;
  for (int k = 0; k < launches; ++k) {
    gate.push_back(std::make_unique<Weight>(I, H));
    up.push_back(std::make_unique<Weight>(I, H));
    down.push_back(std::make_unique<Weight>(H, I));
  }
  Buf x(H * 4, 0), nw(H * 4, 0), g(I * 4, 0), u(I * 4, 0), y(H * 4, 0);
  {  // x and the norm's weight: small varied floats (not zeros: the int8 scales stay finite)
    std::vector<float> h(H);
    for (int i = 0; i < H; ++i) h[i] = 0.01f * static_cast<float>((i * 37) % 101 - 50);
    TQ_CUDA_CHECK(cudaMemcpy(x.p, h.data(), H * 4, cudaMemcpyHostToDevice));
    for (int i = 0; i < H; ++i) h[i] = 1.0f + 0.001f * static_cast<float>(i % 17);
    TQ_CUDA_CHECK(cudaMemcpy(nw.p, h.data(), H * 4, cudaMemcpyHostToDevice));
  }
  XInt8 xh(H), xi(I), gq(I), xn(H, true);
  quantize_q8(x.as<float>(), H, xh.x, s);
  quantize_q8(x.as<float>(), H, xn.x, s);
  quantize_q8(x.as<float>(), H, xi.x, s);  // (the first H values of the intermediate x; the rest stay 0)
  const RmsNormIn norm{x.as<float>(), nw.as<float>(), 1e-6f};
  const size_t gu_bytes = gate[0]->bytes() + up[0]->bytes(), down_bytes = down[0]->bytes();

  struct Variant {
    const char* name;
    size_t bytes;
    std::function<void(int)> launch;
  };
  const std::vector<Variant> variants = {
      {"gate/up: handed norm + SwiGLU + int8 out", gu_bytes,
       [&](int k) { swiglu_matmul(gate[k]->w, up[k]->w, nullptr, 1, g.as<float>(), u.as<float>(), s, &xn.x, nullptr, &gq.x); }},
      {"gate/up: norm + SwiGLU + int8 out", gu_bytes,
       [&](int k) { swiglu_matmul(gate[k]->w, up[k]->w, nullptr, 1, g.as<float>(), u.as<float>(), s, &xh.x, &norm, &gq.x); }},
      {"gate/up: norm + SwiGLU", gu_bytes,
       [&](int k) { swiglu_matmul(gate[k]->w, up[k]->w, nullptr, 1, g.as<float>(), u.as<float>(), s, &xh.x, &norm); }},
      {"gate/up: int8 x + SwiGLU", gu_bytes,
       [&](int k) { swiglu_matmul(gate[k]->w, up[k]->w, nullptr, 1, g.as<float>(), u.as<float>(), s, &xh.x); }},
      {"gate, up as two weights: int8 x", gu_bytes,
       [&](int k) {
         const DevWeight* ws[2] = {&gate[k]->w, &up[k]->w};
         float* ys[2] = {g.as<float>(), u.as<float>()};
         matmul_many(ws, ys, 2, nullptr, 1, s, &xh.x);
       }},
      {"down: int8 x, added into y, norm handed", down_bytes,
       [&](int k) { matmul_accumulate(down[k]->w, y.as<float>(), s, xi.x, &xn.x, nw.as<float>()); }},
      {"down: int8 x, added into y", down_bytes,
       [&](int k) { matmul_accumulate(down[k]->w, y.as<float>(), s, xi.x); }},
      {"down: int8 x", down_bytes, [&](int k) { matmul(down[k]->w, nullptr, 1, y.as<float>(), s, &xi.x); }},
  };
  int dev = 0;
  cudaDeviceProp prop{};
  TQ_CUDA_CHECK(cudaGetDevice(&dev));
  TQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::printf("%s: chains of %d launches, median of %d\n", prop.name, launches, reps);
  for (const Variant& v : variants) {
    v.launch(0);  // (first use: the backend sizes and caches its launch parameters)
    TQ_CUDA_CHECK(cudaStreamSynchronize(s));
    const double us = median_us(reps, s, [&] {
      for (int k = 0; k < launches; ++k) v.launch(k);
    });
    std::printf("%-44s %6.1f MB: %7.2f us per launch  %5.0f GB/s\n", v.name, v.bytes / 1e6, us / launches,
                v.bytes * launches / us / 1e3);
  }
  TQ_CUDA_CHECK(cudaStreamDestroy(s));
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // (the backend reports CUDA errors as tq::Error)
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
