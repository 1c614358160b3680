// Subcommands living in their own files. Each adds its flags to the app and
// returns the action main() runs when that subcommand was chosen. Actions throw
// on error (main prints `kvrun: error: ...` and exits 2) or return an exit code.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/progress.h"
#include "kvrun/build.h"

namespace kvrun::cli {

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// One progress bar per stage name, drawn on stderr ("done/total[ unit]"); nothing when
// disabled. fn() feeds kvrun::ProgressFn options (build, synth-checkpoint, quantize).
struct StageProgress {
  bool enabled = true;
  std::string unit;
  std::map<std::string, std::unique_ptr<io::Progress>> bars;
  ProgressFn fn() {
    return [this](const std::string& stage, int64_t done, int64_t total) {
      if (!enabled) return;
      auto& bar = bars[stage];
      if (!bar) bar = std::make_unique<io::Progress>(stage);
      bar->update(done, total, std::to_string(done) + "/" + std::to_string(total) + (unit.empty() ? "" : " " + unit));
      if (done >= total) bar->finish();
    };
  }
};

// kvrun tokenize (cmd_tokenize.cpp)
// "1,2,3" -> ids; throws kvrun::Error naming `flag` and the bad item. Empty string -> empty list.
std::vector<int64_t> parse_id_list(const std::string& s, const std::string& flag);

Command add_tokenize_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_chat_command(CLI::App& app);
// kvrun inspect (cmd_inspect.cpp), kvrun fix (cmd_fix.cpp)
Command add_inspect_command(CLI::App& app);
Command add_fix_command(CLI::App& app);
// kvrun quantize (cmd_quantize.cpp)
Command add_quantize_command(CLI::App& app);
// kvrun bench (cmd_bench.cpp)
Command add_bench_command(CLI::App& app);
// kvrun transcribe (cmd_transcribe.cpp)
Command add_transcribe_command(CLI::App& app);
// kvrun translate (cmd_translate.cpp)
Command add_translate_command(CLI::App& app);
// kvrun serve (cmd_serve.cpp)
Command add_serve_command(CLI::App& app);

}  // namespace kvrun::cli
