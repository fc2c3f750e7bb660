#include "runtime/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"

namespace tq {

int32_t Sampler::sample(std::vector<float>& logits, const std::vector<int32_t>& history) {
  const int V = static_cast<int>(logits.size());
  if (cfg_.repetition_penalty != 1.0f) {
    const size_t from = history.size() > 64 ? history.size() - 64 : 0;
    for (size_t i = from; i < history.size(); ++i) {
      float& l = logits[history[i]];
      l = l > 0 ? l / cfg_.repetition_penalty : l * cfg_.repetition_penalty;
    }
  }
  if (cfg_.temperature <= 0) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  int k = cfg_.top_k > 0 ? std::min(cfg_.top_k, V) : V;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  idx.resize(k);
  std::vector<double> p(k);
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += (p[i] = std::exp((logits[idx[i]] - mx) / cfg_.temperature));
  for (auto& x : p) x /= sum;
  int keep = k;
  if (cfg_.top_p < 1.0f) {
    double c = 0;
    for (int i = 0; i < k; ++i) {
      c += p[i];
      if (c >= cfg_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (cfg_.min_p > 0)
    while (keep > 1 && p[keep - 1] < cfg_.min_p * p[0]) --keep;
  std::discrete_distribution<int> d(p.begin(), p.begin() + keep);
  return idx[d(rng_)];
}

std::vector<int32_t> stop_tokens_for(const std::string& dir, const ModelConfig& c, const Tokenizer& t) {
  std::vector<int32_t> s(c.eos_ids.begin(), c.eos_ids.end());
  std::ifstream f(dir + "/generation_config.json");
  if (f.good()) {
    try {
      auto j = nlohmann::json::parse(f);
      if (j.contains("eos_token_id")) {
        const auto& e = j["eos_token_id"];
        if (e.is_number_integer()) s.push_back(e.get<int32_t>());
        if (e.is_array())
          for (const auto& x : e) s.push_back(x.get<int32_t>());
      }
    } catch (const nlohmann::json::exception& e) {
      fail("{}/generation_config.json: not valid JSON: {}", dir, e.what());
    }
  }
  for (const char* name : {"</s>", "<|im_end|>", "<|endoftext|>"}) {
    int32_t id = t.id_of(name);
    if (id >= 0) s.push_back(id);
  }
  std::sort(s.begin(), s.end());
  s.erase(std::unique(s.begin(), s.end()), s.end());
  return s;
}

GenerateResult generate(const Model& model, SequenceState& st, const Tokenizer& tok,
                        const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(const std::string&)>& on_text, ThreadPool& pool) {
  const ModelConfig& c = model.config();
  const size_t ctx = opt.context > 0 ? opt.context : (c.max_position > 0 ? c.max_position : SIZE_MAX);
  check(!prompt.empty(), "generate: empty prompt (no tokens; the model has no BOS token to start from)");
  check(st.pos + prompt.size() <= ctx, "generate: prompt of {} tokens does not fit the context of {} tokens",
        prompt.size() + st.pos, ctx);
  GenerateResult r;
  r.n_prompt = static_cast<int>(prompt.size());
  std::vector<float> logits(c.vocab);
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < prompt.size(); i += opt.prefill_chunk) {
    const int n = static_cast<int>(std::min<size_t>(opt.prefill_chunk, prompt.size() - i));
    model.forward(st, prompt.data() + i, n, logits.data(), false, pool);
  }
  auto t1 = std::chrono::steady_clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  Sampler sampler(opt.sampler);
  std::vector<int32_t> history(prompt);
  StreamDecoder stream(tok);
  r.finish_reason = "length";
  for (int step = 0; step < opt.max_tokens; ++step) {
    int32_t next = sampler.sample(logits, history);
    if (std::binary_search(opt.stop_tokens.begin(), opt.stop_tokens.end(), next)) {
      r.finish_reason = "stop";
      break;
    }
    r.tokens.push_back(next);
    history.push_back(next);
    std::string piece = stream.feed(next);
    r.text += piece;
    if (on_text && !piece.empty()) on_text(piece);
    if (step + 1 == opt.max_tokens) break;
    if (st.pos + 1 > ctx) {
      r.finish_reason = "context";
      break;
    }
    model.forward(st, &next, 1, logits.data(), false, pool);
  }
  std::string rest = stream.flush();
  r.text += rest;
  if (on_text && !rest.empty()) on_text(rest);
  r.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  r.kv_bytes = st.kv_bytes();
  return r;
}

}  // namespace tq
