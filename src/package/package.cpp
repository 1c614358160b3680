// kvrun build: checkpoint -> package folder (graphs, embedding table, manifest, tokenizer).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "arch/decoder.h"
#include "arch/tensor_names.h"
#include "io/fs.h"
#include "io/gguf_checkpoint.h"
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
  q.mode = o.resolved_precision();
  q.standard_ops = o.target == "portable";
  return q;
}

void BuildOptions::validate() const {
  if (checkpoint.empty()) throw Error("build: a checkpoint folder is required");
  if (out.empty()) throw Error("build: an output folder is required (-o)");
  if (target != "ort" && target != "portable")
    throw Error("build: --target must be 'ort' or 'portable', found '" + target + "'");
  const std::string precision = resolved_precision();
  if (precision != "fp32" && precision != "fp16" && precision != "int8" && precision != "int4" && precision != "source")
    throw Error("build: --precision must be auto, fp32, fp16, int8, int4 or source, found '" + precision + "'");
  if (precision == "source" && !io::is_gguf_file(checkpoint))
    throw Error("build: --precision source keeps a GGUF file's quantization; " + checkpoint.string() +
                " is not a GGUF file");
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

std::string BuildOptions::resolved_precision() const {
  if (precision != "auto") return precision;
  return io::is_gguf_file(checkpoint) ? "source" : "fp32";
}

std::string BuildOptions::resolved_kv_dtype() const {
  if (kv_dtype != "auto") return kv_dtype;
  const std::string precision = resolved_precision();
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

// tokenizer_config.json's chat_template (a string, or [{name, template}] with "default").
json chat_template_of_config(const fs::path& file) {
  const json tc = io::read_json_file(file);
  if (!tc.is_object() || !tc.contains("chat_template")) return nullptr;
  const json& t = tc["chat_template"];
  if (t.is_string()) return t;
  if (t.is_array())
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template")) return e["template"];
  return nullptr;
}

json chat_template_of(const fs::path& ckpt) {
  if (!fs::is_directory(ckpt)) return nullptr;
  if (fs::exists(ckpt / "chat_template.jinja")) return io::read_text_file(ckpt / "chat_template.jinja");
  if (fs::exists(ckpt / "tokenizer_config.json")) return chat_template_of_config(ckpt / "tokenizer_config.json");
  return nullptr;
}

// --chat-template: a tokenizer_config.json (its chat_template) or a template file.
json read_chat_template(const fs::path& file) {
  if (file.extension() == ".json") {
    const json t = chat_template_of_config(file);
    if (t.is_null()) throw Error(file.string() + ": no 'chat_template' in this file");
    return t;
  }
  return io::read_text_file(file);
}

// What a GGUF build kept: ggml types of the weights and how they run.
json source_quantization(const io::TensorStore& store, bool kept, int accuracy_level) {
  std::map<std::string, int64_t> types;
  for (const auto& name : store.names()) {
    const io::TensorView& v = store.get(name);
    ++types[v.quantized() ? io::ggml_type_name(static_cast<uint32_t>(v.ggml_type)) : io::dtype_name(v.dtype)];
  }
  json j = {{"from", "gguf"}, {"tensor_types", types}};
  if (kept) {
    j["weights"] = "GGUF blocks mapped exactly onto MatMulNBits (+ block-sum mins for types with mins)";
    j["accuracy_level"] = accuracy_level;
  } else {
    j["weights"] = "dequantized to float32 (portable graphs have no MatMulNBits)";
  }
  return j;
}

}  // namespace

namespace build {

arch::EmbeddingTable write_embedding_table(const fs::path& file, const io::TensorStore& store, io::DType dt,
                                           const std::string& mode) {
  const io::TensorView& emb = store.get(arch::kEmbedTokens);
  if (emb.shape.size() != 2) throw Error(emb.file + ": embedding table '" + emb.name + "' must be rank 2");
  const int64_t V = emb.shape[0], H = emb.shape[1];
  const std::string fname = file.filename().string();
  arch::EmbeddingTable t;
  t.dtype = dt;
  std::optional<graph::NBitsWeight> q;
  if (mode == "source" && emb.quantized() && graph::ggml_has_nbits(static_cast<uint32_t>(emb.ggml_type))) {
    q = graph::nbits_from_ggml(static_cast<io::GgmlType>(emb.ggml_type), emb.data, V, H);
  }
  if (!q) {
    const uint64_t start =
        io::write_safetensors_streaming(file, {{arch::kEmbedTokens, dt, emb.shape, nullptr}},
                                        {{"format", "kvrun-embedding"}}, 4096, [&](size_t, std::vector<uint8_t>& buf) {
                                          const std::vector<float> f = emb.to_f32();
                                          if (dt == io::DType::F32) {
                                            std::memcpy(buf.data(), f.data(), buf.size());
                                          } else {
                                            auto* h = reinterpret_cast<uint16_t*>(buf.data());
                                            const bool bf = dt == io::DType::BF16;
                                            for (size_t i = 0; i < f.size(); ++i)
                                              h[i] = bf ? io::f32_to_bf16(f[i]) : io::f32_to_f16(f[i]);
                                          }
                                        });
    t.entry = {fname, static_cast<int64_t>(start), V * H * static_cast<int64_t>(io::dtype_size(dt))};
    return t;
  }
  // <name>.qweight [V, kb, blob] u8, .scales [V, kb] f32, [.zero_points], [.mins]
  const std::string base = arch::kEmbedTokens;
  std::vector<io::TensorToWrite> tensors = {{base + ".qweight", io::DType::U8, {V, q->kb(), q->blob()}, q->B.data()},
                                            {base + ".scales", io::DType::F32, {V, q->kb()}, q->scales.data()}};
  if (!q->zp.empty()) tensors.push_back({base + ".zero_points", io::DType::U8, {V, q->zp_row()}, q->zp.data()});
  if (!q->mins.empty()) tensors.push_back({base + ".mins", io::DType::F32, {V, q->kb()}, q->mins.data()});
  const uint64_t start = io::write_safetensors(file, tensors,
                                               {{"format", "kvrun-embedding"},
                                                {"quantization", "nbits"},
                                                {"bits", std::to_string(q->bits)},
                                                {"block_size", std::to_string(q->block)},
                                                {"columns", std::to_string(q->K)}},
                                               4096);
  int64_t off = static_cast<int64_t>(start);
  for (const auto& tw : tensors) {
    int64_t n = static_cast<int64_t>(io::dtype_size(tw.dtype));
    for (auto d : tw.shape) n *= d;
    t.nbits_entries[tw.name] = {fname, off, n};
    off += n;
  }
  t.quantization = io::ggml_type_name(static_cast<uint32_t>(emb.ggml_type)) + " as " + q->describe();
  graph::NBitsWeight layout = std::move(*q);
  layout.B.clear(), layout.scales.clear(), layout.zp.clear(), layout.mins.clear();
  t.nbits = std::move(layout);
  return t;
}

// The decoder half of a package: embedding table, embedding + decoder graphs, tokenizer
// and config files (from `files_dir`), kvrun.json, and the int8/int4 decoder graphs.
// Returns the manifest as written; the graph list goes to `graphs`.
json build_llm_parts(const fs::path& dir, const BuildOptions& opt, const io::ModelConfig& cfg,
                     const io::GenerationConfig& gen, const io::TensorStore& store, const fs::path& files_dir,
                     std::vector<arch::GraphSignature>& graphs) {
  arch::check_checkpoint(store, cfg);
  const io::DType dt = opt.precision == "fp16" ? io::DType::F16 : io::DType::F32;  // int8/int4: fp32, then quantized
  const arch::Target target = opt.target == "ort" ? arch::Target::Ort : arch::Target::Portable;
  const int64_t max_len = opt.max_length > 0 ? opt.max_length : cfg.max_position_embeddings;
  auto progress = [&](const std::string& stage, int64_t done, int64_t total) {
    if (opt.progress) opt.progress(stage, done, total);
  };

  // 1. embedding table (page-aligned so graphs can reference it in place)
  progress("embedding", 0, 1);
  const bool keep_quantized = opt.precision == "source" && opt.target == "ort";
  // int8/int4: the table keeps 16 bits (the checkpoint's bf16, else fp16) for row lookups,
  // and a tied lm_head gets weights of its own, quantized with the other MatMuls.
  const bool quant_build = opt.precision == "int8" || opt.precision == "int4";
  const io::DType table_dt = !quant_build                                             ? dt
                             : store.get(arch::kEmbedTokens).dtype == io::DType::BF16 ? io::DType::BF16
                                                                                      : io::DType::F16;
  const arch::EmbeddingTable table =
      write_embedding_table(dir / "embedding.safetensors", store, table_dt, keep_quantized ? "source" : "float");
  progress("embedding", 1, 1);

  // 2. graphs
  graphs.push_back(arch::build_embedding_graph(cfg, dt, dir, table));
  const io::DType kv_dt = opt.resolved_kv_dtype() == "fp16" ? io::DType::F16 : io::DType::F32;
  arch::DecoderBuildOptions dopt{target, dt, opt.all_logits, kv_dt};
  dopt.keep_quantized = keep_quantized;
  dopt.accuracy_level = opt.quant.accuracy_level;
  dopt.tied_head_float = quant_build;
  for (auto& s :
       arch::build_decoder(cfg, store, dopt, dir, table, [&](int64_t d, int64_t t) { progress("decoder", d, t); }))
    graphs.push_back(std::move(s));

  // 3. tokenizer + config files (a GGUF file: its tokenizer keys in tokenizer.gguf, its
  // config as transformers would write it)
  std::vector<std::string> copied;
  json chat_template = chat_template_of(files_dir);
  if (io::is_gguf_file(files_dir)) {
    const io::GgufCheckpoint ck(files_dir);
    io::write_gguf_metadata(dir / "tokenizer.gguf", ck.file(), {"general.architecture", "tokenizer."});
    io::write_text_file_atomic(dir / "hf_config.json", ck.hf_config().dump(2) + "\n");
    copied = {"tokenizer.gguf", "hf_config.json"};
    if (const auto t = ck.file().opt_string("tokenizer.chat_template")) chat_template = *t;
  }
  if (!opt.chat_template.empty()) chat_template = read_chat_template(opt.chat_template);
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
                           chat_template,
                           fs::absolute(opt.checkpoint).string()};
  json manifest = build::make_manifest(mi);
  manifest["embedding"]["dtype"] = io::dtype_to_safetensors(table.dtype);
  if (table.quantized()) {
    manifest["embedding"]["dtype"] = "U8";
    manifest["embedding"]["quantization"] = table.quantization + " (MatMulNBits layout)";
  }
  io::write_text_file_atomic(dir / "kvrun.json", manifest.dump(2) + "\n");

  if (opt.precision == "source") {
    manifest["precision"] = keep_quantized ? "source" : "fp32";
    manifest["quantization"] = source_quantization(store, keep_quantized, opt.quant.accuracy_level);
    io::write_text_file_atomic(dir / "kvrun.json", manifest.dump(2) + "\n");
  }

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

BuildResult build_package(const BuildOptions& options) {
  options.validate();
  BuildOptions opt = options;
  opt.precision = options.resolved_precision();
  if (build::is_funasr_nano_folder(opt.checkpoint)) return build::build_funasr_nano_package(opt);
  if (build::is_seq2seq_folder(opt.checkpoint)) return build::build_seq2seq_package(opt);
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
