// tq make-model / convert / info.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/writer.h"
#include "kv/kv_slot.h"
#include "model/model.h"

namespace tq::cli {

Runner add_make_model(CLI::App& app) {
  struct O {
    std::string arch = "qwen3_5", preset = "tiny", dtype = "mlx4", out;
    uint64_t seed = 1;
  };
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("make-model", "Write a random-weight checkpoint with a real Qwen3.5 config");
  c->add_option("--arch", o->arch, "Architecture: qwen3_5, or llama / qwen2 / qwen3 (tiny only)")->capture_default_str();
  c->add_option("--preset", o->preset, "tiny, 0.8b, 2b, 4b, 9b")->capture_default_str();
  c->add_option("--dtype", o->dtype, "mlx4 or bf16")->capture_default_str();
  c->add_option("--seed", o->seed, "Seed")->capture_default_str();
  c->add_option("--out", o->out, "Output directory")->required();
  return [o] {
    if (o->arch != "qwen3_5") {
      check(o->preset == "tiny", "--preset: only 'tiny' exists for --arch {}", o->arch);
      make_llama_family_model(o->arch, o->out, o->seed);
      fmt::print("wrote {} ({} tiny bf16)\n", o->out, o->arch);
      return 0;
    }
    make_qwen35_model(o->preset, o->dtype, o->out, o->seed,
                      builtin_model_dir() + "/../../tests/data/tokenizers/qwen3_tokenizer.json");
    fmt::print("wrote {} ({} {} {})\n", o->out, o->arch, o->preset, o->dtype);
    return 0;
  };
}

Runner add_convert(CLI::App& app) {
  struct O {
    std::string in, out, quantize = "mlx4";
  };
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("convert", "Quantize a bf16/f32 checkpoint (MLX affine 4-bit, group 64)");
  c->add_option("--in", o->in, "Input checkpoint directory")->required();
  c->add_option("--out", o->out, "Output directory")->required();
  c->add_option("--quantize", o->quantize, "Scheme (mlx4)")->capture_default_str();
  return [o] {
    convert_checkpoint(o->in, o->out, o->quantize);
    fmt::print("wrote {}\n", o->out);
    return 0;
  };
}

Runner add_info(CLI::App& app) {
  struct O {
    std::string model;
    bool json = false;
    double budget_gib = 16;
  };
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("info", "Layers, parameters, weight bytes and KV memory per cache policy");
  c->add_option("-m,--model", o->model, "Checkpoint directory (default: the built-in model)");
  c->add_option("--budget-gib", o->budget_gib, "Memory budget for the longest-context estimate")->capture_default_str();
  c->add_flag("--json", o->json, "Print one JSON object");
  return [o] {
    const std::string dir = o->model.empty() ? builtin_model_dir() : o->model;
    Checkpoint ck(dir);
    const ModelConfig& m = ck.config();
    int n_attn = 0, n_lin = 0;
    for (bool l : m.is_linear) (l ? n_lin : n_attn)++;
    const size_t state = static_cast<size_t>(n_lin) *
                         ((m.conv_kernel > 0 ? (m.conv_kernel - 1) : 0) *
                              (2 * m.lin_k_heads * m.lin_k_dim + m.lin_v_heads * m.lin_v_dim) +
                          static_cast<size_t>(m.lin_v_heads) * m.lin_v_dim * m.lin_k_dim) *
                         4;
    nlohmann::json pol = nlohmann::json::array();
    const double budget = o->budget_gib * (1ull << 30);
    for (const char* p : {"f32", "bf16", "fp16", "tq4", "tq3", "tq2", "k8v3", "k16v3"}) {
      auto slot = make_kv_slot(CachePolicy::parse(p), KVGeometry{m.n_heads, m.n_kv_heads, m.head_dim});
      const size_t per_token = slot->bytes_per_token() * n_attn;
      const double left = budget - static_cast<double>(ck.weight_bytes()) - static_cast<double>(state);
      const double max_ctx = per_token ? std::max(0.0, left / per_token) : 0;
      pol.push_back({{"kv", p}, {"bytes_per_token", per_token}, {"max_context_in_budget", static_cast<int64_t>(max_ctx)}});
    }
    nlohmann::json j = {{"model", dir},
                        {"model_type", m.model_type},
                        {"layers", m.n_layers},
                        {"attention_layers", n_attn},
                        {"deltanet_layers", n_lin},
                        {"hidden", m.hidden},
                        {"heads", m.n_heads},
                        {"kv_heads", m.n_kv_heads},
                        {"head_dim", m.head_dim},
                        {"vocab", m.vocab},
                        {"parameters", ck.parameter_count()},
                        {"weight_bytes", ck.weight_bytes()},
                        {"deltanet_state_bytes", state},
                        {"budget_bytes", static_cast<int64_t>(budget)},
                        {"kv", pol}};
    if (o->json) {
      fmt::print("{}\n", j.dump());
      return 0;
    }
    fmt::print("{}: {} — {} layers ({} attention, {} Gated DeltaNet), hidden {}, heads {}/{} × {}, vocab {}\n", dir,
               m.model_type, m.n_layers, n_attn, n_lin, m.hidden, m.n_heads, m.n_kv_heads, m.head_dim, m.vocab);
    fmt::print("parameters {:.3f} B, weight bytes {:.1f} MB, DeltaNet state per sequence {:.1f} MiB\n",
               ck.parameter_count() / 1e9, ck.weight_bytes() / 1e6, state / 1048576.0);
    fmt::print("{:>8} {:>14} {:>24}\n", "kv", "KV B/token", fmt::format("max ctx in {} GiB", o->budget_gib));
    for (const auto& p : pol)
      fmt::print("{:>8} {:>14} {:>24}\n", p["kv"].get<std::string>(), p["bytes_per_token"].get<size_t>(),
                 p["max_context_in_budget"].get<int64_t>());
    return 0;
  };
}

}  // namespace tq::cli
