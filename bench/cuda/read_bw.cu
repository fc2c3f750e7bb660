// Read bandwidth of the access patterns a decode matvec can use, on one GPU, against the
// device-to-device copy measured in the same run. Each pattern reads a buffer far larger than
// L2 (a fresh slice per repeat), times it with events, median of the repeats. Needs 8 GiB of
// GPU memory (the rotating slices).
// Built as tq_read_bw with the CUDA backend (or: nvcc -O3 -arch=sm_90 -std=c++17 bench/cuda/read_bw.cu).
#include <cuda_runtime.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { std::printf("CUDA error %s at %d\n", cudaGetErrorString(e_), __LINE__); std::exit(1); } } while (0)

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// Grid-stride stream: each thread U independent 16-byte loads per iteration.
template <int U>
__global__ void read_flat(const uint4* __restrict__ p, size_t n, uint32_t* out) {
  uint32_t acc = 0;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (U - 1) * stride < n; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = ld_stream(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= v[u].x + v[u].y + v[u].z + v[u].w;
  }
  for (; i < n; i += stride) { uint4 v = ld_stream(p + i); acc ^= v.x + v.y + v.z + v.w; }
  if (acc == 0x12345678u) out[0] = acc;
}

// The decode matvec's shape: one warp per 4 rows of `rb` bytes (codes), each lane 16 bytes of
// every row per step (+ a 2-byte scale and bias per row per step from separate arrays when
// kScales); S steps in flight per warp (registers); `work` dependent integer ops per row-step
// stand for the dot products. Blocks of 8 warps; `smem` bytes of dynamic shared memory per
// block cap the blocks per SM.
template <int S, bool kScales>
__global__ void __launch_bounds__(256) read_rows(const uint4* __restrict__ codes, const uint16_t* __restrict__ sc,
                                                 const uint16_t* __restrict__ bi, int rows, int rb, int work,
                                                 uint32_t* out) {
  const int lane = threadIdx.x & 31;
  const int unit = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (unit * 4 >= rows) return;
  const int nb = rb / 16, gpr = rb / 32;  // 16-byte blocks per row; scale groups (64 values = 32 bytes)
  uint32_t acc[4] = {0, 0, 0, 0};
  for (int b0 = lane; b0 < nb; b0 += 32 * S) {
    uint4 v[S][4];
    uint32_t s[S][4];
#pragma unroll
    for (int u = 0; u < S; ++u) {
      const int b = b0 + 32 * u;
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const size_t row = size_t(unit) * 4 + r;
        v[u][r] = b < nb ? ld_stream(codes + row * nb + b) : make_uint4(0, 0, 0, 0);
        s[u][r] = 0;
        if (kScales && b < nb) s[u][r] = __ldg(sc + row * gpr + (b >> 1)) + __ldg(bi + row * gpr + (b >> 1));
      }
    }
#pragma unroll
    for (int u = 0; u < S; ++u)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        uint32_t t = v[u][r].x ^ v[u][r].y ^ v[u][r].z ^ v[u][r].w ^ s[u][r];
        for (int k = 0; k < work; ++k) t = t * 1664525u + 1013904223u;
        acc[r] += t;
      }
  }
  if ((acc[0] ^ acc[1] ^ acc[2] ^ acc[3]) == 0x12345678u) out[0] = 1;
}

// read_rows<1, true> as a step of a chain of dependent launches: with programmatic dependent
// launch, a block may start while the previous launch drains; it issues its first step's
// loads (weights do not depend on the previous kernel) before waiting on it.
template <bool kEarly>
__global__ void __launch_bounds__(256) read_rows_pdl(const uint4* __restrict__ codes, const uint16_t* __restrict__ sc,
                                                     const uint16_t* __restrict__ bi, int rows, int rb, uint32_t* out) {
  const int lane = threadIdx.x & 31;
  const int unit = blockIdx.x * 8 + (threadIdx.x >> 5);
  const int nb = rb / 16, gpr = rb / 32;
  uint32_t acc = 0;
  const bool live = unit * 4 < rows;
  uint4 v[4];
  uint32_t s[4];
  auto load = [&](int b) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const size_t row = size_t(unit) * 4 + r;
      v[r] = ld_stream(codes + row * nb + b);
      s[r] = __ldg(sc + row * gpr + (b >> 1)) + __ldg(bi + row * gpr + (b >> 1));
    }
  };
  if (kEarly && live) load(lane);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // (older targets: launches are serialized anyway)
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  if (!live) return;
  if (!kEarly) load(lane);
  for (int b = lane; b < nb; b += 32) {
#pragma unroll
    for (int r = 0; r < 4; ++r) acc += v[r].x ^ v[r].y ^ v[r].z ^ v[r].w ^ s[r];
    if (b + 32 < nb) load(b + 32);
  }
  if (acc == 0x12345678u) out[0] = 1;
}

struct Timer {
  cudaEvent_t a, b;
  Timer() { CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b)); }
  template <class F>
  double median_ms(int reps, F f) {
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
      CK(cudaEventRecord(a));
      f(i);
      CK(cudaEventRecord(b));
      CK(cudaEventSynchronize(b));
      float ms;
      CK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

int main() {
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const size_t pool = size_t(8) << 30;  // 8 GiB: slices rotate so L2 holds none of the next
  unsigned char* buf;
  CK(cudaMalloc(&buf, pool));
  CK(cudaMemset(buf, 1, pool));
  uint32_t* out;
  CK(cudaMalloc(&out, 4));
  Timer tm;
  const int reps = 15;
  // copy: 1 GiB → 1 GiB, bytes read + written
  {
    const size_t n = size_t(1) << 30;
    const double ms = tm.median_ms(reps, [&](int i) { CK(cudaMemcpyAsync(buf + (i % 3) * 2 * n, buf + (i % 3) * 2 * n + n, n, cudaMemcpyDeviceToDevice)); });
    std::printf("copy 1 GiB (read+write): %.0f GB/s\n", 2.0 * n / ms / 1e6);
  }
  const size_t sizes[2] = {size_t(573) << 20, size_t(57) << 20};
  for (size_t bytes : sizes) {
    const size_t slices = pool / bytes;
    auto slice = [&](int i) { return buf + (i % slices) * bytes; };
    std::printf("\n-- %zu MB per launch --\n", bytes >> 20);
    for (int bpsm : {1, 2, 4, 8}) {
      auto run = [&](auto kern, const char* name) {
        const double ms = tm.median_ms(reps, [&](int i) {
          kern<<<sms * bpsm, 256>>>(reinterpret_cast<const uint4*>(slice(i)), bytes / 16, out);
        });
        std::printf("%-14s %d blocks/SM: %7.1f us  %5.0f GB/s\n", name, bpsm, ms * 1e3, bytes / ms / 1e6);
      };
      run(read_flat<1>, "flat U=1");
      run(read_flat<4>, "flat U=4");
    }
    // matvec shape: rows of 2 KB (4096 4-bit values), scales as 1/8 extra (bf16 per 64 values, scale + bias)
    const int rb = 2048;
    const int rows = static_cast<int>(bytes / (rb + rb / 16)) / 32 * 32;
    const int blocks = rows / 32;
    for (int smem : {0, 60 * 1024}) {  // 0: 8 blocks/SM (64 warps) ; 60 KB: 3 blocks/SM (24 warps)
      for (int work : {0, 24}) {
        auto run = [&](auto kern, const char* name) {
          CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024));
          const double ms = tm.median_ms(reps, [&](int i) {
            unsigned char* s = slice(i);
            const uint4* c = reinterpret_cast<const uint4*>(s);
            const uint16_t* sc = reinterpret_cast<const uint16_t*>(s + size_t(rows) * rb);
            const uint16_t* bi = sc + size_t(rows) * rb / 64;
            kern<<<blocks, 256, smem>>>(c, sc, bi, rows, rb, work, out);
          });
          const double moved = double(rows) * (rb + rb / 16);
          std::printf("%-22s smem %2d KB work %2d: %7.1f us  %5.0f GB/s\n", name, smem >> 10, work, ms * 1e3, moved / ms / 1e6);
        };
        run(read_rows<1, true>, "rows S=1 scales");
        run(read_rows<2, true>, "rows S=2 scales");
        run(read_rows<1, false>, "rows S=1 codes only");
        run(read_rows<4, false>, "rows S=4 codes only");
      }
    }
  }
  // Chains: `launches` dependent launches of `bytes` each (a fresh slice each), with and
  // without programmatic dependent launch, against one launch of all their bytes.
  std::printf("\n-- chains of launches (rows of 2 KB + scales, 8 warps per block) --\n");
  for (size_t bytes : {size_t(57) << 20, size_t(28) << 20, size_t(9) << 20}) {
    const int launches = 16, rb = 2048;
    const int rows = static_cast<int>(bytes / (rb + rb / 16)) / 32 * 32, blocks = rows / 32;
    const size_t moved = size_t(rows) * (rb + rb / 16), slices = pool / moved;
    for (int mode = 0; mode < 3; ++mode) {  // 0: plain launches, 1: PDL, 2: PDL + first loads before the wait
      const double ms = tm.median_ms(reps, [&](int i) {
        for (int k = 0; k < launches; ++k) {
          unsigned char* sl = buf + ((size_t(i) * launches + k) % slices) * moved;
          const uint4* c = reinterpret_cast<const uint4*>(sl);
          const uint16_t* sc = reinterpret_cast<const uint16_t*>(sl + size_t(rows) * rb);
          const uint16_t* bi = sc + size_t(rows) * rb / 64;
          cudaLaunchConfig_t cfg = {};
          cfg.gridDim = blocks, cfg.blockDim = 256;
          cudaLaunchAttribute attr;
          attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
          attr.val.programmaticStreamSerializationAllowed = 1;
          cfg.attrs = &attr, cfg.numAttrs = mode ? 1 : 0;
          if (mode == 2) CK(cudaLaunchKernelEx(&cfg, read_rows_pdl<true>, c, sc, bi, rows, rb, out));
          else CK(cudaLaunchKernelEx(&cfg, read_rows_pdl<false>, c, sc, bi, rows, rb, out));
        }
      });
      static const char* names[3] = {"plain", "PDL", "PDL + early loads"};
      std::printf("%3zu MB x %d %-18s: %7.1f us per launch  %5.0f GB/s\n", bytes >> 20, launches, names[mode],
                  ms * 1e3 / launches, moved * launches / ms / 1e6);
    }
  }
  CK(cudaGetLastError());
  return 0;
}
