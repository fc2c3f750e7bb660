// tq tokenize / detokenize / import-llama2c.
#include <fmt/format.h>

#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "core/json_text.h"
#include "io/llama2c.h"
#include "tokenizer/tokenizer.h"

namespace tq::cli {

Runner add_tokenize(CLI::App& app) {
  struct O {
    std::string file;
    bool jsonl = false;
  };
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("tokenize", "Token ids of stdin (space-separated), or per JSON-string line");
  c->add_option("--tokenizer", o->file, "tokenizer.json")->required();
  c->add_flag("--jsonl", o->jsonl, "Each input line is a JSON string; print one line of ids per input line");
  return [o] {
    Tokenizer t = Tokenizer::load(o->file);
    auto print_ids = [](const std::vector<int32_t>& ids) { fmt::print("{}\n", fmt::join(ids, " ")); };
    if (o->jsonl) {
      std::string line;
      int n = 0;
      while (std::getline(std::cin, line)) {
        ++n;
        if (line.empty()) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          fail("stdin line {}: not a JSON string: {}", n, e.what());
        }
        check(j.is_string(), "stdin line {}: expected a JSON string", n);
        print_ids(t.encode(j.get<std::string>()));
      }
    } else {
      std::string all((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
      print_ids(t.encode(all));
    }
    return 0;
  };
}

Runner add_detokenize(CLI::App& app) {
  struct O {
    std::string file;
    bool jsonl = false;
  };
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("detokenize", "Text of space-separated ids on stdin");
  c->add_option("--tokenizer", o->file, "tokenizer.json")->required();
  c->add_flag("--jsonl", o->jsonl, "One line of ids per output JSON string");
  return [o] {
    Tokenizer t = Tokenizer::load(o->file);
    std::string line;
    std::string all;
    int n = 0;
    while (std::getline(std::cin, line)) {
      ++n;
      std::istringstream ss(line);
      std::vector<int32_t> ids;
      std::string w;
      while (ss >> w) {
        try {
          ids.push_back(std::stoi(w));
        } catch (const std::exception&) {
          fail("stdin line {}: '{}' is not a token id", n, w);
        }
        check(ids.back() >= 0 && static_cast<size_t>(ids.back()) < t.vocab_size(),
              "stdin line {}: id {} out of range [0, {})", n, ids.back(), t.vocab_size());
      }
      if (o->jsonl) fmt::print("{}\n", json_text(nlohmann::json(t.decode(ids))));
      else all += t.decode(ids);
    }
    if (!o->jsonl) fmt::print("{}", all);
    return 0;
  };
}

Runner add_import_llama2c(CLI::App& app) {
  struct O {
    std::string model, tokenizer, out;
  };
  auto o = std::make_shared<O>();
  auto* c = app.add_subcommand("import-llama2c", "Convert llama2.c model.bin + tokenizer.bin to a checkpoint directory");
  c->add_option("model", o->model, "llama2.c model .bin")->required();
  c->add_option("tokenizer", o->tokenizer, "llama2.c tokenizer .bin")->required();
  c->add_option("--out", o->out, "Output directory")->required();
  return [o] {
    import_llama2c(o->model, o->tokenizer, o->out);
    fmt::print("wrote {}/config.json, model.safetensors, tokenizer.json\n", o->out);
    return 0;
  };
}

}  // namespace tq::cli
