// Generation: chunked prefill, then a decode loop with a sampler and stop tokens.
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kv/cache_policy.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace tq {

struct SamplerConfig {
  float temperature = 0.8f;  // 0 = greedy
  int top_k = 40;            // 0 = off
  float top_p = 0.95f;       // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;  // 1 = off (applied to the last 64 tokens)
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerConfig& c) : cfg_(c), rng_(c.seed) {}
  int32_t sample(std::vector<float>& logits, const std::vector<int32_t>& history);

 private:
  SamplerConfig cfg_;
  std::mt19937_64 rng_;
};

struct GenerateOptions {
  int max_tokens = 256;
  int prefill_chunk = 256;
  int context = 0;  // 0: the model's max_position_embeddings (or unlimited if unknown)
  SamplerConfig sampler;
  std::vector<int32_t> stop_tokens;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (stop token excluded)
  std::string text;
  int n_prompt = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  std::string finish_reason;  // "stop", "length", "context"
  size_t kv_bytes = 0;
};

// Stop tokens of a checkpoint: config eos ids, generation_config.json, and the
// tokenizer's end-of-text tokens (</s>, <|im_end|>, <|endoftext|>).
std::vector<int32_t> stop_tokens_for(const std::string& dir, const ModelConfig& c, const Tokenizer& t);

GenerateResult generate(const Model& model, SequenceState& state, const Tokenizer& tok,
                        const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                        const std::function<void(const std::string&)>& on_text, ThreadPool& pool);

}  // namespace tq
