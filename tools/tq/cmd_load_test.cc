// tq load-test: a bounded load test of a running `tq serve` (or any OpenAI-compatible
// server). Each client holds multi-turn conversations: every request extends the
// client's previous one, half of them streamed, so prefix reuse and SSE are exercised.
// A request fails on a transport error, a non-200 status, or a body that does not
// parse as the expected response (a stream must end with "data: [DONE]").
#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "commands.h"
#include "core/error.h"

namespace tq::cli {
namespace {

using nlohmann::json;

struct LoadOptions {
  std::string url = "http://127.0.0.1:8080";
  int clients = 8;
  int requests = 50;  // per client
  int turns = 5;      // requests per conversation before a client starts a new one
  int max_tokens = 16;
  std::string api_key;
  std::string json_out;
};

struct Outcome {
  bool ok = false;
  double seconds = 0;
  int prompt = 0, cached = 0, completion = 0;
  std::string error;
};

const char* kOpeners[] = {"Once upon a time", "One day, a little girl", "The dog ran", "Tom and his mom",
                          "There was a big tree", "Lily wanted to play", "The sun was hot", "A small bird"};

// Reads the OpenAI response (plain or SSE) into `o`; returns the assistant text.
std::string read_response(const std::string& body, bool stream, Outcome& o) {
  if (!stream) {
    const json j = json::parse(body);
    const auto& u = j.at("usage");
    o.prompt = u.at("prompt_tokens").get<int>();
    o.completion = u.at("completion_tokens").get<int>();
    o.cached = u.at("prompt_tokens_details").at("cached_tokens").get<int>();
    return j.at("choices").at(0).at("message").at("content").get<std::string>();
  }
  std::string text;
  bool done = false;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    check(end != std::string::npos, "stream: an event without its blank line");
    const std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    check(ev.rfind("data: ", 0) == 0, "stream: an event that is not 'data: ...'");
    const std::string data = ev.substr(6);
    if (data == "[DONE]") {
      done = true;
      break;
    }
    const json j = json::parse(data);
    check(!j.contains("error"), "stream: error event {}", data);
    if (j.contains("usage") && j["usage"].is_object()) {
      o.prompt = j["usage"].at("prompt_tokens").get<int>();
      o.completion = j["usage"].at("completion_tokens").get<int>();
      o.cached = j["usage"].at("prompt_tokens_details").at("cached_tokens").get<int>();
    }
    for (const auto& c : j.at("choices"))
      if (c.at("delta").contains("content")) text += c["delta"]["content"].get<std::string>();
  }
  check(done, "stream: no 'data: [DONE]' at the end");
  return text;
}

int run_load_test(const LoadOptions& o) {
  check(o.clients >= 1 && o.requests >= 1 && o.turns >= 1, "--clients, --requests, --turns: expected >= 1");
  std::vector<Outcome> outcomes;
  std::mutex m;
  std::atomic<int> done{0};
  const int total = o.clients * o.requests;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < o.clients; ++c) {
    threads.emplace_back([&, c] {
      httplib::Client cli(o.url);
      cli.set_read_timeout(600, 0);
      cli.set_keep_alive(true);
      httplib::Headers h;
      if (!o.api_key.empty()) h.emplace("Authorization", "Bearer " + o.api_key);
      json messages = json::array();
      for (int r = 0; r < o.requests; ++r) {
        if (r % o.turns == 0) messages = json::array();
        const int k = (c * 31 + r * 7) % static_cast<int>(std::size(kOpeners));
        messages.push_back({{"role", "user"}, {"content", kOpeners[k]}});
        const bool stream = (r + c) % 2 == 1;
        json body = {{"messages", messages}, {"max_tokens", o.max_tokens}, {"temperature", 0.8},
                     {"seed", c * 1000 + r}, {"stream", stream}};
        if (stream) body["stream_options"] = {{"include_usage", true}};
        Outcome out;
        const auto s0 = std::chrono::steady_clock::now();
        auto res = cli.Post("/v1/chat/completions", h, body.dump(), "application/json");
        out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
        try {
          check(static_cast<bool>(res), "transport error: {}", httplib::to_string(res.error()));
          check(res->status == 200, "HTTP {}: {}", res->status, res->body.substr(0, 200));
          const std::string text = read_response(res->body, stream, out);
          messages.push_back({{"role", "assistant"}, {"content", text}});
          out.ok = true;
        } catch (const std::exception& e) {
          out.error = e.what();
          messages = json::array();
        }
        std::lock_guard lock(m);
        outcomes.push_back(out);
        const int n = ++done;
        if (n % std::max(1, total / 10) == 0) fmt::print(stderr, "  {}/{} requests\n", n, total);
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::vector<double> lat;
  int failed = 0;
  long prompt = 0, cached = 0, completion = 0;
  std::map<std::string, int> errors;
  for (const auto& x : outcomes) {
    if (!x.ok) {
      ++failed;
      errors[x.error.substr(0, 120)]++;
      continue;
    }
    lat.push_back(x.seconds);
    prompt += x.prompt;
    cached += x.cached;
    completion += x.completion;
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) { return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, size_t(p * lat.size()))]; };
  json j = {{"url", o.url},
            {"clients", o.clients},
            {"requests", total},
            {"failed", failed},
            {"wall_seconds", wall},
            {"requests_per_second", total / wall},
            {"latency_p50_s", pct(0.50)},
            {"latency_p90_s", pct(0.90)},
            {"latency_p99_s", pct(0.99)},
            {"latency_max_s", lat.empty() ? 0.0 : lat.back()},
            {"prompt_tokens", prompt},
            {"prompt_tokens_cached", cached},
            {"completion_tokens", completion},
            {"completion_tokens_per_second", completion / wall}};
  fmt::print("{} clients x {} requests ({} turns per conversation, max_tokens {}), {} failed\n", o.clients,
             o.requests, o.turns, o.max_tokens, failed);
  fmt::print("wall {:.2f} s, {:.1f} requests/s, {:.1f} generated tok/s\n", wall, total / wall, completion / wall);
  fmt::print("latency p50 {:.3f} s, p90 {:.3f} s, p99 {:.3f} s, max {:.3f} s\n", pct(0.5), pct(0.9), pct(0.99),
             lat.empty() ? 0.0 : lat.back());
  fmt::print("prompt tokens {} of which {} resumed from sessions ({:.1f}%)\n", prompt, cached,
             prompt ? 100.0 * cached / prompt : 0.0);
  for (const auto& [e, n] : errors) fmt::print("  {} x {}\n", n, e);
  if (!o.json_out.empty()) {
    std::FILE* f = std::fopen(o.json_out.c_str(), "w");
    check(f != nullptr, "--json: cannot write {}", o.json_out);
    fmt::print(f, "{}\n", j.dump(2));
    std::fclose(f);
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

Runner add_load_test(CLI::App& app) {
  auto o = std::make_shared<LoadOptions>();
  auto* c = app.add_subcommand("load-test", "Bounded load test of a running server (multi-turn chats, SSE)");
  c->add_option("--url", o->url, "Server base URL")->capture_default_str();
  c->add_option("--clients", o->clients, "Concurrent clients")->capture_default_str();
  c->add_option("--requests", o->requests, "Requests per client")->capture_default_str();
  c->add_option("--turns", o->turns, "Requests per conversation")->capture_default_str();
  c->add_option("--max-tokens", o->max_tokens, "max_tokens per request")->capture_default_str();
  c->add_option("--api-key", o->api_key, "Bearer key");
  c->add_option("--json", o->json_out, "Write the summary as JSON to this file");
  return [o] { return run_load_test(*o); };
}

}  // namespace tq::cli
