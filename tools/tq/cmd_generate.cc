// tq generate / tq run: text generation with a chosen cache policy.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/json_text.h"
#include "core/thread_pool.h"
#include "runtime/generate.h"

namespace tq::cli {
namespace {

struct GenOptions {
  std::string model;
  std::string prompt;
  int n = 256;
  std::string kv = "tq3";
  float temp = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.0f;
  float repeat_penalty = 1.0f;
  uint64_t seed = 0;
  int ctx = 0;
  bool json = false;
  bool chat = false;
  bool no_think = false;
  std::string prompt_file;
  int prompt_tokens = 0;
  std::string device = "cpu";
};

struct Loaded {
  std::unique_ptr<Model> model;
  Tokenizer tok;
  std::vector<int32_t> stops;
};

Loaded load(const std::string& dir, const std::string& device) {
  Loaded l;
  l.model = load_model(dir, device);
  l.tok = Tokenizer::load(dir + "/tokenizer.json");
  l.stops = stop_tokens_for(dir, l.model->config(), l.tok);
  return l;
}

// ChatML as Qwen's template renders one user turn; thinking on unless no_think.
std::string chatml(const std::string& user, bool no_think) {
  return "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n" +
         (no_think ? "<think>\n\n</think>\n\n" : "<think>\n");
}

std::vector<int32_t> prompt_ids(const Loaded& l, const std::string& prompt, bool chat, bool no_think = false) {
  std::string text = prompt;
  if (chat) text = chatml(prompt, no_think);
  std::vector<int32_t> ids;
  const int bos = l.model->config().bos_id;
  // Models with a BOS token (Llama-style) start from it; Qwen has none.
  if (bos >= 0 && l.tok.id_of("<|im_start|>") < 0) ids.push_back(bos);
  auto t = l.tok.encode(text);
  ids.insert(ids.end(), t.begin(), t.end());
  return ids;
}

GenerateOptions gen_options(const GenOptions& o, const Loaded& l) {
  GenerateOptions g;
  check(o.n >= 0, "-n: expected >= 0, got {}", o.n);
  g.max_tokens = o.n;
  g.context = o.ctx;
  g.sampler = {o.temp, o.top_k, o.top_p, o.min_p, o.repeat_penalty, o.seed};
  g.stop_tokens = l.stops;
  return g;
}

std::string read_prompt(const GenOptions& o) {
  if (o.prompt_file.empty()) return o.prompt;
  std::ifstream f(o.prompt_file, std::ios::binary);
  check(f.good(), "--prompt-file: cannot open {}", o.prompt_file);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  // With --prompt-tokens only a prefix is needed: no token spans more than 16 bytes here.
  if (o.prompt_tokens > 0 && text.size() > static_cast<size_t>(o.prompt_tokens) * 16 + 64)
    text.resize(static_cast<size_t>(o.prompt_tokens) * 16 + 64);
  return text;
}

int run_generate(const GenOptions& o) {
  const std::string dir = o.model.empty() ? builtin_model_dir() : o.model;
  const CachePolicy policy = CachePolicy::parse(o.kv);
  Loaded l = load(dir, o.device);
  auto ids = prompt_ids(l, read_prompt(o), o.chat, o.no_think);
  if (o.prompt_tokens > 0) {
    check(static_cast<int>(ids.size()) >= o.prompt_tokens, "--prompt-tokens {}: the prompt has only {} tokens",
          o.prompt_tokens, ids.size());
    ids.resize(o.prompt_tokens);
  }
  check(!ids.empty(), "-p: empty prompt and the model has no BOS token to start from");
  auto& pool = ThreadPool::global();
  auto st = l.model->new_state(policy);
  auto r = generate(*l.model, *st, l.tok, ids, gen_options(o, l), [&](const std::string& piece) {
    if (!o.json) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
  }, pool);
  const double pf = r.prefill_seconds > 0 ? r.n_prompt / r.prefill_seconds : 0;
  const double dc = r.decode_seconds > 0 ? r.tokens.size() / r.decode_seconds : 0;
  if (o.json) {
    nlohmann::json j = {{"text", r.text},
                        {"n_prompt", r.n_prompt},
                        {"n_generated", r.tokens.size()},
                        {"prefill_tok_per_s", pf},
                        {"decode_tok_per_s", dc},
                        {"kv_bytes", r.kv_bytes},
                        {"peak_rss_bytes", peak_rss_bytes()},
                        {"kv", policy.name()},
                        {"finish_reason", r.finish_reason}};
    fmt::print("{}\n", json_text(j));
  } else {
    fmt::print("\n");
  }
  fmt::print(stderr, "[{}] prompt {} tok, {:.1f} tok/s prefill; generated {} tok, {:.1f} tok/s decode; KV {} bytes; {}\n",
             policy.name(), r.n_prompt, pf, r.tokens.size(), dc, r.kv_bytes, r.finish_reason);
  return 0;
}

int run_run(const GenOptions& o) {
  const std::string dir = o.model.empty() ? builtin_model_dir() : o.model;
  Loaded l = load(dir, o.device);
  auto ids = prompt_ids(l, o.prompt, o.chat);
  check(!ids.empty(), "-p: empty prompt and the model has no BOS token to start from");
  auto& pool = ThreadPool::global();
  fmt::print("model: {} ({}, {} layers, hidden {}, head_dim {})\n", dir, l.model->config().model_type,
             l.model->config().n_layers, l.model->config().hidden, l.model->config().head_dim);
  fmt::print("prompt: {:?} ({} tokens), greedy, {} new tokens\n\n", o.prompt, ids.size(), o.n);
  std::vector<GenerateResult> res;
  const std::vector<std::string> kvs = {"fp16", o.kv == "fp16" ? "tq3" : o.kv};
  GenOptions go = o;
  go.temp = 0;
  for (const auto& kv : kvs) {
    auto st = l.model->new_state(CachePolicy::parse(kv));
    res.push_back(generate(*l.model, *st, l.tok, ids, gen_options(go, l), nullptr, pool));
    fmt::print("--- {} cache ---\n{}\n\n", kv, res.back().text);
  }
  fmt::print("{:>8} {:>12} {:>12} {:>14} {:>10}\n", "kv", "decode tok/s", "prefill tok/s", "KV bytes", "tokens");
  for (size_t i = 0; i < kvs.size(); ++i) {
    const auto& r = res[i];
    fmt::print("{:>8} {:>12.1f} {:>12.1f} {:>14} {:>10}\n", kvs[i], r.tokens.size() / std::max(r.decode_seconds, 1e-9),
               r.n_prompt / std::max(r.prefill_seconds, 1e-9), r.kv_bytes, r.tokens.size());
  }
  size_t same = 0;
  while (same < res[0].tokens.size() && same < res[1].tokens.size() && res[0].tokens[same] == res[1].tokens[same])
    ++same;
  const bool agree = res[0].tokens == res[1].tokens;
  fmt::print("\ngreedy outputs {}: {} of {} tokens identical before the first difference; KV bytes {:.2f}x smaller\n",
             agree ? "agree" : "differ", same, res[0].tokens.size(),
             static_cast<double>(res[0].kv_bytes) / std::max<size_t>(1, res[1].kv_bytes));
  return 0;
}

// Interactive chat: each user line becomes a ChatML turn; the sequence state is kept,
// so every turn processes only its new tokens. Models without ChatML tokens continue
// plain text instead. "/exit" or end of input quits.
int run_chat(const GenOptions& o) {
  const std::string dir = o.model.empty() ? builtin_model_dir() : o.model;
  const CachePolicy policy = CachePolicy::parse(o.kv);
  Loaded l = load(dir, o.device);
  auto& pool = ThreadPool::global();
  auto st = l.model->new_state(policy);
  const bool chatml_ok = l.tok.id_of("<|im_start|>") >= 0;
  fmt::print(stderr, "tq chat: {} ({}), kv {}; {} mode. Type a message, /exit to quit.\n", dir,
             l.model->config().model_type, policy.name(), chatml_ok ? "ChatML" : "plain-text");
  std::string line, prefix;  // prefix: what closes the previous turn
  bool first = true;
  while (true) {
    fmt::print(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line.empty()) continue;
    std::vector<int32_t> ids;
    if (chatml_ok) {
      ids = l.tok.encode(prefix + chatml(line, o.no_think));
    } else {
      ids = prompt_ids(l, line, false);
      if (!first && !ids.empty() && ids[0] == l.model->config().bos_id) ids.erase(ids.begin());
    }
    first = false;
    auto r = generate(*l.model, *st, l.tok, ids, gen_options(o, l), [](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }, pool);
    // A turn that ended on <|im_end|> has it sampled but not yet in the cache: feed it.
    prefix = "<|im_end|>\n";
    if (r.finish_reason == "stop" && chatml_ok) {
      std::vector<float> lg(l.model->config().vocab);
      const int32_t end = l.tok.id_of("<|im_end|>");
      l.model->forward(*st, &end, 1, lg.data(), false, pool);
      prefix = "\n";
    }
    fmt::print("\n");
    fmt::print(stderr, "[{} new prompt tokens, {} generated, {:.1f} tok/s, context {} tokens, KV {} bytes]\n", ids.size(),
               r.tokens.size(), r.tokens.size() / std::max(r.decode_seconds, 1e-9), st->pos, st->kv_bytes());
  }
  return 0;
}

void add_common(CLI::App* c, GenOptions& o, bool model_required) {
  auto* m = c->add_option("-m,--model", o.model, "Checkpoint directory (default: the built-in model)");
  if (model_required) m->required();
  c->add_option("-p,--prompt", o.prompt, "Prompt text");
  c->add_option("-n,--n-predict", o.n, "Tokens to generate")->capture_default_str();
  c->add_option("--kv", o.kv, "Cache policy: f32, bf16, fp16, tq2, tq3, tq4, kXvY")->capture_default_str();
  c->add_option("--temp", o.temp, "Temperature (0 = greedy)")->capture_default_str();
  c->add_option("--top-k", o.top_k, "Top-k (0 = off)")->capture_default_str();
  c->add_option("--top-p", o.top_p, "Top-p (1 = off)")->capture_default_str();
  c->add_option("--min-p", o.min_p, "Min-p (0 = off)")->capture_default_str();
  c->add_option("--repeat-penalty", o.repeat_penalty, "Repetition penalty (1 = off)")->capture_default_str();
  c->add_option("--seed", o.seed, "Sampling seed")->capture_default_str();
  c->add_option("-c,--ctx-size", o.ctx, "Context limit (0 = the model's)")->capture_default_str();
  c->add_flag("--chat", o.chat, "Wrap the prompt in the ChatML template");
  c->add_flag("--no-think", o.no_think, "With --chat: an empty <think></think> block (thinking off)");
  c->add_option("-f,--prompt-file", o.prompt_file, "Read the prompt from a file");
  c->add_option("--prompt-tokens", o.prompt_tokens, "Keep only the first N prompt tokens (benchmarks)");
  c->add_option("--device", o.device, "cpu or cuda")->capture_default_str();
}

}  // namespace

Runner add_generate(CLI::App& app) {
  auto o = std::make_shared<GenOptions>();
  auto* c = app.add_subcommand("generate", "Generate a continuation of a prompt");
  add_common(c, *o, false);
  c->add_flag("--json", o->json, "Print one JSON object with the text and statistics");
  return [o] { return run_generate(*o); };
}

Runner add_chat(CLI::App& app) {
  auto o = std::make_shared<GenOptions>();
  auto* c = app.add_subcommand("chat", "Interactive chat, streaming");
  add_common(c, *o, false);
  return [o] { return run_chat(*o); };
}

Runner add_run(CLI::App& app) {
  auto o = std::make_shared<GenOptions>();
  auto* c = app.add_subcommand("run", "The main job: greedy text with the fp16 and the TQ3 cache side by side");
  add_common(c, *o, false);
  return [o] { return run_run(*o); };
}

}  // namespace tq::cli
