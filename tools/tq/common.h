// Helpers shared by subcommands: the built-in model's location, prompt handling.
#pragma once
#include <string>

namespace tq::cli {

// The built-in model directory (stories260K imported, committed in the repo).
std::string builtin_model_dir();
// Peak resident set size of this process, bytes (VmHWM).
size_t peak_rss_bytes();
// "4096", "512K", "64M", "8G" (powers of 1024) → bytes; errors name the flag.
size_t parse_bytes(const std::string& text, const char* flag);

}  // namespace tq::cli
