// kvrun — command-line front end. Every subcommand parses flags and calls the
// library; no model logic lives here.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "kvrun/build.h"
#include "kvrun/verify.h"

int main(int argc, char** argv) {
  CLI::App app{"kvrun: Hugging Face checkpoints -> verified ONNX graphs with an explicit KV cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kvrun 0.1.0");

  // ---- build
  kvrun::BuildOptions bo;
  bool quiet = false;
  auto* build = app.add_subcommand("build", "Convert a Hugging Face checkpoint into a kvrun package folder");
  build
      ->add_option("checkpoint", bo.checkpoint,
                   "Checkpoint folder: config.json + model.safetensors or pytorch_model.bin (or sharded); a GGUF "
                   "file (llama, qwen2, qwen3, gemma3; its own tokenizer and chat template); or a FunASR-nano "
                   "folder (model.pt + config.yaml + Qwen3-0.6B/)")
      ->required();
  build->add_option("-o,--out", bo.out, "Package folder to create (built under a temporary name, renamed at the end)")
      ->required();
  build
      ->add_option("--target", bo.target,
                   "ort: one graph with ONNX Runtime fused ops (GroupQueryAttention, SkipSimplifiedLayerNorm); "
                   "portable: opset-17 standard ops, prefill.onnx + decode.onnx")
      ->check(CLI::IsMember({"ort", "portable"}))
      ->capture_default_str();
  build
      ->add_option("--precision", bo.precision,
                   "fp32/fp16: weights, activations and KV cache dtype (logits stay fp32); int8/int4: fp32 graphs "
                   "with weight-only quantized MatMuls (see `kvrun quantize`); source: a GGUF file's own "
                   "quantization, mapped exactly onto MatMulNBits (target ort); auto: source for GGUF files, "
                   "else fp32")
      ->check(CLI::IsMember({"auto", "fp32", "fp16", "int8", "int4", "source"}))
      ->capture_default_str();
  build
      ->add_option("--kv-dtype", bo.kv_dtype,
                   "KV cache dtype: auto (fp16 for int4 on target ort, else the precision's), fp32, fp16 "
                   "(target ort: Casts around GroupQueryAttention; halves the cache bytes a decode step reads)")
      ->check(CLI::IsMember({"auto", "fp32", "fp16"}))
      ->capture_default_str();
  build->add_option("--block-size", bo.quant.block_size, "int8/int4: quantization block size along K")
      ->capture_default_str();
  build->add_flag(
      "--asymmetric", [&](int64_t) { bo.quant.symmetric = false; }, "int8/int4: a zero point per block");
  build->add_option("--accuracy-level", bo.quant.accuracy_level, "int8/int4: MatMulNBits accuracy_level (0-4)")
      ->capture_default_str();
  build->add_option("--exclude", bo.quant.exclude, "int8/int4: keep nodes/weights matching this regex in fp32");
  build->add_option("--max-length", bo.max_length,
                    "Longest sequence (prompt + generated) the graphs support; default: max_position_embeddings");
  build
      ->add_option("--chat-template", bo.chat_template,
                   "Chat template for the package: a tokenizer_config.json (its chat_template) or a .jinja file "
                   "(default: the checkpoint's own, e.g. a GGUF file's tokenizer.chat_template)")
      ->check(CLI::ExistingFile);
  build->add_flag("--all-logits", bo.all_logits, "Return logits for every position (default: last position only)");
  build->add_flag("--overwrite", bo.overwrite, "Replace the output folder if it exists");
  build->add_flag(
      "--no-load-check", [&](int64_t) { bo.load_check = false; }, "Skip opening the written graphs in ONNX Runtime");
  build->add_flag("-q,--quiet", quiet, "No progress bar");

  // ---- synth-checkpoint
  kvrun::SynthOptions so;
  auto* synth =
      app.add_subcommand("synth-checkpoint", "Write a checkpoint with deterministic random weights for a config.json");
  auto* synth_config =
      synth->add_option("--config", so.config,
                        "config.json (or a folder holding it) of a supported architecture (with --funasr-nano: the "
                        "LLM's config, default Qwen3-0.6B's)");
  synth->add_flag("--funasr-nano", so.funasr_nano,
                  "Write a FunASR-nano folder as published: model.pt (bf16, state_dict), config.yaml, Qwen3-0.6B/");
  synth->add_option("--size", so.size, "--funasr-nano: real (encoder 512 wide, 50 + 20 blocks, Qwen3-0.6B) or tiny")
      ->check(CLI::IsMember({"real", "tiny"}))
      ->capture_default_str();
  synth->add_option("--tokenizer", so.tokenizer,
                    "--funasr-nano: folder whose tokenizer.json (+ tokenizer_config.json) go into Qwen3-0.6B/");
  synth->callback([&so, synth_config] {
    if (!so.funasr_nano && synth_config->count() == 0) throw CLI::RequiredError("--config");
  });
  synth->add_option("-o,--out", so.out, "Checkpoint folder to create")->required();
  synth->add_option("--seed", so.seed, "Random seed (each tensor is seeded from seed + its name)")
      ->capture_default_str();
  synth->add_option("--dtype", so.dtype, "Weight dtype: f32, f16 or bf16 (default: the config's torch_dtype)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  synth->add_option("--std", so.std_dev, "Standard deviation of weights (default: config initializer_range or 0.02)");
  synth->add_flag("--overwrite", so.overwrite, "Replace the output folder if it exists");
  synth->add_flag("-q,--quiet", quiet, "No progress bar");

  // ---- verify
  kvrun::VerifyOptions vo;
  std::string prompt_ids;
  bool verify_json = false;
  auto* verify = app.add_subcommand(
      "verify",
      "Run a package in ONNX Runtime and compare with a C++ reference forward pass: prefill, two decode steps on the "
      "prefill cache, a fresh prefill, and a greedy continuation. Exits 1 when a check is beyond tolerance.");
  verify
      ->add_option("package", vo.package,
                   "Package folder made by `kvrun build`, or a .gguf file (its package from the package cache, built "
                   "on first use, checked against the file)")
      ->required();
  verify->add_option("--checkpoint", vo.checkpoint, "Checkpoint folder (default: the one recorded in kvrun.json)");
  verify->add_option("--prompt-ids", prompt_ids, "Comma-separated prompt token ids (default: 8 fixed ids)");
  verify->add_option("--greedy-tokens", vo.greedy_tokens, "Tokens in the greedy continuation check")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  verify->add_option("--threads", vo.threads, "ONNX Runtime intra-op threads (0: one per core)");
  verify->add_flag("--json", verify_json, "Print the report as JSON");

  // Subcommands defined in their own files (see commands.h).
  std::vector<kvrun::cli::Command> commands;
  commands.push_back(kvrun::cli::add_tokenize_command(app));
  commands.push_back(kvrun::cli::add_run_command(app));
  commands.push_back(kvrun::cli::add_chat_command(app));
  commands.push_back(kvrun::cli::add_inspect_command(app));
  commands.push_back(kvrun::cli::add_fix_command(app));
  commands.push_back(kvrun::cli::add_quantize_command(app));
  commands.push_back(kvrun::cli::add_bench_command(app));
  commands.push_back(kvrun::cli::add_transcribe_command(app));
  commands.push_back(kvrun::cli::add_translate_command(app));
  commands.push_back(kvrun::cli::add_serve_command(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    kvrun::cli::StageProgress progress{!quiet, "", {}};
    if (*build) {
      bo.progress = progress.fn();
      const kvrun::BuildResult r = kvrun::build_package(bo);
      std::printf("built %s (%s, %s) in %.1fs: %zu files, %.1f MB\n", r.out.c_str(), bo.target.c_str(),
                  bo.resolved_precision().c_str(), r.seconds, r.files.size(), static_cast<double>(r.bytes) / 1e6);
      return 0;
    }
    if (*synth) {
      so.progress = progress.fn();
      kvrun::synth_checkpoint(so);
      std::printf("wrote %s\n", so.out.c_str());
      return 0;
    }
    if (*verify) {
      vo.prompt = kvrun::cli::parse_id_list(prompt_ids, "--prompt-ids");
      vo.build_progress = progress.fn();
      const kvrun::VerifyReport r = kvrun::verify_package(vo);
      std::fputs(verify_json ? (r.to_json() + "\n").c_str() : r.to_text().c_str(), stdout);
      return r.passed ? 0 : 1;
    }
    for (auto& c : commands)
      if (*c.app) return c.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvrun: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
