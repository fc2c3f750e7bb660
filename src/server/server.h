// The HTTP front of `tq serve` (cpp-httplib): OpenAI-compatible endpoints over an
// Engine, plus /health and /metrics. The server listens before the model is loaded:
// until ready(), /health answers 503 and the API answers 503 "loading".
#pragma once
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "server/api.h"
#include "server/engine.h"

namespace httplib {
class Server;
class Request;
class Response;
}  // namespace httplib

namespace tq::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port
  std::string api_key;  // "" = no authentication
  size_t max_body_bytes = size_t(4) << 20;
  int http_threads = 16;
  ApiLimits limits;
  std::string model_name = "tq";
};

class HttpServer {
 public:
  explicit HttpServer(ServerOptions o);
  ~HttpServer();
  // Binds and starts serving on a background thread; returns the port.
  int listen();
  // The model is loaded: start answering the API. `context`: tokens per request.
  void ready(const Model& model, const Tokenizer& tok, Engine& engine, std::vector<int32_t> stop_tokens,
             size_t context);
  size_t context() const { return opt_.limits.context; }
  void stop();  // stops accepting and joins the serving thread
  int port() const { return port_; }

 private:
  void routes();
  void handle_completion(const httplib::Request& req, httplib::Response& res, bool chat);
  std::string metrics_text() const;
  void count(const std::string& path, int status);

  ServerOptions opt_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = -1;

  std::atomic<bool> ready_{false};
  const Model* model_ = nullptr;
  const Tokenizer* tok_ = nullptr;
  Engine* engine_ = nullptr;
  ChatFormat format_;
  std::vector<int32_t> stops_;
  std::atomic<uint64_t> next_id_{1};
  const int64_t started_;

  mutable std::mutex counts_m_;
  std::map<std::pair<std::string, int>, uint64_t> counts_;  // (endpoint, status) → requests
};

}  // namespace tq::server
