// `kvrun build` for encoder-decoder translation models (MarianMTModel): encoder.onnx and
// decoder.onnx over one model.onnx.data (arch/marian.h), the tokenizer files, and a
// kvrun.json of kind "seq2seq" with everything the translate runtime needs besides them.
#include <algorithm>

#include "arch/marian.h"
#include "io/seq2seq_config.h"
#include "kvrun/error.h"
#include "package/manifest.h"
#include "package/package_parts.h"
#include "package/quantize_package.h"

namespace kvrun::build {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
// Copied beside the graphs when the checkpoint folder has them (config.json as hf_config.json).
const char* const kSeq2SeqFiles[] = {
    "source.spm", "target.spm", "vocab.json", "target_vocab.json", "tokenizer_config.json", "generation_config.json",
    "config.json"};
}  // namespace

bool is_seq2seq_folder(const fs::path& dir) {
  if (!fs::is_directory(dir) || !fs::exists(dir / "config.json")) return false;
  try {
    return io::is_seq2seq_config(io::read_json_file(dir / "config.json"));
  } catch (const Error&) {
    return false;  // the decoder-only path reports what is wrong with it
  }
}

BuildResult build_seq2seq_package(const BuildOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  if (opt.precision != "fp32" && opt.precision != "int8" && opt.precision != "int4")
    throw Error("build: precision '" + opt.precision +
                "' is not available for encoder-decoder (Marian) models; use fp32, int8 or int4");
  if (opt.precision == "int4" && opt.target == "portable")
    throw Error("build: --precision int4 needs --target ort (MatMulNBits); portable packages take fp32 or int8");
  if (!opt.chat_template.empty()) throw Error("build: --chat-template does not apply to a translation model");
  const io::Seq2SeqConfig cfg = io::load_seq2seq_config(opt.checkpoint);
  const io::Seq2SeqGenerationConfig gen = io::load_seq2seq_generation_config(opt.checkpoint, cfg);
  if (opt.max_length > cfg.max_position_embeddings)
    throw Error("build: --max-length " + std::to_string(opt.max_length) + " exceeds the model's " +
                std::to_string(cfg.max_position_embeddings) + " positions (max_position_embeddings)");
  const int64_t max_len = opt.max_length > 0 ? opt.max_length : cfg.max_position_embeddings;
  const io::TensorStore store(opt.checkpoint);
  const arch::Target target = opt.target == "ort" ? arch::Target::Ort : arch::Target::Portable;

  io::StagedDir staged(opt.out, opt.overwrite);
  const fs::path dir = staged.path();
  auto progress = [&](int64_t d, int64_t t) {
    if (opt.progress) opt.progress("encoder-decoder", d, t);
  };
  const std::vector<arch::GraphSignature> graphs =
      arch::build_marian(cfg, store, {target, opt.precision != "fp32"}, dir, progress);

  std::vector<std::string> copied;
  for (const char* f : kSeq2SeqFiles)
    if (fs::exists(opt.checkpoint / f)) {
      const std::string to = std::string(f) == "config.json" ? "hf_config.json" : f;
      fs::copy_file(opt.checkpoint / f, dir / to);
      copied.push_back(to);
    }
  for (const char* need : {"source.spm", "target.spm", "vocab.json"})
    if (!fs::exists(dir / need))
      throw Error("build: " + (opt.checkpoint / need).string() +
                  " is missing (a Marian tokenizer needs source.spm, target.spm and vocab.json)");

  json gj = json::object();
  for (const auto& g : graphs) gj[g.role] = {{"file", g.file}, {"inputs", g.inputs}, {"outputs", g.outputs}};
  const json manifest = {
      {"format", "kvrun-package"},
      {"version", kManifestVersion},
      {"kind", "seq2seq"},
      {"producer", "kvrun 0.1.0"},
      {"target", opt.target},
      {"precision", "fp32"},
      {"model", cfg.to_json()},
      {"max_length", max_len},
      {"graphs", gj},
      {"kv_cache",
       {{"decoder_layers", cfg.decoder_layers},
        {"heads", cfg.decoder_heads},
        {"head_dim", cfg.decoder_head_dim()},
        {"layout", "batch,heads,sequence,head_dim"},
        {"dtype", "F32"},
        {"self_past_key", arch::kSelfPastKey},
        {"self_past_value", arch::kSelfPastValue},
        {"self_present_key", arch::kSelfPresentKey},
        {"self_present_value", arch::kSelfPresentValue},
        {"cross_key", arch::kCrossPastKey},
        {"cross_value", arch::kCrossPastValue},
        {"encoder_present_key", arch::kCrossPresentKey},
        {"encoder_present_value", arch::kCrossPresentValue},
        // GroupQueryAttention writes the new rows in place when past and present are one buffer
        {"past_present_share_buffer", opt.target == "ort"},
        // beams of a sentence are consecutive rows and share its cross K/V (one row per sentence)
        {"cross_kv_per_sentence", true}}},
      {"generation", gen.to_json()},
      {"files", copied},
      {"source", {{"checkpoint", fs::absolute(opt.checkpoint).string()}, {"architecture", cfg.architecture}}},
  };
  io::write_text_file_atomic(dir / "kvrun.json", manifest.dump(2) + "\n");
  // int8/int4: the fp32 graphs' MatMul/Gemm weights quantized in place (weight-only)
  if (opt.precision == "int8" || opt.precision == "int4") {
    graph::QuantizeOptions q = quant_options(opt);
    // int8: weights per output channel with activations quantized at run time
    // (DynamicQuantizeMatMul), as CTranslate2's int8; measured 302 vs 238 target tokens/s for
    // weight-only MatMulNBits on the OPUS-MT shape (docs/PERFORMANCE.md)
    if (opt.precision == "int8") q.mode = "int8-dynamic";
    q.progress = [&](int64_t d, int64_t t) {
      if (opt.progress) opt.progress("quantize", d, t);
    };
    const graph::QuantizeReport rep = quantize_package_graphs(dir, dir, q);
    json m = manifest;
    m["precision"] = opt.precision;
    m["quantization"] = quantization_record(q, rep);
    io::write_text_file_atomic(dir / "kvrun.json", m.dump(2) + "\n");
  }
  if (opt.load_check) {
    std::vector<std::string> files;
    for (const auto& g : graphs) files.push_back(g.file);
    load_check(dir, files, opt.progress);
  }
  return finish_build(staged, opt, t0);
}

}  // namespace kvrun::build
