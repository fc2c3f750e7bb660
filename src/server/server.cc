#include "server/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>
#include <random>
#include <thread>

#include "core/error.h"

namespace tq::server {

using nlohmann::json;

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& msg, const std::string& type,
                const std::string& param = {}) {
  send_json(res, status, error_body(msg, type, param));
}

// Endpoint label for metrics: known paths as they are, everything else "other".
std::string endpoint_label(const std::string& path) {
  for (const char* p :
       {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"})
    if (path == p) return path;
  return "other";
}

}  // namespace

HttpServer::HttpServer(ServerOptions o)
    : opt_(std::move(o)), http_(std::make_unique<httplib::Server>()), started_(unix_now()) {
  routes();
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::listen() {
  const int threads = std::max(2, opt_.http_threads);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http_->set_payload_max_length(opt_.max_body_bytes);
  http_->set_keep_alive_max_count(1000);
  if (opt_.port == 0) {
    port_ = http_->bind_to_any_port(opt_.host);
  } else {
    port_ = http_->bind_to_port(opt_.host, opt_.port) ? opt_.port : -1;
  }
  check(port_ > 0, "tq serve: cannot listen on {}:{} (address in use, or not an address of this machine)", opt_.host,
        opt_.port);
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  // httplib's stop() acts only on a server whose loop has started: wait for it, so that a stop
  // right after this (a model that fails to load) cannot miss it and leave the join hanging.
  for (int i = 0; i < 5000 && !http_->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return port_;
}

void HttpServer::ready(const Model& model, const Tokenizer& tok, Engine& engine, std::vector<int32_t> stop_tokens,
                       size_t context) {
  opt_.limits.context = context;
  model_ = &model;
  tok_ = &tok;
  engine_ = &engine;
  format_ = ChatFormat::of(tok, model.config().bos_id);
  stops_ = std::move(stop_tokens);
  std::sort(stops_.begin(), stops_.end());
  ready_ = true;
}

void HttpServer::stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpServer::count(const std::string& path, int status) {
  std::lock_guard lock(counts_m_);
  counts_[{endpoint_label(path), status}]++;
}

void HttpServer::routes() {
  auto& s = *http_;
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (opt_.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string want = "Bearer " + opt_.api_key;
    if (req.get_header_value("Authorization") != want) {
      send_error(res, 401, "missing or wrong API key (send 'Authorization: Bearer <key>')", "authentication_error");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Errors raised by the library itself (unknown path, body too large, ...) get a JSON body too.
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) {
      send_error(res, 404, fmt::format("no endpoint {} {}", req.method, req.path), "invalid_request_error");
    } else if (res.status == 413) {
      send_error(res, 413, "request body too large", "invalid_request_error");
    } else {
      send_error(res, res.status, fmt::format("HTTP {}", res.status), "invalid_request_error");
    }
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = e.what();
    } catch (...) {
    }
    send_error(res, 500, msg, "server_error");
  });
  s.set_logger([this](const httplib::Request& req, const httplib::Response& res) { count(req.path, res.status); });

  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (!ready_) return send_json(res, 503, {{"status", "loading"}});
    send_json(res, 200, {{"status", "ok"}});
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(), "text/plain; version=0.0.4");
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json m = {{"id", opt_.model_name}, {"object", "model"}, {"created", started_}, {"owned_by", "turboquant"}};
    if (ready_) {
      m["meta"] = {{"context_length", opt_.limits.context},
                   {"kv_policy", engine_->options().policy.name()},
                   {"model_type", model_->config().model_type}};
    }
    send_json(res, 200, {{"object", "list"}, {"data", json::array({m})}});
  });
  // Tokenizer endpoints (as llama-server has them): no BOS is added.
  s.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    if (!ready_) return send_error(res, 503, "the model is loading", "server_error");
    try {
      const json b = parse_body(req.body);
      if (!b.contains("content") || !b["content"].is_string())
        throw ApiError(400, "'content': expected a string", "content");
      send_json(res, 200, {{"tokens", tok_->encode(b["content"].get<std::string>())}});
    } catch (const ApiError& e) {
      send_error(res, e.status, e.what(), e.type, e.param);
    }
  });
  s.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    if (!ready_) return send_error(res, 503, "the model is loading", "server_error");
    try {
      const json b = parse_body(req.body);
      const int64_t vocab = static_cast<int64_t>(tok_->vocab_size());
      std::vector<int32_t> ids;
      if (!b.contains("tokens") || !b["tokens"].is_array()) throw ApiError(400, "'tokens': expected an array", "tokens");
      for (const auto& x : b["tokens"]) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= vocab)
          throw ApiError(400, fmt::format("'tokens': expected token ids in [0, {}), got {}", vocab, x.dump()), "tokens");
        ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
      }
      send_json(res, 200, {{"content", tok_->decode(ids)}});
    } catch (const ApiError& e) {
      send_error(res, e.status, e.what(), e.type, e.param);
    }
  });
  s.Post("/v1/chat/completions",
         [this](const httplib::Request& req, httplib::Response& res) { handle_completion(req, res, true); });
  s.Post("/v1/completions",
         [this](const httplib::Request& req, httplib::Response& res) { handle_completion(req, res, false); });
}

void HttpServer::handle_completion(const httplib::Request& req, httplib::Response& res, bool chat) {
  if (!ready_) return send_error(res, 503, "the model is loading", "server_error");
  CompletionRequest cr;
  try {
    const json body = parse_body(req.body);
    std::random_device rd;
    const uint64_t seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    cr = chat ? parse_chat_request(body, *tok_, format_, opt_.limits, seed)
              : parse_completion_request(body, *tok_, format_, opt_.limits, seed);
  } catch (const ApiError& e) {
    return send_error(res, e.status, e.what(), e.type, e.param);
  } catch (const std::exception& e) {  // e.g. a tokenizer error on odd input
    return send_error(res, 400, e.what(), "invalid_request_error");
  }
  auto job = std::make_shared<Job>();
  job->prompt = cr.prompt;
  job->gen = cr.gen;
  job->gen.stop_tokens = stops_;
  engine_->submit(job);
  const std::string id = fmt::format("{}-{:x}{:08x}", chat ? "chatcmpl" : "cmpl", started_, next_id_++);
  const int64_t created = unix_now();
  const std::string model = opt_.model_name;
  auto usage = [job] {
    Usage u;
    u.prompt_tokens = static_cast<int>(job->prompt.size());
    u.completion_tokens = static_cast<int>(job->result().tokens.size());
    u.cached_tokens = job->cached_tokens();
    return u;
  };

  if (!cr.stream) {
    job->wait();
    if (!job->error().empty()) return send_error(res, 500, job->error(), "server_error");
    const auto& r = job->result();
    json j = chat ? chat_response(id, created, model, r.text, r.finish_reason, usage())
                  : completion_response(id, created, model, r.text, r.finish_reason, usage());
    j["timings"] = {{"prompt_n", r.n_prompt},
                    {"cached_n", job->cached_tokens()},
                    {"prompt_ms", r.prefill_seconds * 1e3},
                    {"predicted_n", r.tokens.size()},
                    {"predicted_ms", r.decode_seconds * 1e3}};
    return send_json(res, 200, j);
  }

  struct StreamState {
    bool first = true;
  };
  auto st = std::make_shared<StreamState>();
  const bool include_usage = cr.include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [=](size_t, httplib::DataSink& sink) {
        auto send = [&](const json& j) {
          const std::string line = "data: " + dump(j) + "\n\n";
          return sink.write(line.data(), line.size());
        };
        std::string piece;
        while (true) {
          if (!sink.is_writable()) {
            job->cancel();
            return false;
          }
          const bool more = job->next_piece(piece, 100);
          if (!piece.empty()) {
            const bool ok = send(chat ? chat_chunk(id, created, model, piece, "", st->first)
                                      : completion_chunk(id, created, model, piece, ""));
            st->first = false;
            if (!ok) job->cancel();
            return ok;
          }
          if (!more) break;
        }
        if (!job->error().empty()) {
          send(error_body(job->error(), "server_error"));
        } else {
          const auto& r = job->result();
          json last = chat ? chat_chunk(id, created, model, "", r.finish_reason, st->first)
                           : completion_chunk(id, created, model, "", r.finish_reason);
          send(last);
          if (include_usage) {
            json u = chat ? chat_chunk(id, created, model, "", "", false) : completion_chunk(id, created, model, "", "");
            u["choices"] = json::array();
            u["usage"] = usage().to_json();
            send(u);
          }
        }
        static const std::string done = "data: [DONE]\n\n";
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      },
      [job](bool success) {
        if (!success) job->cancel();
      });
}

std::string HttpServer::metrics_text() const {
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, double v) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, v);
  };
  out += "# HELP tq_http_requests_total HTTP requests answered, by endpoint and status.\n";
  out += "# TYPE tq_http_requests_total counter\n";
  {
    std::lock_guard lock(counts_m_);
    for (const auto& [k, v] : counts_)
      out += fmt::format("tq_http_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", k.first, k.second, v);
  }
  metric("tq_ready", "gauge", "1 once the model is loaded.", ready_ ? 1 : 0);
  if (!ready_) return out;
  const EngineMetrics m = engine_->metrics();
  metric("tq_completions_total", "counter", "Completion requests the engine finished.", m.requests);
  metric("tq_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", m.prompt_tokens);
  metric("tq_prompt_tokens_cached_total", "counter", "Prompt tokens resumed from a session instead of processed.",
         m.cached_tokens);
  metric("tq_prompt_tokens_processed_total", "counter", "Prompt tokens run through the model.", m.prefill_tokens);
  metric("tq_generated_tokens_total", "counter", "Tokens generated.", m.generated_tokens);
  metric("tq_prefill_seconds_total", "counter", "Seconds spent in prompt processing.", m.prefill_seconds);
  metric("tq_decode_seconds_total", "counter", "Seconds spent generating.", m.decode_seconds);
  metric("tq_prefill_tokens_per_second", "gauge", "Prompt tokens per second over the server's life.",
         m.prefill_seconds > 0 ? m.prefill_tokens / m.prefill_seconds : 0);
  metric("tq_decode_tokens_per_second", "gauge", "Generated tokens per second of decode time over the server's life.",
         m.decode_seconds > 0 ? m.generated_tokens / m.decode_seconds : 0);
  metric("tq_kv_bytes_resident", "gauge", "Resident bytes of the KV slots of sessions in memory.", m.kv_bytes);
  metric("tq_session_bytes_resident", "gauge", "Resident bytes of sessions in memory (KV, DeltaNet states, checkpoints).",
         m.session_bytes);
  metric("tq_kv_budget_bytes", "gauge", "The --kv-budget.", engine_->options().kv_budget);
  metric("tq_sessions", "gauge", "Sessions held in memory.", m.sessions_in_memory);
  metric("tq_sessions_on_disk", "gauge", "Sessions only in the prompt cache directory.", m.sessions_on_disk);
  metric("tq_prompt_cache_bytes", "gauge", "Bytes of session files in the prompt cache directory.", m.disk_bytes);
  metric("tq_sessions_evicted_total", "counter", "Sessions written to disk to stay within the budget.",
         m.evicted_to_disk);
  metric("tq_sessions_dropped_total", "counter", "Sessions dropped to stay within the budget.", m.dropped);
  metric("tq_sessions_restored_total", "counter", "Sessions loaded from the prompt cache directory.",
         m.restored_from_disk);
  metric("tq_decode_batches_total", "counter", "Batched decode steps (one forward for every decoding request).",
         m.decode_batches);
  metric("tq_decode_batch_tokens_total", "counter", "Tokens decoded in batched steps (over batches: mean batch size).",
         m.decode_batch_tokens);
  metric("tq_requests_queued", "gauge", "Requests waiting for a slot.", m.queued);
  metric("tq_requests_running", "gauge", "Requests running.", m.running);
  return out;
}

}  // namespace tq::server
