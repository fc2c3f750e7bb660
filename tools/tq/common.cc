#include "common.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace tq::cli {

std::string builtin_model_dir() {
  if (const char* e = std::getenv("TQ_BUILTIN_MODEL")) return e;
  namespace fs = std::filesystem;
  // Next to the binary's source tree (build/tq → models/stories260K), else the compiled-in path.
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (fs::path p = exe.parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path())
      if (fs::exists(p / "models/stories260K/config.json")) return (p / "models/stories260K").string();
  return TQ_SOURCE_DIR "/models/stories260K";
}

size_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

size_t parse_bytes(const std::string& text, const char* flag) {
  size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  std::string unit = text.substr(i);
  if (!unit.empty() && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  if (unit.size() == 2 && (unit[1] == 'i' || unit[1] == 'I')) unit.pop_back();
  int shift = -1;
  if (unit.empty()) shift = 0;
  else if (unit == "K" || unit == "k") shift = 10;
  else if (unit == "M" || unit == "m") shift = 20;
  else if (unit == "G" || unit == "g") shift = 30;
  else if (unit == "T" || unit == "t") shift = 40;
  check(i > 0 && i <= 15 && shift >= 0, "{}: expected a size like 4096, 512K, 64M or 8G, got '{}'", flag, text);
  return static_cast<size_t>(std::stoull(text.substr(0, i))) << shift;
}

void check_device(const std::string& device) {
  check(device == "cpu" || device == "cuda", "--device: expected cpu or cuda, got '{}'", device);
  if (device == "cuda") cuda::require_device();
}

std::unique_ptr<Model> load_model(const std::string& dir, const std::string& device) {
  check_device(device);
  return device == "cpu" ? Model::load(dir) : cuda::load_model(dir);
}

}  // namespace tq::cli
