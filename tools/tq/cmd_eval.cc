// tq eval: perplexity, KL divergence and top-1 agreement of each cache policy against
// the f32 cache; --niah adds a passkey-retrieval table.
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "progress.h"
#include "runtime/evaluate.h"
#include "tokenizer/tokenizer.h"

namespace tq::cli {

Runner add_eval(CLI::App& app) {
  struct O {
    std::string model, kv = "fp16,tq4,tq3,k8v3,k16v3", text;
    int ctx = 512, stride = 0, max_tokens = 0;
    bool json = false, niah = false;
    std::vector<int> niah_lengths{256, 512, 1024};
    std::vector<double> niah_depths{0.0, 0.25, 0.5, 0.75, 1.0};
    int niah_trials = 2;
    uint64_t seed = 1;
    std::string device = "cpu";
  };
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("eval", "Perplexity, KL divergence and top-1 agreement per cache policy vs the f32 cache");
  c->add_option("-m,--model", o->model, "Checkpoint directory (default: the built-in model)");
  c->add_option("--kv", o->kv, "Cache policies, comma-separated")->capture_default_str();
  c->add_option("--text", o->text, "Text file to score")->required();
  c->add_option("--ctx", o->ctx, "Window length in tokens")->capture_default_str();
  c->add_option("--stride", o->stride, "Window step (default: ctx, no overlap)");
  c->add_option("--max-tokens", o->max_tokens, "Score only the first N tokens of the text (0 = all)");
  c->add_flag("--json", o->json, "Print one JSON object");
  c->add_flag("--niah", o->niah, "Also run needle-in-a-haystack (passkey) retrieval");
  c->add_option("--niah-lengths", o->niah_lengths, "Haystack lengths in tokens")->delimiter(',')->capture_default_str();
  c->add_option("--niah-depths", o->niah_depths, "Needle depths in [0, 1]")->delimiter(',')->capture_default_str();
  c->add_option("--niah-trials", o->niah_trials, "Trials per cell")->capture_default_str();
  c->add_option("--seed", o->seed, "Seed of the passkeys")->capture_default_str();
  c->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  return [o] {
    const std::string dir = o->model.empty() ? builtin_model_dir() : o->model;
    const auto policies = CachePolicy::parse_list(o->kv);
    auto model = load_model(dir, o->device);
    Tokenizer tok = Tokenizer::load(dir + "/tokenizer.json");
    std::ifstream f(o->text, std::ios::binary);
    check(f.good(), "--text: cannot open {}", o->text);
    std::stringstream ss;
    ss << f.rdbuf();
    std::string text = ss.str();
    const size_t budget = o->max_tokens > 0 ? static_cast<size_t>(o->max_tokens) : 0;
    size_t max_needed = budget;
    if (o->niah)
      for (int L : o->niah_lengths) max_needed = std::max(max_needed, static_cast<size_t>(L));
    if (max_needed > 0 && text.size() > max_needed * 16 + 64) text.resize(max_needed * 16 + 64);
    std::vector<int32_t> ids;
    if (model->config().bos_id >= 0 && tok.id_of("<|im_start|>") < 0) ids.push_back(model->config().bos_id);
    auto t = tok.encode(text);
    ids.insert(ids.end(), t.begin(), t.end());
    if (budget > 0 && ids.size() > budget) ids.resize(budget);
    auto& pool = ThreadPool::global();
    Progress bar("eval");
    auto res = evaluate_policies(*model, ids, policies, o->ctx, o->stride > 0 ? o->stride : o->ctx, pool,
                                 [&](size_t d, size_t n) { bar.update(d, n); });
    nlohmann::json out = {{"model", dir}, {"text", o->text}, {"ctx", o->ctx}, {"results", nlohmann::json::array()}};
    for (const auto& r : res)
      out["results"].push_back({{"kv", r.kv}, {"ppl", r.ppl}, {"kl", r.kl}, {"top1", r.top1}, {"tokens", r.tokens}});
    std::vector<NiahCell> cells;
    if (o->niah) {
      Progress nb("niah");
      cells = niah(*model, tok, t, policies, o->niah_lengths, o->niah_depths, o->niah_trials, o->seed, pool,
                   [&](size_t d, size_t n) { nb.update(d, n); });
      out["niah"] = nlohmann::json::array();
      for (const auto& cell : cells) {
        nlohmann::json row = {{"length", cell.length}, {"depth", cell.depth}};
        for (size_t p = 0; p < policies.size(); ++p) row[policies[p].name()] = cell.pass[p];
        out["niah"].push_back(row);
      }
    }
    if (o->json) {
      fmt::print("{}\n", out.dump());
      return 0;
    }
    fmt::print("{} on {} ({} positions scored, windows of {} tokens)\n\n", dir, o->text,
               res.empty() ? 0 : res[0].tokens, o->ctx);
    fmt::print("| kv | PPL | ΔPPL vs f32 cache | KL (nats) | top-1 agreement |\n|---|---:|---:|---:|---:|\n");
    for (const auto& r : res)
      fmt::print("| {} | {:.4f} | {:+.2f}% | {:.5f} | {:.2f}% |\n", r.kv, r.ppl, 100 * (r.ppl / res[0].ppl - 1), r.kl,
                 100 * r.top1);
    if (o->niah) {
      fmt::print("\nNeedle in a haystack (pass rate per length × depth)\n\n| length | depth |");
      for (const auto& p : policies) fmt::print(" {} |", p.name());
      fmt::print("\n|---:|---:|");
      for (size_t p = 0; p < policies.size(); ++p) fmt::print("---:|");
      fmt::print("\n");
      for (const auto& cell : cells) {
        fmt::print("| {} | {:.2f} |", cell.length, cell.depth);
        for (double v : cell.pass) fmt::print(" {:.2f} |", v);
        fmt::print("\n");
      }
    }
    return 0;
  };
}

}  // namespace tq::cli
