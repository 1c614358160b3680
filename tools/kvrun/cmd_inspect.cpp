// kvrun inspect: what an ONNX file or model folder holds (src/graph/inspect.cpp does the work).
#include <cstdio>

#include "commands.h"
#include "graph/inspect.h"

namespace kvrun::cli {

Command add_inspect_command(CLI::App& app) {
  struct Flags {
    std::string path;
    bool json = false;
    bool no_decoder = false;
  };
  auto f = std::make_shared<Flags>();
  auto* c =
      app.add_subcommand("inspect",
                         "Show an ONNX file's or model folder's inputs/outputs, decoder convention and KV layout, "
                         "opsets, op histogram, parameters and external data");
  c->add_option("model", f->path, "A .onnx file or a model folder")->required();
  c->add_flag("--json", f->json, "Print the report as JSON (schema: docs/inspect.md)");
  c->add_flag("--no-decoder", f->no_decoder, "Do not load the model with the runtime to find its KV layout");
  return {c, [f] {
            graph::InspectOptions o;
            o.decoder = !f->no_decoder;
            const auto r = graph::inspect(f->path, o);
            std::fputs(f->json ? (r.dump(2) + "\n").c_str() : graph::inspect_to_text(r).c_str(), stdout);
            return 0;
          }};
}

}  // namespace kvrun::cli
