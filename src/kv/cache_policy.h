// CachePolicy: what a user asks for with --kv, parsed once.
//   f32 | bf16 | fp16 (f16)                 dense cache of that type
//   tq2 | tq3 | tq4                         TurboQuant, same bits for K and V
//   kXvY  X ∈ {16,8,4,3,2}, Y ∈ {16,4,3,2}  TurboQuant with independent K/V bits
//                                           (16 = that side stays dense fp16)
// Optional suffixes: +wN lets each query see its newest N tokens as fp16 rows (default
// 128 for TurboQuant policies: the best-measured setting, docs/QUALITY.md; +w0 turns it
// off); +nc0 turns norm correction off (default on).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tq {

enum class DenseType { f32, bf16, f16 };

struct CachePolicy {
  bool dense = true;
  DenseType dense_type = DenseType::f16;  // for dense policies
  int k_bits = 16;                        // TurboQuant K bits; 16 = fp16
  int v_bits = 16;                        // TurboQuant V bits; 16 = fp16
  int window = 0;                         // newest tokens kept in fp16 (TurboQuant only)
  static constexpr int kDefaultWindow = 128;  // TurboQuant policies without +wN
  bool norm_correction = true;            // store ‖x‖/‖ŷ‖ instead of ‖x‖
  uint64_t seed = 0x7475726271ull;        // base seed of the rotations

  // Throws tq::Error naming the text and listing the valid forms.
  static CachePolicy parse(const std::string& text);
  // Comma-separated list (for --kv fp16,tq3).
  static std::vector<CachePolicy> parse_list(const std::string& text);
  // Canonical name: parse(name()) == *this.
  std::string name() const;
};

}  // namespace tq
