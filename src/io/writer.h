// Writing checkpoints: MLX affine quantization, `tq convert`, and `tq make-model`
// (random weights with the real Qwen3.5 configs, in the MLX checkpoint layout).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tq {

// MLX affine quantization of a [rows, cols] matrix along cols in groups: per group
// scale = (max − min)/(2^bits − 1), bias = min, q = round((w − bias)/scale), codes
// packed little-endian (element j at bits [j·bits, j·bits + bits) of its row).
// Scales and biases are rounded to bf16; q is computed against the rounded values.
void quantize_affine(const float* w, int64_t rows, int64_t cols, int bits, int group, std::vector<uint32_t>& codes,
                     std::vector<uint16_t>& scales, std::vector<uint16_t>& biases);

// The output directory of the commands that write a checkpoint (make-model, convert,
// import-llama2c): created, or an existing empty one; a directory that holds files is
// refused (a user's checkpoint would be overwritten), as is a path that is not a directory.
void make_out_dir(const std::string& out_dir);

// Quantizes every 2-D weight whose input width divides by 64 (embeddings and linears)
// to 4-bit affine, group 64; copies the rest. Writes config.json with "quantization".
void convert_checkpoint(const std::string& in_dir, const std::string& out_dir, const std::string& scheme);

// `preset`: tiny, 0.8b, 2b, 4b, 9b. `dtype`: bf16 or mlx4.
// A tiny random Llama-family checkpoint (llama, qwen2 with q/k/v biases, qwen3 with
// q/k norms) in the Hugging Face layout, for tests against transformers.
void make_llama_family_model(const std::string& arch, const std::string& out_dir, uint64_t seed);

void make_qwen35_model(const std::string& preset, const std::string& dtype, const std::string& out_dir,
                       uint64_t seed, const std::string& tokenizer_json);

}  // namespace tq
