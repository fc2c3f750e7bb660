// tq: the turboquant command line. One file per subcommand.
#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <map>

#include "commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"turboquant: LLM inference with a TurboQuant-compressed KV cache"};
  app.require_subcommand(1);
  std::map<CLI::App*, tq::cli::Runner> runners;
  auto add = [&](auto fn) {
    size_t before = app.get_subcommands({}).size();
    tq::cli::Runner r = fn(app);
    runners[app.get_subcommands({})[before]] = std::move(r);
  };
  add(tq::cli::add_quant_eval);
  add(tq::cli::add_kv_bench);
  add(tq::cli::add_run);
  add(tq::cli::add_generate);
  add(tq::cli::add_chat);
  add(tq::cli::add_tokenize);
  add(tq::cli::add_detokenize);
  add(tq::cli::add_import_llama2c);
  add(tq::cli::add_make_model);
  add(tq::cli::add_convert);
  add(tq::cli::add_info);
  add(tq::cli::add_eval);
  add(tq::cli::add_bench);
  add(tq::cli::add_bench_depth);
#ifdef TQ_HAVE_SERVER
  add(tq::cli::add_serve);
  add(tq::cli::add_load_test);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
  } catch (const tq::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 1;
}
