// A checkpoint directory as users have it: config.json, model*.safetensors (one
// file or shards), tokenizer.json. Weights are dense (F32/F16/BF16) or MLX affine
// quantized (a tensor P is quantized iff P.scales exists; bits and group size are
// derived from the shapes and checked against config.json's "quantization").
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <cstring>

#include "core/f16.h"
#include "io/safetensors.h"

namespace tq {

// Text-model hyperparameters, read once from config.json (flat, or nested under
// "text_config" as Qwen3.5 checkpoints have it). Unknown keys are ignored.
struct ModelConfig {
  std::string model_type;         // llama | qwen2 | qwen3 | qwen3_5
  int hidden = 0;                 // residual width
  int n_layers = 0;
  int n_heads = 0;                // query heads of attention layers
  int n_kv_heads = 0;             // K/V heads (GQA)
  int head_dim = 0;               // per head (explicit in Qwen3/3.5, else hidden / n_heads)
  int intermediate = 0;           // MLP inner width
  int vocab = 0;                  // embedding rows
  double rms_eps = 1e-6;
  double rope_theta = 10000;
  double partial_rotary = 1.0;    // fraction of head_dim that RoPE rotates
  bool tie_embeddings = false;    // logits from the embedding matrix
  bool attn_bias = false;         // q/k/v projections have biases (qwen2)
  bool qk_norm = false;           // RMSNorm on q and k per head (qwen3, qwen3_5)
  bool attn_output_gate = false;  // qwen3_5: q_proj also yields a sigmoid gate
  int max_position = 0;           // context limit (0 = unknown)
  std::vector<bool> is_linear;    // qwen3_5: layer i is Gated DeltaNet
  int lin_k_heads = 0, lin_v_heads = 0, lin_k_dim = 0, lin_v_dim = 0, conv_kernel = 0;
  int bos_id = -1;
  std::vector<int> eos_ids;
  int quant_bits = 0, quant_group = 0;  // config "quantization", 0 if absent

  int rot_dims() const { return static_cast<int>(head_dim * partial_rotary) / 2 * 2; }
  static ModelConfig parse(const std::string& json_text, const std::string& path);
  static ModelConfig load(const std::string& dir);
};

extern const char* const kSupportedModelTypes;  // "llama, qwen2, qwen3, qwen3_5"

// A weight as stored: dense, or MLX affine (w[o,j] = scale·q + bias per group).
struct Weight {
  std::string name;
  int64_t rows = 0, cols = 0;     // logical [out, in]
  DType dtype = DType::f32;       // dense element type (F32/F16/BF16)
  const uint8_t* data = nullptr;  // dense values, or packed codes (LE bit stream per row)
  int bits = 0, group = 0;        // quantized iff bits > 0
  const uint8_t* scales = nullptr;  // [rows][cols/group] of sdtype
  const uint8_t* biases = nullptr;
  DType sdtype = DType::bf16;
  bool quantized() const { return bits > 0; }
  size_t bytes() const;
  // Row r as floats (cols values).
  void dequantize_row(int64_t r, float* out) const;
};

class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);
  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  bool has(const std::string& name) const;
  // A matrix [rows, cols]; `name` without the ".weight" suffix. Throws naming the file
  // and tensor if missing, of the wrong shape, or inconsistently quantized.
  Weight matrix(const std::string& name, int64_t rows, int64_t cols) const;
  // A 1-D dense tensor of n values, as floats.
  std::vector<float> vector(const std::string& name, int64_t n) const;
  const TensorInfo& tensor(const std::string& name) const;
  // Raw tensor (any shape) as floats.
  std::vector<float> floats(const std::string& name) const;
  size_t weight_bytes() const;
  int64_t parameter_count() const;

 private:
  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> tensors_;  // normalized name → tensor
  std::map<std::string, std::string> file_of_;
};

// One F32/F16/BF16 value at p (any alignment) as float; 0 for other types.
inline float to_float(DType t, const uint8_t* p) {
  uint16_t h;
  switch (t) {
    case DType::f32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::f16: std::memcpy(&h, p, 2); return f16_to_f32(h);
    case DType::bf16: std::memcpy(&h, p, 2); return bf16_to_f32(h);
    default: return 0;
  }
}

}  // namespace tq
