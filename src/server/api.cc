#include "server/api.h"

#include <fmt/format.h>

#include <cmath>

#include "core/json_text.h"

namespace tq::server {

using nlohmann::json;

json error_body(const std::string& message, const std::string& type, const std::string& param) {
  json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  return {{"error", e}};
}

std::string dump(const json& j) { return json_text(j); }

json parse_body(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw ApiError(400, fmt::format("request body is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) throw ApiError(400, fmt::format("request body must be a JSON object, got {}", j.type_name()));
  return j;
}

namespace {

[[noreturn]] void bad(const std::string& field, const std::string& msg) {
  throw ApiError(400, fmt::format("'{}': {}", field, msg), field);
}

const json* field(const json& b, const char* name) {
  auto it = b.find(name);
  if (it == b.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& b, const char* name, double def, double lo, double hi) {
  const json* v = field(b, name);
  if (!v) return def;
  if (!v->is_number()) bad(name, fmt::format("expected a number, got {}", v->type_name()));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) bad(name, fmt::format("expected a number in [{}, {}], got {}", lo, hi, x));
  return x;
}

int64_t integer(const json& b, const char* name, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(b, name);
  if (!v) return def;
  if (!v->is_number_integer()) bad(name, fmt::format("expected an integer, got {}", v->dump()));
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    bad(name, fmt::format("expected an integer in [{}, {}], got {}", lo, hi, v->dump()));
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) bad(name, fmt::format("expected an integer in [{}, {}], got {}", lo, hi, x));
  return x;
}

bool boolean(const json& b, const char* name, bool def) {
  const json* v = field(b, name);
  if (!v) return def;
  if (!v->is_boolean()) bad(name, fmt::format("expected true or false, got {}", v->dump()));
  return v->get<bool>();
}

// Fields every completion request shares: sampling, limits, stop, stream.
void parse_common(const json& b, const ApiLimits& lim, uint64_t default_seed, CompletionRequest& r) {
  if (const json* m = field(b, "model")) {
    if (!m->is_string()) bad("model", "expected a string");
    r.model = m->get<std::string>();
  }
  if (const json* n = field(b, "n"); n && (!n->is_number_integer() || n->get<int64_t>() != 1))
    bad("n", "only n = 1 is supported");
  if (boolean(b, "logprobs", false)) bad("logprobs", "log probabilities are not supported");
  if (const json* t = field(b, "tools"); t && !(t->is_array() && t->empty())) bad("tools", "tools are not supported");
  const int64_t cap = lim.max_tokens_cap;
  int64_t mt = integer(b, "max_tokens", -1, 0, INT64_MAX);
  mt = integer(b, "max_completion_tokens", mt, 0, INT64_MAX);
  if (mt > cap)
    bad(field(b, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens",
        fmt::format("{} exceeds this server's cap of {} tokens", mt, cap));
  auto& s = r.gen.sampler;
  s.temperature = static_cast<float>(number(b, "temperature", 1.0, 0.0, 2.0));
  s.top_p = static_cast<float>(number(b, "top_p", 1.0, 0.0, 1.0));
  if (s.top_p <= 0) bad("top_p", "expected a number in (0, 1], got 0");
  s.top_k = static_cast<int>(integer(b, "top_k", 0, 0, 1 << 30));
  s.min_p = static_cast<float>(number(b, "min_p", 0.0, 0.0, 1.0));
  s.repetition_penalty = static_cast<float>(number(b, "repetition_penalty", 1.0, 0.01, 10.0));
  // Seeds are 64-bit; clients send signed or unsigned integers.
  if (const json* sd = field(b, "seed")) {
    if (!sd->is_number_integer()) bad("seed", fmt::format("expected an integer, got {}", sd->dump()));
    s.seed = sd->is_number_unsigned() ? sd->get<uint64_t>() : static_cast<uint64_t>(sd->get<int64_t>());
  } else {
    s.seed = default_seed;
  }
  if (const json* st = field(b, "stop")) {
    if (st->is_string()) {
      r.gen.stop_strings.push_back(st->get<std::string>());
    } else if (st->is_array()) {
      for (const auto& x : *st) {
        if (!x.is_string()) bad("stop", "expected a string or an array of strings");
        r.gen.stop_strings.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "expected a string or an array of strings");
    }
    if (r.gen.stop_strings.size() > lim.max_stop)
      bad("stop", fmt::format("at most {} stop sequences, got {}", lim.max_stop, r.gen.stop_strings.size()));
    for (const auto& x : r.gen.stop_strings)
      if (x.empty()) bad("stop", "stop sequences must not be empty");
  }
  r.stream = boolean(b, "stream", false);
  if (const json* so = field(b, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "expected an object");
    r.include_usage = boolean(*so, "include_usage", false);
  }
  // The prompt must leave room for at least one token; max_tokens defaults to what fits.
  const size_t n = r.prompt.size();
  if (n == 0) bad(r.chat ? "messages" : "prompt", "the prompt has no tokens");
  if (lim.context > 0 && n >= lim.context)
    bad(r.chat ? "messages" : "prompt",
        fmt::format("the prompt has {} tokens; the context holds {} (including the reply)", n, lim.context));
  const int64_t room = lim.context > 0 ? static_cast<int64_t>(lim.context - n) : cap;
  if (mt < 0) mt = std::min<int64_t>(cap, room);
  if (mt > room)
    bad(field(b, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens",
        fmt::format("{} prompt tokens + {} new tokens exceed the context of {} tokens", n, mt, lim.context));
  r.gen.max_tokens = static_cast<int>(mt);
}

std::string message_text(const json& content, size_t i) {
  const std::string where = fmt::format("messages[{}].content", i);
  if (content.is_null()) return {};
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad(where, "expected a string or an array of content parts");
  std::string text;
  for (size_t k = 0; k < content.size(); ++k) {
    const auto& p = content[k];
    const std::string pw = fmt::format("{}[{}]", where, k);
    if (!p.is_object() || !p.contains("type") || !p["type"].is_string()) bad(pw, "expected {\"type\": \"text\", ...}");
    if (p["type"] != "text") bad(pw + ".type", fmt::format("only text parts are supported, got {}", p["type"].dump()));
    if (!p.contains("text") || !p["text"].is_string()) bad(pw + ".text", "expected a string");
    text += p["text"].get<std::string>();
  }
  return text;
}

}  // namespace

CompletionRequest parse_chat_request(const json& b, const Tokenizer& tok, const ChatFormat& f, const ApiLimits& lim,
                                     uint64_t default_seed) {
  CompletionRequest r;
  r.chat = true;
  const json* msgs = field(b, "messages");
  if (!msgs) bad("messages", "required");
  if (!msgs->is_array() || msgs->empty()) bad("messages", "expected a non-empty array of messages");
  std::vector<ChatMessage> m;
  for (size_t i = 0; i < msgs->size(); ++i) {
    const auto& x = (*msgs)[i];
    if (!x.is_object()) bad(fmt::format("messages[{}]", i), "expected an object with 'role' and 'content'");
    if (!x.contains("role") || !x["role"].is_string()) bad(fmt::format("messages[{}].role", i), "expected a string");
    const std::string role = x["role"].get<std::string>();
    if (role != "system" && role != "developer" && role != "user" && role != "assistant" && role != "tool")
      bad(fmt::format("messages[{}].role", i),
          fmt::format("expected system, developer, user, assistant or tool, got '{}'", role));
    if (!x.contains("content")) bad(fmt::format("messages[{}].content", i), "required");
    m.push_back({role, message_text(x["content"], i)});
  }
  bool thinking = true;
  if (const json* k = field(b, "chat_template_kwargs")) {
    if (!k->is_object()) bad("chat_template_kwargs", "expected an object");
    thinking = boolean(*k, "enable_thinking", true);
  }
  // Checkpoints of a hybrid model's state at message ends let a later request that
  // shares the messages but not the reply (regenerate, edit) resume there.
  r.prompt = render_chat(tok, f, m, true, thinking, &r.gen.checkpoint_at);
  parse_common(b, lim, default_seed, r);
  return r;
}

CompletionRequest parse_completion_request(const json& b, const Tokenizer& tok, const ChatFormat& f,
                                           const ApiLimits& lim, uint64_t default_seed) {
  CompletionRequest r;
  const json* p = field(b, "prompt");
  if (!p) bad("prompt", "required");
  const json* one = p;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) one = &(*p)[0];
  if (one->is_string()) {
    if (f.bos >= 0) r.prompt.push_back(f.bos);
    const auto t = tok.encode(one->get<std::string>());
    r.prompt.insert(r.prompt.end(), t.begin(), t.end());
  } else if (one->is_array() && !one->empty() && (*one)[0].is_number_integer()) {
    const int64_t vocab = static_cast<int64_t>(tok.vocab_size());
    for (size_t i = 0; i < one->size(); ++i) {
      const auto& x = (*one)[i];
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= vocab)
        bad(fmt::format("prompt[{}]", i), fmt::format("expected a token id in [0, {}), got {}", vocab, x.dump()));
      r.prompt.push_back(static_cast<int32_t>(x.get<int64_t>()));
    }
  } else {
    bad("prompt", "expected a string, an array with one string, or an array of token ids (one prompt per request)");
  }
  if (boolean(b, "echo", false)) bad("echo", "echo is not supported");
  if (const json* s = field(b, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
    bad("suffix", "suffix is not supported");
  if (integer(b, "best_of", 1, 1, 1) != 1) bad("best_of", "only best_of = 1 is supported");
  parse_common(b, lim, default_seed, r);
  return r;
}

json Usage::to_json() const {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

namespace {
json finish_json(const std::string& finish) {
  if (finish.empty()) return nullptr;
  return finish == "context" ? json("length") : json(finish);  // OpenAI has no "context"
}
}  // namespace

json chat_response(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                   const std::string& finish, const Usage& u) {
  return {{"id", id},
          {"object", "chat.completion"},
          {"created", created},
          {"model", model},
          {"choices",
           json::array({{{"index", 0},
                         {"message", {{"role", "assistant"}, {"content", text}}},
                         {"logprobs", nullptr},
                         {"finish_reason", finish_json(finish)}}})},
          {"usage", u.to_json()}};
}

json completion_response(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                         const std::string& finish, const Usage& u) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices",
           json::array({{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish_json(finish)}}})},
          {"usage", u.to_json()}};
}

json chat_chunk(const std::string& id, int64_t created, const std::string& model, const std::string& delta,
                const std::string& finish, bool first) {
  json d = json::object();
  if (first) d["role"] = "assistant";
  if (!delta.empty() || (first && finish.empty())) d["content"] = delta;
  return {{"id", id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", model},
          {"choices", json::array({{{"index", 0}, {"delta", d}, {"logprobs", nullptr},
                                    {"finish_reason", finish_json(finish)}}})}};
}

json completion_chunk(const std::string& id, int64_t created, const std::string& model, const std::string& delta,
                      const std::string& finish) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices",
           json::array({{{"index", 0}, {"text", delta}, {"logprobs", nullptr}, {"finish_reason", finish_json(finish)}}})}};
}

}  // namespace tq::server
