// Quality of a cache policy against the full-precision (f32) cache, on a text:
// perplexity, KL divergence of the next-token distributions, and top-1 agreement.
// Each policy's attention reads its own (compressed) cache in prefill as in decode.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "kv/cache_policy.h"
#include "model/model.h"

namespace tq {

struct EvalResult {
  std::string kv;
  double ppl = 0;   // exp(mean NLL of the next token)
  double kl = 0;    // mean KL(p_f32 ‖ p_policy) in nats
  double top1 = 0;  // fraction of positions whose argmax equals the f32 cache's
  size_t tokens = 0;  // positions scored
};

// Windows of `ctx` tokens advancing by `stride`; in each window the positions after
// the first ctx − stride tokens are scored (all of them in the first window). The first
// result is the f32 cache itself (the reference: KL 0, top-1 1), then one per policy.
std::vector<EvalResult> evaluate_policies(const Model& model, const std::vector<int32_t>& tokens,
                                          const std::vector<CachePolicy>& policies, int ctx, int stride,
                                          ThreadPool& pool, const std::function<void(size_t, size_t)>& progress);

}  // namespace tq

namespace tq {

class Tokenizer;

// Needle in a haystack (passkey retrieval): a line "The pass key is N. Remember it. N is
// the pass key." is put at a relative depth of a filler text of about `length` tokens,
// followed by "What is the pass key? The pass key is"; a cell passes when the greedy
// continuation contains N. One row per (length, depth), one pass rate per policy.
struct NiahCell {
  int length = 0;
  double depth = 0;
  std::vector<double> pass;  // per policy, fraction of trials
};
std::vector<NiahCell> niah(const Model& model, const Tokenizer& tok, const std::vector<int32_t>& filler,
                           const std::vector<CachePolicy>& policies, const std::vector<int>& lengths,
                           const std::vector<double>& depths, int trials, uint64_t seed, ThreadPool& pool,
                           const std::function<void(size_t, size_t)>& progress);

}  // namespace tq
