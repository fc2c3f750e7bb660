#include "io/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tq {

namespace {
struct DTypeName {
  DType t;
  const char* name;
  size_t size;
};
constexpr DTypeName kDTypes[] = {
    {DType::f32, "F32", 4}, {DType::f16, "F16", 2}, {DType::bf16, "BF16", 2}, {DType::f64, "F64", 8},
    {DType::i8, "I8", 1},   {DType::u8, "U8", 1},   {DType::i16, "I16", 2},   {DType::u16, "U16", 2},
    {DType::i32, "I32", 4}, {DType::u32, "U32", 4}, {DType::i64, "I64", 8},   {DType::u64, "U64", 8},
    {DType::boolean, "BOOL", 1}};
}  // namespace

size_t dtype_size(DType t) {
  for (const auto& d : kDTypes)
    if (d.t == t) return d.size;
  return 0;
}
const char* dtype_name(DType t) {
  for (const auto& d : kDTypes)
    if (d.t == t) return d.name;
  return "?";
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}
std::string TensorInfo::shape_str() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  check(fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("{}: cannot stat: {}", path, std::strerror(errno));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    fail("{}: file is {} bytes, too short for a safetensors header (8-byte length expected)", path, size_);
  }
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("{}: mmap failed: {}", path, std::strerror(errno));
  }
  const uint8_t* base = static_cast<const uint8_t*>(map_);
  uint64_t n = 0;
  std::memcpy(&n, base, 8);
  check(n <= size_ - 8, "{}: header length {} runs past the end of the file ({} bytes)", path, n, size_);
  check(n < 100'000'000, "{}: header length {} is implausibly large (limit 100 MB)", path, n);
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(base + 8, base + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: header is not valid JSON: {}", path, e.what());
  }
  check(h.is_object(), "{}: header must be a JSON object", path);
  const uint8_t* data = base + 8 + n;
  const size_t data_size = size_ - 8 - n;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      check(v.is_object(), "{}: __metadata__ must be an object", path);
      for (auto m = v.begin(); m != v.end(); ++m)
        if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    check(v.is_object(), "{}: tensor '{}': entry must be an object", path, name);
    check(v.contains("dtype") && v["dtype"].is_string(), "{}: tensor '{}': missing string field 'dtype'", path, name);
    check(v.contains("shape") && v["shape"].is_array(), "{}: tensor '{}': missing array field 'shape'", path, name);
    check(v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2,
          "{}: tensor '{}': field 'data_offsets' must be [begin, end]", path, name);
    TensorInfo t;
    t.name = name;
    const std::string dt = v["dtype"].get<std::string>();
    bool known = false;
    for (const auto& d : kDTypes)
      if (dt == d.name) t.dtype = d.t, known = true;
    check(known, "{}: tensor '{}': unknown dtype '{}' (expected one of F32, F16, BF16, F64, I8, U8, I16, U16, I32, U32, "
                 "I64, U64, BOOL)", path, name, dt);
    for (const auto& s : v["shape"]) {
      check(s.is_number_integer() && s.get<int64_t>() >= 0, "{}: tensor '{}': shape entries must be integers >= 0",
            path, name);
      t.shape.push_back(s.get<int64_t>());
    }
    const auto& off = v["data_offsets"];
    check(off[0].is_number_unsigned() && off[1].is_number_unsigned(),
          "{}: tensor '{}': data_offsets must be non-negative integers", path, name);
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    check(b <= e && e <= data_size, "{}: tensor '{}': data_offsets [{}, {}] out of range (data section is {} bytes)",
          path, name, b, e, data_size);
    // numel × size without overflow
    long double want = dtype_size(t.dtype);
    for (int64_t s : t.shape) want *= static_cast<long double>(s);
    check(want == static_cast<long double>(e - b),
          "{}: tensor '{}': shape {} × {} ({} bytes each) needs {} bytes, data_offsets give {}", path, name,
          t.shape_str(), dt, dtype_size(t.dtype), static_cast<double>(want), e - b);
    t.data = data + b;
    t.nbytes = e - b;
    if (e > b) ranges.emplace_back(b, e);
    tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    check(ranges[i].first >= ranges[i - 1].second, "{}: tensors overlap in the data section at bytes [{}, {})", path,
          ranges[i].first, std::min(ranges[i].second, ranges[i - 1].second));
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h;
  if (!metadata.empty()) h["__metadata__"] = metadata;
  size_t off = 0;
  for (const auto& t : tensors) {
    size_t n = dtype_size(t.dtype);
    for (int64_t s : t.shape) n *= static_cast<size_t>(s);
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string header = h.dump();
  while ((8 + header.size()) % 8) header.push_back(' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    check(f.good(), "{}: cannot create", tmp);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const auto& t : tensors) {
      size_t nb = dtype_size(t.dtype);
      for (int64_t s : t.shape) nb *= static_cast<size_t>(s);
      f.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(nb));
    }
    check(f.good(), "{}: write failed", tmp);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace tq
