#include "common.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

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

}  // namespace tq::cli
