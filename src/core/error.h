// Error type with context: where (file/field), what was expected, what was found.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace tq {

// All user-facing failures throw tq::Error. The message names the input (file or
// flag), the field, what was expected and what was found, so a user can act on it.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// check(cond, ...) throws tq::Error with the formatted message when cond is false.
template <typename... Args>
void check(bool cond, fmt::format_string<Args...> f, Args&&... args) {
  if (!cond) throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace tq
