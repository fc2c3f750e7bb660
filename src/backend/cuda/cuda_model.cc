// The CUDA Model: weights uploaded once from the shared weight description
// (model/weights.h), per-sequence state in GPU memory, and the forward pass of the
// Llama family and Qwen3.5 written against the kernels of kernels.cu.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kernels.cuh"
#include "core/error.h"
#include "core/rng.h"
#include "model/weights.h"
#include "quant/codebook.h"
#include "quant/packing.h"
#include "quant/rotation.h"

namespace tq::cuda {

void cuda_error(cudaError_t e, const char* file, int line) {
  fail("CUDA error {} at {}:{}: {}", cudaGetErrorName(e), file, line, cudaGetErrorString(e));
}
void cuda_unsupported(const char* what) { fail("{}", what); }

namespace {

constexpr int kChunk = 512;  // tokens per forward pass on the GPU (prefill chunks)
constexpr int kHeadRows = 64;  // rows of logits per head matmul when every row's logits are wanted

// An owned device allocation.
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t bytes) : bytes_(bytes) {
    if (bytes) TQ_CUDA_CHECK(cudaMalloc(&p_, bytes));
  }
  DevBuf(DevBuf&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DevBuf(const DevBuf&) = delete;
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// One page-locked 64-bit value: the host end of an 8-byte copy per decode step (a copy to
// pageable memory is staged by the driver).
struct PinnedKey {
  PinnedKey() { TQ_CUDA_CHECK(cudaMallocHost(&p, sizeof *p)); }
  PinnedKey(const PinnedKey&) = delete;
  PinnedKey& operator=(const PinnedKey&) = delete;
  ~PinnedKey() { cudaFreeHost(p); }
  unsigned long long* p = nullptr;
};

// An int8 x (XQ8) of up to n values (whole blocks of 32) in its own device memory; normed:
// with the Σ x² per word of a handed-off RMSNorm (XQ8::ss) and its eps.
struct Q8Buf {
  Q8Buf() = default;
  explicit Q8Buf(size_t n, bool normed = false, float eps = 0)
      : mem(xq8_bytes(n, normed)), x(xq8_in(mem.get(), n, normed, eps)) {}
  DevBuf mem;
  XQ8 x;
};

// The k largest of a device row, selected on the device (cuda::top_k) and copied as pairs,
// in ranks_before order; the whole row goes to the host instead when k is large or too
// many values equal the k-th.
class TopKOnDevice {
 public:
  std::vector<Candidate> select(const float* y, int n, int k, cudaStream_t s) {
    k = std::clamp(k, 1, n);
    if (k <= kCap / 2) {
      auto* sel = sel_.get<TopKSelect>();
      top_k(y, n, k, sel, vals_.get<float>(), ids_.get<int32_t>(), kCap, s);
      uint32_t count = 0;
      TQ_CUDA_CHECK(cudaMemcpyAsync(&count, &sel->count, sizeof count, cudaMemcpyDeviceToHost, s));
      TQ_CUDA_CHECK(cudaStreamSynchronize(s));
      if (count <= static_cast<uint32_t>(kCap)) {
        std::vector<float> v(count);
        std::vector<int32_t> id(count);
        TQ_CUDA_CHECK(cudaMemcpyAsync(v.data(), vals_.get(), count * sizeof(float), cudaMemcpyDeviceToHost, s));
        TQ_CUDA_CHECK(cudaMemcpyAsync(id.data(), ids_.get(), count * sizeof(int32_t), cudaMemcpyDeviceToHost, s));
        TQ_CUDA_CHECK(cudaStreamSynchronize(s));
        std::vector<Candidate> c(count);
        for (uint32_t i = 0; i < count; ++i) c[i] = {v[i], id[i]};
        std::sort(c.begin(), c.end(), ranks_before);
        c.resize(k);
        return c;
      }
    }
    std::vector<float> h(n);
    TQ_CUDA_CHECK(cudaMemcpyAsync(h.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost, s));
    TQ_CUDA_CHECK(cudaStreamSynchronize(s));
    return top_logits(h.data(), n, k);
  }

 private:
  static constexpr int kCap = 8192;
  DevBuf sel_{sizeof(TopKSelect)}, vals_{kCap * sizeof(float)}, ids_{kCap * sizeof(int32_t)};
};

template <typename T>
DevBuf upload(const T* host, size_t n) {
  DevBuf b(n * sizeof(T));
  if (n) TQ_CUDA_CHECK(cudaMemcpy(b.get(), host, n * sizeof(T), cudaMemcpyHostToDevice));
  return b;
}
template <typename T>
DevBuf upload(const std::vector<T>& v) {
  return upload(v.data(), v.size());
}

// Weights on the device: MLX 4-bit as stored (codes, bf16 or f32 scales/biases); any
// other weight dequantized to float32.
struct Uploaded {
  DevWeight w;
  std::vector<DevBuf> bufs;
};

Uploaded upload_weight(const Weight& w) {
  Uploaded u;
  DevWeight& d = u.w;
  d.rows = static_cast<int>(w.rows);
  d.cols = static_cast<int>(w.cols);
  if (w.quantized() && w.bits == 4 && w.group % 32 == 0 && w.cols % 32 == 0) {
    d.q4 = true;
    d.group = w.group;
    const size_t groups = static_cast<size_t>(w.rows) * (w.cols / w.group);
    u.bufs.push_back(upload(w.data, static_cast<size_t>(w.rows) * w.cols / 2));
    d.codes = u.bufs.back().get<uint8_t>();
    if (w.sdtype == DType::bf16) {
      d.sbf16 = true;
      u.bufs.push_back(upload(w.scales, groups * 2));
      u.bufs.push_back(upload(w.biases, groups * 2));
    } else {
      d.sbf16 = false;
      const size_t es = w.sdtype == DType::f32 ? 4 : 2;
      std::vector<float> s(groups), b(groups);
      for (size_t i = 0; i < groups; ++i) s[i] = to_float(w.sdtype, w.scales + i * es), b[i] = to_float(w.sdtype, w.biases + i * es);
      u.bufs.push_back(upload(s));
      u.bufs.push_back(upload(b));
    }
    d.scales = u.bufs[1].get();
    d.biases = u.bufs[2].get();
    return u;
  }
  std::vector<float> f(static_cast<size_t>(w.rows) * w.cols);
  for (int64_t r = 0; r < w.rows; ++r) w.dequantize_row(r, f.data() + r * w.cols);
  u.bufs.push_back(upload(f));
  d.f32 = u.bufs.back().get<float>();
  return u;
}

// A copy of a device buffer (cudaMemcpy on the legacy stream: ordered after the model's
// blocking stream's work).
DevBuf copy_of(const DevBuf& b) {
  DevBuf c(b.bytes());
  if (b.bytes()) TQ_CUDA_CHECK(cudaMemcpy(c.get(), b.get(), b.bytes(), cudaMemcpyDeviceToDevice));
  return c;
}

// A DeltaNet state between the CPU's [hv][dv][dk] and the GPU's [hv][dk][dv].
std::vector<float> transpose_state(const std::vector<float>& a, int hv, int dk, int dv, bool to_gpu) {
  std::vector<float> b(a.size());
  for (int h = 0; h < hv; ++h)
    for (int i = 0; i < dv; ++i)
      for (int j = 0; j < dk; ++j) {
        const size_t cpu = (static_cast<size_t>(h) * dv + i) * dk + j, gpu = (static_cast<size_t>(h) * dk + j) * dv + i;
        (to_gpu ? b[gpu] : b[cpu]) = to_gpu ? a[cpu] : a[gpu];
      }
  return b;
}

std::vector<float> download(const DevBuf& b, size_t n) {
  std::vector<float> v(n);
  TQ_CUDA_CHECK(cudaMemcpy(v.data(), b.get(), n * sizeof(float), cudaMemcpyDeviceToHost));
  return v;
}

// One attention layer's cache on the device (grows in 1024-token steps).
class DevKV {
 public:
  DevKV(const CachePolicy& p, int n_heads, int n_kv_heads, int head_dim, int layer) {
    check(!p.dense || p.dense_type != DenseType::bf16,
          "--device cuda: cache policy '{}' is not supported on the GPU (use f32, fp16 or a TurboQuant policy)",
          p.name());
    L_.n_heads = n_heads, L_.n_kv_heads = n_kv_heads, L_.head_dim = head_dim;
    const int dense_bits = p.dense_type == DenseType::f32 ? 32 : 16;
    const int kb = p.dense ? dense_bits : p.k_bits, vb = p.dense ? dense_bits : p.v_bits;
    const bool codes = kb < 16 || vb < 16;
    L_.window = codes ? p.window : 0;
    L_.ring_rows = L_.window > 0 ? L_.window + kChunk : 0;
    ring_lo_dev_ = DevBuf(sizeof(unsigned long long));
    TQ_CUDA_CHECK(cudaMemset(ring_lo_dev_.get(), 0, ring_lo_dev_.bytes()));
    L_.ring_lo = ring_lo_dev_.get<unsigned long long>();
    side(L_.k, kb, p, layer, 0, k_tables_);
    side(L_.v, vb, p, layer, 1, v_tables_);
    if (L_.window > 0) {
      for (DevKVSide* s : {&L_.k, &L_.v})
        if (s->bits < 16) {
          ring_.emplace_back(static_cast<size_t>(n_kv_heads) * L_.ring_rows * s->dim * sizeof(__half));
          s->ring = ring_.back().get<__half>();
        }
    }
    // The attention kernel's shared-memory limit and occupancy are set up here, outside any
    // graph capture (a one-token prompt's first forward is a captured decode step).
    splits_for(L_, 1, 1);
  }
  // A deep copy (a session fork): every buffer copied, the layer's pointers set to the copies.
  DevKV(const DevKV& o)
      : L_(o.L_), n_(o.n_), ring_lo_(o.ring_lo_), ring_lo_dev_(copy_of(o.ring_lo_dev_)), k_rows_(copy_of(o.k_rows_)),
        k_norms_(copy_of(o.k_norms_)), v_rows_(copy_of(o.v_rows_)), v_norms_(copy_of(o.v_norms_)) {
    for (const auto& b : o.ring_) ring_.push_back(copy_of(b));
    for (const auto& b : o.k_tables_) k_tables_.push_back(copy_of(b));
    for (const auto& b : o.v_tables_) v_tables_.push_back(copy_of(b));
    L_.ring_lo = ring_lo_dev_.get<unsigned long long>();
    L_.k.rows = k_rows_.get<uint8_t>(), L_.k.norms = k_norms_.get<uint16_t>();
    L_.v.rows = v_rows_.get<uint8_t>(), L_.v.norms = v_norms_.get<uint16_t>();
    size_t r = 0;  // the constructor's order: K's ring, then V's (each only for a code side)
    for (DevKVSide* sd : {&L_.k, &L_.v})
      if (sd->ring) sd->ring = ring_[r++].get<__half>();
    for (auto [sd, t] : {std::pair{&L_.k, &k_tables_}, std::pair{&L_.v, &v_tables_}})
      if (!t->empty()) sd->signs = (*t)[0].get<float>(), sd->centroids = (*t)[1].get<float>(), sd->boundaries = (*t)[2].get<float>();
  }
  DevKV& operator=(const DevKV&) = delete;

  // This cache as the CPU slot's state bytes (KVSlot::state of a TurboQuantKV or DenseKV of
  // the same policy: per token and KV head the K and V rows — a code side's packed codes and
  // fp16 norm, a dense side's row as stored —; then for TurboQuant policies the ring size, the
  // window row count and those rows, K's then V's, each of the side's dim in fp16), so sessions
  // on the GPU save to and load from the CPU's session files. 3-bit codes are repacked between
  // the GPU's nibble layout and the CPU's bit stream; the rest is stored alike. A dense side of
  // a TurboQuant policy (k16v3) has no ring on the GPU: its window rows are its fp16 rows.
  std::string host_state() const {
    const size_t n = n_, G = L_.n_kv_heads;
    std::vector<std::vector<uint8_t>> rows[2];
    std::vector<std::vector<uint16_t>> norms[2];
    for (int side = 0; side < 2; ++side) {
      const DevKVSide& S = side ? L_.v : L_.k;
      for (size_t g = 0; g < G; ++g) {
        rows[side].emplace_back(n * S.row_bytes);
        TQ_CUDA_CHECK(cudaMemcpy(rows[side][g].data(), S.rows + g * L_.cap * S.row_bytes, n * S.row_bytes,
                                 cudaMemcpyDeviceToHost));
        if (S.bits >= 16) continue;
        norms[side].emplace_back(n);
        TQ_CUDA_CHECK(cudaMemcpy(norms[side][g].data(), S.norms + g * L_.cap, n * 2, cudaMemcpyDeviceToHost));
      }
    }
    std::string out;
    std::vector<uint8_t> codes(std::max(L_.k.dim, L_.v.dim)), packed(codes.size());
    for (size_t t = 0; t < n; ++t)
      for (size_t g = 0; g < G; ++g)
        for (int side = 0; side < 2; ++side) {
          const DevKVSide& S = side ? L_.v : L_.k;
          const uint8_t* row = rows[side][g].data() + t * S.row_bytes;
          if (S.bits >= 16) {
            out.append(reinterpret_cast<const char*>(row), S.row_bytes);
            continue;
          }
          const uint8_t* src = row;
          if (S.nib3) {
            for (int d = 0; d < S.dim; ++d)
              codes[d] = static_cast<uint8_t>((nib3_codes8(reinterpret_cast<const uint32_t*>(row), d / 32, d % 32 / 8) >>
                                               (4 * (d % 8))) & 7u);
            pack_codes(codes.data(), S.dim, 3, packed.data());
            src = packed.data();
          }
          out.append(reinterpret_cast<const char*>(src), packed_bytes(S.dim, S.bits));
          out.append(reinterpret_cast<const char*>(&norms[side][g][t]), 2);
        }
    if (!turboquant()) return out;
    const size_t W = L_.window;
    const uint64_t rows_out = W == 0 ? 0 : std::clamp<size_t>(L_.ring_rows, W, W + n);
    const size_t from = W == 0 ? n : std::max(ring_lo_, n > W ? n - W : 0);
    const uint64_t count = n - from;
    out.append(reinterpret_cast<const char*>(&rows_out), 8);
    out.append(reinterpret_cast<const char*>(&count), 8);
    if (count == 0) return out;
    std::vector<__half> ring[2];
    for (int side = 0; side < 2; ++side) {
      const DevKVSide& S = side ? L_.v : L_.k;
      if (S.bits >= 16) continue;
      ring[side].resize(G * L_.ring_rows * S.dim);
      TQ_CUDA_CHECK(cudaMemcpy(ring[side].data(), S.ring, ring[side].size() * 2, cudaMemcpyDeviceToHost));
    }
    for (size_t t = from; t < n; ++t)
      for (size_t g = 0; g < G; ++g)
        for (int side = 0; side < 2; ++side) {
          const DevKVSide& S = side ? L_.v : L_.k;
          if (S.bits >= 16)
            out.append(reinterpret_cast<const char*>(rows[side][g].data() + t * S.row_bytes), S.row_bytes);
          else
            out.append(reinterpret_cast<const char*>(ring[side].data() + (g * L_.ring_rows + t % L_.ring_rows) * S.dim),
                       2 * S.dim);
        }
    return out;
  }
  // The reverse, into this empty cache (st: KVSlot::state bytes of n tokens).
  void load_host_state(const std::string& st, size_t n, cudaStream_t s) {
    check(n_ == 0, "load_host_state: the cache is not empty");
    const size_t G = L_.n_kv_heads;
    auto stored = [](const DevKVSide& S) {  // bytes per token and KV head in the state
      return S.bits >= 16 ? static_cast<size_t>(S.row_bytes) : packed_bytes(S.dim, S.bits) + 2;
    };
    const bool tq = turboquant();
    const size_t per_token = G * (stored(L_.k) + stored(L_.v));
    check(st.size() >= n * per_token + (tq ? 16 : 0), "KV state: {} bytes for {} tokens, expected at least {}",
          st.size(), n, n * per_token + (tq ? 16 : 0));
    reserve(std::max<size_t>(n, 1), s);
    std::vector<std::vector<uint8_t>> rows[2];
    std::vector<std::vector<uint16_t>> norms[2];
    for (int side = 0; side < 2; ++side) {
      const DevKVSide& S = side ? L_.v : L_.k;
      rows[side].assign(G, std::vector<uint8_t>(n * S.row_bytes, 0));
      norms[side].assign(G, std::vector<uint16_t>(S.bits < 16 ? n : 0));
    }
    const char* p = st.data();
    std::vector<uint8_t> codes(std::max(L_.k.dim, L_.v.dim));
    for (size_t t = 0; t < n; ++t)
      for (size_t g = 0; g < G; ++g)
        for (int side = 0; side < 2; ++side) {
          const DevKVSide& S = side ? L_.v : L_.k;
          uint8_t* row = rows[side][g].data() + t * S.row_bytes;
          if (S.bits >= 16) {
            std::memcpy(row, p, S.row_bytes), p += S.row_bytes;
            continue;
          }
          if (S.nib3) {
            unpack_codes(reinterpret_cast<const uint8_t*>(p), S.dim, 3, codes.data());
            for (int w = 0; w < 3 * S.dim / 32; ++w) {
              const uint32_t word = nib3_word(codes.data() + 32 * (w / 3), w % 3);
              std::memcpy(row + 4 * w, &word, 4);
            }
          } else {
            std::memcpy(row, p, packed_bytes(S.dim, S.bits));
          }
          p += packed_bytes(S.dim, S.bits);
          std::memcpy(&norms[side][g][t], p, 2), p += 2;
        }
    for (int side = 0; side < 2; ++side) {
      const DevKVSide& S = side ? L_.v : L_.k;
      for (size_t g = 0; g < G; ++g) {
        TQ_CUDA_CHECK(cudaMemcpy(S.rows + g * L_.cap * S.row_bytes, rows[side][g].data(), n * S.row_bytes,
                                 cudaMemcpyHostToDevice));
        if (S.bits < 16)
          TQ_CUDA_CHECK(cudaMemcpy(S.norms + g * L_.cap, norms[side][g].data(), n * 2, cudaMemcpyHostToDevice));
      }
    }
    size_t from = n;
    if (tq) {
      uint64_t rows_in = 0, count = 0;
      std::memcpy(&rows_in, p, 8), std::memcpy(&count, p + 8, 8), p += 16;
      const size_t W = L_.window, wk = 2 * static_cast<size_t>(L_.k.dim), wv = 2 * static_cast<size_t>(L_.v.dim);
      check(count <= n && count <= W, "KV state: window row count {} is inconsistent with {} tokens and window {}", count,
            n, W);
      check(static_cast<size_t>(st.data() + st.size() - p) == count * G * (wk + wv),
            "KV state: {} bytes after the codes, expected {} window rows", st.data() + st.size() - p, count);
      from = n - count;
      for (int side = 0; side < 2 && count > 0; ++side) {  // (a dense side's window rows are its rows)
        const DevKVSide& S = side ? L_.v : L_.k;
        if (S.bits >= 16) continue;
        std::vector<__half> ring(G * L_.ring_rows * S.dim);
        for (size_t t = from; t < n; ++t)
          for (size_t g = 0; g < G; ++g)
            std::memcpy(ring.data() + (g * L_.ring_rows + t % L_.ring_rows) * S.dim,
                        p + ((t - from) * G + g) * (wk + wv) + (side ? wk : 0), 2 * S.dim);
        TQ_CUDA_CHECK(cudaMemcpy(S.ring, ring.data(), ring.size() * 2, cudaMemcpyHostToDevice));
      }
    } else {
      check(p == st.data() + st.size(), "KV state: {} bytes for {} tokens, expected {}", st.size(), n, n * per_token);
    }
    n_ = n;
    ring_lo_ = L_.ring_rows > 0 ? from : 0;
    const unsigned long long lo = ring_lo_;
    TQ_CUDA_CHECK(cudaMemcpy(L_.ring_lo, &lo, sizeof lo, cudaMemcpyHostToDevice));
  }
  DevKVLayer& layer() { return L_; }
  size_t tokens() const { return n_; }
  void reserve(size_t need, cudaStream_t s) {
    if (need <= L_.cap) return;
    const size_t cap = (std::max(need, L_.cap + L_.cap / 4) + 1023) / 1024 * 1024;
    grow(L_.k, k_rows_, k_norms_, cap, s);
    grow(L_.v, v_rows_, v_norms_, cap, s);
    L_.cap = cap;
  }
  // Host bookkeeping after kv_append (which advances the device's ring_lo the same way).
  void appended(size_t n_new) {
    if (L_.ring_rows > 0) ring_lo_ = std::max(ring_lo_, n_ + n_new > static_cast<size_t>(L_.ring_rows) ? n_ + n_new - L_.ring_rows : 0);
    n_ += n_new;
  }
  void truncate(size_t n) {
    n_ = std::min(n, n_);
    if (ring_lo_ > n_) {
      ring_lo_ = n_;
      const unsigned long long v = ring_lo_;
      TQ_CUDA_CHECK(cudaMemcpy(L_.ring_lo, &v, sizeof v, cudaMemcpyHostToDevice));
    }
  }
  // Where this cache's buffers are (a captured decode step is valid while they stay).
  void append_key(std::vector<uintptr_t>& key) const {
    key.push_back(L_.cap);
    for (const DevKVSide* sd : {&L_.k, &L_.v})
      key.push_back(reinterpret_cast<uintptr_t>(sd->rows)), key.push_back(reinterpret_cast<uintptr_t>(sd->norms));
  }
  size_t resident_bytes() const {
    size_t b = k_rows_.bytes() + k_norms_.bytes() + v_rows_.bytes() + v_norms_.bytes();
    for (const auto& r : ring_) b += r.bytes();
    for (const auto& t : k_tables_) b += t.bytes();
    for (const auto& t : v_tables_) b += t.bytes();
    return b;
  }

 private:
  void side(DevKVSide& s, int bits, const CachePolicy& p, int layer, int which, std::vector<DevBuf>& tables) {
    s.bits = bits;
    s.norm_correction = p.norm_correction;
    if (bits >= 16) {
      s.dim = L_.head_dim;
      s.row_bytes = bits / 8 * L_.head_dim;
      return;
    }
    const int D = next_pow2(L_.head_dim);
    s.dim = D;
    s.row_bytes = kv_row_bytes(D, bits);
    s.nib3 = bits == 3 && D % 32 == 0;
    std::vector<float> signs;
    for (int h = 0; h < L_.n_kv_heads; ++h) {
      Rotation r(L_.head_dim, derive_seed(p.seed, layer, h, which));
      signs.insert(signs.end(), r.signs().begin(), r.signs().end());
    }
    const Codebook& cb = lloyd_max_codebook(D, bits);
    tables.push_back(upload(signs));
    tables.push_back(upload(cb.centroids_f));
    tables.push_back(upload(cb.boundaries_f));
    s.signs = tables[0].get<float>();
    s.centroids = tables[1].get<float>();
    s.boundaries = tables[2].get<float>();
    if ((s.nib3 || bits == 4) && D == 256 && g_attention_i8) {  // the direct path's int8 tables
      const Int8Centroids t = int8_centroids(cb.centroids_f.data(), 1 << bits);
      for (int w = 0; w < 4; ++w) s.i8_t[w] = t.t[w];
      s.i8_inv = t.inv, s.i8_min_split = g_attention_i8_min;
    }
  }
  void grow(DevKVSide& s, DevBuf& rows, DevBuf& norms, size_t cap, cudaStream_t st) {
    const int G = L_.n_kv_heads;
    DevBuf nr(static_cast<size_t>(G) * cap * s.row_bytes + 16);
    DevBuf nn(s.bits >= 16 ? 0 : static_cast<size_t>(G) * cap * 2);
    for (int g = 0; g < G && n_ > 0; ++g) {
      TQ_CUDA_CHECK(cudaMemcpyAsync(nr.get<uint8_t>() + static_cast<size_t>(g) * cap * s.row_bytes,
                                    rows.get<uint8_t>() + static_cast<size_t>(g) * L_.cap * s.row_bytes,
                                    n_ * s.row_bytes, cudaMemcpyDeviceToDevice, st));
      if (s.bits < 16)
        TQ_CUDA_CHECK(cudaMemcpyAsync(nn.get<uint16_t>() + static_cast<size_t>(g) * cap,
                                      norms.get<uint16_t>() + static_cast<size_t>(g) * L_.cap, n_ * 2,
                                      cudaMemcpyDeviceToDevice, st));
    }
    TQ_CUDA_CHECK(cudaStreamSynchronize(st));
    rows = std::move(nr);
    norms = std::move(nn);
    s.rows = rows.get<uint8_t>();
    s.norms = norms.get<uint16_t>();
  }

  // A TurboQuant policy (codes on at least one side: the CPU's TurboQuantKV, whose state ends
  // with the window part) or a dense one (DenseKV: rows alone).
  bool turboquant() const { return L_.k.bits < 16 || L_.v.bits < 16; }

  DevKVLayer L_;
  size_t n_ = 0, ring_lo_ = 0;
  DevBuf ring_lo_dev_;
  DevBuf k_rows_, k_norms_, v_rows_, v_norms_;
  std::vector<DevBuf> ring_, k_tables_, v_tables_;
};

// TQ_CUDA_PROFILE=1: synchronizes after each stage and prints the time per stage at exit
// (for finding where a step goes; the synchronization itself costs time).
class StageProfile {
 public:
  StageProfile() : on_(std::getenv("TQ_CUDA_PROFILE") != nullptr) {}
  ~StageProfile() {
    if (!on_ || ms_.empty()) return;
    double total = 0;
    for (const auto& [k, v] : ms_) total += v;
    std::fprintf(stderr, "[cuda profile] stage: ms total (share)\n");
    for (const auto& [k, v] : ms_) std::fprintf(stderr, "  %-14s %10.2f (%4.1f%%)\n", k.c_str(), v, 100 * v / total);
  }
  void mark(const char* stage, cudaStream_t s) {
    if (!on_) return;
    TQ_CUDA_CHECK(cudaStreamSynchronize(s));
    const auto now = std::chrono::steady_clock::now();
    if (started_) ms_[stage] += std::chrono::duration<double, std::milli>(now - last_).count();
    last_ = now;
    started_ = true;
  }
  void reset() { started_ = false; }
  bool on() const { return on_; }

 private:
  bool on_, started_ = false;
  std::chrono::steady_clock::time_point last_;
  std::map<std::string, double> ms_;
};

// TQ_CUDA_SKIP=stage,stage,...: leaves those stages out of every forward pass (timing
// experiments only: the results are wrong). The time a stage takes inside the real decode
// step is the step time without it subtracted from the step time with it.
class StageSkip {
 public:
  StageSkip() {
    if (const char* v = std::getenv("TQ_CUDA_SKIP")) all_ = std::string(",") + v + ",";
  }
  bool operator()(const char* stage) const { return !all_.empty() && all_.find(std::string(",") + stage + ",") != std::string::npos; }
  bool any() const { return !all_.empty(); }

 private:
  std::string all_;
};

// A decode step captured as a CUDA graph, valid while its key (where every KV buffer is,
// whether x goes int8) holds: the buffers move only when a cache grows.
class StepGraph {
 public:
  StepGraph() = default;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph() { reset(); }
  void reset() {
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
    key_.clear();
  }
  bool valid_for(const std::vector<uintptr_t>& key) const { return exec_ && key == key_; }
  // Records what enqueue puts on stream s and instantiates it.
  template <typename F>
  void capture(std::vector<uintptr_t> key, cudaStream_t s, F&& enqueue) {
    reset();
    TQ_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue();
    } catch (...) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(s, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    cudaGraph_t g = nullptr;
    TQ_CUDA_CHECK(cudaStreamEndCapture(s, &g));
    const cudaError_t e = cudaGraphInstantiate(&exec_, g, 0);
    cudaGraphDestroy(g);
    TQ_CUDA_CHECK(e);
    key_ = std::move(key);
  }
  void launch(cudaStream_t s) const { TQ_CUDA_CHECK(cudaGraphLaunch(exec_, s)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
  std::vector<uintptr_t> key_;
};

// A sequence's DeltaNet conv and rule states, copied (CudaSequence::save_states).
struct CudaStates final : DeviceStates {
  std::vector<DevBuf> conv, state;  // per layer (empty for attention layers)
  size_t bytes() const override {
    size_t b = 0;
    for (const auto* v : {&conv, &state})
      for (const auto& d : *v) b += d.bytes();
    return b;
  }
};

class CudaSequence final : public DeviceSequence {
 public:
  std::vector<std::unique_ptr<DevKV>> kv;  // per layer (null for DeltaNet layers)
  std::vector<DevBuf> conv, state;         // per layer (empty for attention layers)
  StepGraph decode_graph;                  // (not copied: a clone captures its own)
  bool recurrent() const override {
    return std::any_of(state.begin(), state.end(), [](const DevBuf& b) { return b.bytes() > 0; });
  }
  std::unique_ptr<DeviceSequence> clone() const override {
    auto c = std::make_unique<CudaSequence>();
    c->hv = hv, c->dk = dk, c->dv = dv;
    for (const auto& k : kv) c->kv.push_back(k ? std::make_unique<DevKV>(*k) : nullptr);
    for (const auto& b : conv) c->conv.push_back(copy_of(b));
    for (const auto& b : state) c->state.push_back(copy_of(b));
    return c;
  }
  std::shared_ptr<const DeviceStates> save_states() const override {
    auto c = std::make_shared<CudaStates>();
    for (const auto& b : conv) c->conv.push_back(copy_of(b));
    for (const auto& b : state) c->state.push_back(copy_of(b));
    return c;
  }
  void restore_states(const DeviceStates& from) override {
    const auto& f = dynamic_cast<const CudaStates&>(from);
    check(f.conv.size() == conv.size() && f.state.size() == state.size(), "restore_states: states of another model");
    for (auto [to, src] : {std::pair{&conv, &f.conv}, std::pair{&state, &f.state}})
      for (size_t l = 0; l < to->size(); ++l) {
        check((*to)[l].bytes() == (*src)[l].bytes(), "restore_states: layer {} sizes differ", l);
        if ((*to)[l].bytes())
          TQ_CUDA_CHECK(cudaMemcpy((*to)[l].get(), (*src)[l].get(), (*to)[l].bytes(), cudaMemcpyDeviceToDevice));
      }
  }
  void reset_states() override {
    for (auto* v : {&conv, &state})
      for (auto& b : *v)
        if (b.bytes()) TQ_CUDA_CHECK(cudaMemset(b.get(), 0, b.bytes()));
  }
  std::string kv_state(int layer) const override { return kv_at(layer).host_state(); }
  void load_kv_state(int layer, const std::string& st, size_t n) override {
    kv_at(layer).load_host_state(st, n, nullptr);
  }
  void get_delta(std::vector<DeltaState>& out, const DeviceStates* from) const override {
    const auto* f = from ? &dynamic_cast<const CudaStates&>(*from) : nullptr;
    check(out.size() == conv.size(), "get_delta: {} layers, this sequence has {}", out.size(), conv.size());
    for (size_t l = 0; l < conv.size(); ++l) {
      const DevBuf& c = f ? f->conv[l] : conv[l];
      const DevBuf& st = f ? f->state[l] : state[l];
      check(out[l].conv.size() * sizeof(float) == c.bytes() && out[l].s.size() * sizeof(float) == st.bytes(),
            "get_delta: layer {} shapes differ", l);
      if (!c.bytes()) continue;
      out[l].conv = download(c, out[l].conv.size());
      out[l].s = transpose_state(download(st, out[l].s.size()), hv, dk, dv, false);
    }
  }
  void set_delta(const std::vector<DeltaState>& in) override { upload_delta(in, conv, state); }
  std::shared_ptr<const DeviceStates> states_from(const std::vector<DeltaState>& in) const override {
    auto c = std::make_shared<CudaStates>();
    for (size_t l = 0; l < conv.size(); ++l) c->conv.emplace_back(conv[l].bytes()), c->state.emplace_back(state[l].bytes());
    upload_delta(in, c->conv, c->state);
    return c;
  }
  int hv = 0, dk = 0, dv = 0;  // DeltaNet dims (the GPU's state is [hv][dk][dv], the CPU's [hv][dv][dk])

 private:
  DevKV& kv_at(int layer) const {
    check(layer >= 0 && static_cast<size_t>(layer) < kv.size() && kv[layer], "layer {} has no KV cache", layer);
    return *kv[layer];
  }
  void upload_delta(const std::vector<DeltaState>& in, std::vector<DevBuf>& c, std::vector<DevBuf>& st) const {
    check(in.size() == c.size(), "DeltaNet states for {} layers, this sequence has {}", in.size(), c.size());
    for (size_t l = 0; l < c.size(); ++l) {
      check(in[l].conv.size() * sizeof(float) == c[l].bytes() && in[l].s.size() * sizeof(float) == st[l].bytes(),
            "DeltaNet states: layer {} shapes differ", l);
      if (!c[l].bytes()) continue;
      TQ_CUDA_CHECK(cudaMemcpy(c[l].get(), in[l].conv.data(), c[l].bytes(), cudaMemcpyHostToDevice));
      const auto t = transpose_state(in[l].s, hv, dk, dv, true);
      TQ_CUDA_CHECK(cudaMemcpy(st[l].get(), t.data(), st[l].bytes(), cudaMemcpyHostToDevice));
    }
  }
  size_t kv_bytes() const override {
    size_t b = 0;
    for (const auto& k : kv)
      if (k) b += k->resident_bytes();
    return b;
  }
  size_t state_bytes() const override {
    size_t b = 0;
    for (const auto& c : conv) b += c.bytes();
    for (const auto& s : state) b += s.bytes();
    return b;
  }
  void truncate(size_t n) override {
    for (auto& k : kv)
      if (k) k->truncate(n);
  }
};

struct DevLayer {
  bool linear = false;
  DevBuf in_norm, post_norm;
  Uploaded gate, up, down;
  // attention
  Uploaded q, k, v, o;
  DevBuf q_norm, k_norm, q_bias, k_bias, v_bias;
  // DeltaNet
  Uploaded qkv, z, b, a, out;
  DevBuf conv, a_log, dt_bias, norm;
};

DevBuf upload_opt(const std::vector<float>& v) { return v.empty() ? DevBuf() : upload(v); }

class CudaModel final : public Model {
 public:
  explicit CudaModel(std::unique_ptr<Checkpoint> c) : Model(std::move(c)) {
    const ModelConfig& m = config();
    check(m.model_type == "llama" || m.model_type == "qwen2" || m.model_type == "qwen3" || m.model_type == "qwen3_5",
          "--device cuda: model type '{}' is not supported", m.model_type);
    TQ_CUDA_CHECK(cudaStreamCreate(&stream_));
    const ModelWeights w = load_weights(*ckpt_);
    embed_ = upload_weight(w.embed);
    tied_ = w.head.data == w.embed.data;
    if (!tied_) head_ = upload_weight(w.head);
    final_norm_ = upload(w.final_norm);
    for (const LayerWeights& L : w.layers) {
      DevLayer d;
      d.linear = L.linear;
      d.in_norm = upload(L.in_norm);
      d.post_norm = upload(L.post_norm);
      d.gate = upload_weight(L.gate);
      d.up = upload_weight(L.up);
      d.down = upload_weight(L.down);
      if (L.linear) {
        const DeltaWeights& D = L.delta;
        d.qkv = upload_weight(D.qkv), d.z = upload_weight(D.z), d.b = upload_weight(D.b), d.a = upload_weight(D.a);
        d.out = upload_weight(D.out);
        d.conv = upload(D.conv), d.a_log = upload(D.a_log), d.dt_bias = upload(D.dt_bias), d.norm = upload(D.norm);
      } else {
        const AttnWeights& A = L.attn;
        d.q = upload_weight(A.q), d.k = upload_weight(A.k), d.v = upload_weight(A.v), d.o = upload_weight(A.o);
        d.q_norm = upload_opt(A.q_norm), d.k_norm = upload_opt(A.k_norm);
        d.q_bias = upload_opt(A.q_bias), d.k_bias = upload_opt(A.k_bias), d.v_bias = upload_opt(A.v_bias);
      }
      layers_.push_back(std::move(d));
    }
    alloc_scratch();
  }
  ~CudaModel() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string device() const override { return "cuda"; }

  std::unique_ptr<SequenceState> new_state(const CachePolicy& policy) const override {
    const ModelConfig& m = config();
    auto st = std::make_unique<SequenceState>();
    auto ds = std::make_unique<CudaSequence>();
    ds->hv = m.lin_v_heads, ds->dk = m.lin_k_dim, ds->dv = m.lin_v_dim;
    ds->kv.resize(m.n_layers);
    ds->conv.resize(m.n_layers);
    ds->state.resize(m.n_layers);
    for (int l = 0; l < m.n_layers; ++l) {
      if (layers_[l].linear) {
        const int C = 2 * m.lin_k_heads * m.lin_k_dim + m.lin_v_heads * m.lin_v_dim;
        ds->conv[l] = DevBuf(static_cast<size_t>(m.conv_kernel - 1) * C * sizeof(float));
        ds->state[l] = DevBuf(static_cast<size_t>(m.lin_v_heads) * m.lin_v_dim * m.lin_k_dim * sizeof(float));
        TQ_CUDA_CHECK(cudaMemset(ds->conv[l].get(), 0, ds->conv[l].bytes()));
        TQ_CUDA_CHECK(cudaMemset(ds->state[l].get(), 0, ds->state[l].bytes()));
      } else {
        ds->kv[l] = std::make_unique<DevKV>(policy, m.n_heads, m.n_kv_heads, m.head_dim, l);
      }
    }
    st->device = std::move(ds);
    return st;
  }

  void fill_synthetic(SequenceState& st, size_t n, uint64_t seed, ThreadPool&) const override {
    check(st.device != nullptr, "--device cuda: this sequence state was made by another backend");
    auto& ds = static_cast<CudaSequence&>(*st.device);
    const ModelConfig& m = config();
    for (size_t done = 0; done < n; done += kChunk) {
      const int c = static_cast<int>(std::min<size_t>(kChunk, n - done));
      const size_t cnt = static_cast<size_t>(c) * m.n_kv_heads * m.head_dim;
      for (int l = 0; l < m.n_layers; ++l) {
        if (!ds.kv[l]) continue;
        DevKV& kv = *ds.kv[l];
        kv.reserve(st.pos + c, stream_);
        fill_random(k_, cnt, seed + 2 * (st.pos * m.n_layers + l), stream_);
        fill_random(v_, cnt, seed + 2 * (st.pos * m.n_layers + l) + 1, stream_);
        kv_append(kv.layer(), k_, v_, c, st.pos, stream_);
        kv.appended(c);
      }
      st.pos += c;
    }
    TQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void forward(SequenceState& st, const int32_t* tokens, int n, float* logits, bool all_logits,
               ThreadPool&) const override {
    check(st.device != nullptr, "--device cuda: this sequence state was made by another backend");
    auto& ds = static_cast<CudaSequence&>(*st.device);
    const int V = config().vocab;
    for (int i = 0; i < n; i += kChunk) {
      const int c = std::min(kChunk, n - i);
      const bool last = i + c == n;
      float* out = all_logits ? logits + static_cast<size_t>(i) * V : (last ? logits : nullptr);
      run_chunk(ds, st.pos, tokens + i, c, out, all_logits);
      st.pos += c;
    }
  }

  std::vector<Candidate> forward_top(SequenceState& st, const int32_t* tokens, int n, int k, ThreadPool&) const override {
    run_chunks(st, tokens, n, nullptr, true);
    return top_.select(logits_, config().vocab, k, stream_);
  }

  int32_t forward_sample(SequenceState& st, const int32_t* tokens, int n, float temperature, double u,
                         ThreadPool&) const override {
    run_chunks(st, tokens, n, nullptr, true);
    return draw(logits_, config().vocab, temperature, u, stream_);
  }

  int32_t forward_argmax(SequenceState& st, const int32_t* tokens, int n, ThreadPool&) const override {
    int32_t best = -1;
    run_chunks(st, tokens, n, &best, false);
    return best;
  }

 private:
  void alloc_scratch() {
    const ModelConfig& m = config();
    const size_t n = kChunk, H = m.hidden, hd = m.head_dim;
    const size_t kd = static_cast<size_t>(m.lin_k_heads) * m.lin_k_dim, vd = static_cast<size_t>(m.lin_v_heads) * m.lin_v_dim;
    const size_t C = 2 * kd + vd;
    struct Want {
      float** p;
      size_t n;
    };
    DevKVLayer probe;  // the most splits one query gets (a prefill chunk gets fewer per query:
    probe.n_kv_heads = std::max(1, m.n_kv_heads);  // n_q × splits ≤ 3n through the tiled kernel)
    const size_t max_sp = static_cast<size_t>(splits_for(probe, 1, SIZE_MAX / 2));
    const size_t att_scr = (3 * n + max_sp) * m.n_heads * (2 + std::max<size_t>(256, hd));
    std::vector<Want> want = {{&x_, n * H}, {&xb_, n * H}, {&o_, n * H}, {&g_, n * m.intermediate},
                              {&u_, n * m.intermediate}, {&qg_, n * 2 * m.n_heads * hd}, {&q_, n * m.n_heads * hd},
                              {&gt_, n * m.n_heads * hd}, {&att_, n * m.n_heads * hd}, {&k_, n * m.n_kv_heads * hd},
                              {&v_, n * m.n_kv_heads * hd}, {&att_scr_, att_scr}, {&qkv_, n * C}, {&z_, n * vd},
                              {&b_, n * m.lin_v_heads}, {&a_, n * m.lin_v_heads}, {&beta_, n * m.lin_v_heads},
                              {&gd_, n * m.lin_v_heads}, {&dq_, n * kd}, {&dk_, n * kd}, {&dv_, n * vd}, {&y_, n * vd},
                              {&logits_, static_cast<size_t>(m.vocab)}};
    if (m.lin_v_heads > 0) {  // the chunked delta rule's per-chunk products (prefill)
      dscr_n_ = delta_chunk_scratch_floats(static_cast<int>(n), m.lin_v_heads, m.lin_k_dim, m.lin_v_dim);
      want.push_back({&dscr_, dscr_n_});
    }
    size_t total = 0;
    std::vector<size_t> at;
    for (const auto& w : want) {
      total = (total + 15) / 16 * 16;
      at.push_back(total);
      total += std::max<size_t>(w.n, 16);
    }
    arena_ = DevBuf(total * sizeof(float));
    for (size_t i = 0; i < want.size(); ++i) *want[i].p = arena_.get<float>() + at[i];
    tok_dev_ = DevBuf(n * sizeof(int32_t));
    pos_dev_ = DevBuf(n * sizeof(int32_t));
    const size_t widest = std::max({H, static_cast<size_t>(m.intermediate), m.n_heads * hd, vd});
    q8_ = Q8Buf(widest);
    q8n_ = Q8Buf(H, true, static_cast<float>(m.rms_eps));
  }

  // The n tokens in chunks; the last chunk's last row: its argmax into best, or (keep) its
  // logits left in logits_.
  void run_chunks(SequenceState& st, const int32_t* tokens, int n, int32_t* best, bool keep) const {
    check(st.device != nullptr, "--device cuda: this sequence state was made by another backend");
    auto& ds = static_cast<CudaSequence&>(*st.device);
    for (int i = 0; i < n; i += kChunk) {
      const int c = std::min(kChunk, n - i);
      const bool last = i + c == n;
      run_chunk(ds, st.pos, tokens + i, c, nullptr, false, last ? best : nullptr, last && keep);
      st.pos += c;
    }
  }

  // logits: the last row's (all: every row's) to the host; or, with best, only the last
  // row's argmax; or, with keep, the last row's logits left in logits_.
  void run_chunk(CudaSequence& ds, size_t pos0, const int32_t* tokens, int n, float* logits, bool all,
                 int32_t* best = nullptr, bool keep = false) const {
    const ModelConfig& m = config();
    cudaStream_t s = stream_;
    for (int i = 0; i < n; ++i)
      check(tokens[i] >= 0 && tokens[i] < m.vocab, "token id {} out of range [0, {})", tokens[i], m.vocab);
    std::vector<int32_t> pos(n);
    for (int i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(pos0 + i);
    for (auto& kv : ds.kv)
      if (kv) kv->reserve(pos0 + n, s);  // may move buffers: before anything is enqueued
    TQ_CUDA_CHECK(cudaMemcpyAsync(tok_dev_.get(), tokens, n * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    TQ_CUDA_CHECK(cudaMemcpyAsync(pos_dev_.get(), pos.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    const int first = all ? 0 : n - 1, rows = logits ? n - first : (best || keep ? 1 : 0);
    // A decode step reads every per-step value (token, position, ring bound) from device
    // memory, so its launches can be captured once and replayed as a CUDA graph.
    const bool decode = n == 1 && rows == 1 && use_graph_ && !prof_.on();
    if (decode) {
      std::vector<uintptr_t> key = {g_decode_int8, g_attention_tc, best != nullptr};
      for (const auto& kv : ds.kv)
        if (kv) kv->append_key(key);
      if (!ds.decode_graph.valid_for(key))
        ds.decode_graph.capture(std::move(key), s, [&] { enqueue(ds, pos0, n, first, rows, best != nullptr); });
      ds.decode_graph.launch(s);
    } else {
      enqueue(ds, pos0, n, first, rows, best != nullptr);
    }
    for (auto& kv : ds.kv)
      if (kv) kv->appended(n);
    const DevWeight& head = tied_ ? embed_.w : head_.w;
    if (best) TQ_CUDA_CHECK(cudaMemcpyAsync(best_pin_.p, best_dev_.get(), sizeof *best_pin_.p, cudaMemcpyDeviceToHost, s));
    // One row: the head ran for it into logits_. Every row (eval): the head over up to
    // kHeadRows rows at once (a GEMM on tensor cores for 4-bit heads), into head_rows_.
    if (logits && rows > 1 && !head_rows_.get()) head_rows_ = DevBuf(static_cast<size_t>(kHeadRows) * m.vocab * sizeof(float));
    for (int r0 = 0; logits && r0 < rows; r0 += kHeadRows) {
      const int nr = std::min(kHeadRows, rows - r0);
      float* out = logits_;
      if (rows > 1) {
        out = head_rows_.get<float>();
        matmul(head, xb_ + static_cast<size_t>(r0) * m.hidden, nr, out, s);
      }
      TQ_CUDA_CHECK(cudaMemcpyAsync(logits + static_cast<size_t>(r0) * m.vocab, out,
                                    static_cast<size_t>(nr) * m.vocab * sizeof(float), cudaMemcpyDeviceToHost, s));
    }
    TQ_CUDA_CHECK(cudaStreamSynchronize(s));
    if (best) *best = argmax_index(*best_pin_.p);
    prof_.mark("head+copy", s);
  }

  // Every kernel of one forward pass over n tokens at pos0 (tokens and positions already on
  // the device); the final norm of rows [first, first + rows) into xb_, and their logits into
  // logits_ when there is one row. Enqueues only: no host
  // synchronization, no allocation (a decode step is captured as a graph).
  void enqueue(CudaSequence& ds, size_t pos0, int n, int first, int rows, bool argmax_only) const {
    const ModelConfig& m = config();
    const int H = m.hidden, hd = m.head_dim;
    const float eps = static_cast<float>(m.rms_eps);
    cudaStream_t s = stream_;
    const int32_t* dpos = pos_dev_.get<int32_t>();
    const XQ8* xq = n == 1 ? &q8_.x : nullptr;  // int8 x for decode matvecs
    prof_.reset();
    if (argmax_only) TQ_CUDA_CHECK(cudaMemsetAsync(best_dev_.get(), 0, sizeof(unsigned long long), s));
    prof_.mark("start", s);
    embed(embed_.w, tok_dev_.get<int32_t>(), n, x_, s);
    prof_.mark("embed", s);
    // Decode: a sublayer's last matvec adds its output into x_ (matmul_accumulate) and hands
    // the next RMSNorm off: it also writes x_·w as int8 with the words' Σ x² into q8n_, and
    // the consuming matvec scales its outputs by the norm (handoff_consumable). Else each
    // RMSNorm is built by the matvec blocks that consume it where norm_fusable (not for a
    // matvec of more than 4 waves of blocks, such as a large vocabulary's LM head).
    // Elsewhere (prefill, other weights) the norm kernel adds the pending output and writes xb_.
    const float* pending = nullptr;  // sublayer output not yet added to x
    bool handed = false;             // x_'s next RMSNorm is in q8n_
    const XQ8* xin = xq;             // the int8 x of the norm's consumer (norm_for)
    auto norm_for = [&](const DevWeight* const* cw, int count, bool swiglu, const float* w, RmsNormIn& fused) {
      const bool take = handed && !skip_("norm") && handoff_consumable(cw, count, swiglu);
      handed = false, xin = take ? &q8n_.x : xq;
      if (take) {
        prof_.mark("norm", s);
        return static_cast<const RmsNormIn*>(nullptr);
      }
      const bool fuse = xq && w && !pending && !skip_("norm") && norm_fusable(cw, count, swiglu);
      if (!fuse && !skip_("norm")) rmsnorm(x_, pending, w, n, H, eps, xb_, s, xq);
      pending = nullptr;
      prof_.mark("norm", s);
      fused = RmsNormIn{x_, w, eps};
      return fuse ? static_cast<const RmsNormIn*>(&fused) : nullptr;
    };
    // o = W·in, onto x; next_w: the weight of the RMSNorm that follows (handed off)
    auto add_out = [&](const DevWeight& w, const float* in, const char* stage, const float* next_w) {
      handed = false;
      if (skip_(stage)) return;
      // x_'s last writer (the previous sublayer's add, or the embedding) is at least two
      // launches back: every sublayer launches a kernel before its last matvec (unless a
      // stage is skipped for a measurement).
      if (xq && matmul_accumulate(w, x_, s, *xq, handoff_ ? &q8n_.x : nullptr, next_w, &handed, !skip_.any())) return;
      matmul(w, in, n, o_, s, xq);
      pending = o_;
    };
    RmsNormIn fused;
    for (int l = 0; l < m.n_layers; ++l) {
      const DevLayer& L = layers_[l];
      if (L.linear) {
        const DevWeight* ws[4] = {&L.qkv.w, &L.z.w, &L.b.w, &L.a.w};
        const RmsNormIn* nin = norm_for(ws, 4, false, L.in_norm.get<float>(), fused);
        delta_mixer(L, ds.conv[l].get<float>(), ds.state[l].get<float>(), n, nin, xin);
        add_out(L.out.w, y_, "dn_out", L.post_norm.get<float>());
        prof_.mark("dn out", s);
      } else {
        DevKVLayer& kv = ds.kv[l]->layer();
        const DevWeight* ws[3] = {&L.q.w, &L.k.w, &L.v.w};
        const RmsNormIn* nin = norm_for(ws, 3, false, L.in_norm.get<float>(), fused);
        float* ys[3] = {m.attn_output_gate ? qg_ : q_, k_, v_};
        if (!skip_("attn_qkv")) matmul_many(ws, ys, 3, xb_, n, s, xin, nin);
        prof_.mark("attn qkv", s);
        AttnPrep ap{n, m.n_heads, m.n_kv_heads, hd, m.rot_dims(), m.rope_theta, eps, m.attn_output_gate,
                    L.q_norm.get<float>(), L.k_norm.get<float>(), L.q_bias.get<float>(), L.k_bias.get<float>(),
                    L.v_bias.get<float>()};
        if (!skip_("attn_prep")) attn_prep(ap, m.attn_output_gate ? qg_ : q_, q_, gt_, k_, v_, dpos, s);
        prof_.mark("attn prep", s);
        if (!skip_("kv_append")) kv_append(kv, k_, v_, n, pos0, s, dpos);
        prof_.mark("kv append", s);
        // Decode: every split count and bound from the capacity and device values, so the
        // same launches serve every step until the cache grows.
        const size_t n_tokens = n == 1 ? SIZE_MAX : pos0 + n;
        const int sp = splits_for(kv, n, n == 1 ? kv.cap : pos0 + n);
        if (!skip_("attention"))
          attention(kv, q_, dpos, n, n_tokens, sp, m.attn_output_gate ? gt_ : nullptr,
                  1.0f / std::sqrt(static_cast<float>(hd)), att_scr_, att_, s, xq);
        prof_.mark("attention", s);
        add_out(L.o.w, att_, "attn_out", L.post_norm.get<float>());
        prof_.mark("attn out", s);
      }
      const DevWeight* gu[2] = {&L.gate.w, &L.up.w};
      const RmsNormIn* nin = norm_for(gu, 2, true, L.post_norm.get<float>(), fused);
      const bool q8_done = !skip_("mlp_gateup") && swiglu_matmul(L.gate.w, L.up.w, xb_, n, g_, u_, s, xin, nin, xq);
      prof_.mark("mlp gate/up", s);
      if (xq && !q8_done && !skip_("q8")) quantize_q8(g_, m.intermediate, *xq, s);
      add_out(L.down.w, g_, "mlp_down", l + 1 < m.n_layers ? layers_[l + 1].in_norm.get<float>() : final_norm_.get<float>());
      prof_.mark("mlp down", s);
    }
    if (rows > 0) {
      float* xr = x_ + static_cast<size_t>(first) * H;
      if (pending) add(xr, pending + static_cast<size_t>(first) * H, static_cast<size_t>(rows) * H, s);
      const DevWeight* head[1] = {tied_ ? &embed_.w : &head_.w};
      const RmsNormIn fin{xr, final_norm_.get<float>(), eps};
      const bool take = rows == 1 && handed && handoff_consumable(head, 1);
      const bool fuse = !take && rows == 1 && fin.w && norm_fusable(head, 1);
      if (!fuse && !take) rmsnorm(xr, nullptr, final_norm_.get<float>(), rows, H, eps, xb_, s, rows == 1 ? &q8_.x : nullptr);
      if (rows == 1 && !skip_("head"))
        matmul(*head[0], xb_, 1, logits_, s, take ? &q8n_.x : &q8_.x, fuse ? &fin : nullptr);
      if (argmax_only) argmax(logits_, m.vocab, best_dev_.get<unsigned long long>(), s);
    }
  }

  // The linear-attention mixer up to its output y_ (nin: its input norm fused into the
  // in-projections, or null: xb_ holds the normalized input).
  void delta_mixer(const DevLayer& L, float* conv_state, float* state, int n, const RmsNormIn* nin, const XQ8* xin) const {
    const ModelConfig& m = config();
    cudaStream_t s = stream_;
    const XQ8* xq = n == 1 ? &q8_.x : nullptr;
    DeltaDims d{n, m.lin_k_heads, m.lin_v_heads, m.lin_k_dim, m.lin_v_dim, m.conv_kernel};
    const DevWeight* ws[4] = {&L.qkv.w, &L.z.w, &L.b.w, &L.a.w};
    float* ys[4] = {qkv_, z_, b_, a_};
    if (delta_step_ok(d)) {  // one token: the conv in the in-projection, the rest in one kernel
      const DeltaConvIn cv{L.conv.get<float>(), conv_state, m.conv_kernel};
      const bool conv_done = !skip_("dn_proj") && matmul_many(ws, ys, 4, xb_, n, s, xin, nin, &cv);
      if (!conv_done && !skip_("dn_conv")) delta_conv(d, qkv_, conv_state, L.conv.get<float>(), s);
      prof_.mark("dn proj+conv", s);
      if (!skip_("dn_rule"))
        delta_step(d, qkv_, b_, a_, L.a_log.get<float>(), L.dt_bias.get<float>(), state, z_, L.norm.get<float>(),
                   static_cast<float>(m.rms_eps), y_, s, xq);
      prof_.mark("dn step", s);
      return;
    }
    if (!skip_("dn_proj")) matmul_many(ws, ys, 4, xb_, n, s, xin, nin);
    prof_.mark("dn proj", s);
    if (!skip_("dn_conv"))
      delta_conv_prep(d, qkv_, conv_state, L.conv.get<float>(), b_, a_, L.a_log.get<float>(), L.dt_bias.get<float>(), dq_,
                    dk_, dv_, beta_, gd_, s);
    prof_.mark("dn conv+prep", s);
    if (!skip_("dn_rule")) delta_rule(d, dq_, dk_, dv_, beta_, gd_, state, y_, s, dscr_, dscr_n_);
    prof_.mark("dn rule", s);
    if (!skip_("dn_norm")) gated_norm(d, y_, z_, L.norm.get<float>(), static_cast<float>(m.rms_eps), s, xq);
    prof_.mark("dn norm", s);
  }

  cudaStream_t stream_ = nullptr;
  Uploaded embed_, head_;
  bool tied_ = false;
  DevBuf final_norm_;
  std::vector<DevLayer> layers_;
  // A draw from softmax(y / temperature) at u on the GPU (sample_row), copied back.
  int32_t draw(const float* y, int n, float temperature, double u, cudaStream_t s) const {
    sample_row(y, n, temperature, u, sample_scr_.get<float>(), best_dev_.get<int32_t>(), s);
    TQ_CUDA_CHECK(cudaMemcpyAsync(best_pin_.p, best_dev_.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, s));
    TQ_CUDA_CHECK(cudaStreamSynchronize(s));
    return *reinterpret_cast<const int32_t*>(best_pin_.p);
  }

  DevBuf arena_, tok_dev_, pos_dev_, best_dev_{sizeof(unsigned long long)};
  DevBuf sample_scr_{kSampleScratch * sizeof(float)};
  mutable DevBuf head_rows_;  // kHeadRows rows of logits (allocated by the first all-rows forward)
  PinnedKey best_pin_;  // the host end of best_dev_
  mutable TopKOnDevice top_;
  Q8Buf q8_;   // int8 copy of the decode step's current matvec input
  Q8Buf q8n_;  // a handed-off RMSNorm's int8 input (hidden values, with Σ x² per word)
  bool handoff_ = !(std::getenv("TQ_CUDA_HANDOFF") && std::string(std::getenv("TQ_CUDA_HANDOFF")) == "0");
  bool use_graph_ = !(std::getenv("TQ_CUDA_GRAPH") && std::string(std::getenv("TQ_CUDA_GRAPH")) == "0");
  mutable StageProfile prof_;
  StageSkip skip_;
  float *x_, *xb_, *o_, *g_, *u_, *qg_, *q_, *gt_, *att_, *k_, *v_, *att_scr_, *qkv_, *z_, *b_, *a_, *beta_, *gd_,
      *dq_, *dk_, *dv_, *y_, *logits_, *dscr_ = nullptr;
  size_t dscr_n_ = 0;
};

}  // namespace

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return std::string("no usable CUDA device (") + cudaGetErrorString(e) + ")";
  if (n == 0) return "no CUDA device found";
  return "";
}

void require_device() {
  const std::string why = unavailable_reason();
  check(why.empty(), "--device cuda: {}", why);
}

std::unique_ptr<Model> load_model(const std::string& dir) {
  require_device();
  return std::make_unique<CudaModel>(std::make_unique<Checkpoint>(dir));
}

double copy_bandwidth_gbs(size_t bytes) {
  require_device();
  DevBuf a(bytes), b(bytes);
  TQ_CUDA_CHECK(cudaMemset(a.get(), 1, bytes));
  cudaEvent_t e0, e1;
  TQ_CUDA_CHECK(cudaEventCreate(&e0));
  TQ_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int r = 0; r < 7; ++r) {
    TQ_CUDA_CHECK(cudaEventRecord(e0));
    TQ_CUDA_CHECK(cudaMemcpy(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice));
    TQ_CUDA_CHECK(cudaEventRecord(e1));
    TQ_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    TQ_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return 2.0 * bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;  // bytes read + written
}

void set_decode_int8(bool on) { g_decode_int8 = on; }
bool decode_int8() { return g_decode_int8; }
void set_prefill_int8(bool on) { g_prefill_int8 = on; }
bool prefill_int8() { return g_prefill_int8; }
void set_attention_tc(bool on) { g_attention_tc = on; }
bool attention_tc() { return g_attention_tc; }
void set_attention_tiled(bool on) { g_attention_tiled = on; }
bool attention_tiled() { return g_attention_tiled; }
bool g_attention_i8 = !(std::getenv("TQ_CUDA_ATTN_I8") && std::getenv("TQ_CUDA_ATTN_I8")[0] == '0');
int g_attention_i8_min = std::getenv("TQ_CUDA_ATTN_I8_MIN") ? std::max(0, std::atoi(std::getenv("TQ_CUDA_ATTN_I8_MIN")))
                                                           : kAttentionI8MinSplit;
void set_attention_int8(bool on, int min_split) { g_attention_i8 = on, g_attention_i8_min = std::max(0, min_split); }
bool attention_int8() { return g_attention_i8; }
int attention_int8_min_split() { return g_attention_i8_min; }
double attention_int8_error(int D, int bits) {
  const Codebook& cb = lloyd_max_codebook(D, bits);
  double ms = 0;
  for (float c : cb.centroids_f) ms += static_cast<double>(c) * c / cb.centroids_f.size();
  return int8_centroids(cb.centroids_f.data(), static_cast<int>(cb.centroids_f.size())).err / std::sqrt(ms);
}

size_t device_memory_used() {
  size_t free_b = 0, total = 0;
  TQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  return total - free_b;
}

namespace ops {

std::vector<float> matmul(const Weight& w, const std::vector<float>& x, int n) {
  require_device();
  Uploaded u = upload_weight(w);
  DevBuf dx = upload(x), dy(static_cast<size_t>(n) * w.rows * sizeof(float));
  Q8Buf xq(w.cols);
  if (n == 1) quantize_q8(dx.get<float>(), w.cols, xq.x, nullptr);
  cuda::matmul(u.w, dx.get<float>(), n, dy.get<float>(), nullptr, &xq.x);
  std::vector<float> y(static_cast<size_t>(n) * w.rows);
  TQ_CUDA_CHECK(cudaMemcpy(y.data(), dy.get(), y.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return y;
}

std::vector<Candidate> top_k(const std::vector<float>& y, int k) {
  require_device();
  DevBuf dy = upload(y);
  TopKOnDevice sel;
  return sel.select(dy.get<float>(), static_cast<int>(y.size()), k, nullptr);
}

int32_t argmax(const std::vector<float>& y) {
  require_device();
  DevBuf dy = upload(y), slot(sizeof(unsigned long long));
  TQ_CUDA_CHECK(cudaMemset(slot.get(), 0, slot.bytes()));
  cuda::argmax(dy.get<float>(), static_cast<int>(y.size()), slot.get<unsigned long long>(), nullptr);
  unsigned long long key = 0;
  TQ_CUDA_CHECK(cudaMemcpy(&key, slot.get(), sizeof key, cudaMemcpyDeviceToHost));
  return argmax_index(key);
}

int32_t sample(const std::vector<float>& y, float temperature, double u) {
  require_device();
  DevBuf dy = upload(y), scr(kSampleScratch * sizeof(float)), out(sizeof(int32_t));
  cuda::sample_row(dy.get<float>(), static_cast<int>(y.size()), temperature, u, scr.get<float>(), out.get<int32_t>(),
                   nullptr);
  int32_t id = -1;
  TQ_CUDA_CHECK(cudaMemcpy(&id, out.get(), sizeof id, cudaMemcpyDeviceToHost));
  return id;
}

void gated_delta(const DeltaInputs& in, std::vector<float>& s, std::vector<float>& y, bool chunked) {
  require_device();
  const size_t n = in.n;
  DevBuf q = upload(in.q, n * in.hk * in.dk), k = upload(in.k, n * in.hk * in.dk), v = upload(in.v, n * in.hv * in.dv);
  DevBuf beta = upload(in.beta, n * in.hv), g = upload(in.g, n * in.hv);
  DevBuf ds = upload(transpose_state(s, in.hv, in.dk, in.dv, true));
  DevBuf dy(n * in.hv * in.dv * sizeof(float));
  DeltaDims d{in.n, in.hk, in.hv, in.dk, in.dv, 0};
  const size_t scr_n = chunked ? delta_chunk_scratch_floats(in.n, in.hv, in.dk, in.dv) : 0;
  DevBuf scr(std::max<size_t>(scr_n, 1) * sizeof(float));
  delta_rule(d, q.get<float>(), k.get<float>(), v.get<float>(), beta.get<float>(), g.get<float>(), ds.get<float>(),
             dy.get<float>(), nullptr, chunked ? scr.get<float>() : nullptr, scr_n);
  y = download(dy, n * in.hv * in.dv);
  s = transpose_state(download(ds, s.size()), in.hv, in.dk, in.dv, false);
}

std::vector<float> delta_step(const DeltaStepIn& in, std::vector<float>& s) {
  require_device();
  DeltaDims d{1, in.hk, in.hv, in.dk, in.dv, 0};
  check(delta_step_ok(d), "delta_step: unsupported head dims {} / {}", in.dk, in.dv);
  DevBuf qkv = upload(in.qkv), b = upload(in.b), a = upload(in.a), a_log = upload(in.a_log), dt = upload(in.dt_bias);
  DevBuf z = upload(in.z), w = upload(in.norm_w), ds = upload(transpose_state(s, in.hv, in.dk, in.dv, true));
  DevBuf dy(static_cast<size_t>(in.hv) * in.dv * sizeof(float));
  cuda::delta_step(d, qkv.get<float>(), b.get<float>(), a.get<float>(), a_log.get<float>(), dt.get<float>(),
                   ds.get<float>(), z.get<float>(), w.get<float>(), in.eps, dy.get<float>(), nullptr);
  s = transpose_state(download(ds, s.size()), in.hv, in.dk, in.dv, false);
  return download(dy, static_cast<size_t>(in.hv) * in.dv);
}

std::vector<float> attention(const CachePolicy& p, const KVGeometry& geo, int layer, const std::vector<float>& k,
                             const std::vector<float>& v, size_t n_kv, size_t chunk, const std::vector<float>& q,
                             const std::vector<int32_t>& pos, std::string* state) {
  require_device();
  check(chunk >= 1 && chunk <= static_cast<size_t>(kChunk), "attention: chunk must be in 1..{}", kChunk);
  DevKV kv(p, geo.n_heads, geo.n_kv_heads, geo.head_dim, layer);
  kv.reserve(n_kv, nullptr);
  const size_t row = static_cast<size_t>(geo.n_kv_heads) * geo.head_dim;
  DevBuf dk = upload(k), dv = upload(v);
  for (size_t t = 0; t < n_kv; t += chunk) {
    const size_t c = std::min(chunk, n_kv - t);
    kv_append(kv.layer(), dk.get<float>() + t * row, dv.get<float>() + t * row, static_cast<int>(c), t, nullptr);
    kv.appended(c);
  }
  if (state) *state = kv.host_state();
  const int n_q = static_cast<int>(pos.size());
  DevBuf dq = upload(q), dpos = upload(pos);
  const int sp = splits_for(kv.layer(), n_q, n_kv);
  DevBuf scr(attention_scratch_floats(kv.layer(), n_q, sp) * sizeof(float));
  DevBuf out(static_cast<size_t>(n_q) * geo.n_heads * geo.head_dim * sizeof(float));
  cuda::attention(kv.layer(), dq.get<float>(), dpos.get<int32_t>(), n_q, n_kv, sp, nullptr,
                  1.0f / std::sqrt(static_cast<float>(geo.head_dim)), scr.get<float>(), out.get<float>(), nullptr);
  std::vector<float> o(static_cast<size_t>(n_q) * geo.n_heads * geo.head_dim);
  TQ_CUDA_CHECK(cudaMemcpy(o.data(), out.get(), o.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return o;
}

SwigluInt8 swiglu_int8(const Weight& gate, const Weight& up, const std::vector<float>& x, const std::vector<float>& norm_w,
                       float eps) {
  require_device();
  Uploaded ug = upload_weight(gate), uu = upload_weight(up);
  const DevWeight* pair[2] = {&ug.w, &uu.w};
  check(norm_fusable(pair, 2, true), "swiglu_int8: a 4-bit pair the fused norm takes");
  DevBuf dx = upload(x), dw = upload(norm_w), dg(static_cast<size_t>(gate.rows) * sizeof(float));
  Q8Buf in(gate.cols), out(gate.rows);
  const RmsNormIn norm{dx.get<float>(), dw.get<float>(), eps};
  SwigluInt8 r;
  r.fused = swiglu_matmul(ug.w, uu.w, nullptr, 1, dg.get<float>(), nullptr, nullptr, &in.x, &norm, &out.x);
  if (!r.fused) quantize_q8(dg.get<float>(), gate.rows, out.x, nullptr);
  r.g = download(dg, gate.rows);
  r.q.resize(gate.rows), r.d.resize(gate.rows / 8), r.sum.resize(gate.rows / 8);
  TQ_CUDA_CHECK(cudaMemcpy(r.q.data(), out.x.q, r.q.size(), cudaMemcpyDeviceToHost));
  TQ_CUDA_CHECK(cudaMemcpy(r.d.data(), out.x.d, r.d.size() * sizeof(float), cudaMemcpyDeviceToHost));
  TQ_CUDA_CHECK(cudaMemcpy(r.sum.data(), out.x.sum, r.sum.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return r;
}

NormHandoff norm_handoff(const Weight& w, const std::vector<float>& x, const std::vector<float>& y0,
                         const std::vector<float>& norm_w, float eps, const Weight& gate, const Weight& up) {
  require_device();
  check(w.rows == gate.cols && x.size() == static_cast<size_t>(w.cols) && y0.size() == static_cast<size_t>(w.rows) &&
            norm_w.size() == y0.size(),
        "norm_handoff: shapes do not chain");
  Uploaded uw = upload_weight(w), ug = upload_weight(gate), uu = upload_weight(up);
  DevBuf dx = upload(x), dy = upload(y0), dw = upload(norm_w);
  Q8Buf in(w.cols), next(w.rows, true, eps);
  quantize_q8(dx.get<float>(), w.cols, in.x, nullptr);
  NormHandoff r;
  check(matmul_accumulate(uw.w, dy.get<float>(), nullptr, in.x, &next.x, dw.get<float>(), &r.handed, true),
        "norm_handoff: {} is not a weight of the int8 path", w.name);
  r.y = download(dy, w.rows);
  if (!r.handed) return r;
  r.q.resize(w.rows), r.d.resize(w.rows / 8), r.sum.resize(w.rows / 8), r.ss.resize(w.rows / 8);
  TQ_CUDA_CHECK(cudaMemcpy(r.q.data(), next.x.q, r.q.size(), cudaMemcpyDeviceToHost));
  TQ_CUDA_CHECK(cudaMemcpy(r.d.data(), next.x.d, r.d.size() * sizeof(float), cudaMemcpyDeviceToHost));
  TQ_CUDA_CHECK(cudaMemcpy(r.sum.data(), next.x.sum, r.sum.size() * sizeof(float), cudaMemcpyDeviceToHost));
  TQ_CUDA_CHECK(cudaMemcpy(r.ss.data(), next.x.ss, r.ss.size() * sizeof(float), cudaMemcpyDeviceToHost));
  const DevWeight* pair[2] = {&ug.w, &uu.w};
  if (!handoff_consumable(pair, 2, true)) return r;  // (g and lin stay empty)
  DevBuf dg(static_cast<size_t>(gate.rows) * sizeof(float)), dl(static_cast<size_t>(gate.rows) * sizeof(float));
  swiglu_matmul(ug.w, uu.w, nullptr, 1, dg.get<float>(), nullptr, nullptr, &next.x);
  matmul(ug.w, nullptr, 1, dl.get<float>(), nullptr, &next.x);
  r.g = download(dg, gate.rows), r.lin = download(dl, gate.rows);
  return r;
}

std::vector<float> matmul_handed(const Weight& w, const std::vector<float>& y, const std::vector<float>& norm_w, float eps) {
  require_device();
  check(y.size() == static_cast<size_t>(w.cols) && norm_w.size() == y.size() && w.cols % 8 == 0,
        "matmul_handed: shapes do not chain");
  // The producer: a zero 4-bit weight of one 32-column block added into y, so y stays as it
  // is and its norm is handed off (a launch of whole 8-row words: one warp per unit).
  const std::vector<uint32_t> zc(static_cast<size_t>(w.cols) * 4, 0);
  const std::vector<uint16_t> zs(static_cast<size_t>(w.cols), 0);
  Weight z;
  z.name = "zero", z.rows = w.cols, z.cols = 32, z.bits = 4, z.group = 32;
  z.data = reinterpret_cast<const uint8_t*>(zc.data());
  z.scales = reinterpret_cast<const uint8_t*>(zs.data()), z.biases = reinterpret_cast<const uint8_t*>(zs.data());
  Uploaded uz = upload_weight(z), uw = upload_weight(w);
  DevBuf dx = upload(std::vector<float>(32, 0.0f)), dy = upload(y), dn = upload(norm_w);
  Q8Buf in(32), next(w.cols, true, eps);
  quantize_q8(dx.get<float>(), 32, in.x, nullptr);
  bool handed = false;
  check(matmul_accumulate(uz.w, dy.get<float>(), nullptr, in.x, &next.x, dn.get<float>(), &handed, true) && handed,
        "matmul_handed: the norm of {} values was not handed off", w.cols);
  const DevWeight* one[1] = {&uw.w};
  if (!handoff_consumable(one, 1)) return {};
  DevBuf out(static_cast<size_t>(w.rows) * sizeof(float));
  matmul(uw.w, nullptr, 1, out.get<float>(), nullptr, &next.x);
  return download(out, w.rows);
}

}  // namespace ops

}  // namespace tq::cuda
