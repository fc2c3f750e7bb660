// The OpenAI-compatible request and response bodies: validation of requests into a
// CompletionRequest (tokens + generation options), and the JSON of responses, stream
// chunks and errors. No HTTP here, so it is tested directly.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/chat.h"
#include "runtime/generate.h"

namespace tq::server {

// A request the server refuses: HTTP status and an OpenAI-style error body.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string type = "invalid_request_error")
      : std::runtime_error(message), status(status), param(std::move(param)), type(std::move(type)) {}
  int status;
  std::string param, type;
};

nlohmann::json error_body(const std::string& message, const std::string& type, const std::string& param = {});

struct ApiLimits {
  int max_tokens_cap = 4096;  // the largest max_tokens a request may ask for
  size_t context = 0;         // prompt + max_tokens must fit (0: no limit)
  size_t max_stop = 4;        // stop sequences per request
};

struct CompletionRequest {
  bool chat = false;
  std::vector<int32_t> prompt;
  GenerateOptions gen;  // max_tokens, sampler, stop strings (stop tokens added by the server)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string model;
};

// Parse and validate a body. Throws ApiError(400) naming the field on bad input.
CompletionRequest parse_chat_request(const nlohmann::json& body, const Tokenizer& tok, const ChatFormat& fmt,
                                     const ApiLimits& lim, uint64_t default_seed);
CompletionRequest parse_completion_request(const nlohmann::json& body, const Tokenizer& tok, const ChatFormat& fmt,
                                           const ApiLimits& lim, uint64_t default_seed);
// Body text → JSON object; throws ApiError(400) on malformed JSON or a non-object.
nlohmann::json parse_body(const std::string& text);

struct Usage {
  int prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  nlohmann::json to_json() const;
};

// Full responses (stream = false).
nlohmann::json chat_response(const std::string& id, int64_t created, const std::string& model,
                             const std::string& text, const std::string& finish, const Usage& u);
nlohmann::json completion_response(const std::string& id, int64_t created, const std::string& model,
                                   const std::string& text, const std::string& finish, const Usage& u);
// One stream chunk: a text delta (finish empty) or the final chunk (finish set).
nlohmann::json chat_chunk(const std::string& id, int64_t created, const std::string& model, const std::string& delta,
                          const std::string& finish, bool first);
nlohmann::json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                                const std::string& delta, const std::string& finish);

// JSON text, invalid UTF-8 replaced (model output can end mid-character).
std::string dump(const nlohmann::json& j);

}  // namespace tq::server
