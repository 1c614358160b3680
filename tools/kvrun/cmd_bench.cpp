// kvrun bench: prefill/decode speed, time to first token, peak memory and the
// bandwidth roofline (src/runtime/bench.cpp does the work).
#include <cstdio>
#include <memory>

#include "commands.h"
#include "io/progress.h"
#include "kvrun/bench.h"

namespace kvrun::cli {

Command add_bench_command(CLI::App& app) {
  struct Flags {
    std::string model, prompt_lens = "16,512", prompt_ids;
    BenchOptions o;
    bool json = false, quiet = false, no_bandwidth = false;
    StageProgress build_progress;
  };
  auto f = std::make_shared<Flags>();
  auto* c = app.add_subcommand("bench",
                               "Measure prefill and decode tokens/s, time to first token and peak memory (median, min, "
                               "max over runs after a warm-up), and the decode rate as a fraction of the memory "
                               "bandwidth roofline");
  c->add_option("model", f->model,
                "Model folder (any layout kvrun run reads), .onnx, or a .gguf file (built into the package cache on "
                "first use)")
      ->required();
  c->add_option("--prompt-len", f->prompt_lens, "Prompt lengths in tokens, comma-separated (random ids)")
      ->capture_default_str();
  c->add_option("--gen-len", f->o.gen_len, "Tokens generated per run (EOS ignored)")->capture_default_str();
  c->add_option("--runs", f->o.runs, "Measured runs per prompt length")->capture_default_str();
  c->add_option("--warmup", f->o.warmup, "Runs before the measured ones, not counted")->capture_default_str();
  c->add_option("--threads", f->o.threads, "ONNX Runtime intra-op threads and probe threads (0: one per core)")
      ->capture_default_str();
  c->add_option("--seed", f->o.seed, "Seed of the random prompt ids")->capture_default_str();
  c->add_option("--prompt-ids", f->prompt_ids,
                "Comma-separated ids to take the prompts from (the first n for length n) instead of random ids");
  c->add_flag("--no-bandwidth", f->no_bandwidth, "Skip the memory-bandwidth probe (no roofline)");
  c->add_flag("--json", f->json, "One JSON object per prompt length (schema kvrun-bench/1, docs/bench.md)");
  c->add_flag("-q,--quiet", f->quiet, "No progress on stderr");
  return {c, [f] {
            f->o.prompt_lens.clear();
            for (int64_t n : parse_id_list(f->prompt_lens, "--prompt-len")) f->o.prompt_lens.push_back(n);
            for (int64_t id : parse_id_list(f->prompt_ids, "--prompt-ids"))
              f->o.prompt_ids.push_back(static_cast<int32_t>(id));
            f->o.probe_bandwidth = !f->no_bandwidth;
            f->build_progress.enabled = !f->quiet;
            f->o.build_progress = f->build_progress.fn();
            std::unique_ptr<io::Progress> bar;
            BenchProgressFn progress;
            if (!f->quiet)
              progress = [&](int64_t plen, int done, int total) {
                if (done == 1) bar = std::make_unique<io::Progress>("bench prompt " + std::to_string(plen));
                bar->update(done, total, "run " + std::to_string(done) + "/" + std::to_string(total));
                if (done == total) bar->finish();
              };
            const BenchReport r = bench(f->model, f->o, progress);
            std::fputs(f->json ? r.to_json().c_str() : r.to_text().c_str(), stdout);
            return 0;
          }};
}

}  // namespace kvrun::cli
