// kvrun fix: rewrite an ONNX file for another opset/IR, fix export quirks (src/graph/fix.cpp does the work).
#include <cstdio>
#include <sstream>

#include "commands.h"
#include "graph/fix.h"
#include "kvrun/error.h"

namespace kvrun::cli {

Command add_fix_command(CLI::App& app) {
  struct Flags {
    std::string in, out, passes;
    graph::FixOptions opt;
    std::vector<std::string> dims;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  std::string names;
  for (const auto& p : graph::fix_pass_names()) names += (names.empty() ? "" : ",") + p;
  auto* c = app.add_subcommand(
      "fix",
      "Rewrite an ONNX file: opset conversion (13..21), Reduce axes input<->attribute, Split.num_outputs -> sizes, "
      "IR clamp, opset-import clean-up, dead code removal, fp16/fp32 storage. Written atomically, then checked by the "
      "ONNX checker and ONNX Runtime.");
  c->add_option("model", f->in, "Input .onnx file")->required();
  c->add_option("-o,--out", f->out, "Output .onnx file (its weights go to <out>.data)")->required();
  c->add_option("--opset", f->opt.opset, "Target default-domain opset (13..21; default: the model's)");
  c->add_option("--ir", f->opt.ir, "Highest IR version to write (default: the target opset's when the opset changes)");
  c->add_option("--passes", f->passes,
                "Comma-separated passes to run, in a fixed order: " + names + " (default: all but fp16/fp32)");
  c->add_flag("--check", f->opt.check,
              "Run the original and the fixed model on the same random inputs and report the max abs difference");
  c->add_option("--dim", f->dims, "--check: size of a symbolic dim, NAME=N (repeatable)");
  c->add_flag("--json", f->json, "Print the report as JSON (schema: docs/fix.md)");
  return {c, [f] {
            std::stringstream ss(f->passes);
            std::string item;
            while (std::getline(ss, item, ','))
              if (!item.empty()) f->opt.passes.push_back(item);
            for (const auto& d : f->dims) {
              const auto eq = d.find('=');
              long long v = -1;
              size_t pos = 0;
              try {
                if (eq != std::string::npos) v = std::stoll(d.substr(eq + 1), &pos);
              } catch (const std::exception&) {
                pos = 0;
              }
              if (eq == std::string::npos || eq == 0 || pos == 0 || pos != d.size() - eq - 1 || v < 0)
                throw Error("--dim: expected NAME=N with N >= 0, found '" + d + "'");
              f->opt.dims[d.substr(0, eq)] = v;
            }
            const auto r = graph::fix_model(f->in, f->out, f->opt);
            std::fputs(f->json ? (r.to_json().dump(2) + "\n").c_str() : r.to_text().c_str(), stdout);
            return 0;
          }};
}

}  // namespace kvrun::cli
