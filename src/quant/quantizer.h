// TurboQuant_mse for one vector (arXiv 2504.19874, Algorithm 1), in the layout the
// KV cache stores:
//   encode: n = ‖x‖; y = Π·x/n (Rotation); idx_j = #{k : t_k < y_j·√D} (ties go to
//           the lower index); codes packed at exactly `bits` bits each (packing.h);
//           norm stored as fp16: n, or with norm correction n' = n / ‖ŷ‖ where
//           ŷ_j = c[idx_j]/√D, so the decoded vector has exactly the input's norm.
//   decode: x̃ = norm · Πᵀ·ŷ.
// Bytes per vector = ceil(D·bits/8) + 2, D = head_dim rounded up to a power of two
// (256 at 3 bits: 96 + 2 = 98 bytes).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "quant/codebook.h"
#include "quant/rotation.h"

namespace tq {

class VectorQuantizer {
 public:
  VectorQuantizer() = default;
  VectorQuantizer(int dim, int bits, uint64_t seed, bool norm_correction = true);

  int dim() const { return rot_.dim(); }
  int padded_dim() const { return rot_.padded_dim(); }
  int bits() const { return bits_; }
  bool norm_correction() const { return norm_correction_; }
  size_t code_bytes() const { return code_bytes_; }
  size_t bytes_per_vector() const { return code_bytes_ + sizeof(uint16_t); }
  const Rotation& rotation() const { return rot_; }
  const Codebook& codebook() const { return *cb_; }

  // scratch: padded_dim() floats. Writes code_bytes() bytes; returns the fp16 norm.
  uint16_t encode(const float* x, uint8_t* codes, float* scratch) const;
  // Encode a vector already rotated (y = Π·x, padded_dim() entries, not normalized).
  uint16_t encode_rotated(const float* y, uint8_t* codes) const;
  // x[dim()] from codes and fp16 norm; scratch: padded_dim() floats.
  void decode(const uint8_t* codes, uint16_t norm, float* x, float* scratch) const;
  // The rotated-domain vector norm · c[idx]/√D (padded_dim() entries).
  void decode_rotated(const uint8_t* codes, uint16_t norm, float* y) const;

 private:
  Rotation rot_;
  const Codebook* cb_ = nullptr;
  int bits_ = 0;
  bool norm_correction_ = true;
  size_t code_bytes_ = 0;
};

}  // namespace tq
