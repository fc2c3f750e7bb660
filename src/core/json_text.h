// JSON text of output that carries generated text: bytes that are not valid UTF-8 (a model
// may emit a stray byte token, or stop inside a character) become U+FFFD instead of making
// the whole dump throw after the work is done.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace tq {

inline std::string json_text(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace tq
