#include "runtime/evaluate.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace tq {

namespace {
// log-softmax of one row, in place.
void log_softmax(float* x, int n) {
  float mx = *std::max_element(x, x + n);
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i] - mx));
  const float lse = mx + static_cast<float>(std::log(s));
  for (int i = 0; i < n; ++i) x[i] -= lse;
}
}  // namespace

std::vector<EvalResult> evaluate_policies(const Model& model, const std::vector<int32_t>& tokens,
                                          const std::vector<CachePolicy>& policies, int ctx, int stride,
                                          ThreadPool& pool, const std::function<void(size_t, size_t)>& progress) {
  check(ctx >= 2, "--ctx: expected >= 2, got {}", ctx);
  check(stride >= 1 && stride <= ctx, "--stride: expected 1..ctx ({}), got {}", ctx, stride);
  check(tokens.size() >= 2, "eval: the text has {} tokens, at least 2 are needed", tokens.size());
  const int V = model.config().vocab;
  const size_t P = policies.size();
  std::vector<double> nll(P, 0), kl(P, 0);
  double ref_nll = 0;
  std::vector<size_t> agree(P, 0);
  size_t scored = 0;
  const int chunk = 128;
  std::vector<size_t> starts;
  for (size_t s = 0;; s += stride) {
    starts.push_back(s);
    if (s + ctx >= tokens.size()) break;
  }
  const auto f32 = CachePolicy::parse("f32");
  std::vector<float> ref(static_cast<size_t>(chunk) * V), lg(ref.size());
  std::vector<double> row_kl(chunk);
  std::vector<char> row_agree(chunk);
  for (size_t w = 0; w < starts.size(); ++w) {
    const size_t s = starts[w], e = std::min(tokens.size(), s + ctx);
    const size_t first_scored = w == 0 ? s : s + (ctx - stride);  // position whose next token is scored
    auto ref_state = model.new_state(f32);
    std::vector<std::unique_ptr<SequenceState>> states;
    for (const auto& p : policies) states.push_back(model.new_state(p));
    for (size_t c = s; c + 1 < e; c += chunk) {
      const int n = static_cast<int>(std::min<size_t>(chunk, e - 1 - c));  // inputs c .. c+n-1 predict c+1 .. c+n
      // Rows are scored in parallel (a large vocabulary makes this the bulk of the work when
      // the model runs on a GPU), each into its own slot, then added in row order: the
      // totals do not depend on the threads.
      model.forward(*ref_state, tokens.data() + c, n, ref.data(), true, pool);
      pool.parallel_for(n, [&](size_t i, int) { log_softmax(ref.data() + i * V, V); });
      for (int i = 0; i < n; ++i)
        if (c + i >= first_scored) ref_nll -= ref[static_cast<size_t>(i) * V + tokens[c + i + 1]];
      for (size_t p = 0; p < P; ++p) {
        model.forward(*states[p], tokens.data() + c, n, lg.data(), true, pool);
        pool.parallel_for(n, [&](size_t i, int) {
          if (c + i < first_scored) return;
          float* lp = lg.data() + i * V;
          const float* lr = ref.data() + i * V;
          log_softmax(lp, V);
          double k = 0;
          for (int v = 0; v < V; ++v) k += std::exp(static_cast<double>(lr[v])) * (lr[v] - lp[v]);
          row_kl[i] = std::max(0.0, k);
          row_agree[i] = (std::max_element(lp, lp + V) - lp) == (std::max_element(lr, lr + V) - lr);
        });
        for (int i = 0; i < n; ++i) {
          if (c + i < first_scored) continue;
          nll[p] -= lg[static_cast<size_t>(i) * V + tokens[c + i + 1]];
          kl[p] += row_kl[i];
          agree[p] += row_agree[i];
        }
      }
      for (int i = 0; i < n; ++i) scored += (c + i >= first_scored);
      if (progress) progress(w * ctx + (c - s + n), starts.size() * ctx);
    }
  }
  std::vector<EvalResult> out;
  const size_t per_policy = scored;
  out.push_back({"f32", std::exp(ref_nll / std::max<size_t>(1, scored)), 0.0, 1.0, scored});
  for (size_t p = 0; p < P; ++p) {
    EvalResult r;
    r.kv = policies[p].name();
    r.tokens = per_policy;
    r.ppl = std::exp(nll[p] / std::max<size_t>(1, per_policy));
    r.kl = kl[p] / std::max<size_t>(1, per_policy);
    r.top1 = static_cast<double>(agree[p]) / std::max<size_t>(1, per_policy);
    out.push_back(r);
  }
  return out;
}

}  // namespace tq

#include <random>

#include "runtime/generate.h"
#include "tokenizer/tokenizer.h"

namespace tq {

std::vector<NiahCell> niah(const Model& model, const Tokenizer& tok, const std::vector<int32_t>& filler,
                           const std::vector<CachePolicy>& policies, const std::vector<int>& lengths,
                           const std::vector<double>& depths, int trials, uint64_t seed, ThreadPool& pool,
                           const std::function<void(size_t, size_t)>& progress) {
  std::mt19937_64 rng(seed);
  std::vector<NiahCell> cells;
  const size_t total = lengths.size() * depths.size() * trials * policies.size();
  size_t done = 0;
  for (int L : lengths) {
    check(static_cast<size_t>(L) <= filler.size(), "--niah: length {} exceeds the {} tokens of filler text", L,
          filler.size());
    for (double d : depths) {
      NiahCell cell{L, d, std::vector<double>(policies.size(), 0)};
      for (int t = 0; t < trials; ++t) {
        const std::string key = std::to_string(10000 + rng() % 90000);
        auto needle = tok.encode(" The pass key is " + key + ". Remember it. " + key + " is the pass key.");
        auto question = tok.encode(" What is the pass key? The pass key is");
        const int hay = std::max(0, L - static_cast<int>(needle.size() + question.size()));
        const size_t at = static_cast<size_t>(d * hay + 0.5);
        std::vector<int32_t> prompt;
        if (model.config().bos_id >= 0 && tok.id_of("<|im_start|>") < 0) prompt.push_back(model.config().bos_id);
        prompt.insert(prompt.end(), filler.begin(), filler.begin() + at);
        prompt.insert(prompt.end(), needle.begin(), needle.end());
        prompt.insert(prompt.end(), filler.begin() + at, filler.begin() + hay);
        prompt.insert(prompt.end(), question.begin(), question.end());
        GenerateOptions opt;
        opt.max_tokens = 8;
        opt.sampler.temperature = 0;
        opt.context = static_cast<int>(prompt.size()) + 16;
        for (size_t p = 0; p < policies.size(); ++p) {
          auto st = model.new_state(policies[p]);
          auto r = generate(model, *st, tok, prompt, opt, nullptr, pool);
          cell.pass[p] += r.text.find(key) != std::string::npos ? 1.0 / trials : 0.0;
          if (progress) progress(++done, total);
        }
      }
      cells.push_back(cell);
    }
  }
  return cells;
}

}  // namespace tq
