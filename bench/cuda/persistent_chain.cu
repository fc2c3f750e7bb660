// Go/no-go for a persistent decode step (docs/PERF.md, v19 "Plan for it", step 1; the outcome
// is PERF v20): the 9b decode step's 4-bit matvecs (codes only: rows × cols / 2 bytes each; the
// real step also reads scales and biases, 12.5% more), each op's input the previous op's
// output, run
//   (a) as one kernel launch per op (programmatic dependent launch, captured in a CUDA graph)
//       — a plain reference for the results, not the backend's tuned kernels (compare the
//       backend with tq_matvec_chain in the same call), and
//   (b) as one persistent launch: a block per SM; per block a producer warp streams the codes
//       of the block's units (op, 16 rows) into a ring of 32 KB shared-memory slots (bulk
//       copies completing on the slot's mbarrier) without waiting for any dependency; 16
//       consumer warps (a row each) wait for the op's input through a per-op counter of
//       completed units (release/acquire in global memory; every block is resident, so
//       spinning is safe), build x as int8 in shared memory, keep each lane's x of a
//       4096-column chunk in registers, and take dp4a dot products from the ring.
//       Variants: units static (u ≡ block mod grid) or claimed from a counter two at a time;
//       x quantized from the previous op's floats or copied from its int8 output (written by
//       the same warps that write its floats). Diagnostics leave out the dependency waits,
//       the x build, the dot products (the stream alone) or the copies (the consumers alone).
// (a) and (b) do the same integer arithmetic on the same bytes: exit status 0 only if every
// full (b) variant's outputs equal (a)'s exactly. Prints each variant's time per step and GB/s
// beside the device-to-device copy bandwidth measured in the same run.
// Build: nvcc -O3 -arch=sm_90 -std=c++17 bench/cuda/persistent_chain.cu -o tq_persistent_chain
// (also built as tq_persistent_chain with the CUDA backend; -DPC_ROWS=8 for 8-row units).
// Needs ≈ 5 GB of GPU memory. usage: tq_persistent_chain [SLOTS,SLOTS,…] (ring depths; default 3,6)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                               \
  do {                                                                                      \
    cudaError_t e_ = (x);                                                                   \
    if (e_ != cudaSuccess) {                                                                \
      std::printf("CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__);          \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

namespace {

#ifndef PC_ROWS
#define PC_ROWS 16
#endif
constexpr int kRows = PC_ROWS;    // rows per unit (a consumer warp each)
constexpr int kChunk = 4096;      // columns per slot row: 2 KB of codes
constexpr int kSlotBytes = kRows * kChunk / 2;  // 32 KB for 16 rows
constexpr int kMaxSlots = 196608 / kSlotBytes;  // the ring: up to 192 KB (slots: a run-time argument)
constexpr int kConsumers = kRows; // consumer warps
constexpr int kMaxCols = 12288;
constexpr int kMaxUnits = 4;      // units per block of an op of more than one chunk (checked on the host)

struct Op {
  const uint8_t* codes;  // [rows][cols / 2]
  int rows, cols;
  int units;             // ceil(rows / kRows)
};
struct Chain {
  const Op* ops;  // device array
  int n_ops;
  float* const* y;             // per op: its output [rows] (device array of pointers)
  int8_t* const* yq;           // per op: its first kMaxCols outputs as int8, in x's layout (put_x), by the same writers
  uint16_t* const* yt;         // the same as (int8 | run's low byte << 8): each entry says which run wrote it
  unsigned* done;              // per op: units completed, cumulative over runs
  unsigned* next;              // per op: units claimed (dynamic assignment), cumulative over runs
  unsigned run;                // this run's number (1, 2, …): op k is complete at run · units_k
  int slots;                   // ring slots (≤ kMaxSlots)
  int dyn;                     // 1: single-chunk ops' units claimed dynamically
  int xq8;                     // 1: an op's x copied from the previous op's int8 output (else quantized from its floats);
                               // 2: from its tagged int8 output, each entry read until it carries this run's tag (no
                               //    counters: the data is the signal)
  int diag;                    // diagnostics: 1 no dependency waits, 2 no waits and no x build (results then differ),
                               // 3 as 2 and no dot products (the stream alone), 4 as 2 and no copies (the consumers alone)
};

// The bulk copies and mbarrier transaction counts are sm_90's: other targets compile the
// persistent kernel empty, and main() runs (b) only on compute capability 9.0 or newer.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define SM90(...)
#else
#define SM90(...) __VA_ARGS__
#endif
[[maybe_unused]] __device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_init(uint64_t* b, unsigned count) {
  SM90(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory"));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* b, unsigned bytes) {
  SM90(asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory"));
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
  SM90(asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(b)) : "memory"));
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, unsigned parity) {
  SM90(asm volatile(
      "{\n.reg .pred p;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n}\n" ::"r"(smem_u32(b)),
      "r"(parity)
      : "memory"));
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  SM90(asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory"));
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// 32 four-bit codes (16 bytes: 4 code words) · 32 int8 x values: lo holds the x of the code words'
// low nibbles, hi of their high nibbles (x is kept as two planes so that a lane's two 16-byte loads
// are conflict-free in shared memory).
__device__ __forceinline__ int dot32(uint4 q, int4 lo, int4 hi, int s) {
  constexpr uint32_t m = 0x0f0f0f0fu;
  s = __dp4a(static_cast<int>(q.x & m), lo.x, s);
  s = __dp4a(static_cast<int>((q.x >> 4) & m), hi.x, s);
  s = __dp4a(static_cast<int>(q.y & m), lo.y, s);
  s = __dp4a(static_cast<int>((q.y >> 4) & m), hi.y, s);
  s = __dp4a(static_cast<int>(q.z & m), lo.z, s);
  s = __dp4a(static_cast<int>((q.z >> 4) & m), hi.z, s);
  s = __dp4a(static_cast<int>(q.w & m), lo.w, s);
  s = __dp4a(static_cast<int>((q.w >> 4) & m), hi.w, s);
  return s;
}
// x planes of a 16-byte code block blk (of 32 columns) in shared memory
__device__ __forceinline__ int4 x_lo(const int8_t* xs, int blk) { return reinterpret_cast<const int4*>(xs)[blk]; }
__device__ __forceinline__ int4 x_hi(const int8_t* xs, int blk) { return reinterpret_cast<const int4*>(xs + kMaxCols / 2)[blk]; }
// x of op k: the previous op's output, cyclically extended to cols and quantized to int8
// (op 0: a fixed ramp). Layout: value c at byte c, in the order dot32 takes it (low nibbles
// of a word then high: x words 2i and 2i + 1 hold the even and odd bytes' codes of word i).
// (256 threads: every float4 of the previous output loaded before any is stored — one L2 round
// trip, as the backend's consumers of a handed-off x.)
__device__ __forceinline__ int8_t q8(float v) { return static_cast<int8_t>(max(-127, min(127, __float2int_rn(v * 4.0f)))); }
// column c is nibble (c % 8) of code word c / 8: low nibbles (even c) of word w feed the lo plane's word w,
// high nibbles (odd c) the hi plane's; byte (c % 8) / 2 within it.
__device__ __forceinline__ int x_pos(int c) { return (c & 1) * (kMaxCols / 2) + (c / 8) * 4 + (c % 8) / 2; }
__device__ __forceinline__ void put_x(int8_t* xs, int c, float v) { xs[x_pos(c)] = q8(v); }
// an op's output row: as float, and as int8 (plain and tagged) in x's layout for the next op
__device__ __forceinline__ void put_y(const Chain& ch, int k, int row, int acc) {
  const float v = static_cast<float>(acc) * 1e-4f;
  ch.y[k][row] = v;
  if (row < kMaxCols) {
    put_x(ch.yq[k], row, v);
    ch.yt[k][x_pos(row)] = static_cast<uint16_t>(static_cast<uint8_t>(q8(v)) | ((ch.run & 0xffu) << 8));
  }
}
__device__ __forceinline__ int4 ld_relaxed(const int4* p) {
  int4 v;
  asm volatile("ld.relaxed.gpu.global.v4.s32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
  return v;
}
__device__ void build_x(const Chain& ch, int k, int8_t* xs, int tid, int nthreads) {
  const Op& op = ch.ops[k];
  const float* prev = k ? ch.y[k - 1] : nullptr;
  const int pr = k ? ch.ops[k - 1].rows : 1;
  if (prev && ch.xq8 == 2 && pr >= op.cols) {  // both planes' first cols / 2 entries, 8 at a time, once tagged
    const int n8 = op.cols / 16;
    const uint32_t want = (ch.run & 0xffu) * 0x01000100u;
    for (int i = tid; i < 2 * n8; i += nthreads) {
      const int plane = i >= n8, j = i - plane * n8;
      const int4* src = reinterpret_cast<const int4*>(ch.yt[k - 1] + plane * (kMaxCols / 2)) + j;
      int4 v = ld_relaxed(src);
      while (((v.x & 0xff00ff00u) != want) | ((v.y & 0xff00ff00u) != want) | ((v.z & 0xff00ff00u) != want) |
             ((v.w & 0xff00ff00u) != want))
        v = ld_relaxed(src);
      *reinterpret_cast<uint2*>(xs + plane * (kMaxCols / 2) + 8 * j) =
          make_uint2(__byte_perm(v.x, v.y, 0x6420), __byte_perm(v.z, v.w, 0x6420));
    }
    return;
  }
  if (prev && ch.xq8 && pr >= op.cols) {  // both planes' first cols / 2 bytes, 16 at a time
    const int n16 = op.cols / 32;
    for (int i = tid; i < 2 * n16; i += nthreads) {
      const int plane = i >= n16, j = i - plane * n16;
      reinterpret_cast<int4*>(xs + plane * (kMaxCols / 2))[j] =
          __ldcg(reinterpret_cast<const int4*>(ch.yq[k - 1] + plane * (kMaxCols / 2)) + j);
    }
    return;
  }
  constexpr int kPer = kMaxCols / 4 / (32 * kConsumers);
  if (prev && pr >= op.cols && nthreads == 32 * kConsumers) {
    float4 v[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int f = tid + i * nthreads;
      v[i] = 4 * f < op.cols ? __ldcg(reinterpret_cast<const float4*>(prev) + f) : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int f = tid + i * nthreads;
      if (4 * f < op.cols) put_x(xs, 4 * f, v[i].x), put_x(xs, 4 * f + 1, v[i].y), put_x(xs, 4 * f + 2, v[i].z), put_x(xs, 4 * f + 3, v[i].w);
    }
    return;
  }
  for (int c = tid; c < op.cols; c += nthreads)
    put_x(xs, c, prev ? __ldcg(prev + c % pr) : static_cast<float>((c % 17) - 8) * 0.1f);
}

// (b) the persistent kernel. Ops of one 4096-column chunk: with ch.dyn, the producer claims its
// block's units of the op from a global counter two at a time (a block whose stream runs faster
// takes more), and tells the consumers which unit each slot holds; otherwise (and always for
// ops of several chunks) block b owns units u ≡ b (mod gridDim.x), chunk-major.
__device__ __forceinline__ void red_release(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__global__ void __launch_bounds__(32 * (kConsumers + 1), 1) persistent_chain(Chain ch) {
  extern __shared__ __align__(128) unsigned char sm[];
  const int kSlots = ch.slots;
  uint8_t* ring = sm;                                                  // kSlots × kSlotBytes
  int8_t* xs = reinterpret_cast<int8_t*>(sm + kSlots * kSlotBytes);   // x of the current op
  uint64_t* full = reinterpret_cast<uint64_t*>(sm + kSlots * kSlotBytes + kMaxCols);
  uint64_t* empty = full + kSlots;
  int* slot_unit = reinterpret_cast<int*>(empty + kSlots);  // the unit a slot holds; −1: the op's end
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kSlots; ++s) mbar_init(full + s, 1), mbar_init(empty + s, kConsumers);
    SM90(asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"));
  }
  __syncthreads();
  auto dynamic = [&](const Op& op) { return ch.dyn && op.cols == kChunk; };
  if (warp == kConsumers) {  // producer
    if (lane != 0) return;
    int slot = 0;
    unsigned phase = 0;
    // one slot: unit u's rows of chunk c (u < 0: no copy, the op's end marker)
    auto issue = [&](const Op& op, int u, int c) {
      mbar_wait(empty + slot, phase ^ 1);  // (the first pass finds every slot free)
      slot_unit[slot] = u;
      if (u < 0 || ch.diag == 4) {
        mbar_arrive(full + slot);
      } else {
        const int rows = min(kRows, op.rows - u * kRows);
        mbar_expect_tx(full + slot, rows * kChunk / 2);
        if (op.cols == kChunk)
          bulk_copy(ring + slot * kSlotBytes, op.codes + static_cast<size_t>(u) * kRows * (kChunk / 2), rows * kChunk / 2,
                    full + slot);
        else
          for (int r = 0; r < rows; ++r)
            bulk_copy(ring + slot * kSlotBytes + r * (kChunk / 2),
                      op.codes + (static_cast<size_t>(u) * kRows + r) * (op.cols / 2) + c * (kChunk / 2), kChunk / 2,
                      full + slot);
      }
      if (++slot == kSlots) slot = 0, phase ^= 1;
    };
    for (int k = 0; k < ch.n_ops; ++k) {
      const Op op = ch.ops[k];
      if (dynamic(op)) {
        // the counter grows by units rounded up to even + 2 per block each run (every block's last claim fails)
        const unsigned base = (ch.run - 1) * static_cast<unsigned>((op.units + 1) / 2 * 2 + 2 * gridDim.x);
        for (;;) {
          const int u = static_cast<int>(atomicAdd(ch.next + k, 2u) - base);
          if (u >= op.units) break;
          issue(op, u, 0);
          if (u + 1 < op.units) issue(op, u + 1, 0);
        }
        issue(op, -1, 0);
      } else {
        for (int c = 0; c < op.cols / kChunk; ++c)  // chunk-major: a chunk's x stays in the consumers' registers
          for (int u = blockIdx.x; u < op.units; u += gridDim.x) issue(op, u, c);
      }
    }
    return;
  }
  // consumers: warp w computes row w of each unit; lane l the 16-byte code blocks l + 32 i (i < 4) of
  // each 4096-column chunk, whose x (2 × 4 int4) it holds in registers for the whole chunk
  int slot = 0;
  unsigned phase = 0;
  const int ctid = threadIdx.x;  // 0 … 32 · kConsumers − 1
  constexpr int kPerLane = kChunk / 2 / 16 / 32;  // code blocks per lane and chunk
  for (int k = 0; k < ch.n_ops; ++k) {
    const Op op = ch.ops[k];
    const bool dyn = dynamic(op);
    if (!dyn && blockIdx.x >= op.units) continue;  // (no unit of this op here: the producer skipped it too)
    if (k > 0 && ch.diag == 0 && ch.xq8 != 2) {  // the previous op complete (the done counter counts units)
      const unsigned want = ch.run * static_cast<unsigned>(ch.ops[k - 1].units);
      if (ctid == 0)
        while (ld_acquire(ch.done + k - 1) < want) __nanosleep(32);
      asm volatile("bar.sync 1, %0;" ::"n"(32 * kConsumers) : "memory");
    }
    if (ch.diag < 2 || k == 0) build_x(ch, k, xs, ctid, 32 * kConsumers);
    asm volatile("bar.sync 1, %0;" ::"n"(32 * kConsumers) : "memory");
    const int chunks = op.cols / kChunk;
    int nu = dyn ? 0 : (op.units - blockIdx.x + gridDim.x - 1) / gridDim.x;  // this block's units of the op
    int acc[kMaxUnits] = {};  // (chunks > 1: per unit, over the chunks)
    for (int c = 0; c < chunks; ++c) {
      int4 xl[kPerLane], xh[kPerLane];
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int xb = c * (kChunk / 32) + lane + 32 * i;
        xl[i] = x_lo(xs, xb), xh[i] = x_hi(xs, xb);
      }
      // the next slot's unit (−1: the op's end) and the dot product of this warp's row with it
      auto unit_dot = [&](int& t) {
        mbar_wait(full + slot, phase);
        const int u = slot_unit[slot];
        int p[kPerLane] = {};
        if (u >= 0 && ch.diag != 3) {
          const uint4* q = reinterpret_cast<const uint4*>(ring + slot * kSlotBytes + warp * (kChunk / 2));
#pragma unroll
          for (int i = 0; i < kPerLane; ++i) p[i] = dot32(q[lane + 32 * i], xl[i], xh[i], 0);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(empty + slot);
        if (++slot == kSlots) slot = 0, phase ^= 1;
        t = 0;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) t += p[i];
        return u;
      };
      auto write = [&](int u, int v) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        const int row = u * kRows + warp;
        if (lane == 0 && row < op.rows) put_y(ch, k, row, v);
      };
      int t;
      if (dyn) {
        for (int u; (u = unit_dot(t)) >= 0; ++nu) write(u, t);
      } else if (chunks == 1) {
        for (int j = 0; j < nu; ++j) write(unit_dot(t), t);
      } else {
#pragma unroll
        for (int j = 0; j < kMaxUnits; ++j)
          if (j < nu) unit_dot(t), acc[j] += t;
        if (c == chunks - 1) {
#pragma unroll
          for (int j = 0; j < kMaxUnits; ++j)
            if (j < nu) write(blockIdx.x + j * static_cast<int>(gridDim.x), acc[j]);
        }
      }
    }
    // every row written (CTA barrier), then one release at GPU scope adding this block's units
    asm volatile("bar.sync 1, %0;" ::"n"(32 * kConsumers) : "memory");
    if (ctid == 0 && nu > 0 && ch.xq8 != 2) red_release(ch.done + k, static_cast<unsigned>(nu));
  }
}

// (a) one launch per op: a block per unit, a warp per row, codes read straight from global
// memory (the whole row before the dependency wait; the backend's matvecs load their first
// column step there).
__global__ void __launch_bounds__(32 * kConsumers) op_kernel(Chain ch, int k) {
  __shared__ __align__(16) int8_t xs[kMaxCols];
  const Op op = ch.ops[k];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * kRows + warp;
  const int chunks = op.cols / kChunk;
  constexpr int per = kChunk / 2 / 16 / 32;
  uint4 q[kMaxCols / kChunk * per];  // the whole row, loaded before the dependency wait
  const uint4* src = reinterpret_cast<const uint4*>(op.codes + static_cast<size_t>(min(row, op.rows - 1)) * (op.cols / 2));
#pragma unroll
  for (int c = 0; c < kMaxCols / kChunk; ++c)
#pragma unroll
    for (int i = 0; i < per; ++i)
      if (c < chunks) q[c * per + i] = src[c * (kChunk / 2 / 16) + lane + 32 * i];
  SM90(asm volatile("griddepcontrol.wait;" ::: "memory"));
  SM90(asm volatile("griddepcontrol.launch_dependents;" ::: "memory"));
  build_x(ch, k, xs, threadIdx.x, blockDim.x);
  __syncthreads();
  int part[per] = {};
#pragma unroll
  for (int c = 0; c < kMaxCols / kChunk; ++c) {
#pragma unroll
    for (int i = 0; i < per; ++i) {
      const int xb = c * (kChunk / 32) + lane + 32 * i;
      if (c < chunks) part[i] = dot32(q[c * per + i], x_lo(xs, xb), x_hi(xs, xb), part[i]);
    }
  }
  int acc = 0;
#pragma unroll
  for (int i = 0; i < per; ++i) acc += part[i];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0 && row < op.rows) put_y(ch, k, row, acc);
}

void launch_op(const Chain& ch, int k, int units, cudaStream_t s) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(units);
  cfg.blockDim = dim3(32 * kConsumers);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  CK(cudaLaunchKernelEx(&cfg, op_kernel, ch, k));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> slot_counts;
  for (const char* p = argc > 1 ? argv[1] : "3,6"; *p;) {
    const int v = std::atoi(p);
    if (v < 2 || v > kMaxSlots) {
      std::printf("error: ring depths must be 2..%d (got '%s')\n", kMaxSlots, p);
      return 2;
    }
    slot_counts.push_back(v);
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  int dev = 0, sms = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  // The 9b step's matvecs: 24 DeltaNet layers (in-projection 12352 rows, out 4096, gate/up 24576, down 4096 of
  // 12288 columns) and 8 attention layers (q/k/v 10240, o 4096, gate/up, down), then the head (248320 rows).
  struct Shape { int rows, cols; };
  std::vector<Shape> shapes;
  for (int l = 0; l < 32; ++l) {
    const bool attn = l % 4 == 3;
    shapes.push_back({attn ? 10240 : 12352, 4096});
    shapes.push_back({4096, 4096});
    shapes.push_back({24576, 4096});
    shapes.push_back({4096, 12288});
  }
  shapes.push_back({248320, 4096});
  size_t total = 0;
  for (const auto& s : shapes) total += static_cast<size_t>(s.rows) * s.cols / 2;
  uint8_t* codes = nullptr;
  CK(cudaMalloc(&codes, total));
  {
    std::vector<uint8_t> h(1 << 24);
    for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
    for (size_t off = 0; off < total; off += h.size())
      CK(cudaMemcpy(codes + off, h.data(), std::min(h.size(), total - off), cudaMemcpyHostToDevice));
  }
  std::vector<Op> ops;
  std::vector<float*> ys;
  std::vector<int8_t*> yqs;
  std::vector<uint16_t*> yts;
  size_t off = 0;
  for (const auto& s : shapes) {
    const int units = (s.rows + kRows - 1) / kRows;
    if (s.cols % kChunk || s.cols > kMaxCols || (s.cols > kChunk && (units + sms - 1) / sms > kMaxUnits)) {
      std::printf("error: shape %d x %d does not fit the kernel's limits\n", s.rows, s.cols);
      return 2;
    }
    ops.push_back({codes + off, s.rows, s.cols, (s.rows + kRows - 1) / kRows});
    off += static_cast<size_t>(s.rows) * s.cols / 2;
    float* y = nullptr;
    CK(cudaMalloc(&y, s.rows * sizeof(float)));
    ys.push_back(y);
    int8_t* q = nullptr;
    CK(cudaMalloc(&q, kMaxCols));
    yqs.push_back(q);
    uint16_t* t = nullptr;
    CK(cudaMalloc(&t, kMaxCols * sizeof(uint16_t)));
    yts.push_back(t);
  }
  Op* d_ops = nullptr;
  float** d_y = nullptr;
  int8_t** d_yq = nullptr;
  uint16_t** d_yt = nullptr;
  unsigned* d_done = nullptr;
  unsigned* d_next = nullptr;
  CK(cudaMalloc(&d_ops, ops.size() * sizeof(Op)));
  CK(cudaMalloc(&d_y, ys.size() * sizeof(float*)));
  CK(cudaMalloc(&d_done, ops.size() * sizeof(unsigned)));
  CK(cudaMalloc(&d_next, ops.size() * sizeof(unsigned)));
  CK(cudaMemcpy(d_ops, ops.data(), ops.size() * sizeof(Op), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_y, ys.data(), ys.size() * sizeof(float*), cudaMemcpyHostToDevice));
  CK(cudaMalloc(&d_yq, yqs.size() * sizeof(int8_t*)));
  CK(cudaMemcpy(d_yq, yqs.data(), yqs.size() * sizeof(int8_t*), cudaMemcpyHostToDevice));
  CK(cudaMalloc(&d_yt, yts.size() * sizeof(uint16_t*)));
  CK(cudaMemcpy(d_yt, yts.data(), yts.size() * sizeof(uint16_t*), cudaMemcpyHostToDevice));
  CK(cudaMemset(d_done, 0, ops.size() * sizeof(unsigned)));
  Chain ch{d_ops, static_cast<int>(ops.size()), d_y, d_yq, d_yt, d_done, d_next, 0, 0, 0, 0, 0};

  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  auto time_ms = [&](auto&& f) {
    std::vector<float> t;
    for (int r = 0; r < 12; ++r) {
      CK(cudaEventRecord(a, s));
      f();
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return static_cast<double>(t[t.size() / 2]);
  };
  // copy bandwidth (read + write of 1 GiB)
  {
    const size_t n = size_t(1) << 30;
    void *x = nullptr, *y = nullptr;
    CK(cudaMalloc(&x, n));
    CK(cudaMalloc(&y, n));
    const double ms = time_ms([&] { CK(cudaMemcpyAsync(y, x, n, cudaMemcpyDeviceToDevice, s)); });
    std::printf("copy 1 GiB (read+write): %.0f GB/s\n", 2.0 * n / ms / 1e6);
    CK(cudaFree(x));
    CK(cudaFree(y));
  }
  std::printf("step: %zu matvecs, %.3f GB of codes, %d SMs\n", ops.size(), total / 1e9, sms);
  // (a) one launch per op, in a graph
  cudaGraphExec_t exec = nullptr;
  {
    cudaGraph_t g;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (size_t k = 0; k < ops.size(); ++k) launch_op(ch, static_cast<int>(k), ops[k].units, s);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&exec, g, 0));
    CK(cudaGraphDestroy(g));
  }
  const double ms_a = time_ms([&] { CK(cudaGraphLaunch(exec, s)); });
  std::vector<float> head_a(1024);
  CK(cudaMemcpy(head_a.data(), ys.back(), head_a.size() * sizeof(float), cudaMemcpyDeviceToHost));
  std::printf("(a) a launch per op:  %.3f ms per step, %.0f GB/s\n", ms_a, total / ms_a / 1e6);
  // (b) persistent
  int major = 0;
  CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 9) {
    std::printf("(b) needs compute capability 9.0 (bulk copies): not run\n");
    return 0;
  }
  CK(cudaFuncSetAttribute(persistent_chain, cudaFuncAttributeMaxDynamicSharedMemorySize,
                          static_cast<int>(kMaxSlots * kSlotBytes + kMaxCols + kMaxSlots * (2 * sizeof(uint64_t) + sizeof(int)))));
  unsigned run = 0;
  double worst = 0;
  struct Config { int diag, dyn, xq8; };
  for (const Config cf : {Config{0, 0, 0}, Config{0, 1, 0}, Config{0, 0, 1}, Config{0, 1, 1}, Config{0, 0, 2},
                          Config{0, 1, 2}, Config{1, 1, 0},
                          Config{1, 1, 1}, Config{2, 1, 0}, Config{3, 1, 0}, Config{4, 1, 0}})
  for (const int slots : slot_counts) {
    const int diag = cf.diag, dyn = cf.dyn;
    ch.slots = slots;
    ch.diag = diag;
    ch.dyn = dyn;
    ch.xq8 = cf.xq8;
    run = 0;  // (the counters count from zero again: their targets are run × signals per op)
    CK(cudaMemsetAsync(d_done, 0, ops.size() * sizeof(unsigned), s));
    CK(cudaMemsetAsync(d_next, 0, ops.size() * sizeof(unsigned), s));
    for (uint16_t* t : yts) CK(cudaMemsetAsync(t, 0, kMaxCols * sizeof(uint16_t), s));  // (no stale run tags)
    const size_t smem = slots * kSlotBytes + kMaxCols + slots * (2 * sizeof(uint64_t) + sizeof(int));
    CK(cudaMemset(ys.back(), 0, ops.back().rows * sizeof(float)));
    const double ms_b = time_ms([&] {
      ch.run = ++run;
      persistent_chain<<<sms, 32 * (kConsumers + 1), smem, s>>>(ch);
      CK(cudaGetLastError());
    });
    std::vector<float> head_b(1024);
    CK(cudaMemcpy(head_b.data(), ys.back(), head_b.size() * sizeof(float), cudaMemcpyDeviceToHost));
    double w = 0;
    for (size_t i = 0; i < head_a.size(); ++i) w = std::max(w, static_cast<double>(std::fabs(head_a[i] - head_b[i])));
    if (!diag) worst = std::max(worst, w);
    static const char* const what[] = {"", ", no waits", ", no waits, no x", ", no waits, no x, no dots (the stream)",
                                       ", no waits, no x, no copies (the consumers)"};
    std::printf("(b) persistent, %s, x from %s, %d slots of %d KB%s: %.3f ms per step, %.0f GB/s (head outputs against (a): max difference %.3g%s)\n",
                dyn ? "units claimed" : "units static", cf.xq8 == 2 ? "tagged int8" : cf.xq8 ? "int8" : "float", slots, kSlotBytes / 1024, what[diag], ms_b,
                total / ms_b / 1e6, w, diag ? ", not compared" : "");
  }
  return worst == 0 ? 0 : 1;
}
