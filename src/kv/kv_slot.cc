#include "kv/kv_slot.h"

#include <cmath>
#include <cstring>
#include <istream>
#include <iterator>
#include <ostream>
#include <sstream>

#include "core/binio.h"
#include "core/error.h"
#include "kv/dense_kv.h"
#include "kv/turboquant_kv.h"

namespace tq {

using binio::fnv1a;
using binio::get;
using binio::put;

void KVGeometry::validate() const {
  check(n_heads > 0, "KV geometry: n_heads must be > 0, got {}", n_heads);
  check(n_kv_heads > 0, "KV geometry: n_kv_heads must be > 0, got {}", n_kv_heads);
  check(n_heads % n_kv_heads == 0, "KV geometry: n_heads ({}) must be a multiple of n_kv_heads ({})", n_heads,
        n_kv_heads);
  check(head_dim > 0 && head_dim <= 65536, "KV geometry: head_dim must be in 1..65536, got {}", head_dim);
}

std::unique_ptr<KVSlot> make_kv_slot(const CachePolicy& policy, const KVGeometry& geo, int layer) {
  geo.validate();
  if (policy.dense) return std::make_unique<DenseKV>(policy, geo, layer);
  check(geo.head_dim >= 2, "KV geometry: TurboQuant needs head_dim >= 2, got {}", geo.head_dim);
  return std::make_unique<TurboQuantKV>(policy, geo, layer);
}

void KVSlot::append(std::span<const float> k, std::span<const float> v, size_t n_new) {
  const size_t want = n_new * geo_.n_kv_heads * geo_.head_dim;
  check(k.size() == want, "KV append: k has {} floats, expected n_new × n_kv_heads × head_dim = {}×{}×{} = {}",
        k.size(), n_new, geo_.n_kv_heads, geo_.head_dim, want);
  check(v.size() == want, "KV append: v has {} floats, expected n_new × n_kv_heads × head_dim = {}×{}×{} = {}",
        v.size(), n_new, geo_.n_kv_heads, geo_.head_dim, want);
  if (n_new == 0) return;
  append_impl(k.data(), v.data(), n_new);
  n_tokens_ += n_new;
}

void KVSlot::attend(std::span<const float> q, std::span<const int32_t> positions, std::span<float> out, float scale,
                    ThreadPool& pool) const {
  const size_t n_q = positions.size();
  const size_t want = n_q * geo_.n_heads * geo_.head_dim;
  check(q.size() == want, "KV attend: q has {} floats, expected n_q × n_heads × head_dim = {}×{}×{} = {}", q.size(),
        n_q, geo_.n_heads, geo_.head_dim, want);
  check(out.size() == want, "KV attend: out has {} floats, expected {}", out.size(), want);
  for (size_t i = 0; i < n_q; ++i)
    check(positions[i] >= 0, "KV attend: positions[{}] = {} must be >= 0", i, positions[i]);
  if (n_q == 0) return;
  if (scale == 0) scale = 1.0f / std::sqrt(static_cast<float>(geo_.head_dim));
  attn::attend(*this, q.data(), positions.data(), n_q, out.data(), scale, pool);
}

// Layout (little-endian):
//   "TQKV" | u32 version (2) | u32 len | policy name | i32 n_heads, n_kv_heads, head_dim, layer |
//   u64 seed | u64 n_tokens | slot state | u64 FNV-1a of everything before it.
namespace {
constexpr uint32_t kVersion = 2;  // 2: TurboQuant slots record their window ring size
}  // namespace

void KVSlot::save(std::ostream& os) const {
  std::ostringstream body;
  body.write("TQKV", 4);
  put<uint32_t>(body, kVersion);
  const std::string name = policy_.name();
  put<uint32_t>(body, static_cast<uint32_t>(name.size()));
  body.write(name.data(), static_cast<std::streamsize>(name.size()));
  put<int32_t>(body, geo_.n_heads);
  put<int32_t>(body, geo_.n_kv_heads);
  put<int32_t>(body, geo_.head_dim);
  put<int32_t>(body, layer_);
  put<uint64_t>(body, policy_.seed);
  put<uint64_t>(body, n_tokens_);
  write_state(body);
  const std::string s = body.str();
  os.write(s.data(), static_cast<std::streamsize>(s.size()));
  put<uint64_t>(os, fnv1a(s));
  check(os.good(), "KV slot save: write failed");
}

std::string KVSlot::state() const {
  std::ostringstream os;
  write_state(os);
  return os.str();
}

void KVSlot::restore(const std::string& state, size_t n_tokens, const std::string& what) {
  std::istringstream in(state);
  read_state(in, n_tokens);
  check(in.good() && static_cast<size_t>(in.tellg()) == state.size(), "{}: {} bytes of KV state do not hold {} tokens",
        what, state.size(), n_tokens);
}

std::unique_ptr<KVSlot> KVSlot::load(std::istream& is, const std::string& what) {
  std::string all((std::istreambuf_iterator<char>(is)), std::istreambuf_iterator<char>());
  check(all.size() >= 4 + 4 + 8, "{}: {} bytes is too short for a KV slot", what, all.size());
  check(all.compare(0, 4, "TQKV") == 0, "{}: bad magic, expected 'TQKV'", what);
  uint64_t stored;
  std::memcpy(&stored, all.data() + all.size() - 8, 8);
  all.resize(all.size() - 8);
  check(fnv1a(all) == stored, "{}: checksum mismatch (file corrupted or truncated)", what);
  std::istringstream in(all);
  in.ignore(4);
  const uint32_t version = get<uint32_t>(in, what, "version");
  check(version == kVersion, "{}: field 'version' is {}, this build reads version {}", what, version, kVersion);
  const uint32_t len = get<uint32_t>(in, what, "policy length");
  check(len < 256, "{}: field 'policy length' is {}, expected < 256", what, len);
  std::string name(len, '\0');
  in.read(name.data(), len);
  CachePolicy p = CachePolicy::parse(name);
  KVGeometry g;
  g.n_heads = get<int32_t>(in, what, "n_heads");
  g.n_kv_heads = get<int32_t>(in, what, "n_kv_heads");
  g.head_dim = get<int32_t>(in, what, "head_dim");
  const int layer = get<int32_t>(in, what, "layer");
  p.seed = get<uint64_t>(in, what, "seed");
  const uint64_t n = get<uint64_t>(in, what, "n_tokens");
  auto slot = make_kv_slot(p, g, layer);
  const size_t state_bytes = all.size() - static_cast<size_t>(in.tellg());
  check(n <= state_bytes / std::max<size_t>(1, slot->bytes_per_token()) + static_cast<size_t>(p.window),
        "{}: field 'n_tokens' = {} does not fit the {} bytes of state", what, n, state_bytes);
  slot->read_state(in, n);
  check(!in.fail(), "{}: truncated state for {} tokens", what, n);
  return slot;
}

}  // namespace tq
