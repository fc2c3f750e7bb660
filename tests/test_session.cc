// Sessions (prefix resume, DeltaNet checkpoints, forks, the TQPC file), the stepping
// generator's stop strings, and chat rendering's prefix property.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/thread_pool.h"
#include "runtime/chat.h"
#include "runtime/generate.h"
#include "runtime/session.h"
#include "test_util.h"

namespace tq {
namespace {

const std::string kStories = TQ_SOURCE_DIR "/models/stories260K";
const std::string kTrained = TQ_TEST_DATA "/trained_qwen35";

std::vector<int32_t> random_tokens(size_t n, int vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> d(3, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = d(rng);
  return t;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Last-token logits of `tokens` run from scratch in one pass.
std::vector<float> one_pass(const Model& m, const CachePolicy& p, const std::vector<int32_t>& tokens,
                            ThreadPool& pool) {
  auto st = m.new_state(p);
  std::vector<float> lg(m.config().vocab);
  m.forward(*st, tokens.data(), static_cast<int>(tokens.size()), lg.data(), false, pool);
  return lg;
}

// Runs `tokens` through the session in chunks ending on multiples of `every`, with a
// checkpoint at each (what Generation does), and returns the last logits.
std::vector<float> run_with_checkpoints(Session& s, const std::vector<int32_t>& tokens, size_t every,
                                        ThreadPool& pool) {
  std::vector<float> lg(s.model().config().vocab);
  size_t i = 0;
  while (i < tokens.size()) {
    const size_t next = (s.pos() / every + 1) * every;
    const size_t n = std::min(tokens.size() - i, next - s.pos());
    s.forward(tokens.data() + i, static_cast<int>(n), lg.data(), false, pool);
    i += n;
    s.checkpoint();
  }
  return lg;
}

// A hybrid model resumes only from the live state or a checkpoint; the resumed logits
// equal a one-pass run of the whole prompt (within the rounding of different chunking).
TEST(Session, HybridResumesFromCheckpointsAndMatchesOnePass) {
  auto model = Model::load(kTrained);
  ASSERT_TRUE(Session(*model, CachePolicy::parse("tq3")).recurrent());
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (const char* pol : {"fp16", "tq3"}) {
    const CachePolicy p = CachePolicy::parse(pol);
    Session s(*model, p);
    auto a = random_tokens(100, model->config().vocab, rng);
    run_with_checkpoints(s, a, 32, pool);
    EXPECT_EQ(s.checkpoint_positions(), (std::vector<size_t>{32, 64, 96, 100}));
    // A request sharing 70 tokens resumes from the checkpoint at 64.
    auto b = a;
    b.resize(70);
    auto tail = random_tokens(30, model->config().vocab, rng);
    b.insert(b.end(), tail.begin(), tail.end());
    EXPECT_EQ(s.reusable_prefix(b), 64u);
    // One that extends the whole session resumes from the live state.
    auto c = a;
    c.insert(c.end(), tail.begin(), tail.end());
    EXPECT_EQ(s.reusable_prefix(c), 100u);
    // The same prompt: everything but its last token, which must run for logits: 96.
    EXPECT_EQ(s.reusable_prefix(a), 96u);

    auto fork = s.fork(64);
    EXPECT_EQ(s.pos(), 100u) << "fork leaves the original intact";
    std::vector<float> lg(model->config().vocab);
    fork->forward(b.data() + 64, static_cast<int>(b.size() - 64), lg.data(), false, pool);
    const float d = max_abs_diff(lg, one_pass(*model, p, b, pool));
    std::printf("[session] %s resume at 64 vs one pass: max |dlogit| %.2e\n", pol, d);
    EXPECT_LT(d, 2e-3f);
    s.rewind(64);
    EXPECT_EQ(s.checkpoint_positions(), (std::vector<size_t>{32, 64}));
    s.forward(b.data() + 64, static_cast<int>(b.size() - 64), lg.data(), false, pool);
    EXPECT_LT(max_abs_diff(lg, one_pass(*model, p, b, pool)), 2e-3f);
    EXPECT_THROW(s.rewind(50), Error) << "no checkpoint at 50";
  }
}

// Attention-only models truncate their KV slots anywhere. The resumed run computes tokens
// 53–54 as a batch of 2 and the reference as part of one batch of 55, so their K/V differ by
// float rounding (the matmul's blocking); an f32 cache keeps that at rounding level, while
// tq3's fp16 window rows can round the other way (a change of one fp16 ulp, 2^-10 relative) —
// measured on an AVX-512 build: ≤ 4e-6 in a logit with f32 rows; with tq3 mostly ≤ 3.4e-4, with
// a tail (3 of 400 seeds 1.2e-3 … 2e-3, TQ_TEST_SEED=31687145932805: 3.1e-3) — bound 1e-2, far
// below what a wrong rewind (a stale or missing row) does to the logits (O(1)).
TEST(Session, AttentionOnlyResumesAnywhere) {
  auto model = Model::load(kStories);
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (const auto& [pol, tol] : {std::pair{"f32", 1e-4f}, std::pair{"tq3", 1e-2f}}) {
    Session s(*model, CachePolicy::parse(pol));
    EXPECT_FALSE(s.recurrent());
    auto a = random_tokens(80, model->config().vocab, rng);
    std::vector<float> lg(model->config().vocab);
    s.forward(a.data(), 80, lg.data(), false, pool);
    auto b = a;
    b.resize(53);
    b.push_back(a[53] == 7 ? 8 : 7);  // (differs from a[53], so that the shared prefix is 53 tokens)
    b.push_back(9);
    EXPECT_EQ(s.reusable_prefix(b), 53u);
    s.rewind(53);
    s.forward(b.data() + 53, 2, lg.data(), false, pool);
    const float d = max_abs_diff(lg, one_pass(*model, s.policy(), b, pool));
    std::printf("[session] %s rewind to 53 vs one pass: max |dlogit| %.2e\n", pol, d);
    EXPECT_LT(d, tol) << pol;
  }
}

// Sampling through a session draws from the whole row of logits; without one, Generation
// fetches only the largest (Model::forward_top; on the GPU the row stays there). The same
// seed gives the same tokens either way, with top-k, top-p and a repetition penalty.
TEST(Session, SampledTokensWithAndWithoutSessionIdentical) {
  auto model = Model::load(kStories);
  Tokenizer tok = Tokenizer::load(kStories + "/tokenizer.json");
  ThreadPool pool(2);
  std::mt19937_64 rng(test::fresh_seed());
  std::vector<int32_t> prompt = {model->config().bos_id};
  const auto text = tok.encode("Once upon a time, a little dog");
  prompt.insert(prompt.end(), text.begin(), text.end());
  for (float penalty : {1.0f, 1.5f}) {
    GenerateOptions opt;
    opt.max_tokens = 80;
    opt.sampler.temperature = 1.2f, opt.sampler.top_k = 12, opt.sampler.top_p = 0.9f;
    opt.sampler.repetition_penalty = penalty, opt.sampler.seed = rng();
    auto st = model->new_state(CachePolicy::parse("fp16"));
    Generation plain(*model, *st, tok, prompt, opt);
    Session s(*model, CachePolicy::parse("fp16"));
    Generation through(*model, s.state(), tok, prompt, opt, &s);
    while (!plain.done()) plain.step(pool);
    while (!through.done()) through.step(pool);
    EXPECT_EQ(plain.result().tokens, through.result().tokens) << "penalty " << penalty;
    EXPECT_GT(plain.result().tokens.size(), 10u);
  }
}

// Save → load gives a session that continues bit-identically to the original (the
// TurboQuant window ring is restored with its size, so attention splits it the same
// way). Bad files are errors naming the file and the problem.
TEST(Session, SaveLoadContinuesIdentically) {
  auto model = Model::load(kTrained);
  const uint64_t id = model_fingerprint(kTrained);
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  std::string bytes;
  const CachePolicy p = CachePolicy::parse("tq3");
  for (const char* pol : {"fp16", "tq3+w0", "tq3"}) {
    Session s(*model, CachePolicy::parse(pol));
    auto a = random_tokens(300, model->config().vocab, rng);  // past the 128-token fp16 window
    run_with_checkpoints(s, a, 128, pool);
    std::stringstream buf;
    const SessionFileStats st = s.save(buf, id);
    bytes = buf.str();
    EXPECT_EQ(st.total_bytes, bytes.size());
    auto loaded = Session::load(buf, *model, s.policy(), id, "mem");
    EXPECT_EQ(loaded->tokens(), s.tokens());
    EXPECT_EQ(loaded->checkpoint_positions(), s.checkpoint_positions());
    EXPECT_EQ(loaded->kv_bytes() > 0, true);
    // Greedy continuation, 30 tokens, from both.
    std::vector<float> l1(model->config().vocab), l2(l1.size());
    int32_t t1 = a.back(), t2 = a.back();
    float worst = 0;
    for (int i = 0; i < 30; ++i) {
      s.forward(&t1, 1, l1.data(), false, pool);
      loaded->forward(&t2, 1, l2.data(), false, pool);
      EXPECT_EQ(l1, l2) << "step " << i;
      worst = std::max(worst, max_abs_diff(l1, l2));
      t1 = static_cast<int32_t>(std::max_element(l1.begin(), l1.end()) - l1.begin());
      t2 = static_cast<int32_t>(std::max_element(l2.begin(), l2.end()) - l2.begin());
      ASSERT_EQ(t1, t2) << pol << " step " << i;
    }
    std::printf("[session] %s restored vs original, 30 greedy steps: identical tokens, max |dlogit| %.1e\n", pol,
                worst);
  }

  auto load = [&](std::string b, const CachePolicy& pol, uint64_t mid) {
    std::stringstream in(b);
    return Session::load(in, *model, pol, mid, "cache.tqpc");
  };
  auto expect_error = [&](std::string b, const CachePolicy& pol, uint64_t mid, const char* want) {
    try {
      load(b, pol, mid);
      ADD_FAILURE() << "no error, expected one mentioning " << want;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cache.tqpc"), std::string::npos) << e.what();
    }
  };
  expect_error(bytes, p, id + 1, "another model");
  expect_error(bytes, CachePolicy::parse("fp16"), id, "cache policy");
  std::string flipped = bytes;
  flipped[flipped.size() / 2] ^= 0x20;
  expect_error(flipped, p, id, "checksum");
  expect_error(bytes.substr(0, bytes.size() - 100), p, id, "checksum");
  expect_error("TQPC", p, id, "too short");
  expect_error(std::string(64, 'x'), p, id, "checksum");
}

// The compressed form on disk: TQ3 KV records are ~5x smaller than fp16 ones at head_dim
// 256 (98 vs 512 bytes per vector); the fp16 window adds 128 tokens at fp16.
TEST(Session, FileKvSectionTq3AboutFiveTimesSmallerThanFp16) {
  auto model = Model::load(kTrained);
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  auto a = random_tokens(1024, model->config().vocab, rng);
  std::map<std::string, SessionFileStats> st;
  for (const char* pol : {"fp16", "tq3", "tq3+w0", "tq4"}) {
    Session s(*model, CachePolicy::parse(pol));
    std::vector<float> lg(model->config().vocab);
    s.forward(a.data(), 1024, lg.data(), false, pool);
    std::stringstream buf;
    st[pol] = s.save(buf, 1);
    std::printf("[session file] %-7s 1024 tokens: %8zu bytes total, KV %8zu, DeltaNet %zu\n", pol,
                st[pol].total_bytes, st[pol].kv_bytes, st[pol].state_bytes);
  }
  const double r_w0 = double(st["fp16"].kv_bytes) / st["tq3+w0"].kv_bytes;
  const double r = double(st["fp16"].kv_bytes) / st["tq3"].kv_bytes;
  std::printf("[session file] KV fp16/tq3+w0 = %.2fx, fp16/tq3 (128-token fp16 window) = %.2fx\n", r_w0, r);
  EXPECT_GT(r_w0, 4.9);
  EXPECT_LT(r_w0, 5.3);
  // With the window: 1024·512 / (1024·98 + 128·512) bytes per vector-token ≈ 3.2x.
  EXPECT_GT(r, 3.0);
  EXPECT_EQ(st["fp16"].state_bytes, st["tq3"].state_bytes);
}

// Stop strings end generation before them, and streamed pieces never show any part of one.
TEST(Generation, StopStringsCutTextAndStreamNeverShowsThem) {
  auto model = Model::load(kStories);
  Tokenizer tok = Tokenizer::load(kStories + "/tokenizer.json");
  ThreadPool pool(2);
  GenerateOptions opt;
  opt.max_tokens = 60;
  opt.sampler.temperature = 0;
  const std::vector<int32_t> prompt = {1};
  auto st = model->new_state(CachePolicy::parse("fp16"));
  const std::string full = generate(*model, *st, tok, prompt, opt, nullptr, pool).text;
  ASSERT_GT(full.size(), 40u);
  // Stop at a string that begins mid-text, spanning token boundaries.
  const std::string stop = full.substr(20, 7);
  opt.stop_strings = {"zzzz", stop};
  st = model->new_state(CachePolicy::parse("fp16"));
  std::string streamed;
  auto r = generate(*model, *st, tok, prompt, opt, [&](const std::string& p) { streamed += p; }, pool);
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.text, full.substr(0, full.find(stop)));
  EXPECT_EQ(streamed, r.text);
  // A stop string that never occurs changes nothing.
  opt.stop_strings = {"qqqqq"};
  st = model->new_state(CachePolicy::parse("fp16"));
  streamed.clear();
  r = generate(*model, *st, tok, prompt, opt, [&](const std::string& p) { streamed += p; }, pool);
  EXPECT_EQ(r.text, full);
  EXPECT_EQ(streamed, full);
  EXPECT_EQ(r.finish_reason, "length");
}

// A conversation's tokens are a prefix of any conversation extending it, and a plain-text
// model's generated tokens come back unchanged when its text is sent back as a message.
TEST(Chat, RenderingIsPrefixStable) {
  for (const std::string& path : {kStories + "/tokenizer.json", std::string(TQ_TEST_DATA "/tokenizers/qwen3_tokenizer.json")}) {
    Tokenizer tok = Tokenizer::load(path);
    const ChatFormat f = ChatFormat::of(tok, 1);
    std::vector<ChatMessage> m = {{"system", "Be brief."}, {"user", "Once upon a time"}};
    auto t1 = render_chat(tok, f, m, false);
    m.push_back({"assistant", ", there was a dog. It was happy."});
    m.push_back({"user", "Then what?"});
    auto t2 = render_chat(tok, f, m, true);
    ASSERT_GT(t2.size(), t1.size());
    EXPECT_TRUE(std::equal(t1.begin(), t1.end(), t2.begin())) << path;
    EXPECT_EQ(f.chatml, path.find("qwen3") != std::string::npos);
  }
  // Round trip of generated text on the built-in model.
  auto model = Model::load(kStories);
  Tokenizer tok = Tokenizer::load(kStories + "/tokenizer.json");
  const ChatFormat f = ChatFormat::of(tok, model->config().bos_id);
  ThreadPool pool(2);
  std::vector<ChatMessage> m = {{"user", "Once upon a time"}};
  auto p1 = render_chat(tok, f, m);
  GenerateOptions opt;
  opt.max_tokens = 40;
  opt.sampler.temperature = 0;
  auto st = model->new_state(CachePolicy::parse("fp16"));
  auto r = generate(*model, *st, tok, p1, opt, nullptr, pool);
  m.push_back({"assistant", r.text});
  auto p2 = render_chat(tok, f, m);
  std::vector<int32_t> want = p1;
  want.insert(want.end(), r.tokens.begin(), r.tokens.end());
  EXPECT_EQ(p2, want) << "generated text: '" << r.text << "'";
}

}  // namespace
}  // namespace tq

namespace tq {
namespace {

// Batched decode (one token for each of several sequences, weights read once) gives
// bit for bit the logits of running each sequence alone, and leaves the same states behind.
TEST(Model, ForwardBatchEqualsOneByOne) {
  std::mt19937_64 rng(test::fresh_seed());
  ThreadPool pool(2);
  for (const std::string& dir : {kStories, kTrained}) {
    auto model = Model::load(dir);
    const int V = model->config().vocab;
    for (const char* pol : {"fp16", "tq3"}) {
      const CachePolicy p = CachePolicy::parse(pol);
      std::vector<std::unique_ptr<SequenceState>> a, b;
      std::vector<float> lg(V);
      for (int i = 0; i < 3; ++i) {  // three sequences of different lengths
        auto t = random_tokens(5 + 17 * i, V, rng);
        a.push_back(model->new_state(p));
        b.push_back(model->new_state(p));
        model->forward(*a.back(), t.data(), static_cast<int>(t.size()), lg.data(), false, pool);
        model->forward(*b.back(), t.data(), static_cast<int>(t.size()), lg.data(), false, pool);
      }
      for (int step = 0; step < 3; ++step) {
        auto t = random_tokens(3, V, rng);
        std::vector<float> batched(3 * static_cast<size_t>(V)), single(batched.size());
        model->forward_batch({a[0].get(), a[1].get(), a[2].get()}, t.data(), batched.data(), pool);
        for (int i = 0; i < 3; ++i)
          model->forward(*b[i], &t[i], 1, single.data() + static_cast<size_t>(i) * V, false, pool);
        EXPECT_EQ(batched, single) << dir << " " << pol << " step " << step;
        for (int i = 0; i < 3; ++i) EXPECT_EQ(a[i]->pos, b[i]->pos);
      }
    }
  }
}

}  // namespace
}  // namespace tq
