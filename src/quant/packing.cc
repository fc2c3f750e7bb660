#include "quant/packing.h"

#include <cstring>

namespace tq {

void pack_codes(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  std::memset(out, 0, packed_bytes(n, bits));
  const unsigned mask = (1u << bits) - 1;
  for (size_t j = 0; j < n; ++j) {
    size_t bit = j * bits;
    unsigned v = (codes[j] & mask) << (bit % 8);  // up to 15 bits wide
    out[bit / 8] |= static_cast<uint8_t>(v);
    if ((bit % 8) + bits > 8) out[bit / 8 + 1] |= static_cast<uint8_t>(v >> 8);
  }
}

void unpack_codes(const uint8_t* packed, size_t n, int bits, uint8_t* codes) {
  const unsigned mask = (1u << bits) - 1;
  for (size_t j = 0; j < n; ++j) {
    size_t bit = j * bits;
    unsigned v = packed[bit / 8];
    if ((bit % 8) + bits > 8) v |= static_cast<unsigned>(packed[bit / 8 + 1]) << 8;
    codes[j] = static_cast<uint8_t>((v >> (bit % 8)) & mask);
  }
}

}  // namespace tq
