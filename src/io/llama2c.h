// Import karpathy's llama2.c checkpoints ("legacy" .bin: 7 int32 header, then fp32
// weights) and tokenizer.bin files into a normal checkpoint directory:
// config.json (model_type llama), model.safetensors (F32), tokenizer.json
// (SentencePiece-style BPE with byte fallback).
#pragma once
#include <string>

namespace tq {

void import_llama2c(const std::string& model_bin, const std::string& tokenizer_bin, const std::string& out_dir);

}  // namespace tq
