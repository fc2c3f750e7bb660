// tq serve: the OpenAI-compatible HTTP server (see src/server/).
#include <fmt/format.h>
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "server/engine.h"
#include "server/server.h"

namespace tq::cli {
namespace {

struct ServeOptions {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string kv = "tq3";
  int ctx = 0;
  int parallel = 4;
  std::string kv_budget = "2G";
  std::string prompt_cache;
  std::string api_key;
  std::string max_body = "4M";
  int max_tokens = 4096;
  std::string alias;
  int http_threads = 16;
  int checkpoint_every = 512;
  std::string device = "cpu";
};

int run_serve(const ServeOptions& o) {
  // SIGINT/SIGTERM end the server cleanly (sessions are written to the prompt cache):
  // block them in every thread and wait for them on this one.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  const std::string dir = o.model.empty() ? builtin_model_dir() : o.model;
  const CachePolicy policy = CachePolicy::parse(o.kv);
  check_device(o.device);  // (before listening)
  server::ServerOptions so;
  so.host = o.host;
  so.port = o.port;
  so.api_key = o.api_key;
  so.max_body_bytes = parse_bytes(o.max_body, "--max-body");
  so.http_threads = o.http_threads;
  check(o.max_tokens >= 1, "--max-tokens: expected >= 1, got {}", o.max_tokens);
  so.limits.max_tokens_cap = o.max_tokens;
  so.model_name = o.alias.empty() ? std::filesystem::path(dir).lexically_normal().filename().string() : o.alias;
  if (so.model_name.empty()) so.model_name = std::filesystem::path(dir).parent_path().filename().string();
  server::EngineOptions eo;
  eo.policy = policy;
  eo.kv_budget = parse_bytes(o.kv_budget, "--kv-budget");
  eo.parallel = o.parallel;
  eo.cache_dir = o.prompt_cache;
  eo.checkpoint_every = o.checkpoint_every;

  server::HttpServer http(so);
  const int port = http.listen();
  fmt::print("tq serve: listening on http://{}:{}\n", o.host, port);
  std::fflush(stdout);

  auto model = load_model(dir, o.device);
  Tokenizer tok = Tokenizer::load(dir + "/tokenizer.json");
  const auto stops = stop_tokens_for(dir, model->config(), tok);
  const size_t model_ctx = model->config().max_position > 0 ? model->config().max_position : 32768;
  check(o.ctx >= 0, "-c: expected >= 0, got {}", o.ctx);
  eo.model_id = model_fingerprint(dir);
  server::Engine engine(*model, tok, eo);
  http.ready(*model, tok, engine, stops, o.ctx > 0 ? std::min<size_t>(o.ctx, model_ctx) : model_ctx);
  fmt::print("tq serve: ready: model {} ({}) on {}, kv {}, context {}, parallel {}, kv budget {} bytes{}\n",
             so.model_name, model->config().model_type, model->device(), policy.name(), http.context(), o.parallel,
             eo.kv_budget,
             o.prompt_cache.empty() ? "" : ", prompt cache " + o.prompt_cache);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&sigs, &sig);
  fmt::print(stderr, "tq serve: {} received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  http.stop();
  for (const auto& f : engine.shutdown())
    fmt::print(stderr, "tq serve: wrote {}: {} tokens, {} bytes (KV {} bytes, DeltaNet states {} bytes)\n", f.file,
               f.tokens, f.total_bytes, f.kv_bytes, f.state_bytes);
  const auto m = engine.metrics();
  fmt::print(stderr, "tq serve: {} requests, {} prompt tokens ({} resumed from sessions), {} generated{}\n",
             m.requests, m.prompt_tokens, m.cached_tokens, m.generated_tokens,
             o.prompt_cache.empty() ? ""
                                    : fmt::format("; prompt cache: {} files, {} bytes", m.sessions_in_memory +
                                                  m.sessions_on_disk, m.disk_bytes));
  return 0;
}

}  // namespace

Runner add_serve(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  auto* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server with prefix reuse and a prompt cache");
  c->add_option("-m,--model", o->model, "Checkpoint directory (default: the built-in model)");
  c->add_option("--host", o->host, "Address to listen on")->capture_default_str();
  c->add_option("--port", o->port, "Port (0: any free port, printed at start)")->capture_default_str();
  c->add_option("--kv", o->kv, "Cache policy: f32, bf16, fp16, tq2, tq3, tq4, kXvY")->capture_default_str();
  c->add_option("-c,--ctx-size", o->ctx, "Context limit per request (0 = the model's)")->capture_default_str();
  c->add_option("--parallel", o->parallel, "Requests running at once (others queue)")->capture_default_str();
  c->add_option("--kv-budget", o->kv_budget, "Memory for sessions (KV, DeltaNet states), e.g. 512M, 8G")
      ->capture_default_str();
  c->add_option("--prompt-cache", o->prompt_cache, "Directory for sessions saved in compressed form");
  c->add_option("--api-key", o->api_key, "Require 'Authorization: Bearer KEY'");
  c->add_option("--max-body", o->max_body, "Largest request body")->capture_default_str();
  c->add_option("--max-tokens", o->max_tokens, "Largest max_tokens a request may ask for")->capture_default_str();
  c->add_option("--alias", o->alias, "Model name in the API (default: the directory name)");
  c->add_option("--http-threads", o->http_threads, "HTTP worker threads")->capture_default_str();
  c->add_option("--checkpoint-every", o->checkpoint_every, "DeltaNet state checkpoint interval, tokens")
      ->capture_default_str();
  c->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  return [o] { return run_serve(*o); };
}

}  // namespace tq::cli
