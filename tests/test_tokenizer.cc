#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/json_text.h"
#include "tokenizer/tokenizer.h"

namespace tq {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// llama.cpp's format: inputs separated by "\n__ggml_vocab_test__\n"; one line of ids per input.
void check_vectors(const Tokenizer& t, const std::string& inp, const std::string& out, size_t expect_n) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::string all = slurp(inp);
  std::vector<std::string> inputs;
  for (size_t p = 0;;) {
    size_t q = all.find(sep, p);
    if (q == std::string::npos) break;
    inputs.push_back(all.substr(p, q - p));
    p = q + sep.size();
  }
  std::istringstream os(slurp(out));
  std::string line;
  size_t i = 0, ok = 0;
  while (std::getline(os, line) && i < inputs.size()) {
    std::istringstream ls(line);
    std::vector<int32_t> want;
    int32_t id;
    while (ls >> id) want.push_back(id);
    auto got = t.encode(inputs[i]);
    EXPECT_EQ(got, want) << "input " << i << ": '" << inputs[i] << "'";
    ok += got == want;
    // Decoding the ids gives the input back (NFC-normalized inputs aside).
    if (got == want && inputs[i].find("\xcc") == std::string::npos) {
      EXPECT_EQ(t.decode(got), inputs[i]) << i;
    }
    ++i;
  }
  EXPECT_EQ(i, expect_n);
  std::printf("[tokenizer] %zu of %zu vectors match (%s)\n", ok, i, out.c_str());
}

TEST(Tokenizer, LlamaCppQwen2VectorsAll46) {
  Tokenizer t = Tokenizer::load(TQ_TEST_DATA "/tokenizers/qwen3_tokenizer.json");
  check_vectors(t, TQ_TEST_DATA "/tokenizers/ggml-vocab-qwen2.gguf.inp",
                TQ_TEST_DATA "/tokenizers/ggml-vocab-qwen2.gguf.out", 46);
}

TEST(Tokenizer, Qwen35InputsIncludingNfd) {
  Tokenizer t = Tokenizer::load(TQ_TEST_DATA "/tokenizers/qwen3_tokenizer.json");
  check_vectors(t, TQ_TEST_DATA "/tokenizers/qwen3-on-llamacpp-qwen35-inputs.inp",
                TQ_TEST_DATA "/tokenizers/qwen3-on-llamacpp-qwen35-inputs.out", 50);
}

TEST(Tokenizer, SpecialTokensAndStreaming) {
  Tokenizer t = Tokenizer::load(TQ_TEST_DATA "/tokenizers/qwen3_tokenizer.json");
  auto ids = t.encode("<|im_start|>user\nhi<|im_end|>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), t.id_of("<|im_start|>"));
  EXPECT_EQ(ids.back(), t.id_of("<|im_end|>"));
  // Streaming: multi-byte characters split across tokens come out whole.
  const std::string text = "naïve café 日本語 🙂 done";
  auto tok = t.encode(text);
  StreamDecoder sd(t);
  std::string out;
  for (int32_t id : tok) {
    std::string piece = sd.feed(id);
    // Every piece is complete UTF-8: it never ends inside a character.
    if (!piece.empty()) {
      unsigned char last = static_cast<unsigned char>(piece.back());
      EXPECT_TRUE(last < 0x80 || (last & 0xC0) == 0x80) << "piece ends with a lead byte";
    }
    out += piece;
  }
  out += sd.flush();
  EXPECT_EQ(out, text);
}

// A byte token alone decodes to a byte that is not UTF-8 (0xE6 leads a 3-byte character);
// JSON output of such text (generate --json, tokenize --jsonl, the server) holds U+FFFD there
// instead of failing, and the valid text around it is kept.
TEST(Tokenizer, TextThatIsNotUtf8StillMakesJson) {
  Tokenizer t = Tokenizer::load(TQ_TEST_DATA "/tokenizers/qwen3_tokenizer.json");
  const int32_t lead = t.id_of("\u00e6");  // (byte-level BPE: byte 0xE6 is the token "æ")
  ASSERT_GE(lead, 0);
  auto ids = t.encode("ok ");
  ids.push_back(lead);
  const std::string text = t.decode(ids);
  ASSERT_EQ(text, std::string("ok \xE6"));
  EXPECT_THROW((void)nlohmann::json(text).dump(), nlohmann::json::exception);
  const std::string out = json_text(nlohmann::json{{"text", text}});
  EXPECT_EQ(nlohmann::json::parse(out)["text"], "ok \xEF\xBF\xBD");
}

TEST(Tokenizer, BadFilesAreClearErrors) {
  auto expect = [](const std::string& json, const char* what) {
    try {
      Tokenizer::parse(json, "x/tokenizer.json");
      ADD_FAILURE() << "accepted: " << json;
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("x/tokenizer.json"), std::string::npos) << m;
      EXPECT_NE(m.find(what), std::string::npos) << m;
    }
  };
  expect("{not json", "not valid JSON");
  expect("{}", "model");
  expect(R"({"model": {"type": "BPE", "merges": []}})", "model.vocab");
  expect(R"({"model": {"type": "Unigram", "vocab": {}, "merges": []}})", "model.type");
  expect(R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})", "model.vocab");
  EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.json"), Error);
}

}  // namespace
}  // namespace tq
