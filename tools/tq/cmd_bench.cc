// tq bench: prefill and decode speed, resident KV and process memory, per cache policy
// and prompt length; medians over repeats with policies interleaved. Writes
// summary_rows.tsv, raw_rows.tsv, run_metadata.json, curve.svg and curve.png (gnuplot).
#include <fmt/format.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "progress.h"
#include "runtime/generate.h"
#include "tokenizer/tokenizer.h"

namespace tq::cli {
namespace {

struct O {
  std::string model, kv = "fp16,tq4,tq3", out = "bench-out", text;
  std::vector<double> scales{1, 1.5, 2.25, 3};
  int base = 512, gen = 32, repeats = 3;
  std::string device = "cpu";
};

struct Row {
  std::string kv;
  double scale;
  int prompt, gen, rep;
  double prefill_tps, decode_tps;
  size_t kv_bytes, rss_bytes;
};

size_t current_rss() {
  std::ifstream f("/proc/self/statm");
  size_t pages = 0, rss = 0;
  f >> pages >> rss;
  return rss * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

std::string shell_out(const std::string& cmd) {
  std::string r;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, p)) r += buf;
    ::pclose(p);
  }
  while (!r.empty() && (r.back() == '\n' || r.back() == ' ')) r.pop_back();
  return r;
}

void write_chart(const std::string& dir, const std::vector<std::string>& kvs) {
  if (shell_out("command -v gnuplot").empty()) {
    fmt::print(stderr, "gnuplot not found: skipping curve.svg/curve.png (install Debian's gnuplot-nox)\n");
    return;
  }
  std::ofstream g(dir + "/curve.gp");
  // curve.dat: one block per policy (prompt_tokens decode_tok_s kv_mb), blocks separated by two blank lines.
  auto plots = [&](int col) {
    std::string s;
    for (size_t i = 0; i < kvs.size(); ++i)
      s += fmt::format("{}'curve.dat' index {} using 1:{} with linespoints lw 2 pt 7 title '{}'", i ? ", " : "", i,
                       col, kvs[i]);
    return s;
  };
  for (const auto& [term, ext] : std::vector<std::pair<std::string, std::string>>{
           {"svg size 1000,420 dynamic", "svg"}, {"pngcairo size 1000,420", "png"}}) {
    g << "set terminal " << term << "\nset output 'curve." << ext << "'\n"
      << "set multiplot layout 1,2\nset key left top\n"
      << "set grid\nset xlabel 'prompt tokens'\nset ylabel 'decode tok/s'\nset title 'Decode speed'\n"
      << "plot " << plots(2) << "\nset ylabel 'KV cache MB'\nset title 'Resident KV cache'\nplot " << plots(3)
      << "\nunset multiplot\n";
  }
  g.close();
  const std::string cmd = fmt::format("cd '{}' && gnuplot curve.gp 2>&1", dir);
  std::string err = shell_out(cmd);
  if (shell_out(fmt::format("cd '{}' && ls curve.png 2>/dev/null", dir)).empty()) {
    // pngcairo may be missing in gnuplot-nox builds: fall back to the plain png terminal.
    std::ifstream in(dir + "/curve.gp");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s = ss.str();
    const auto p = s.find("pngcairo");
    if (p != std::string::npos) s.replace(p, 8, "png");
    std::ofstream(dir + "/curve.gp") << s;
    err = shell_out(cmd);
  }
  if (!err.empty()) fmt::print(stderr, "gnuplot: {}\n", err);
}

int run(const O& o) {
  namespace fs = std::filesystem;
  const std::string dir = o.model.empty() ? builtin_model_dir() : o.model;
  const auto policies = CachePolicy::parse_list(o.kv);
  check(o.base >= 1 && o.gen >= 1 && o.repeats >= 1, "--base-tokens, --gen and --repeats must be >= 1");
  for (double s : o.scales) check(s > 0, "--prompt-scales: each scale must be > 0, got {}", s);
  check(fs::weakly_canonical(o.out) != fs::weakly_canonical(dir),
        "--out {}: is the checkpoint directory (checkpoints are read-only: give another directory)", o.out);
  auto model = load_model(dir, o.device);
  Tokenizer tok = Tokenizer::load(dir + "/tokenizer.json");
  fs::create_directories(o.out);
  // Prompt tokens: the given text (or the built-in WikiText sample), repeated as needed.
  const int max_prompt = static_cast<int>(o.base * *std::max_element(o.scales.begin(), o.scales.end()) + 0.5);
  std::string text;
  {
    std::string path = o.text.empty() ? builtin_model_dir() + "/../../tests/data/train/wiki.test.raw" : o.text;
    std::ifstream f(path, std::ios::binary);
    check(f.good(), "--text: cannot open {}", path);
    std::stringstream ss;
    ss << f.rdbuf();
    text = ss.str().substr(0, static_cast<size_t>(max_prompt) * 16 + 64);
  }
  std::vector<int32_t> pool_ids = tok.encode(text);
  check(!pool_ids.empty(), "bench: the prompt text produced no tokens");
  while (pool_ids.size() < static_cast<size_t>(max_prompt)) pool_ids.insert(pool_ids.end(), pool_ids.begin(), pool_ids.end());
  const ModelConfig& cfg = model->config();
  const size_t weight_bytes = model->checkpoint().weight_bytes();
  auto& pool = ThreadPool::global();
  std::vector<Row> raw;
  Progress bar("bench");
  const size_t total = o.scales.size() * o.repeats * policies.size();
  size_t done = 0;
  for (double s : o.scales) {
    const int P = static_cast<int>(o.base * s + 0.5);
    std::vector<int32_t> prompt(pool_ids.begin(), pool_ids.begin() + P);
    for (int r = 0; r < o.repeats; ++r)
      for (const auto& p : policies) {  // interleaved: drift hits every policy alike
        bar.update(done, total, fmt::format("{} pp{}", p.name(), P));
        auto st = model->new_state(p);
        GenerateOptions opt;
        opt.max_tokens = o.gen;
        opt.sampler.temperature = 0;
        opt.context = P + o.gen + 1;  // no stop tokens: always decode `gen` tokens
        auto res = generate(*model, *st, tok, prompt, opt, nullptr, pool);
        raw.push_back({p.name(), s, P, static_cast<int>(res.tokens.size()), r, P / res.prefill_seconds,
                       res.tokens.size() / res.decode_seconds, res.kv_bytes, current_rss()});
        bar.update(++done, total);
      }
  }
  // Files.
  std::ofstream rawf(o.out + "/raw_rows.tsv");
  rawf << "kv\tscale\tprompt_tokens\tgen_tokens\trepeat\tprefill_tok_s\tdecode_tok_s\tkv_bytes\trss_bytes\n";
  for (const auto& x : raw)
    rawf << fmt::format("{}\t{}\t{}\t{}\t{}\t{:.3f}\t{:.3f}\t{}\t{}\n", x.kv, x.scale, x.prompt, x.gen, x.rep,
                        x.prefill_tps, x.decode_tps, x.kv_bytes, x.rss_bytes);
  std::ofstream sum(o.out + "/summary_rows.tsv");
  sum << "kv\tscale\tprompt_tokens\tgen_tokens\tprefill_tok_s\tdecode_tok_s\tkv_mb\trss_mb\tdecode_gb_s\n";
  std::string md = fmt::format("| model | kv | test | t/s | KV MB | GB/s |\n|---|---|---|---:|---:|---:|\n");
  std::vector<std::string> kvs;
  for (const auto& p : policies) kvs.push_back(p.name());
  const std::string mname = fs::path(dir).filename().string();
  for (double s : o.scales)
    for (const auto& k : kvs) {
      std::vector<double> pf, dc, kvb, rss;
      int P = 0;
      for (const auto& x : raw)
        if (x.kv == k && x.scale == s) {
          pf.push_back(x.prefill_tps), dc.push_back(x.decode_tps), kvb.push_back(x.kv_bytes), rss.push_back(x.rss_bytes);
          P = x.prompt;
        }
      // Bytes read per decoded token: all weights (the embedding lookup aside, ~1 row) + the KV cache.
      const double gbs = (weight_bytes + median(kvb)) * median(dc) / 1e9;
      sum << fmt::format("{}\t{}\t{}\t{}\t{:.3f}\t{:.3f}\t{:.3f}\t{:.1f}\t{:.3f}\n", k, s, P, o.gen, median(pf), median(dc),
                         median(kvb) / 1e6, median(rss) / 1e6, gbs);
      md += fmt::format("| {} | {} | pp{} | {:.1f} | | |\n", mname, k, P, median(pf));
      md += fmt::format("| {} | {} | tg{} @ d{} | {:.2f} | {:.2f} | {:.2f} |\n", mname, k, o.gen, P, median(dc),
                        median(kvb) / 1e6, gbs);
    }
  struct utsname u {};
  ::uname(&u);
  nlohmann::json meta = {
      {"machine", {{"cpu", shell_out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")},
                   {"threads", pool.size()},
                   {"kernel", std::string(u.sysname) + " " + u.release},
                   {"memory", shell_out("grep MemTotal /proc/meminfo | awk '{print $2 \" kB\"}'")}}},
      {"build", {{"compiler", __VERSION__}, {"flags", "Release -O3 -march=native"}}},
      {"commit", shell_out("git -C '" TQ_SOURCE_DIR "' rev-parse HEAD 2>/dev/null")},
      {"model", {{"dir", dir}, {"model_type", cfg.model_type}, {"layers", cfg.n_layers}, {"hidden", cfg.hidden},
                 {"weight_bytes", weight_bytes}, {"parameters", model->checkpoint().parameter_count()}}},
      {"flags", {{"kv", o.kv}, {"prompt_scales", o.scales}, {"base_tokens", o.base}, {"gen", o.gen}, {"repeats", o.repeats}}},
      {"date", shell_out("date -u +%Y-%m-%dT%H:%M:%SZ")}};
  std::ofstream(o.out + "/run_metadata.json") << meta.dump(2) << "\n";
  rawf.close();
  sum.close();
  {
    std::ofstream dat(o.out + "/curve.dat");
    for (const auto& k : kvs) {
      dat << "# " << k << "\n";
      for (double s : o.scales) {
        std::vector<double> dc, kvb;
        int P = 0;
        for (const auto& x : raw)
          if (x.kv == k && x.scale == s) dc.push_back(x.decode_tps), kvb.push_back(x.kv_bytes), P = x.prompt;
        dat << fmt::format("{} {:.3f} {:.3f}\n", P, median(dc), median(kvb) / 1e6);
      }
      dat << "\n\n";
    }
  }
  write_chart(o.out, kvs);
  fmt::print("{}", md);
  fmt::print("\nwrote {}/summary_rows.tsv, raw_rows.tsv, run_metadata.json, curve.svg, curve.png\n", o.out);
  return 0;
}

}  // namespace

Runner add_bench(CLI::App& app) {
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("bench", "Speed and memory per cache policy and prompt length, with a chart");
  c->add_option("-m,--model", o->model, "Checkpoint directory (default: the built-in model)");
  c->add_option("--kv", o->kv, "Cache policies, comma-separated")->capture_default_str();
  c->add_option("--prompt-scales", o->scales, "Prompt lengths as multiples of --base-tokens")->delimiter(',')->capture_default_str();
  c->add_option("--base-tokens", o->base, "Base prompt length")->capture_default_str();
  c->add_option("--gen", o->gen, "Tokens decoded per run")->capture_default_str();
  c->add_option("--repeats", o->repeats, "Repeats (medians reported)")->capture_default_str();
  c->add_option("--out", o->out, "Output directory")->capture_default_str();
  c->add_option("--text", o->text, "Prompt text file (default: WikiText-2 sample)");
  c->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  return [o] { return run(*o); };
}

}  // namespace tq::cli
