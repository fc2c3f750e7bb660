// Helpers shared by subcommands: the built-in model's location, prompt handling.
#pragma once
#include <memory>
#include <string>

#include "model/model.h"

namespace tq::cli {

// The built-in model directory (stories260K imported, committed in the repo).
std::string builtin_model_dir();
// Peak resident set size of this process, bytes (VmHWM).
size_t peak_rss_bytes();
// "4096", "512K", "64M", "8G" (powers of 1024) → bytes; errors name the flag.
size_t parse_bytes(const std::string& text, const char* flag);
// --device cpu|cuda: the checkpoint loaded for that backend (a clear error when CUDA is
// not built in or no GPU is present).
std::unique_ptr<Model> load_model(const std::string& dir, const std::string& device);
// The --device value's check alone (for commands that must refuse it before other work).
void check_device(const std::string& device);

}  // namespace tq::cli
