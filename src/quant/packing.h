// Bit packing without waste: code j of a row occupies bits [j·b, j·b + b) of a
// little-endian bit stream, so n codes of b bits take exactly ceil(n·b/8) bytes
// (3-bit: 32 codes in 12 bytes). Every 8 codes start on a byte boundary.
#pragma once
#include <cstddef>
#include <cstdint>

namespace tq {

inline size_t packed_bytes(size_t n_codes, int bits) { return (n_codes * bits + 7) / 8; }

// out must hold packed_bytes(n, bits) bytes; it is fully overwritten.
void pack_codes(const uint8_t* codes, size_t n, int bits, uint8_t* out);
void unpack_codes(const uint8_t* packed, size_t n, int bits, uint8_t* codes);

}  // namespace tq
