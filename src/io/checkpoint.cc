#include "io/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/f16.h"

namespace tq {

const char* const kSupportedModelTypes = "llama, qwen2, qwen3, qwen3_5";

namespace {
using json = nlohmann::json;

template <typename T>
T get_or(const json& j, const char* key, T def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  return it->get<T>();
}

int require_int(const json& j, const char* key, const std::string& path) {
  auto it = j.find(key);
  check(it != j.end() && it->is_number_integer() && it->get<int64_t>() > 0,
        "{}: field '{}' is missing or not a positive integer", path, key);
  return it->get<int>();
}

void read_ids(const json& v, std::vector<int>& out) {
  if (v.is_number_integer()) out.push_back(v.get<int>());
  if (v.is_array())
    for (const auto& x : v)
      if (x.is_number_integer()) out.push_back(x.get<int>());
}
}  // namespace

ModelConfig ModelConfig::parse(const std::string& text, const std::string& path) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  check(root.is_object(), "{}: expected a JSON object", path);
  ModelConfig c;
  const json& t = root.contains("text_config") && root["text_config"].is_object() ? root["text_config"] : root;
  try {
    c.model_type = get_or<std::string>(root, "model_type", "");
    if (c.model_type == "qwen3_5_text" || get_or<std::string>(t, "model_type", "") == "qwen3_5_text")
      c.model_type = "qwen3_5";
    check(c.model_type == "llama" || c.model_type == "qwen2" || c.model_type == "qwen3" || c.model_type == "qwen3_5",
          "{}: field 'model_type' is '{}'; supported model types: {}", path, c.model_type, kSupportedModelTypes);
    c.hidden = require_int(t, "hidden_size", path);
    c.n_layers = require_int(t, "num_hidden_layers", path);
    c.n_heads = require_int(t, "num_attention_heads", path);
    c.n_kv_heads = get_or<int>(t, "num_key_value_heads", c.n_heads);
    c.head_dim = get_or<int>(t, "head_dim", c.hidden / c.n_heads);
    c.intermediate = require_int(t, "intermediate_size", path);
    c.vocab = require_int(t, "vocab_size", path);
    c.rms_eps = get_or<double>(t, "rms_norm_eps", 1e-6);
    c.max_position = get_or<int>(t, "max_position_embeddings", 0);
    c.tie_embeddings = get_or<bool>(t, "tie_word_embeddings", get_or<bool>(root, "tie_word_embeddings", false));
    c.rope_theta = get_or<double>(t, "rope_theta", 10000.0);
    c.partial_rotary = get_or<double>(t, "partial_rotary_factor", 1.0);
    if (t.contains("rope_parameters") && t["rope_parameters"].is_object()) {
      const auto& rp = t["rope_parameters"];
      c.rope_theta = get_or<double>(rp, "rope_theta", c.rope_theta);
      c.partial_rotary = get_or<double>(rp, "partial_rotary_factor", c.partial_rotary);
    }
    c.attn_bias = c.model_type == "qwen2" || get_or<bool>(t, "attention_bias", false);
    c.qk_norm = c.model_type == "qwen3" || c.model_type == "qwen3_5";
    if (c.model_type == "qwen3_5") {
      c.attn_output_gate = true;
      if (!t.contains("partial_rotary_factor") &&
          !(t.contains("rope_parameters") && t["rope_parameters"].contains("partial_rotary_factor")))
        c.partial_rotary = 0.25;
      const int interval = get_or<int>(t, "full_attention_interval", 4);
      check(interval > 0, "{}: field 'full_attention_interval' must be > 0", path);
      c.is_linear.resize(c.n_layers);
      for (int i = 0; i < c.n_layers; ++i) c.is_linear[i] = (i + 1) % interval != 0;
      if (t.contains("layer_types") && t["layer_types"].is_array()) {
        check(static_cast<int>(t["layer_types"].size()) == c.n_layers,
              "{}: field 'layer_types' has {} entries, expected num_hidden_layers = {}", path, t["layer_types"].size(),
              c.n_layers);
        for (int i = 0; i < c.n_layers; ++i) c.is_linear[i] = t["layer_types"][i].get<std::string>() == "linear_attention";
      }
      c.lin_k_heads = require_int(t, "linear_num_key_heads", path);
      c.lin_v_heads = require_int(t, "linear_num_value_heads", path);
      c.lin_k_dim = require_int(t, "linear_key_head_dim", path);
      c.lin_v_dim = require_int(t, "linear_value_head_dim", path);
      c.conv_kernel = require_int(t, "linear_conv_kernel_dim", path);
      check(c.lin_v_heads % c.lin_k_heads == 0, "{}: linear_num_value_heads must be a multiple of linear_num_key_heads",
            path);
    } else {
      c.is_linear.assign(c.n_layers, false);
    }
    check(c.n_heads % c.n_kv_heads == 0, "{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
          path, c.n_heads, c.n_kv_heads);
    check(c.head_dim > 0, "{}: head_dim must be > 0", path);
    if (root.contains("eos_token_id")) read_ids(root["eos_token_id"], c.eos_ids);
    if (c.eos_ids.empty() && t.contains("eos_token_id")) read_ids(t["eos_token_id"], c.eos_ids);
    if (root.contains("bos_token_id") && root["bos_token_id"].is_number_integer()) c.bos_id = root["bos_token_id"];
    else if (t.contains("bos_token_id") && t["bos_token_id"].is_number_integer()) c.bos_id = t["bos_token_id"];
    const json* q = nullptr;
    for (const json* src : std::initializer_list<const json*>{&root, &t})
      for (const char* k : {"quantization", "quantization_config"})
        if (!q && src->contains(k) && (*src)[k].is_object()) q = &(*src)[k];
    if (q) {
      c.quant_bits = get_or<int>(*q, "bits", 0);
      c.quant_group = get_or<int>(*q, "group_size", 0);
    }
  } catch (const json::exception& e) {
    fail("{}: a field has the wrong type: {}", path, e.what());
  }
  return c;
}

ModelConfig ModelConfig::load(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream f(path);
  check(f.good(), "{}: missing (a checkpoint directory needs config.json)", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return parse(ss.str(), path);
}

size_t Weight::bytes() const {
  if (!quantized()) return static_cast<size_t>(rows * cols) * dtype_size(dtype);
  return static_cast<size_t>(rows) * (cols * bits / 8 + 2 * (cols / group) * dtype_size(sdtype));
}

void Weight::dequantize_row(int64_t r, float* out) const {
  if (!quantized()) {
    const size_t es = dtype_size(dtype);
    const uint8_t* p = data + static_cast<size_t>(r * cols) * es;
    if (dtype == DType::f32) {
      std::memcpy(out, p, cols * sizeof(float));
      return;
    }
    for (int64_t j = 0; j < cols; ++j) out[j] = to_float(dtype, p + j * es);
    return;
  }
  const uint8_t* row = data + static_cast<size_t>(r) * (cols * bits / 8);
  const int64_t ng = cols / group;
  const size_t ss = dtype_size(sdtype);
  const unsigned mask = (1u << bits) - 1;
  if (bits == 4) {  // the common case, one byte per two codes
    for (int64_t g = 0; g < ng; ++g) {
      const float s = to_float(sdtype, scales + (r * ng + g) * ss);
      const float b = to_float(sdtype, biases + (r * ng + g) * ss);
      for (int64_t j = g * group; j < (g + 1) * group; j += 2) {
        const uint8_t v = row[j / 2];
        out[j] = s * static_cast<float>(v & 15) + b;
        out[j + 1] = s * static_cast<float>(v >> 4) + b;
      }
    }
    return;
  }
  for (int64_t g = 0; g < ng; ++g) {
    const float s = to_float(sdtype, scales + (r * ng + g) * ss);
    const float b = to_float(sdtype, biases + (r * ng + g) * ss);
    for (int64_t j = g * group; j < (g + 1) * group; ++j) {
      const int64_t bit = j * bits;
      uint32_t v = 0;
      std::memcpy(&v, row + bit / 8, std::min<int64_t>(4, (cols * bits / 8) - bit / 8));
      out[j] = s * static_cast<float>((v >> (bit % 8)) & mask) + b;
    }
  }
}

namespace {
// Text-model names: strip the multimodal wrappers; drop vision and MTP tensors.
bool normalize_name(const std::string& in, std::string& out) {
  if (in.rfind("vision_tower.", 0) == 0 || in.rfind("model.visual.", 0) == 0 || in.find("mtp.") != std::string::npos)
    return false;
  out = in;
  if (out.rfind("language_model.", 0) == 0) out = out.substr(15);
  if (out.rfind("model.language_model.", 0) == 0) out = "model." + out.substr(21);
  return true;
}
}  // namespace

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  namespace fs = std::filesystem;
  check(fs::is_directory(dir), "{}: not a directory (expected a checkpoint directory with config.json)", dir);
  config_ = ModelConfig::load(dir);
  std::vector<std::string> paths;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("model", 0) == 0 && e.path().extension() == ".safetensors") paths.push_back(e.path().string());
  }
  std::sort(paths.begin(), paths.end());
  check(!paths.empty(), "{}: no model*.safetensors files", dir);
  for (const auto& p : paths) {
    files_.push_back(std::make_unique<SafetensorsFile>(p));
    for (const auto& [name, info] : files_.back()->tensors()) {
      std::string n;
      if (!normalize_name(name, n)) continue;
      check(!tensors_.count(n), "{}: tensor '{}' appears twice (also in {})", p, name, file_of_[n]);
      tensors_[n] = &info;
      file_of_[n] = p;
    }
  }
}

bool Checkpoint::has(const std::string& name) const { return tensors_.count(name) > 0; }

const TensorInfo& Checkpoint::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  check(it != tensors_.end(), "{}: missing tensor '{}'", dir_, name);
  return *it->second;
}

Weight Checkpoint::matrix(const std::string& name, int64_t rows, int64_t cols) const {
  const TensorInfo& w = tensor(name + ".weight");
  const std::string& file = file_of_.at(name + ".weight");
  Weight out;
  out.name = name;
  out.rows = rows;
  out.cols = cols;
  out.data = w.data;
  if (has(name + ".scales")) {
    const TensorInfo& s = tensor(name + ".scales");
    check(has(name + ".biases"), "{}: tensor '{}.scales' has no matching '{}.biases'", file, name, name);
    const TensorInfo& b = tensor(name + ".biases");
    check((w.dtype == DType::u32 || w.dtype == DType::i32) && w.shape.size() == 2 && w.shape[0] == rows,
          "{}: quantized tensor '{}.weight' must be U32 [{}, cols·bits/32], found {} {}", file, name, rows,
          dtype_name(w.dtype), w.shape_str());
    check(s.shape.size() == 2 && s.shape[0] == rows && s.shape[1] > 0 && cols % s.shape[1] == 0,
          "{}: '{}.scales' must be [{}, in/group] with in = {}, found {}", file, name, rows, cols, s.shape_str());
    check(b.shape == s.shape && b.dtype == s.dtype, "{}: '{}.biases' {} {} must match scales {} {}", file, name,
          dtype_name(b.dtype), b.shape_str(), dtype_name(s.dtype), s.shape_str());
    check(s.dtype == DType::bf16 || s.dtype == DType::f16 || s.dtype == DType::f32,
          "{}: '{}.scales' has dtype {}, expected BF16, F16 or F32", file, name, dtype_name(s.dtype));
    check((w.shape[1] * 32) % cols == 0, "{}: '{}.weight' has {} words per row, not a whole bit width for in = {}",
          file, name, w.shape[1], cols);
    out.bits = static_cast<int>(w.shape[1] * 32 / cols);
    out.group = static_cast<int>(cols / s.shape[1]);
    check(out.bits == 2 || out.bits == 3 || out.bits == 4 || out.bits == 5 || out.bits == 6 || out.bits == 8,
          "{}: '{}' derives {} bits from its shapes, expected 2, 3, 4, 5, 6 or 8", file, name, out.bits);
    check(out.group == 32 || out.group == 64 || out.group == 128,
          "{}: '{}' derives group size {} from its shapes, expected 32, 64 or 128", file, name, out.group);
    out.scales = s.data;
    out.biases = b.data;
    out.sdtype = s.dtype;
  } else {
    check(w.dtype == DType::f32 || w.dtype == DType::f16 || w.dtype == DType::bf16,
          "{}: tensor '{}.weight' has dtype {}, expected F32, F16 or BF16 (or U32 with .scales/.biases)", file, name,
          dtype_name(w.dtype));
    check(w.shape.size() == 2 && w.shape[0] == rows && w.shape[1] == cols,
          "{}: tensor '{}.weight' has shape {}, expected [{}, {}]", file, name, w.shape_str(), rows, cols);
    out.dtype = w.dtype;
  }
  return out;
}

std::vector<float> Checkpoint::floats(const std::string& name) const {
  const TensorInfo& t = tensor(name);
  check(t.dtype == DType::f32 || t.dtype == DType::f16 || t.dtype == DType::bf16,
        "{}: tensor '{}' has dtype {}, expected F32, F16 or BF16", file_of_.at(name), name, dtype_name(t.dtype));
  std::vector<float> v(t.numel());
  const size_t es = dtype_size(t.dtype);
  for (size_t i = 0; i < v.size(); ++i) v[i] = to_float(t.dtype, t.data + i * es);
  return v;
}

std::vector<float> Checkpoint::vector(const std::string& name, int64_t n) const {
  const TensorInfo& t = tensor(name);
  check(t.numel() == n, "{}: tensor '{}' has shape {}, expected {} values", file_of_.at(name), name, t.shape_str(), n);
  return floats(name);
}

size_t Checkpoint::weight_bytes() const {
  size_t b = 0;
  for (const auto& [n, t] : tensors_) b += t->nbytes;
  return b;
}

int64_t Checkpoint::parameter_count() const {
  int64_t p = 0;
  for (const auto& [n, t] : tensors_) {
    if (n.size() > 7 && (n.ends_with(".scales") || n.ends_with(".biases"))) continue;
    if ((t->dtype == DType::u32 || t->dtype == DType::i32) && n.ends_with(".weight") && has(n.substr(0, n.size() - 7) + ".scales")) {
      // Logical elements = rows × words·32/bits; per-module bit widths default to the config's.
      const int bits = config_.quant_bits > 0 ? config_.quant_bits : 4;
      p += t->shape[0] * (t->shape[1] * 32 / bits);
      continue;
    }
    p += t->numel();
  }
  return p;
}

}  // namespace tq
