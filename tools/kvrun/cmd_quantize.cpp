// kvrun quantize: int8 / int4 weights for a package's decoder graphs or any .onnx file.
#include <cstdio>
#include <string>

#include "commands.h"
#include "kvrun/build.h"

namespace kvrun::cli {
namespace {

struct Opts {
  QuantizeOptions q;
  bool asymmetric = false, symmetric = false, json = false, quiet = false;
};

int run_quantize(Opts& o) {
  if (o.asymmetric && o.symmetric) throw Error("quantize: --symmetric and --asymmetric exclude each other");
  o.q.symmetric = !o.asymmetric;
  StageProgress progress{!o.quiet, "nodes", {}};
  o.q.progress = progress.fn();
  const QuantizeResult r = quantize(o.q);
  progress.bars.clear();
  std::fputs(o.json ? (r.to_json() + "\n").c_str() : r.to_text().c_str(), stdout);
  return 0;
}

}  // namespace

Command add_quantize_command(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand(
      "quantize",
      "Quantize the MatMul/Gemm weights of a package's decoder graphs (or of one .onnx file) to int8 or int4");
  cmd->add_option("input", o->q.input, "kvrun package folder, or an .onnx file")->required();
  cmd->add_option("-o,--out", o->q.out, "Output package folder (staged, renamed at the end) or .onnx file (+ .data)")
      ->required();
  cmd->add_option("--mode", o->q.mode,
                  "int8-dynamic: int8 per-channel weights, activations quantized at run time; int8 / int4: "
                  "weight-only, blockwise (MatMulNBits; portable packages: int8 via DequantizeLinear)")
      ->capture_default_str();
  cmd->add_option("--block-size", o->q.block_size, "int8/int4: weights per scale along K (power of two >= 16)")
      ->capture_default_str();
  cmd->add_flag("--symmetric", o->symmetric, "Symmetric weights, no zero points (default)");
  cmd->add_flag("--asymmetric", o->asymmetric, "int8/int4: a zero point per block");
  cmd->add_option("--accuracy-level", o->q.accuracy_level,
                  "MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 (fastest on CPU)")
      ->capture_default_str();
  cmd->add_option("--exclude", o->q.exclude,
                  "Keep nodes whose name or weight name matches this regex (PCRE2), e.g. 'lm_head'");
  cmd->add_flag("--standard-ops", o->q.standard_ops,
                "Single .onnx: standard ONNX ops only (packages follow their target)");
  cmd->add_flag("--overwrite", o->q.overwrite, "Replace the output if it exists");
  cmd->add_flag(
      "--no-load-check", [o](int64_t) { o->q.load_check = false; }, "Skip opening the result in ONNX Runtime");
  cmd->add_flag("--json", o->json, "Print the report as JSON");
  cmd->add_flag("-q,--quiet", o->quiet, "No progress bar");
  return {cmd, [o] { return run_quantize(*o); }};
}

}  // namespace kvrun::cli
