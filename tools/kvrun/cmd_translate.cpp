// kvrun translate: one translation per input line with a seq2seq (Marian) package.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "kvrun/error.h"
#include "kvrun/translate.h"

namespace kvrun::cli {
namespace {

struct TranslateCliOptions {
  std::string model, file;
  std::vector<std::string> text;
  TranslateOptions opt;
  int threads = 0;
  bool json = false, stats = false;
};

// Lines of --text, --file or stdin (one sentence per line; a final newline adds none).
std::vector<std::string> read_sources(const TranslateCliOptions& o) {
  if (!o.text.empty()) return o.text;
  std::vector<std::string> lines;
  std::string line;
  if (!o.file.empty()) {
    std::ifstream f(o.file);
    if (!f) throw Error(o.file + ": cannot open");
    while (std::getline(f, line)) lines.push_back(line);
    return lines;
  }
  while (std::getline(std::cin, line)) lines.push_back(line);
  return lines;
}

void print_result(const TranslateCliOptions& o, size_t line, const std::string& source, const Translation& r) {
  if (o.json) {
    nlohmann::json hyps = nlohmann::json::array();
    for (const auto& h : r.hypotheses) hyps.push_back({{"text", h.text}, {"tokens", h.tokens}, {"score", h.score}});
    const nlohmann::json j = {{"source", source},
                              {"text", r.hypotheses.empty() ? "" : r.hypotheses[0].text},
                              {"hypotheses", hyps},
                              {"source_tokens", r.source_tokens}};
    std::puts(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else if (o.opt.n_best > 1) {
    for (const auto& h : r.hypotheses) std::printf("%zu\t%.6f\t%s\n", line, h.score, h.text.c_str());
  } else {
    std::printf("%s\n", r.hypotheses.empty() ? "" : r.hypotheses[0].text.c_str());
  }
}

int run_translate(TranslateCliOptions& o) {
  o.opt.validate();
  const auto t = Translator::load(o.model, o.threads);
  const std::vector<std::string> sources = read_sources(o);
  // Windows of 16 batches: sorted by length inside, printed in input order as each completes.
  const size_t window = static_cast<size_t>(o.opt.batch_size) * 16;
  TranslateStats all;
  for (size_t a = 0; a < sources.size(); a += window) {
    const std::vector<std::string> part(
        sources.begin() + static_cast<std::ptrdiff_t>(a),
        sources.begin() + static_cast<std::ptrdiff_t>(std::min(sources.size(), a + window)));
    TranslateStats st;
    const std::vector<Translation> out = t->translate(part, o.opt, &st);
    for (size_t i = 0; i < out.size(); ++i) print_result(o, a + i + 1, part[i], out[i]);
    std::fflush(stdout);
    all.sentences += st.sentences, all.source_tokens += st.source_tokens, all.target_tokens += st.target_tokens;
    all.seconds += st.seconds;
  }
  if (o.stats)
    std::fprintf(stderr,
                 "translated %lld sentences: %lld source tokens, %lld target tokens in %.3f s (%.1f target tokens/s)\n",
                 static_cast<long long>(all.sentences), static_cast<long long>(all.source_tokens),
                 static_cast<long long>(all.target_tokens), all.seconds,
                 all.seconds > 0 ? static_cast<double>(all.target_tokens) / all.seconds : 0.0);
  return 0;
}

}  // namespace

Command add_translate_command(CLI::App& app) {
  auto o = std::make_shared<TranslateCliOptions>();
  auto* c =
      app.add_subcommand("translate",
                         "Translate text with a seq2seq (Marian / OPUS-MT) package: one translation per input line "
                         "(--text, --file or stdin), in input order");
  c->add_option("model", o->model,
                "A kvrun package built from a MarianMTModel checkpoint, or a folder of optimum / transformers.js ONNX "
                "exports with its tokenizer files (docs/translate.md)")
      ->required();
  c->add_option("--text", o->text, "Sentences to translate (repeatable); default: --file or stdin");
  c->add_option("--file", o->file, "A text file, one sentence per line");
  c->add_option("--beams", o->opt.num_beams, "Beam size (1: greedy); default: the model's generation_config num_beams");
  c->add_option("--batch-size", o->opt.batch_size, "Sentences run together (sorted by length)")->capture_default_str();
  c->add_option(
      "--max-length", o->opt.max_length,
      "Longest output in tokens including the start token; default: the model's generation_config max_length");
  c->add_option("--n-best", o->opt.n_best, "Hypotheses printed per sentence (tab-separated: line, score, text)")
      ->capture_default_str();
  c->add_option("--temperature", o->opt.sampling.temperature, "> 0: sample instead of beam search")
      ->capture_default_str();
  c->add_option("--top-k", o->opt.sampling.top_k, "Sampling: keep the k most likely tokens (0: off)")
      ->capture_default_str();
  c->add_option("--top-p", o->opt.sampling.top_p, "Sampling: nucleus probability mass (1: off)")->capture_default_str();
  c->add_option("--seed", o->opt.sampling.seed, "Sampling: seed (same seed, same output)")->capture_default_str();
  c->add_option("--threads", o->threads, "ONNX Runtime intra-op threads (0: one per core)")->capture_default_str();
  c->add_flag("--json", o->json, "One JSON object per line: source, text, hypotheses (text, tokens, score)");
  c->add_flag("--stats", o->stats, "Print sentences, tokens and target tokens/s on stderr");
  return {c, [o] { return run_translate(*o); }};
}

}  // namespace kvrun::cli
