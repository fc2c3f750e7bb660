#include "io/llama2c.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/writer.h"

namespace tq {

namespace {
std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  check(f.good(), "{}: cannot open", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  check(f.good(), "{}: cannot create", path);
  f << text;
}

const char* kSpace = "\xE2\x96\x81";  // ▁

// llama2.c's rotary embedding rotates interleaved pairs (2i, 2i+1) within a head;
// Hugging Face's Llama rotates halves (i, i + hd/2). Reorder the rows of wq/wk so
// the standard rotate-half RoPE computes the same thing (as HF's converter does).
std::vector<float> permute_rows(const float* w, int n_heads, int rows, int cols) {
  std::vector<float> out(static_cast<size_t>(rows) * cols);
  const int hd = rows / n_heads, half = hd / 2;
  for (int h = 0; h < n_heads; ++h)
    for (int i = 0; i < half; ++i)
      for (int e = 0; e < 2; ++e) {
        const int src = h * hd + 2 * i + e, dst = h * hd + e * half + i;
        std::memcpy(&out[static_cast<size_t>(dst) * cols], w + static_cast<size_t>(src) * cols, cols * sizeof(float));
      }
  return out;
}
}  // namespace

void import_llama2c(const std::string& model_bin, const std::string& tokenizer_bin, const std::string& out_dir) {
  const std::string bin = read_file(model_bin);
  check(bin.size() >= 28, "{}: {} bytes is too short for a llama2.c header (28 bytes)", model_bin, bin.size());
  int32_t hdr[7];
  std::memcpy(hdr, bin.data(), sizeof hdr);
  const int dim = hdr[0], hidden = hdr[1], n_layers = hdr[2], n_heads = hdr[3], n_kv = hdr[4];
  const bool shared = hdr[5] > 0;
  const int vocab = std::abs(hdr[5]), seq_len = hdr[6];
  check(dim > 0 && hidden > 0 && n_layers > 0 && n_heads > 0 && n_kv > 0 && vocab > 0 && seq_len > 0 &&
            dim % n_heads == 0 && n_heads % n_kv == 0 && (dim / n_heads) % 2 == 0,
        "{}: implausible llama2.c header (dim {}, hidden_dim {}, n_layers {}, n_heads {}, n_kv_heads {}, vocab {}, "
        "seq_len {})",
        model_bin, dim, hidden, n_layers, n_heads, n_kv, hdr[5], seq_len);
  const int hd = dim / n_heads, kv_dim = n_kv * hd;
  const size_t L = n_layers;
  size_t need = static_cast<size_t>(vocab) * dim + L * dim + L * dim * dim + 2 * L * dim * kv_dim + L * dim * dim +
                L * dim + 3 * L * dim * hidden + dim + static_cast<size_t>(seq_len) * hd;
  if (!shared) need += static_cast<size_t>(vocab) * dim;
  check(bin.size() >= 28 + need * 4, "{}: {} bytes, but the header implies {} bytes of weights", model_bin, bin.size(),
        need * 4);
  const float* p = reinterpret_cast<const float*>(bin.data() + 28);
  auto take = [&](size_t n) {
    const float* q = p;
    p += n;
    return q;
  };
  const float* emb = take(static_cast<size_t>(vocab) * dim);
  const float* rms_att = take(L * dim);
  const float* wq = take(L * dim * dim);
  const float* wk = take(L * dim * kv_dim);
  const float* wv = take(L * dim * kv_dim);
  const float* wo = take(L * dim * dim);
  const float* rms_ffn = take(L * dim);
  const float* w1 = take(L * dim * hidden);
  const float* w2 = take(L * dim * hidden);
  const float* w3 = take(L * dim * hidden);
  const float* rms_final = take(dim);
  take(static_cast<size_t>(seq_len) * hd);  // freq_cis_real, freq_cis_imag (recomputed by RoPE)
  const float* wcls = shared ? emb : take(static_cast<size_t>(vocab) * dim);

  make_out_dir(out_dir);
  std::vector<std::vector<float>> keep;  // permuted copies
  std::vector<TensorToWrite> ts;
  auto add = [&](const std::string& name, const float* data, std::vector<int64_t> shape) {
    ts.push_back({name, DType::f32, std::move(shape), data});
  };
  add("model.embed_tokens.weight", emb, {vocab, dim});
  for (size_t l = 0; l < L; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    add(pre + "input_layernorm.weight", rms_att + l * dim, {dim});
    keep.push_back(permute_rows(wq + l * dim * dim, n_heads, dim, dim));
    add(pre + "self_attn.q_proj.weight", keep.back().data(), {dim, dim});
    keep.push_back(permute_rows(wk + l * dim * kv_dim, n_kv, kv_dim, dim));
    add(pre + "self_attn.k_proj.weight", keep.back().data(), {kv_dim, dim});
    add(pre + "self_attn.v_proj.weight", wv + l * dim * kv_dim, {kv_dim, dim});
    add(pre + "self_attn.o_proj.weight", wo + l * dim * dim, {dim, dim});
    add(pre + "post_attention_layernorm.weight", rms_ffn + l * dim, {dim});
    add(pre + "mlp.gate_proj.weight", w1 + l * dim * hidden, {hidden, dim});
    add(pre + "mlp.down_proj.weight", w2 + l * dim * hidden, {dim, hidden});
    add(pre + "mlp.up_proj.weight", w3 + l * dim * hidden, {hidden, dim});
  }
  add("model.norm.weight", rms_final, {dim});
  if (!shared) add("lm_head.weight", wcls, {vocab, dim});
  write_safetensors(out_dir + "/model.safetensors", ts);

  nlohmann::ordered_json cfg = {{"architectures", {"LlamaForCausalLM"}},
                                {"model_type", "llama"},
                                {"hidden_size", dim},
                                {"intermediate_size", hidden},
                                {"num_hidden_layers", n_layers},
                                {"num_attention_heads", n_heads},
                                {"num_key_value_heads", n_kv},
                                {"vocab_size", vocab},
                                {"max_position_embeddings", seq_len},
                                {"rms_norm_eps", 1e-5},
                                {"rope_theta", 10000.0},
                                {"tie_word_embeddings", shared},
                                {"hidden_act", "silu"},
                                {"bos_token_id", 1},
                                {"eos_token_id", 2},
                                {"torch_dtype", "float32"}};
  write_text(out_dir + "/config.json", cfg.dump(2) + "\n");

  // Tokenizer: int32 max_token_length, then per token: f32 score, i32 length, bytes.
  const std::string tb = read_file(tokenizer_bin);
  size_t off = 4;
  std::vector<std::string> pieces;
  std::vector<float> scores;
  for (int i = 0; i < vocab; ++i) {
    check(off + 8 <= tb.size(), "{}: truncated at token {} of {}", tokenizer_bin, i, vocab);
    float score;
    int32_t len;
    std::memcpy(&score, tb.data() + off, 4);
    std::memcpy(&len, tb.data() + off + 4, 4);
    off += 8;
    check(len >= 0 && off + len <= tb.size(), "{}: token {} has a bad length {}", tokenizer_bin, i, len);
    pieces.emplace_back(tb.substr(off, len));
    scores.push_back(score);
    off += len;
  }
  nlohmann::ordered_json vocab_j = nlohmann::ordered_json::object();
  std::vector<std::string> toks(vocab);
  for (int i = 0; i < vocab; ++i) {
    std::string t;
    if (i == 0) t = "<unk>";
    else if (i == 1) t = "<s>";
    else if (i == 2) t = "</s>";
    else
      for (char c : pieces[i]) t += c == ' ' ? std::string(kSpace) : std::string(1, c);
    toks[i] = t;
    vocab_j[t] = i;
  }
  // Merges: every split of a token into two tokens, ranked by the merged token's
  // score (llama2.c merges the pair whose concatenation scores highest).
  std::map<std::string, int> id_of;
  for (int i = 0; i < vocab; ++i) id_of[toks[i]] = i;
  std::vector<std::tuple<float, int, std::string, std::string>> merges;
  for (int i = 3; i < vocab; ++i) {
    const std::string& t = toks[i];
    if (t.size() == 6 && t.rfind("<0x", 0) == 0) continue;
    for (size_t cut = 1; cut < t.size(); ++cut) {
      if ((static_cast<unsigned char>(t[cut]) & 0xC0) == 0x80) continue;  // inside a UTF-8 character
      const std::string a = t.substr(0, cut), b = t.substr(cut);
      if (id_of.count(a) && id_of.count(b) && id_of[a] >= 3 && id_of[b] >= 3) merges.emplace_back(-scores[i], i, a, b);
    }
  }
  std::sort(merges.begin(), merges.end());
  nlohmann::ordered_json merges_j = nlohmann::ordered_json::array();
  for (const auto& m : merges) merges_j.push_back(std::get<2>(m) + " " + std::get<3>(m));
  nlohmann::ordered_json tok = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
         {"normalized", false}, {"special", true}},
        {{"id", 1}, {"content", "<s>"}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
         {"normalized", false}, {"special", true}},
        {{"id", 2}, {"content", "</s>"}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
         {"normalized", false}, {"special", true}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", kSpace}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}}}}}},
      {"pre_tokenizer", nullptr},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab_j},
        {"merges", merges_j}}}};
  write_text(out_dir + "/tokenizer.json", tok.dump(1) + "\n");
  nlohmann::ordered_json tcfg = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"},
                                 {"add_bos_token", true}, {"tokenizer_class", "LlamaTokenizer"}};
  write_text(out_dir + "/tokenizer_config.json", tcfg.dump(2) + "\n");
}

}  // namespace tq
