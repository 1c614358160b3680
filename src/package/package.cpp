// kvrun build: checkpoint -> package folder (graphs, embedding table, manifest, tokenizer).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "arch/decoder.h"
#include "arch/tensor_names.h"
#include "io/fs.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "kvrun/build.h"
#include "package/manifest.h"
#include "package/package_parts.h"
#include "package/quantize_package.h"
#include "runtime/ort_session.h"

namespace kvrun {
namespace fs = std::filesystem;
using nlohmann::json;

graph::QuantizeOptions build::quant_options(const BuildOptions& o) {
  graph::QuantizeOptions q;
  static_cast<QuantSettings&>(q) = o.quant;
  q.mode = o.precision;
  q.standard_ops = o.target == "portable";
  return q;
}

void BuildOptions::validate() const {
  if (checkpoint.empty()) throw Error("build: a checkpoint folder is required");
  if (out.empty()) throw Error("build: an output folder is required (-o)");
  if (target != "ort" && target != "portable")
    throw Error("build: --target must be 'ort' or 'portable', found '" + target + "'");
  if (precision != "fp32" && precision != "fp16" && precision != "int8" && precision != "int4")
    throw Error("build: --precision must be fp32, fp16, int8 or int4, found '" + precision + "'");
  if (precision == "int8" || precision == "int4") build::quant_options(*this).validate();
  if (kv_dtype != "auto" && kv_dtype != "fp32" && kv_dtype != "fp16")
    throw Error("build: --kv-dtype must be auto, fp32 or fp16, found '" + kv_dtype + "'");
  const std::string kv = resolved_kv_dtype();
  if (precision == "fp16" && kv != "fp16")
    throw Error("build: --precision fp16 keeps its KV cache in fp16, found --kv-dtype " + kv_dtype);
  if (target == "portable" && kv != (precision == "fp16" ? "fp16" : "fp32"))
    throw Error("build: --kv-dtype " + kv_dtype + " needs --target ort (portable graphs keep the cache in " +
                "their precision's dtype)");
  if (max_length < 0 || max_length > (1 << 22))
    throw Error("build: --max-length must be in [1, 4194304], found " + std::to_string(max_length));
  if (fs::exists(out) && fs::equivalent(out, checkpoint))
    throw Error("build: the output folder must differ from the checkpoint folder");
}

std::string BuildOptions::resolved_kv_dtype() const {
  if (kv_dtype != "auto") return kv_dtype;
  // int4 on ort: the cache is a quarter of a decode step's bytes at 512 positions and its
  // float16 noise is far below int4's. int8 keeps float32: its verify margin (one allowed
  // flip in 68 positions) is too thin to spend on the cache (docs/PERFORMANCE.md).
  if (precision == "fp16" || (target == "ort" && precision == "int4")) return "fp16";
  return "fp32";
}

namespace {

// Tokenizer and config files copied verbatim so the package is self-contained.
const char* kCopiedFiles[] = {"tokenizer.json",
                              "tokenizer_config.json",
                              "special_tokens_map.json",
                              "vocab.json",
                              "merges.txt",
                              "tokenizer.model",
                              "added_tokens.json",
                              "chat_template.jinja",
                              "chat_template.json",
                              "generation_config.json",
                              "config.json"};

json chat_template_of(const fs::path& ckpt) {
  if (fs::exists(ckpt / "chat_template.jinja")) return io::read_text_file(ckpt / "chat_template.jinja");
  if (fs::exists(ckpt / "tokenizer_config.json")) {
    const json tc = io::read_json_file(ckpt / "tokenizer_config.json");
    if (tc.contains("chat_template")) {
      const json& t = tc["chat_template"];
      if (t.is_string()) return t;
      if (t.is_array())  // [{name, template}], take "default"
        for (const auto& e : t)
          if (e.value("name", "") == "default" && e.contains("template")) return e["template"];
    }
  }
  return nullptr;
}

}  // namespace

namespace build {

// The decoder half of a package: embedding table, embedding + decoder graphs, tokenizer
// and config files (from `files_dir`), kvrun.json, and the int8/int4 decoder graphs.
// Returns the manifest as written; the graph list goes to `graphs`.
json build_llm_parts(const fs::path& dir, const BuildOptions& opt, const io::ModelConfig& cfg,
                     const io::GenerationConfig& gen, const io::TensorStore& store, const fs::path& files_dir,
                     std::vector<arch::GraphSignature>& graphs) {
  arch::check_checkpoint(store, cfg);
  if (opt.target == "ort" && cfg.head_dim % 16 != 0)
    throw Error("build: target ort uses ONNX Runtime's GroupQueryAttention, whose CPU kernel needs a head_dim that " +
                std::string("is a multiple of 16; this model's head_dim is ") + std::to_string(cfg.head_dim) +
                " (use --target portable)");
  const io::DType dt = opt.precision == "fp16" ? io::DType::F16 : io::DType::F32;  // int8/int4: fp32, then quantized
  const arch::Target target = opt.target == "ort" ? arch::Target::Ort : arch::Target::Portable;
  const int64_t max_len = opt.max_length > 0 ? opt.max_length : cfg.max_position_embeddings;
  auto progress = [&](const std::string& stage, int64_t done, int64_t total) {
    if (opt.progress) opt.progress(stage, done, total);
  };

  // 1. embedding table (page-aligned so graphs can reference it in place)
  progress("embedding", 0, 1);
  const io::TensorView& emb = store.get(arch::kEmbedTokens);
  const uint64_t data_start =
      io::write_safetensors_streaming(dir / "embedding.safetensors", {{arch::kEmbedTokens, dt, emb.shape, nullptr}},
                                      {{"format", "kvrun-embedding"}}, 4096, [&](size_t, std::vector<uint8_t>& buf) {
                                        const std::vector<float> f = emb.to_f32();
                                        if (dt == io::DType::F32) {
                                          std::memcpy(buf.data(), f.data(), buf.size());
                                        } else {
                                          auto* h = reinterpret_cast<uint16_t*>(buf.data());
                                          for (size_t i = 0; i < f.size(); ++i) h[i] = io::f32_to_f16(f[i]);
                                        }
                                      });
  const graph::ExternalData::Entry embed_entry{
      "embedding.safetensors", static_cast<int64_t>(data_start),
      static_cast<int64_t>(emb.numel() * static_cast<int64_t>(io::dtype_size(dt)))};
  progress("embedding", 1, 1);

  // 2. graphs
  graphs.push_back(arch::build_embedding_graph(cfg, dt, dir, embed_entry));
  const io::DType kv_dt = opt.resolved_kv_dtype() == "fp16" ? io::DType::F16 : io::DType::F32;
  arch::DecoderBuildOptions dopt{target, dt, max_len, opt.all_logits, kv_dt};
  for (auto& s : arch::build_decoder(cfg, store, dopt, dir, embed_entry,
                                     [&](int64_t d, int64_t t) { progress("decoder", d, t); }))
    graphs.push_back(std::move(s));

  // 3. tokenizer + config files
  std::vector<std::string> copied;
  for (const char* f : kCopiedFiles) {
    const fs::path src = fs::is_directory(files_dir) ? files_dir / f : fs::path();
    if (!src.empty() && fs::exists(src)) {
      fs::copy_file(src, dir / (std::string(f) == "config.json" ? "hf_config.json" : f));
      copied.push_back(std::string(f) == "config.json" ? "hf_config.json" : f);
    }
  }

  // 4. manifest
  build::ManifestInputs mi{cfg,
                           gen,
                           target,
                           dt,
                           kv_dt,
                           max_len,
                           opt.all_logits,
                           graphs,
                           copied,
                           chat_template_of(files_dir),
                           fs::absolute(opt.checkpoint).string()};
  json manifest = build::make_manifest(mi);
  io::write_text_file_atomic(dir / "kvrun.json", manifest.dump(2) + "\n");

  // 4b. int8/int4: the fp32 decoder graphs quantized in place (weights mapped, written once)
  if (opt.precision == "int8" || opt.precision == "int4") {
    graph::QuantizeOptions q = quant_options(opt);
    q.progress = [&](int64_t d, int64_t t) { progress("quantize", d, t); };
    const graph::QuantizeReport rep = build::quantize_package_graphs(dir, dir, q);
    manifest["precision"] = opt.precision;
    manifest["quantization"] = build::quantization_record(q, rep);
    io::write_text_file_atomic(dir / "kvrun.json", manifest.dump(2) + "\n");
  }
  return manifest;
}

// ONNX Runtime load check of every graph file given.
void load_check(const fs::path& dir, const std::vector<std::string>& files, const ProgressFn& progress) {
  for (size_t i = 0; i < files.size(); ++i) {
    if (progress) progress("load-check", static_cast<int64_t>(i), static_cast<int64_t>(files.size()));
    runtime::SessionConfig sc;
    sc.optimize = false;  // a load check; optimizations run when the package is used
    runtime::Session s(dir / files[i], sc);
  }
  if (progress) progress("load-check", static_cast<int64_t>(files.size()), static_cast<int64_t>(files.size()));
}

BuildResult finish_build(io::StagedDir& staged, const BuildOptions& opt, std::chrono::steady_clock::time_point t0) {
  BuildResult r;
  for (const auto& e : fs::directory_iterator(staged.path())) {
    r.files.push_back(e.path().filename().string());
    r.bytes += fs::file_size(e.path());
  }
  std::sort(r.files.begin(), r.files.end());
  staged.commit();
  r.out = opt.out;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace build

BuildResult build_package(const BuildOptions& opt) {
  opt.validate();
  if (build::is_funasr_nano_folder(opt.checkpoint)) return build::build_funasr_nano_package(opt);
  const auto t0 = std::chrono::steady_clock::now();
  const io::ModelConfig cfg = io::load_model_config(opt.checkpoint);
  const io::GenerationConfig gen = io::load_generation_config(opt.checkpoint, cfg);
  const io::TensorStore store(opt.checkpoint);

  io::StagedDir staged(opt.out, opt.overwrite);
  std::vector<arch::GraphSignature> graphs;
  build::build_llm_parts(staged.path(), opt, cfg, gen, store, opt.checkpoint, graphs);
  if (opt.load_check) {
    std::vector<std::string> files;
    for (const auto& g : graphs) files.push_back(g.file);
    build::load_check(staged.path(), files, opt.progress);
  }
  return build::finish_build(staged, opt, t0);
}

}  // namespace kvrun
