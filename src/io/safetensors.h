// safetensors: memory-mapped, validated reader and a writer.
// Layout: u64 little-endian header length N | N bytes of JSON | data section.
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]}
// (relative to the data section) plus an optional "__metadata__" of strings.
// MLX writes no padding: tensors may be unaligned, so readers use unaligned loads.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tq {

enum class DType : uint8_t { f32, f16, bf16, f64, i8, u8, i16, u16, i32, u32, i64, u64, boolean };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // as in safetensors: "F32", "BF16", ...

struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping
  size_t nbytes = 0;
  int64_t numel() const;
  std::string shape_str() const;
};

// A read-only mapping of one .safetensors file. Every check names the file and
// the tensor or field at fault. Never writes to the file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel × dtype_size bytes
};
// Writes atomically (temporary file, then rename). Header padded to 8 bytes.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace tq
