// The weights of a model as the checkpoint holds them (Weight views into the mapped
// files, small vectors as floats), one description for every backend: the CPU forward
// passes read them in place, the CUDA backend uploads them once.
#pragma once
#include <vector>

#include "io/checkpoint.h"

namespace tq {

struct AttnWeights {
  Weight q, k, v, o;  // qwen3_5: q yields [q | gate] per head, interleaved (2·n_heads·head_dim rows)
  std::vector<float> q_norm, k_norm;          // per-head RMSNorm (qwen3, qwen3_5), else empty
  std::vector<float> q_bias, k_bias, v_bias;  // qwen2, else empty
};

struct DeltaWeights {  // Gated DeltaNet (qwen3_5 linear-attention layers)
  Weight qkv, z, b, a, out;
  std::vector<float> conv;  // [conv_dim][K], tap K-1 multiplies the newest input
  std::vector<float> a_log, dt_bias, norm;
};

struct LayerWeights {
  bool linear = false;  // DeltaNet layer (else attention)
  std::vector<float> in_norm, post_norm;
  Weight gate, up, down;
  AttnWeights attn;
  DeltaWeights delta;
};

struct ModelWeights {
  Weight embed, head;
  std::vector<float> final_norm;
  std::vector<LayerWeights> layers;
};

// Every supported model type. Qwen3.5 norm weights come out as the multiplier (1 + w
// for raw HF checkpoints, as stored for MLX-converted ones; see weights.cc).
ModelWeights load_weights(const Checkpoint& ck);

}  // namespace tq
