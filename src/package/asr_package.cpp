// kvrun build for a FunASR-nano folder as published: model.pt (audio_encoder.*,
// audio_adaptor.*, llm.*), config.yaml, and the LLM's config + tokenizer in a sub-folder
// (llm_conf.init_param_path, "Qwen3-0.6B"). The package is a decoder package (the LLM,
// built from the llm.* tensors in place) plus encoder_adaptor.onnx and an "asr" section
// in kvrun.json: front end, prompt, placeholder rule, stop ids and post-processing.
#include <chrono>

#include "arch/sensevoice_encoder.h"
#include "io/yaml_config.h"
#include "kvrun/tokenizer.h"
#include "package/package_parts.h"
#include "package/quantize_package.h"
#include "pipelines/funasr_prompt.h"

namespace kvrun::build {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kEncoderFile = "encoder_adaptor.onnx";

fs::path weights_file(const fs::path& dir) {
  for (const char* f : {"model.pt", "model.pth", "model.bin", "model.safetensors"})
    if (fs::exists(dir / f)) return dir / f;
  return {};
}

std::string yaml_string(const json& y, const char* key) {
  return y.contains(key) && y[key].is_string() ? y[key].get<std::string>() : std::string();
}

// The LLM's folder: llm_conf.init_param_path relative to the model folder (as funasr
// resolves it when run from there), else Qwen3-0.6B/.
fs::path llm_folder(const fs::path& dir, const json& yaml) {
  std::vector<fs::path> tried;
  if (yaml.contains("llm_conf") && yaml["llm_conf"].is_object()) {
    const std::string p = yaml_string(yaml["llm_conf"], "init_param_path");
    if (!p.empty()) {
      const fs::path rel = fs::path(p).is_absolute() ? fs::path(p) : dir / p;
      if (fs::exists(rel / "config.json")) return rel;
      tried.push_back(rel);
      const fs::path base = dir / fs::path(p).filename();  // a path from the machine that wrote it
      if (fs::exists(base / "config.json")) return base;
      tried.push_back(base);
    }
  }
  if (fs::exists(dir / "Qwen3-0.6B" / "config.json")) return dir / "Qwen3-0.6B";
  tried.push_back(dir / "Qwen3-0.6B");
  std::string t;
  for (const auto& p : tried) t += (t.empty() ? "" : ", ") + p.string();
  throw Error("build: " + dir.string() + " is a FunASR-nano folder but its LLM config was not found: expected " +
              "config.json in llm_conf.init_param_path or Qwen3-0.6B/, looked in " + t);
}

// Front-end parameters: config.yaml frontend_conf over the reference's WavFrontend defaults.
json frontend_section(const json& yaml) {
  json fe = {{"type", "kaldi_fbank_lfr"},
             {"sample_rate", 16000},
             {"n_mels", 80},
             {"frame_length_ms", 25.0},
             {"frame_shift_ms", 10.0},
             {"window", "hamming"},
             {"preemphasis", 0.97},
             {"remove_dc_offset", true},
             {"snip_edges", true},
             {"dither", 0.0},
             {"sample_scale", 32768.0},
             {"lfr_m", 7},
             {"lfr_n", 6},
             {"lfr_left_pad", true},
             {"cmvn", nullptr}};
  if (yaml.contains("frontend_conf") && yaml["frontend_conf"].is_object()) {
    const json& c = yaml["frontend_conf"];
    auto num = [&](const char* from, const char* to) {
      if (c.contains(from) && c[from].is_number()) fe[to] = c[from];
    };
    num("fs", "sample_rate");
    num("n_mels", "n_mels");
    num("frame_length", "frame_length_ms");
    num("frame_shift", "frame_shift_ms");
    num("lfr_m", "lfr_m");
    num("lfr_n", "lfr_n");
    if (c.contains("window") && c["window"].is_string()) fe["window"] = c["window"];
    if (c.contains("snip_edges") && c["snip_edges"].is_boolean()) fe["snip_edges"] = c["snip_edges"];
    if (c.contains("cmvn_file") && c["cmvn_file"].is_string())
      throw Error("build: config.yaml frontend_conf.cmvn_file is set; FunASR-nano ships no CMVN and kvrun does not " +
                  std::string("read one yet (found '") + c["cmvn_file"].get<std::string>() + "')");
  }
  // Dither is random noise in the reference's defaults; inference here is deterministic.
  fe["dither"] = 0.0;
  return fe;
}

}  // namespace

json FunAsrFolder::adaptor_conf() const { return yaml.value("audio_adaptor_conf", json::object()); }

FunAsrFolder read_funasr_folder(const fs::path& dir) {
  FunAsrFolder f;
  if (!fs::exists(dir / "config.yaml")) throw Error("FunASR-nano folder " + dir.string() + ": config.yaml not found");
  f.weights = weights_file(dir);
  if (f.weights.empty()) throw Error("FunASR-nano folder " + dir.string() + ": model.pt not found");
  f.yaml = io::read_yaml_file(dir / "config.yaml");
  if (!f.yaml.is_object())
    throw Error(dir.string() + "/config.yaml: expected a mapping at the top, found " + f.yaml.type_name());
  f.llm_dir = llm_folder(dir, f.yaml);
  return f;
}

bool is_funasr_nano_folder(const fs::path& dir) {
  if (!fs::is_directory(dir) || !fs::exists(dir / "config.yaml") || weights_file(dir).empty()) return false;
  const json yaml = io::read_yaml_file(dir / "config.yaml");
  if (!yaml.is_object()) return false;
  const std::string model = yaml_string(yaml, "model");
  return model == "FunASRNano" || (yaml.contains("audio_encoder") && yaml.contains("llm"));
}

BuildResult build_funasr_nano_package(const BuildOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path dir = opt.checkpoint;
  const FunAsrFolder folder = read_funasr_folder(dir);
  const json& yaml = folder.yaml;
  const fs::path& llm_dir = folder.llm_dir;
  const io::ModelConfig cfg = io::load_model_config(llm_dir);
  // The reference builds the LLM with from_config: generation_config.json is not read and
  // decoding stops on config.json's eos only.
  const io::GenerationConfig gen = io::load_generation_config(llm_dir, cfg);
  const io::TensorStore store(folder.weights);
  const io::TensorStore llm = store.sub("llm.");

  io::StagedDir staged(opt.out, opt.overwrite);
  const fs::path out = staged.path();
  std::vector<arch::GraphSignature> graphs;
  json manifest = build_llm_parts(out, opt, cfg, gen, llm, llm_dir, graphs);

  // encoder + adaptor
  const arch::AudioEncoderConfig ec = arch::AudioEncoderConfig::from(store, yaml);
  if (ec.llm_dim != cfg.hidden_size)
    throw Error("build: the adaptor's output width (" + std::to_string(ec.llm_dim) +
                ") must equal the LLM's hidden_size (" + std::to_string(cfg.hidden_size) + ", " +
                (llm_dir / "config.json").string() + ")");
  const arch::Target target = opt.target == "ort" ? arch::Target::Ort : arch::Target::Portable;
  const arch::GraphSignature enc = arch::build_audio_encoder(ec, store, out / kEncoderFile, target, opt.progress);
  json enc_quant = nullptr;
  // int4 packages keep an int8 encoder: 4-bit weights cost the audio rows ~16% RMS error
  // (tests/audio_encoder_test) for a part that is a small share of the decode-bound total.
  const std::string enc_precision = opt.precision == "int4" ? "int8" : opt.precision;
  if (enc_precision == "int8") {
    if (opt.progress) opt.progress("quantize-encoder", 0, 1);
    graph::QuantizeOptions used;
    const graph::QuantizeReport rep =
        arch::quantize_audio_encoder(out / kEncoderFile, out / kEncoderFile, enc_precision, target, opt.quant, &used);
    enc_quant = quantization_record(used, rep);
    if (opt.progress) opt.progress("quantize-encoder", 1, 1);
  }

  // asr section: everything transcribe needs besides the graphs
  pipelines::FunAsrPrompt prompt;
  const std::unique_ptr<Tokenizer> tok = Tokenizer::load(out);
  const auto im_end = tok->token_to_id("<|im_end|>");
  std::vector<int64_t> stop_ids;
  if (im_end) stop_ids.push_back(*im_end);
  if (stop_ids.empty() && !cfg.eos_token_ids.empty()) stop_ids = cfg.eos_token_ids;
  json variants = json::object();
  TranscribeOptions def;
  variants["default"] = tok->encode(prompt.prefix_text(def));
  for (const auto& [code, word] : prompt.languages) {
    TranscribeOptions o;
    o.language = code;
    variants["language_" + code] = tok->encode(prompt.prefix_text(o));
  }
  TranscribeOptions no_itn;
  no_itn.itn = false;
  variants["no_itn"] = tok->encode(prompt.prefix_text(no_itn));
  json pj = prompt.to_json();
  pj["prefix_ids"] = variants;
  pj["suffix_ids"] = tok->encode(prompt.suffix_text());

  manifest["asr"] = {
      {"model", "FunASRNano"},
      {"encoder",
       {{"file", kEncoderFile},
        {"input", enc.inputs.at(0)},
        {"output", enc.outputs.at(0)},
        {"config", ec.to_json()},
        {"precision", enc_quant.is_null() ? "fp32" : enc_precision},
        {"quantization", enc_quant},
        {"activations", "fp32"}}},
      {"frontend", frontend_section(yaml)},
      {"prompt", pj},
      // Only the first N adaptor rows enter the LLM (the reference's low-frame-rate rule):
      // o1 = 1 + (T - 1) // 2; o2 = 1 + (o1 - 1) // 2; N = 1 + (o2 - 1) // 2, T = LFR rows.
      {"audio_tokens",
       {{"rule", "funasr_low_frame_rate"}, {"truncate", folder.adaptor_conf().value("use_low_frame_rate", true)}}},
      {"stop_token_ids", stop_ids},
      {"max_new_tokens", 512},
      {"postprocess", {{"skip_special_tokens", true}, {"replace", {{"/sil", " "}}}, {"collapse_whitespace", true}}},
      {"max_segment_seconds", 30.0},
      {"source", {{"folder", fs::absolute(dir).string()}, {"config_yaml_model", yaml_string(yaml, "model")}}}};
  io::write_text_file_atomic(out / "kvrun.json", manifest.dump(2) + "\n");

  if (opt.load_check) {
    std::vector<std::string> files;
    for (const auto& g : graphs) files.push_back(g.file);
    files.push_back(kEncoderFile);
    load_check(out, files, opt.progress);
  }
  return finish_build(staged, opt, t0);
}

}  // namespace kvrun::build
