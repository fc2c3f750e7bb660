#include "quant/quantizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/f16.h"
#include "quant/packing.h"

namespace tq {

VectorQuantizer::VectorQuantizer(int dim, int bits, uint64_t seed, bool norm_correction)
    : rot_(dim, seed), bits_(bits), norm_correction_(norm_correction) {
  check(bits >= 1 && bits <= 8, "quantizer: bits must be in 1..8, got {}", bits);
  check(rot_.padded_dim() >= 2 && rot_.padded_dim() <= (1 << 16),
        "quantizer: dimension must be in 2..65536 after padding to a power of two, got {}", dim);
  cb_ = &lloyd_max_codebook(rot_.padded_dim(), bits);
  code_bytes_ = packed_bytes(rot_.padded_dim(), bits);
}

uint16_t VectorQuantizer::encode(const float* x, uint8_t* codes, float* scratch) const {
  rot_.forward(x, scratch);
  return encode_rotated(scratch, codes);
}

uint16_t VectorQuantizer::encode_rotated(const float* y, uint8_t* codes) const {
  const int D = rot_.padded_dim();
  double n2 = 0;
  for (int j = 0; j < D; ++j) n2 += static_cast<double>(y[j]) * y[j];
  const double norm = std::sqrt(n2);
  // u = y/‖y‖ · √D: the coordinate in the codebook's units.
  const float to_u = norm > 0 ? static_cast<float>(std::sqrt(static_cast<double>(D)) / norm) : 0.0f;
  const auto& bnd = cb_->boundaries_f;
  uint8_t idx[1 << 16];
  double c2 = 0;
  for (int j = 0; j < D; ++j) {
    float u = y[j] * to_u;
    // Number of boundaries strictly below u.
    int k = static_cast<int>(std::lower_bound(bnd.begin(), bnd.end(), u) - bnd.begin());
    idx[j] = static_cast<uint8_t>(k);
    double c = cb_->centroids[k];
    c2 += c * c;
  }
  pack_codes(idx, D, bits_, codes);
  double stored = norm;
  if (norm_correction_ && c2 > 0) stored = norm / std::sqrt(c2 / D);  // n / ‖ŷ‖
  return f32_to_f16(static_cast<float>(std::min(stored, 65504.0)));
}

void VectorQuantizer::decode_rotated(const uint8_t* codes, uint16_t norm, float* y) const {
  const int D = rot_.padded_dim();
  uint8_t idx[1 << 16];
  unpack_codes(codes, D, bits_, idx);
  const float s = f16_to_f32(norm) / std::sqrt(static_cast<float>(D));
  for (int j = 0; j < D; ++j) y[j] = cb_->centroids_f[idx[j]] * s;
}

void VectorQuantizer::decode(const uint8_t* codes, uint16_t norm, float* x, float* scratch) const {
  decode_rotated(codes, norm, scratch);
  rot_.inverse_inplace(scratch);
  std::copy(scratch, scratch + rot_.dim(), x);
}

}  // namespace tq
