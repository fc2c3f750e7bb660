// Little-endian binary records for the project's save files (KV slots, sessions):
// fixed-size fields, length-prefixed blobs, and the FNV-1a checksum that ends each file.
#pragma once
#include <cstdint>
#include <istream>
#include <ostream>
#include <string>

#include "core/error.h"

namespace tq::binio {

inline uint64_t fnv1a(const char* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ull;
  return h;
}
inline uint64_t fnv1a(const std::string& s) { return fnv1a(s.data(), s.size()); }

template <typename T>
void put(std::ostream& os, T v) {
  os.write(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <typename T>
T get(std::istream& is, const std::string& what, const char* field) {
  T v{};
  is.read(reinterpret_cast<char*>(&v), sizeof(T));
  check(is.good(), "{}: truncated while reading field '{}'", what, field);
  return v;
}
template <typename T>
void put_array(std::ostream& os, const T* p, size_t n) {
  os.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n * sizeof(T)));
}
template <typename T>
void get_array(std::istream& is, T* p, size_t n, const std::string& what, const char* field) {
  is.read(reinterpret_cast<char*>(p), static_cast<std::streamsize>(n * sizeof(T)));
  check(is.good(), "{}: truncated while reading field '{}' ({} values)", what, field, n);
}
// u64 length, then the bytes.
inline void put_blob(std::ostream& os, const std::string& s) {
  put<uint64_t>(os, s.size());
  os.write(s.data(), static_cast<std::streamsize>(s.size()));
}
inline std::string get_blob(std::istream& is, size_t max, const std::string& what, const char* field) {
  const uint64_t n = get<uint64_t>(is, what, field);
  check(n <= max, "{}: field '{}' claims {} bytes, only {} remain", what, field, n, max);
  std::string s(n, '\0');
  is.read(s.data(), static_cast<std::streamsize>(n));
  check(is.good(), "{}: truncated while reading field '{}'", what, field);
  return s;
}

}  // namespace tq::binio
