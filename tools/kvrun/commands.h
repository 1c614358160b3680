// Subcommands living in their own files. Each adds its flags to the app and
// returns the action main() runs when that subcommand was chosen. Actions throw
// on error (main prints `kvrun: error: ...` and exits 2) or return an exit code.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace kvrun::cli {

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// kvrun tokenize (cmd_tokenize.cpp)
Command add_tokenize_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_chat_command(CLI::App& app);
// kvrun inspect (cmd_inspect.cpp), kvrun fix (cmd_fix.cpp)
Command add_inspect_command(CLI::App& app);
Command add_fix_command(CLI::App& app);
// kvrun quantize (cmd_quantize.cpp)
Command add_quantize_command(CLI::App& app);

}  // namespace kvrun::cli
