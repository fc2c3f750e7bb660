#include "kv/cache_policy.h"

#include <fmt/format.h>

#include <charconv>

#include "core/error.h"

namespace tq {
namespace {

constexpr const char* kValid =
    "valid forms: f32, bf16, fp16, tq2, tq3, tq4, kXvY with X in {16,8,4,3,2} and Y in {16,4,3,2} "
    "(e.g. k8v3, k4v3, k16v3), optionally followed by +wN (fp16 window of the newest N tokens; default 128) "
    "and/or +nc0 (no norm correction)";

bool parse_int(const std::string& s, int& out) {
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}
bool valid_k(int b) { return b == 16 || b == 8 || b == 4 || b == 3 || b == 2; }
bool valid_v(int b) { return b == 16 || b == 4 || b == 3 || b == 2; }

}  // namespace

CachePolicy CachePolicy::parse(const std::string& text) {
  auto bad = [&](const std::string& why) -> CachePolicy {
    fail("--kv: invalid cache policy '{}': {}; {}", text, why, kValid);
  };
  CachePolicy p;
  std::string base = text;
  std::vector<std::string> suffixes;
  for (size_t pos; (pos = base.rfind('+')) != std::string::npos;) {
    suffixes.insert(suffixes.begin(), base.substr(pos + 1));
    base.resize(pos);
  }
  if (base == "f32") {
    p.dense_type = DenseType::f32;
  } else if (base == "bf16") {
    p.dense_type = DenseType::bf16;
  } else if (base == "fp16" || base == "f16") {
    p.dense_type = DenseType::f16;
  } else if (base.size() == 3 && base.rfind("tq", 0) == 0) {
    int b = base[2] - '0';
    if (b != 2 && b != 3 && b != 4) return bad("tqN needs N in {2,3,4}");
    p.dense = false;
    p.k_bits = p.v_bits = b;
  } else if (base.size() >= 4 && base[0] == 'k' && base.find('v') != std::string::npos) {
    size_t vpos = base.find('v');
    int kb = 0, vb = 0;
    if (!parse_int(base.substr(1, vpos - 1), kb) || !parse_int(base.substr(vpos + 1), vb))
      return bad("kXvY needs two integers");
    if (!valid_k(kb)) return bad(fmt::format("K bits {} not supported", kb));
    if (!valid_v(vb)) return bad(fmt::format("V bits {} not supported", vb));
    if (kb == 16 && vb == 16) {
      p.dense_type = DenseType::f16;  // k16v16 is the fp16 cache
    } else {
      p.dense = false;
      p.k_bits = kb;
      p.v_bits = vb;
    }
  } else {
    return bad("unknown name");
  }
  if (!p.dense) p.window = kDefaultWindow;
  for (const auto& s : suffixes) {
    if (p.dense) return bad("suffixes apply to TurboQuant policies only");
    int n = 0;
    if (s.size() > 1 && s[0] == 'w' && parse_int(s.substr(1), n) && n >= 0 && n <= (1 << 24)) {
      p.window = n;
    } else if (s == "nc0") {
      p.norm_correction = false;
    } else if (s == "nc1") {
      p.norm_correction = true;
    } else {
      return bad(fmt::format("unknown suffix '+{}'", s));
    }
  }
  return p;
}

std::vector<CachePolicy> CachePolicy::parse_list(const std::string& text) {
  std::vector<CachePolicy> out;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    out.push_back(parse(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string CachePolicy::name() const {
  if (dense) {
    switch (dense_type) {
      case DenseType::f32: return "f32";
      case DenseType::bf16: return "bf16";
      case DenseType::f16: return "fp16";
    }
  }
  std::string s = k_bits == v_bits ? fmt::format("tq{}", k_bits) : fmt::format("k{}v{}", k_bits, v_bits);
  if (window != kDefaultWindow) s += fmt::format("+w{}", window);
  if (!norm_correction) s += "+nc0";
  return s;
}

}  // namespace tq
