// `tq serve` driven over real HTTP on a loopback port: plain and streamed requests,
// malformed, unauthorized and oversized ones, prefix reuse across chat turns (against
// a one-shot run of the whole conversation), concurrent clients, the memory budget,
// and the prompt cache across a restart (in-process and of the real binary).
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/thread_pool.h"
#include "runtime/chat.h"
#include "runtime/generate.h"
#include "server/engine.h"
#include "server/server.h"

extern char** environ;

namespace tq::server {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kStories = TQ_SOURCE_DIR "/models/stories260K";
const std::string kTrained = TQ_TEST_DATA "/trained_qwen35";

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("tq_server_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// A model, an engine and an HTTP server on a free loopback port.
struct Served {
  std::unique_ptr<Model> model;
  Tokenizer tok;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<HttpServer> http;
  int port = 0;

  explicit Served(const std::string& dir, ServerOptions so = {}, EngineOptions eo = {}, const char* kv = "tq3") {
    model = Model::load(dir);
    tok = Tokenizer::load(dir + "/tokenizer.json");
    so.port = 0;
    eo.policy = CachePolicy::parse(kv);
    eo.model_id = model_fingerprint(dir);
    engine = std::make_unique<Engine>(*model, tok, eo);
    http = std::make_unique<HttpServer>(so);
    port = http->listen();
    http->ready(*model, tok, *engine, stop_tokens_for(dir, model->config(), tok), model->config().max_position);
  }
  ~Served() {
    http->stop();
    engine->shutdown();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const json& body, const httplib::Headers& h = {}) const {
    return client().Post(path.c_str(), h, body.dump(), "application/json");
  }
};

json chat_body(const std::vector<std::pair<std::string, std::string>>& msgs, int max_tokens, json extra = json::object()) {
  json m = json::array();
  for (const auto& [r, c] : msgs) m.push_back({{"role", r}, {"content", c}});
  json b = {{"messages", m}, {"max_tokens", max_tokens}, {"temperature", 0}};
  b.update(extra);
  return b;
}

json ok_json(const httplib::Result& r) {
  EXPECT_TRUE(r) << "transport error";
  if (!r) return {};
  EXPECT_EQ(r->status, 200) << r->body;
  return json::parse(r->body);
}

std::string content(const json& j) { return j["choices"][0]["message"]["content"].get<std::string>(); }

// SSE body → events' data (without "data: "); checks the framing.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> ev;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event";
    if (end == std::string::npos) break;
    const std::string e = body.substr(pos, end - pos);
    EXPECT_EQ(e.rfind("data: ", 0), 0u) << e;
    ev.push_back(e.substr(6));
    pos = end + 2;
  }
  return ev;
}

void expect_error(const httplib::Result& r, int status, const std::string& param = {}) {
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, status) << r->body;
  const json j = json::parse(r->body);  // always a JSON body
  ASSERT_TRUE(j.contains("error")) << r->body;
  EXPECT_TRUE(j["error"]["message"].is_string());
  EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
  if (!param.empty()) {
    EXPECT_EQ(j["error"]["param"], param) << r->body;
  }
}

TEST(Server, HealthIs503UntilTheModelIsLoaded) {
  ServerOptions so;
  so.port = 0;
  HttpServer http(so);
  const int port = http.listen();
  httplib::Client c("127.0.0.1", port);
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 503);
  EXPECT_EQ(json::parse(h->body)["status"], "loading");
  expect_error(c.Post("/v1/chat/completions", chat_body({{"user", "hi"}}, 4).dump(), "application/json"), 503);
  auto model = Model::load(kStories);
  Tokenizer tok = Tokenizer::load(kStories + "/tokenizer.json");
  Engine engine(*model, tok, EngineOptions{});
  http.ready(*model, tok, engine, {}, 512);
  h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  const json mj = json::parse(m->body);
  EXPECT_EQ(mj["object"], "list");
  EXPECT_EQ(mj["data"][0]["object"], "model");
  http.stop();
}

// The server's completion equals generate() on the same tokens (greedy), with usage counts.
TEST(Server, CompletionMatchesDirectGeneration) {
  Served s(kStories);
  const std::string prompt = "Once upon a time, there was a big dog";
  const json j = ok_json(s.post("/v1/completions", {{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}}));
  std::vector<int32_t> ids = {s.model->config().bos_id};
  auto t = s.tok.encode(prompt);
  ids.insert(ids.end(), t.begin(), t.end());
  auto st = s.model->new_state(CachePolicy::parse("tq3"));
  GenerateOptions opt;
  opt.max_tokens = 40;
  opt.sampler.temperature = 0;
  opt.stop_tokens = stop_tokens_for(kStories, s.model->config(), s.tok);
  ThreadPool pool(2);
  auto r = generate(*s.model, *st, s.tok, ids, opt, nullptr, pool);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], r.text);
  EXPECT_EQ(j["choices"][0]["finish_reason"], r.finish_reason);
  EXPECT_EQ(j["usage"]["prompt_tokens"], ids.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], r.tokens.size());
  EXPECT_EQ(j["usage"]["total_tokens"], ids.size() + r.tokens.size());
  // Token-id prompts are accepted too, and give the same text.
  const json k = ok_json(s.post("/v1/completions", {{"prompt", ids}, {"max_tokens", 40}, {"temperature", 0}}));
  EXPECT_EQ(k["choices"][0]["text"], r.text);
}

TEST(Server, TokenizeEndpointsMatchTheTokenizer) {
  Served s(kTrained);
  const std::string text = "Once upon a time, in a land far away.";
  const json t = ok_json(s.post("/tokenize", {{"content", text}}));
  EXPECT_EQ(t["tokens"].get<std::vector<int32_t>>(), s.tok.encode(text));
  const json d = ok_json(s.post("/detokenize", {{"tokens", t["tokens"]}}));
  EXPECT_EQ(d["content"], text);
  expect_error(s.post("/tokenize", {{"content", 3}}), 400, "content");
  expect_error(s.post("/detokenize", {{"tokens", {1, -5}}}), 400, "tokens");
}

TEST(Server, StreamingEqualsNonStreaming) {
  Served s(kStories);
  for (bool chat : {true, false}) {
    json b = chat ? chat_body({{"user", "Lily and Ben went to the park"}}, 48)
                  : json{{"prompt", "Lily and Ben went to the park"}, {"max_tokens", 48}};
    b["temperature"] = 0.9;
    b["seed"] = 1234;
    b["stop"] = json::array({"zzzz"});
    const json plain = ok_json(s.post(chat ? "/v1/chat/completions" : "/v1/completions", b));
    b["stream"] = true;
    b["stream_options"] = {{"include_usage", true}};
    auto r = s.post(chat ? "/v1/chat/completions" : "/v1/completions", b);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(r->get_header_value("Content-Type").rfind("text/event-stream", 0), 0u);
    auto ev = sse_events(r->body);
    ASSERT_GE(ev.size(), 3u);
    EXPECT_EQ(ev.back(), "[DONE]");
    std::string text;
    json usage, finish;
    for (size_t i = 0; i + 1 < ev.size(); ++i) {
      const json e = json::parse(ev[i]);
      EXPECT_EQ(e["object"], chat ? "chat.completion.chunk" : "text_completion");
      if (e.contains("usage")) {
        usage = e["usage"];
        EXPECT_TRUE(e["choices"].empty());
        continue;
      }
      const auto& c = e["choices"][0];
      if (chat && i == 0) {
        EXPECT_EQ(c["delta"]["role"], "assistant");
      }
      if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
      text += chat ? c["delta"].value("content", "") : c["text"].get<std::string>();
    }
    const std::string want = chat ? content(plain) : plain["choices"][0]["text"].get<std::string>();
    EXPECT_EQ(text, want);
    EXPECT_EQ(finish, plain["choices"][0]["finish_reason"]);
    EXPECT_EQ(usage["completion_tokens"], plain["usage"]["completion_tokens"]);
    EXPECT_EQ(usage["prompt_tokens"], plain["usage"]["prompt_tokens"]);
  }
}

TEST(Server, MalformedRequestsAre400WithOpenAiErrors) {
  ServerOptions so;
  so.limits.max_tokens_cap = 100;
  Served s(kStories, so);
  auto c = s.client();
  auto raw = [&](const std::string& body) { return c.Post("/v1/chat/completions", body, "application/json"); };
  expect_error(raw("{\"messages\": [{\"role\": \"user\""), 400);
  expect_error(raw("[1, 2, 3]"), 400);
  expect_error(raw(""), 400);
  expect_error(raw("\xff\xfe garbage"), 400);
  expect_error(s.post("/v1/chat/completions", json::object()), 400, "messages");
  expect_error(s.post("/v1/chat/completions", {{"messages", "hi"}}), 400, "messages");
  expect_error(s.post("/v1/chat/completions", {{"messages", json::array()}}), 400, "messages");
  expect_error(s.post("/v1/chat/completions", {{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}), 400,
               "messages[0].role");
  expect_error(s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", 5}}}}}), 400,
               "messages[0].content");
  const auto msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"temperature", "hot"}}), 400, "temperature");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"temperature", 7}}), 400, "temperature");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"top_p", 0}}), 400, "top_p");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"max_tokens", -1}}), 400, "max_tokens");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"max_tokens", 101}}), 400, "max_tokens");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"max_tokens", 1.5}}), 400, "max_tokens");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"n", 2}}), 400, "n");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"stop", 3}}), 400, "stop");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"stop", {"a", "b", "c", "d", "e"}}}), 400,
               "stop");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"stream", "yes"}}), 400, "stream");
  expect_error(s.post("/v1/chat/completions", {{"messages", msgs}, {"seed", "x"}}), 400, "seed");
  expect_error(s.post("/v1/completions", {{"prompt", 5}}), 400, "prompt");
  expect_error(s.post("/v1/completions", {{"prompt", {1, 2, 99999}}}), 400, "prompt[2]");
  // A prompt longer than the context (512 tokens here).
  std::string longp;
  for (int i = 0; i < 300; ++i) longp += "the dog ran. ";
  expect_error(s.post("/v1/completions", {{"prompt", longp}, {"max_tokens", 5}}), 400, "prompt");
  expect_error(s.client().Get("/v1/nothing"), 404);
  // Still serving.
  EXPECT_EQ(content(ok_json(s.post("/v1/chat/completions", chat_body({{"user", "hi"}}, 3)))).empty(), false);
}

TEST(Server, ApiKeyRequiredWhenSet) {
  ServerOptions so;
  so.api_key = "s3cret";
  Served s(kStories, so);
  const json b = chat_body({{"user", "Once"}}, 4);
  expect_error(s.post("/v1/chat/completions", b), 401);
  expect_error(s.post("/v1/chat/completions", b, {{"Authorization", "Bearer wrong"}}), 401);
  expect_error(s.client().Get("/v1/models"), 401);
  ok_json(s.post("/v1/chat/completions", b, {{"Authorization", "Bearer s3cret"}}));
  auto h = s.client().Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
}

TEST(Server, OversizedBodyIs413AndTheServerGoesOn) {
  ServerOptions so;
  so.max_body_bytes = 2048;
  Served s(kStories, so);
  std::string big(8192, 'a');
  const json b = chat_body({{"user", big}}, 4);
  auto r = s.post("/v1/chat/completions", b);
  // The server answers 413, or closes the connection before reading the whole body.
  if (r) expect_error(r, 413);
  ok_json(s.post("/v1/chat/completions", chat_body({{"user", "Once"}}, 4)));
}

// Must show 2: the second turn processes only its new tokens, and its reply equals a
// one-shot run of the whole conversation on a fresh server.
void second_turn_check(const std::string& dir, const char* kv) {
  const std::vector<std::pair<std::string, std::string>> turn1 = {{"user", "Once upon a time"}};
  std::string reply1;
  json r2;
  int cached = 0, prompt2 = 0, expect_cached = 0;
  {
    Served s(dir, {}, {}, kv);
    const json r1 = ok_json(s.post("/v1/chat/completions", chat_body(turn1, 40)));
    reply1 = content(r1);
    const int p1 = r1["usage"]["prompt_tokens"], c1 = r1["usage"]["completion_tokens"];
    // All of turn 1 is in the session, except a last token that was sampled but not run.
    expect_cached = p1 + c1 - (r1["choices"][0]["finish_reason"] == "length" ? 1 : 0);
    auto turn2 = turn1;
    turn2.push_back({"assistant", reply1});
    turn2.push_back({"user", "The next day, Lily saw a big red ball."});
    r2 = ok_json(s.post("/v1/chat/completions", chat_body(turn2, 40)));
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"];
    prompt2 = r2["usage"]["prompt_tokens"];
    std::printf("[serve %s %s] turn 1: %d prompt tokens processed; turn 2: %d prompt tokens, %d resumed, %d processed\n",
                fs::path(dir).filename().c_str(), kv, p1, prompt2, cached, prompt2 - cached);
  }
  EXPECT_EQ(cached, expect_cached);
  EXPECT_EQ(r2["timings"]["prompt_n"], prompt2 - cached);
  auto turn2 = turn1;
  turn2.push_back({"assistant", reply1});
  turn2.push_back({"user", "The next day, Lily saw a big red ball."});
  Served fresh(dir, {}, {}, kv);
  const json one_shot = ok_json(fresh.post("/v1/chat/completions", chat_body(turn2, 40)));
  EXPECT_EQ(one_shot["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(content(r2), content(one_shot));
}

TEST(Server, SecondTurnProcessesOnlyNewTokensBuiltinModel) { second_turn_check(kStories, "tq3"); }
TEST(Server, SecondTurnProcessesOnlyNewTokensHybridModel) { second_turn_check(kTrained, "tq3"); }

// Eight clients at once, each a three-turn conversation: interleaved on the engine, each
// gets exactly what it gets alone on a fresh server.
TEST(Server, ConcurrentClientsGetTheirOwnResults) {
  const std::vector<std::string> openers = {"Once upon a time", "Tom had a red car", "The sun was hot",
                                            "A little bird sang", "Lily found a box", "The cat was sad",
                                            "Ben and Mia played", "There was a big tree"};
  auto conversation = [](const Served& s, const std::string& opener) {
    std::vector<std::pair<std::string, std::string>> m = {{"user", opener}};
    std::vector<std::string> replies;
    for (int turn = 0; turn < 3; ++turn) {
      const json r = ok_json(s.post("/v1/chat/completions", chat_body(m, 24)));
      replies.push_back(content(r));
      m.push_back({"assistant", replies.back()});
      m.push_back({"user", "Then"});
    }
    return replies;
  };
  std::vector<std::vector<std::string>> alone;
  {
    Served s(kStories);
    for (const auto& o : openers) alone.push_back(conversation(s, o));
  }
  EngineOptions eo;
  eo.parallel = 4;
  Served s(kStories, {}, eo);
  std::vector<std::future<std::vector<std::string>>> f;
  for (const auto& o : openers) f.push_back(std::async(std::launch::async, [&, o] { return conversation(s, o); }));
  for (size_t i = 0; i < openers.size(); ++i) EXPECT_EQ(f[i].get(), alone[i]) << openers[i];
  const auto m = s.engine->metrics();
  EXPECT_EQ(m.requests, 24u);
  EXPECT_GT(m.cached_tokens, 0u);
  // Decode steps of concurrent requests ran batched (mean batch size above 1).
  EXPECT_GT(m.decode_batch_tokens, m.decode_batches) << m.decode_batches << " batches";
  // The HTTP counter is updated once a response has been written, so a client can read
  // /metrics a moment before its own last request is counted: poll briefly.
  const std::string want = "tq_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 24";
  std::string body;
  for (int i = 0; i < 100; ++i) {
    auto met = s.client().Get("/metrics");
    ASSERT_TRUE(met);
    body = met->body;
    if (body.find(want) != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_NE(body.find(want), std::string::npos) << body;
  EXPECT_NE(body.find("tq_kv_bytes_resident "), std::string::npos);
}

// Sessions over the budget go to the prompt cache directory (or are dropped without one);
// a later turn restores them from disk.
TEST(Server, BudgetEvictsLeastRecentlyUsedToDisk) {
  for (bool with_dir : {true, false}) {
    const fs::path dir = temp_dir("budget");
    {
      EngineOptions eo;
      eo.kv_budget = 1;  // nothing idle stays in memory
      if (with_dir) eo.cache_dir = dir.string();
      Served s(kStories, {}, eo);
      const json r1 = ok_json(s.post("/v1/chat/completions", chat_body({{"user", "Once upon a time"}}, 20)));
      ok_json(s.post("/v1/chat/completions", chat_body({{"user", "The dog barked"}}, 20)));
      const json r2 = ok_json(s.post(
          "/v1/chat/completions",
          chat_body({{"user", "Once upon a time"}, {"assistant", content(r1)}, {"user", "Then it rained."}}, 20)));
      // The reply is sent before the engine enforces the budget: give it a moment.
      EngineMetrics m;
      for (int i = 0; i < 200; ++i) {
        m = s.engine->metrics();
        if (m.sessions_in_memory == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      EXPECT_EQ(m.sessions_in_memory, 0u);
      if (with_dir) {
        EXPECT_GE(m.evicted_to_disk, 2u);
        EXPECT_GE(m.restored_from_disk, 1u);
        EXPECT_GT(r2["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 20);
      } else {
        EXPECT_GE(m.dropped, 2u);
        EXPECT_EQ(r2["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
      }
    }
    fs::remove_all(dir);
  }
}

// Must show 4 (in process): sessions written at shutdown come back after a restart and
// continue exactly as a one-shot run.
TEST(Server, PromptCacheSurvivesRestartInProcess) {
  const fs::path dir = temp_dir("restart");
  EngineOptions eo;
  eo.cache_dir = dir.string();
  std::vector<std::pair<std::string, std::string>> m = {{"user", "Once upon a time"}};
  {
    Served s(kTrained, {}, eo);
    m.push_back({"assistant", content(ok_json(s.post("/v1/chat/completions", chat_body(m, 30))))});
  }
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.path().extension() == ".tqpc";
  EXPECT_EQ(files, 1u);
  m.push_back({"user", "the end"});
  json after, fresh;
  {
    Served s(kTrained, {}, eo);
    after = ok_json(s.post("/v1/chat/completions", chat_body(m, 30)));
    EXPECT_EQ(s.engine->metrics().restored_from_disk, 1u);
  }
  {
    Served s(kTrained);
    fresh = ok_json(s.post("/v1/chat/completions", chat_body(m, 30)));
  }
  EXPECT_GT(after["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 30);
  EXPECT_EQ(content(after), content(fresh));
  fs::remove_all(dir);
}

// The real binary: start `tq serve --port 0 --prompt-cache DIR`, SIGTERM, start again.
struct Process {
  pid_t pid = -1;
  int port = 0;
  Process(const std::vector<std::string>& args) {
    int out[2];
    EXPECT_EQ(pipe(out), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    // Lines until "ready"; the first names the port.
    std::string buf;
    char c;
    while (read(out[0], &c, 1) == 1) {
      buf += c;
      if (buf.find("ready") != std::string::npos && c == '\n') break;
    }
    close(out[0]);
    const size_t at = buf.find("127.0.0.1:");
    EXPECT_NE(at, std::string::npos) << buf;
    if (at != std::string::npos) port = std::atoi(buf.c_str() + at + 10);
  }
  int stop() {
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

TEST(Server, ProcessRestartKeepsPromptCache) {
  const fs::path dir = temp_dir("process");
  const std::vector<std::string> args = {TQ_BIN, "serve", "--port", "0", "--prompt-cache", dir.string(),
                                         "--kv", "tq3"};
  auto post = [](int port, const json& b) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    return ok_json(c.Post("/v1/chat/completions", b.dump(), "application/json"));
  };
  std::vector<std::pair<std::string, std::string>> m = {{"user", "Once upon a time"}};
  Process a(args);
  ASSERT_GT(a.port, 0);
  m.push_back({"assistant", content(post(a.port, chat_body(m, 40)))});
  EXPECT_EQ(a.stop(), 0);
  m.push_back({"user", "Then the sun came out."});
  Process b(args);
  ASSERT_GT(b.port, 0);
  const json after = post(b.port, chat_body(m, 40));
  EXPECT_EQ(b.stop(), 0);
  Process c({TQ_BIN, "serve", "--port", "0", "--kv", "tq3"});
  const json fresh = post(c.port, chat_body(m, 40));
  EXPECT_EQ(c.stop(), 0);
  const int cached = after["usage"]["prompt_tokens_details"]["cached_tokens"];
  std::printf("[serve restart] turn 2 after restart: %d of %d prompt tokens resumed from the prompt cache\n", cached,
              after["usage"]["prompt_tokens"].get<int>());
  EXPECT_GT(cached, 40);
  EXPECT_EQ(content(after), content(fresh));
  fs::remove_all(dir);
}

// A client that disconnects mid-stream cancels its request; the server goes on.
TEST(Server, ClientDisconnectCancelsTheStream) {
  Served s(kStories);
  httplib::Client c("127.0.0.1", s.port);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = json{{"prompt", "Once"}, {"max_tokens", 400}, {"stream", true}, {"temperature", 0.9}}.dump();
  req.set_header("Content-Type", "application/json");
  int chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
  c.send(req);
  EXPECT_GE(chunks, 1);
  ok_json(s.post("/v1/completions", {{"prompt", "Once"}, {"max_tokens", 5}}));
}

}  // namespace
}  // namespace tq::server
