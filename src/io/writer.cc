#include "io/writer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/f16.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace tq {

void quantize_affine(const float* w, int64_t rows, int64_t cols, int bits, int group, std::vector<uint32_t>& codes,
                     std::vector<uint16_t>& scales, std::vector<uint16_t>& biases) {
  check(cols % group == 0 && (cols * bits) % 32 == 0, "quantize: {} columns do not split into groups of {} at {} bits",
        cols, group, bits);
  const int64_t ng = cols / group, words = cols * bits / 32;
  const unsigned levels = (1u << bits) - 1;
  codes.assign(static_cast<size_t>(rows * words), 0);
  scales.resize(static_cast<size_t>(rows * ng));
  biases.resize(scales.size());
  ThreadPool::global().parallel_for(static_cast<size_t>(rows), [&](size_t r, int) {
    uint8_t* row = reinterpret_cast<uint8_t*>(codes.data() + r * words);
    for (int64_t g = 0; g < ng; ++g) {
      const float* x = w + r * cols + g * group;
      float lo = x[0], hi = x[0];
      for (int j = 1; j < group; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
      const uint16_t sb = f32_to_bf16(hi > lo ? (hi - lo) / levels : 1e-8f), bb = f32_to_bf16(lo);
      const float s = bf16_to_f32(sb), b = bf16_to_f32(bb);
      scales[r * ng + g] = sb;
      biases[r * ng + g] = bb;
      for (int j = 0; j < group; ++j) {
        const long q = std::lround((x[j] - b) / s);
        const unsigned v = static_cast<unsigned>(std::clamp<long>(q, 0, levels));
        const int64_t bit = (g * group + j) * bits;
        const unsigned sh = static_cast<unsigned>(bit % 8);
        row[bit / 8] |= static_cast<uint8_t>(v << sh);
        if (sh + bits > 8) row[bit / 8 + 1] |= static_cast<uint8_t>(v >> (8 - sh));
      }
    }
  });
}

void make_out_dir(const std::string& out_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    check(fs::is_directory(out_dir, ec), "--out {}: exists and is not a directory", out_dir);
    check(fs::is_empty(out_dir, ec) && !ec,
          "--out {}: the directory is not empty (expected a new or empty directory: nothing in it is overwritten)",
          out_dir);
    return;
  }
  fs::create_directories(out_dir, ec);
  check(!ec, "--out {}: cannot create the directory ({})", out_dir, ec.message());
}

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  check(f.good(), "{}: cannot create", path);
  f << text;
}

// Collects tensors for one safetensors file, owning their bytes.
struct TensorSet {
  std::vector<std::vector<uint8_t>> store;
  std::vector<TensorToWrite> list;
  template <typename T>
  void add(const std::string& name, DType dt, std::vector<int64_t> shape, const std::vector<T>& v) {
    store.emplace_back(reinterpret_cast<const uint8_t*>(v.data()),
                       reinterpret_cast<const uint8_t*>(v.data()) + v.size() * sizeof(T));
    list.push_back({name, dt, std::move(shape), store.back().data()});
  }
  void add_matrix(const std::string& name, const std::vector<float>& w, int64_t rows, int64_t cols, bool q4) {
    if (q4 && cols % 64 == 0) {
      std::vector<uint32_t> c;
      std::vector<uint16_t> s, b;
      quantize_affine(w.data(), rows, cols, 4, 64, c, s, b);
      add(name + ".weight", DType::u32, {rows, cols / 8}, c);
      add(name + ".scales", DType::bf16, {rows, cols / 64}, s);
      add(name + ".biases", DType::bf16, {rows, cols / 64}, b);
    } else {
      add_bf16(name + ".weight", w, {rows, cols});
    }
  }
  void add_bf16(const std::string& name, const std::vector<float>& w, std::vector<int64_t> shape) {
    std::vector<uint16_t> h(w.size());
    for (size_t i = 0; i < w.size(); ++i) h[i] = f32_to_bf16(w[i]);
    add(name, DType::bf16, std::move(shape), h);
  }
};

struct Preset {
  int hidden, layers, heads, kv_heads, inter, lin_k_heads, lin_v_heads, lin_dim, vocab;
  bool tied;
};

Preset preset_of(const std::string& p) {
  if (p == "tiny") return {128, 8, 4, 2, 256, 2, 4, 128, 512, true};
  if (p == "0.8b") return {1024, 24, 8, 2, 3584, 16, 16, 128, 248320, true};
  if (p == "2b") return {2048, 24, 8, 2, 6144, 16, 16, 128, 248320, true};
  if (p == "4b") return {2560, 32, 16, 4, 9216, 16, 32, 128, 248320, true};
  if (p == "9b") return {4096, 32, 16, 4, 12288, 16, 32, 128, 248320, false};
  fail("--preset: '{}' is not one of tiny, 0.8b, 2b, 4b, 9b", p);
}

// A byte-level BPE tokenizer.json with the 256 byte symbols, a few merges and the
// ChatML special tokens, for the tiny preset's 512-entry vocabulary.
std::string tiny_tokenizer_json(int vocab) {
  using json = nlohmann::ordered_json;
  std::string b2c[256];
  int nxt = 0;
  for (int b = 0; b < 256; ++b) {
    const bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = keep ? b : 256 + nxt++;
    std::string s;
    if (cp < 0x80) s += static_cast<char>(cp);
    else s += static_cast<char>(0xC0 | (cp >> 6)), s += static_cast<char>(0x80 | (cp & 0x3F));
    b2c[b] = s;
  }
  json v = json::object();
  for (int b = 0; b < 256; ++b) v[b2c[b]] = b;
  json merges = json::array();
  int id = 256;
  // Merge frequent English pairs: space + lowercase letter, then common bigrams.
  const std::string sp = b2c[' '];
  std::vector<std::pair<std::string, std::string>> pairs;
  for (char c = 'a'; c <= 'z'; ++c) pairs.emplace_back(sp, std::string(1, c));
  for (const char* bg : {"th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of",
                         "ed", "is", "it", "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le"})
    pairs.emplace_back(std::string(1, bg[0]), std::string(1, bg[1]));
  const int n_special = 4;
  for (const auto& [a, b] : pairs) {
    if (id >= vocab - n_special) break;
    v[a + b] = id++;
    merges.push_back(a + " " + b);
  }
  json added = json::array();
  int sid = vocab - n_special;
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"})
    added.push_back({{"id", sid++}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  json t = {{"version", "1.0"},
            {"added_tokens", added},
            {"normalizer", {{"type", "NFC"}}},
            {"pre_tokenizer",
             {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"},
                 {"pattern", {{"Regex", R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
                 {"behavior", "Isolated"},
                 {"invert", false}},
                {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}}},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
            {"model", {{"type", "BPE"}, {"byte_fallback", false}, {"vocab", v}, {"merges", merges}}}};
  return t.dump(1);
}

}  // namespace

void make_qwen35_model(const std::string& preset, const std::string& dtype, const std::string& out_dir, uint64_t seed,
                       const std::string& tokenizer_json) {
  const Preset p = preset_of(preset);
  check(dtype == "bf16" || dtype == "mlx4", "--dtype: '{}' is not one of bf16, mlx4", dtype);
  const bool q4 = dtype == "mlx4";
  const int hd = 256, K = 4, interval = 4;
  const int kd = p.lin_k_heads * p.lin_dim, vd = p.lin_v_heads * p.lin_dim, conv_dim = 2 * kd + vd;
  make_out_dir(out_dir);
  TensorSet ts;
  std::mt19937_64 rng(seed);
  // Large tensors draw in parallel chunks, each from its own generator seeded by one draw
  // of the main one (small presets, whose tensors stay under a chunk, are unchanged).
  auto normal = [&](size_t n, float sd) {
    constexpr size_t kChunk = size_t(1) << 20;
    std::vector<float> v(n);
    if (n <= kChunk) {
      std::normal_distribution<float> nd(0.0f, sd);
      for (auto& x : v) x = nd(rng);
      return v;
    }
    const uint64_t base = rng();
    ThreadPool::global().parallel_for((n + kChunk - 1) / kChunk, [&](size_t c, int) {
      std::mt19937_64 r(base ^ (0x9e3779b97f4a7c15ull * (c + 1)));
      std::normal_distribution<float> nd(0.0f, sd);
      for (size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) v[i] = nd(r);
    });
    return v;
  };
  auto uniform = [&](size_t n, float lo, float hi) {
    std::vector<float> v(n);
    std::uniform_real_distribution<float> ud(lo, hi);
    for (auto& x : v) x = ud(rng);
    return v;
  };
  // Norm weights in the MLX layout are stored as 1 + w.
  auto norm = [&](size_t n) {
    auto v = normal(n, 0.05f);
    for (auto& x : v) x += 1.0f;
    return v;
  };
  const std::string pre = "language_model.model.";
  const float sd = 0.02f;
  ts.add_matrix(pre + "embed_tokens", normal(static_cast<size_t>(p.vocab) * p.hidden, 1.0f), p.vocab, p.hidden, q4);
  for (int l = 0; l < p.layers; ++l) {
    const std::string L = pre + "layers." + std::to_string(l) + ".";
    ts.add_bf16(L + "input_layernorm.weight", norm(p.hidden), {p.hidden});
    ts.add_bf16(L + "post_attention_layernorm.weight", norm(p.hidden), {p.hidden});
    ts.add_matrix(L + "mlp.gate_proj", normal(static_cast<size_t>(p.inter) * p.hidden, sd), p.inter, p.hidden, q4);
    ts.add_matrix(L + "mlp.up_proj", normal(static_cast<size_t>(p.inter) * p.hidden, sd), p.inter, p.hidden, q4);
    ts.add_matrix(L + "mlp.down_proj", normal(static_cast<size_t>(p.hidden) * p.inter, sd), p.hidden, p.inter, q4);
    if ((l + 1) % interval != 0) {
      const std::string A = L + "linear_attn.";
      ts.add_matrix(A + "in_proj_qkv", normal(static_cast<size_t>(conv_dim) * p.hidden, sd), conv_dim, p.hidden, q4);
      ts.add_matrix(A + "in_proj_z", normal(static_cast<size_t>(vd) * p.hidden, sd), vd, p.hidden, q4);
      ts.add_matrix(A + "in_proj_b", normal(static_cast<size_t>(p.lin_v_heads) * p.hidden, sd), p.lin_v_heads, p.hidden, q4);
      ts.add_matrix(A + "in_proj_a", normal(static_cast<size_t>(p.lin_v_heads) * p.hidden, sd), p.lin_v_heads, p.hidden, q4);
      ts.add_matrix(A + "out_proj", normal(static_cast<size_t>(p.hidden) * vd, sd), p.hidden, vd, q4);
      ts.add_bf16(A + "conv1d.weight", uniform(static_cast<size_t>(conv_dim) * K, -0.5f, 0.5f), {conv_dim, K, 1});
      auto alog = uniform(p.lin_v_heads, 1.0f, 16.0f);
      for (auto& x : alog) x = std::log(x);
      ts.add(A + "A_log", DType::f32, {p.lin_v_heads}, alog);
      ts.add_bf16(A + "dt_bias", uniform(p.lin_v_heads, 0.5f, 1.5f), {p.lin_v_heads});
      ts.add_bf16(A + "norm.weight", norm(p.lin_dim), {p.lin_dim});
    } else {
      const std::string A = L + "self_attn.";
      ts.add_matrix(A + "q_proj", normal(static_cast<size_t>(2) * p.heads * hd * p.hidden, sd), 2 * p.heads * hd, p.hidden, q4);
      ts.add_matrix(A + "k_proj", normal(static_cast<size_t>(p.kv_heads) * hd * p.hidden, sd), p.kv_heads * hd, p.hidden, q4);
      ts.add_matrix(A + "v_proj", normal(static_cast<size_t>(p.kv_heads) * hd * p.hidden, sd), p.kv_heads * hd, p.hidden, q4);
      ts.add_matrix(A + "o_proj", normal(static_cast<size_t>(p.hidden) * p.heads * hd, sd), p.hidden, p.heads * hd, q4);
      ts.add_bf16(A + "q_norm.weight", norm(hd), {hd});
      ts.add_bf16(A + "k_norm.weight", norm(hd), {hd});
    }
  }
  ts.add_bf16(pre + "norm.weight", norm(p.hidden), {p.hidden});
  if (!p.tied)
    ts.add_matrix("language_model.lm_head", normal(static_cast<size_t>(p.vocab) * p.hidden, sd), p.vocab, p.hidden, q4);
  write_safetensors(out_dir + "/model.safetensors", ts.list, {{"format", "mlx"}});

  using json = nlohmann::ordered_json;
  json layer_types = json::array();
  for (int l = 0; l < p.layers; ++l) layer_types.push_back((l + 1) % interval ? "linear_attention" : "full_attention");
  json text = {{"model_type", "qwen3_5_text"},
               {"hidden_size", p.hidden},
               {"num_hidden_layers", p.layers},
               {"layer_types", layer_types},
               {"full_attention_interval", interval},
               {"num_attention_heads", p.heads},
               {"num_key_value_heads", p.kv_heads},
               {"head_dim", hd},
               {"intermediate_size", p.inter},
               {"vocab_size", p.vocab},
               {"rms_norm_eps", 1e-6},
               {"tie_word_embeddings", p.tied},
               {"attention_bias", false},
               {"attn_output_gate", true},
               {"rope_parameters",
                {{"rope_type", "default"}, {"rope_theta", 10000000.0}, {"partial_rotary_factor", 0.25},
                 {"mrope_section", {11, 11, 10}}, {"mrope_interleaved", true}}},
               {"max_position_embeddings", 262144},
               {"linear_num_key_heads", p.lin_k_heads},
               {"linear_num_value_heads", p.lin_v_heads},
               {"linear_key_head_dim", p.lin_dim},
               {"linear_value_head_dim", p.lin_dim},
               {"linear_conv_kernel_dim", K},
               {"mamba_ssm_dtype", "float32"},
               {"hidden_act", "silu"},
               {"eos_token_id", p.vocab == 512 ? 508 : 248044}};
  json cfg = {{"architectures", {"Qwen3_5ForConditionalGeneration"}},
              {"model_type", "qwen3_5"},
              {"text_config", text},
              {"tie_word_embeddings", p.tied}};
  if (q4) {
    cfg["quantization"] = {{"group_size", 64}, {"bits", 4}, {"mode", "affine"}};
    cfg["quantization_config"] = cfg["quantization"];
  }
  write_text(out_dir + "/config.json", cfg.dump(2) + "\n");
  if (p.vocab == 512) {
    write_text(out_dir + "/tokenizer.json", tiny_tokenizer_json(p.vocab) + "\n");
  } else {
    std::ifstream in(tokenizer_json, std::ios::binary);
    check(in.good(), "{}: cannot read the tokenizer.json to copy into the model", tokenizer_json);
    std::stringstream ss;
    ss << in.rdbuf();
    write_text(out_dir + "/tokenizer.json", ss.str());
  }
}

void make_llama_family_model(const std::string& arch, const std::string& out_dir, uint64_t seed) {
  check(arch == "llama" || arch == "qwen2" || arch == "qwen3",
        "--arch: '{}' is not one of qwen3_5, llama, qwen2, qwen3", arch);
  const int hidden = 128, layers = 2, heads = 4, kv_heads = 2, hd = 32, inter = 256, vocab = 512;
  make_out_dir(out_dir);
  std::mt19937_64 rng(seed);
  auto normal = [&](size_t n, float sd, float mean = 0.0f) {
    std::vector<float> v(n);
    std::normal_distribution<float> nd(mean, sd);
    for (auto& x : v) x = nd(rng);
    return v;
  };
  TensorSet ts;
  const float sd = 0.05f;
  ts.add_bf16("model.embed_tokens.weight", normal(static_cast<size_t>(vocab) * hidden, 1.0f), {vocab, hidden});
  for (int l = 0; l < layers; ++l) {
    const std::string L = "model.layers." + std::to_string(l) + ".";
    ts.add_bf16(L + "input_layernorm.weight", normal(hidden, 0.05f, 1.0f), {hidden});
    ts.add_bf16(L + "post_attention_layernorm.weight", normal(hidden, 0.05f, 1.0f), {hidden});
    ts.add_bf16(L + "self_attn.q_proj.weight", normal(static_cast<size_t>(heads) * hd * hidden, sd), {heads * hd, hidden});
    ts.add_bf16(L + "self_attn.k_proj.weight", normal(static_cast<size_t>(kv_heads) * hd * hidden, sd), {kv_heads * hd, hidden});
    ts.add_bf16(L + "self_attn.v_proj.weight", normal(static_cast<size_t>(kv_heads) * hd * hidden, sd), {kv_heads * hd, hidden});
    ts.add_bf16(L + "self_attn.o_proj.weight", normal(static_cast<size_t>(hidden) * heads * hd, sd), {hidden, heads * hd});
    if (arch == "qwen2") {
      ts.add_bf16(L + "self_attn.q_proj.bias", normal(static_cast<size_t>(heads) * hd, 0.1f), {heads * hd});
      ts.add_bf16(L + "self_attn.k_proj.bias", normal(static_cast<size_t>(kv_heads) * hd, 0.1f), {kv_heads * hd});
      ts.add_bf16(L + "self_attn.v_proj.bias", normal(static_cast<size_t>(kv_heads) * hd, 0.1f), {kv_heads * hd});
    }
    if (arch == "qwen3") {
      ts.add_bf16(L + "self_attn.q_norm.weight", normal(hd, 0.05f, 1.0f), {hd});
      ts.add_bf16(L + "self_attn.k_norm.weight", normal(hd, 0.05f, 1.0f), {hd});
    }
    ts.add_bf16(L + "mlp.gate_proj.weight", normal(static_cast<size_t>(inter) * hidden, sd), {inter, hidden});
    ts.add_bf16(L + "mlp.up_proj.weight", normal(static_cast<size_t>(inter) * hidden, sd), {inter, hidden});
    ts.add_bf16(L + "mlp.down_proj.weight", normal(static_cast<size_t>(hidden) * inter, sd), {hidden, inter});
  }
  ts.add_bf16("model.norm.weight", normal(hidden, 0.05f, 1.0f), {hidden});
  ts.add_bf16("lm_head.weight", normal(static_cast<size_t>(vocab) * hidden, sd), {vocab, hidden});
  write_safetensors(out_dir + "/model.safetensors", ts.list);
  nlohmann::ordered_json cfg = {{"model_type", arch},
                                {"hidden_size", hidden},
                                {"intermediate_size", inter},
                                {"num_hidden_layers", layers},
                                {"num_attention_heads", heads},
                                {"num_key_value_heads", kv_heads},
                                {"head_dim", hd},
                                {"vocab_size", vocab},
                                {"max_position_embeddings", 4096},
                                {"rms_norm_eps", 1e-6},
                                {"rope_theta", 1000000.0},
                                {"tie_word_embeddings", false},
                                {"hidden_act", "silu"},
                                {"eos_token_id", vocab - 4}};
  if (arch == "llama") cfg["attention_bias"] = false;
  write_text(out_dir + "/config.json", cfg.dump(2) + "\n");
  write_text(out_dir + "/tokenizer.json", tiny_tokenizer_json(vocab) + "\n");
}

void convert_checkpoint(const std::string& in_dir, const std::string& out_dir, const std::string& scheme) {
  check(scheme == "mlx4", "--quantize: '{}' is not supported (supported: mlx4)", scheme);
  namespace fs = std::filesystem;
  check(fs::weakly_canonical(in_dir) != fs::weakly_canonical(out_dir),
        "--out: must differ from --in (checkpoints are never modified in place)");
  Checkpoint ck(in_dir);  // validates config and files
  make_out_dir(out_dir);
  TensorSet ts;
  for (const auto& e : fs::directory_iterator(in_dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("model", 0) != 0 || e.path().extension() != ".safetensors") continue;
    SafetensorsFile f(e.path().string());
    for (const auto& [name, t] : f.tensors()) {
      const bool is_matrix = t.shape.size() == 2 && name.ends_with(".weight") &&
                             (t.dtype == DType::f32 || t.dtype == DType::bf16 || t.dtype == DType::f16) &&
                             t.shape[1] % 64 == 0 && name.find("norm") == std::string::npos;
      std::vector<float> v(t.numel());
      for (size_t i = 0; i < v.size(); ++i) v[i] = to_float(t.dtype, t.data + i * dtype_size(t.dtype));
      if (is_matrix) {
        ts.add_matrix(name.substr(0, name.size() - 7), v, t.shape[0], t.shape[1], true);
      } else {
        std::vector<uint8_t> raw(t.data, t.data + t.nbytes);
        ts.add(name, t.dtype, t.shape, raw);
      }
    }
  }
  write_safetensors(out_dir + "/model.safetensors", ts.list, {{"format", "mlx"}});
  std::ifstream cf(in_dir + "/config.json");
  auto cfg = nlohmann::ordered_json::parse(cf);
  cfg["quantization"] = {{"group_size", 64}, {"bits", 4}, {"mode", "affine"}};
  cfg["quantization_config"] = cfg["quantization"];
  write_text(out_dir + "/config.json", cfg.dump(2) + "\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"})
    if (fs::exists(fs::path(in_dir) / f))
      fs::copy_file(fs::path(in_dir) / f, fs::path(out_dir) / f, fs::copy_options::overwrite_existing);
}

}  // namespace tq
