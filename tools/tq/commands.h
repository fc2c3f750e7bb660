// Each subcommand of `tq` registers itself on the app and returns its runner.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace tq::cli {

using Runner = std::function<int()>;

Runner add_quant_eval(CLI::App& app);
Runner add_kv_bench(CLI::App& app);
Runner add_generate(CLI::App& app);
Runner add_run(CLI::App& app);
Runner add_chat(CLI::App& app);
Runner add_tokenize(CLI::App& app);
Runner add_detokenize(CLI::App& app);
Runner add_import_llama2c(CLI::App& app);
Runner add_make_model(CLI::App& app);
Runner add_convert(CLI::App& app);
Runner add_info(CLI::App& app);
Runner add_eval(CLI::App& app);
Runner add_bench(CLI::App& app);
Runner add_bench_depth(CLI::App& app);
Runner add_serve(CLI::App& app);
Runner add_load_test(CLI::App& app);

}  // namespace tq::cli
