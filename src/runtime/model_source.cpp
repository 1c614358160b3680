#include "runtime/model_source.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "kvrun/error.h"
#include "package/manifest.h"

namespace kvrun::runtime {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::optional<int64_t> opt_int(const json& j, const char* key) {
  if (j.is_object() && j.contains(key) && j[key].is_number_integer()) return j[key].get<int64_t>();
  return std::nullopt;
}

// eos_token_id may be an int or a list of ints.
void add_ids(const json& j, std::vector<TokenId>& out) {
  auto add = [&](const json& v) {
    if (v.is_number_integer()) {
      const auto id = static_cast<TokenId>(v.get<int64_t>());
      if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
    }
  };
  if (j.is_array())
    for (const auto& v : j) add(v);
  else
    add(j);
}

// Facts from a Hugging Face config.json / generation_config.json, when present.
void read_hf_side_files(const fs::path& dir, ModelSource& m) {
  if (fs::exists(dir / "config.json")) {
    const json c = io::read_json_file(dir / "config.json");
    const json& t = c.contains("text_config") && c["text_config"].is_object() ? c["text_config"] : c;
    if (!m.num_layers) m.num_layers = opt_int(t, "num_hidden_layers");
    if (!m.hidden_size) m.hidden_size = opt_int(t, "hidden_size");
    if (!m.vocab_size) m.vocab_size = opt_int(t, "vocab_size");
    if (!m.kv_heads) m.kv_heads = opt_int(t, "num_key_value_heads");
    if (!m.kv_heads) m.kv_heads = opt_int(t, "num_attention_heads");
    if (!m.head_dim) m.head_dim = opt_int(t, "head_dim");
    if (!m.head_dim && m.hidden_size) {
      if (auto h = opt_int(t, "num_attention_heads"); h && *h > 0) m.head_dim = *m.hidden_size / *h;
    }
    if (m.eos_ids.empty() && t.contains("eos_token_id")) add_ids(t["eos_token_id"], m.eos_ids);
    if (!m.bos_id) m.bos_id = opt_int(t, "bos_token_id");
    if (!m.pad_id) m.pad_id = opt_int(t, "pad_token_id");
  }
  if (fs::exists(dir / "generation_config.json")) {
    const json g = io::read_json_file(dir / "generation_config.json");
    if (g.contains("eos_token_id")) {
      std::vector<TokenId> ids;
      add_ids(g["eos_token_id"], ids);
      if (!ids.empty()) m.eos_ids = ids;  // generation_config wins, as in transformers
    }
    if (auto b = opt_int(g, "bos_token_id")) m.bos_id = b;
    if (auto p = opt_int(g, "pad_token_id")) m.pad_id = p;
  }
}

ModelSource from_kvrun_package(const fs::path& dir) {
  const build::Manifest man = build::load_manifest(dir);
  ModelSource m;
  m.dir = dir;
  m.layout = "kvrun-" + man.target;
  if (man.target == "ort") {
    m.step_graph = dir / man.graph("decoder").file;
    m.share_buffer = man.raw.at("kv_cache").value("past_present_share_buffer", false);
    m.right_padding = true;
  } else {
    m.first_graph = dir / man.graph("prefill").file;
    m.step_graph = dir / man.graph("decode").file;
  }
  m.embed_table = dir / man.embedding_file;
  m.embed_tensor = man.embedding_tensor;
  m.embed_scale = static_cast<float>(man.embedding_scale);
  m.max_length = man.max_length;
  m.max_length_from = "kvrun.json max_length";
  m.num_layers = man.num_layers, m.kv_heads = man.num_kv_heads, m.head_dim = man.head_dim;
  m.hidden_size = man.hidden_size, m.vocab_size = man.vocab_size;
  for (auto id : man.eos_token_ids) m.eos_ids.push_back(static_cast<TokenId>(id));
  if (man.bos_token_id) m.bos_id = static_cast<TokenId>(*man.bos_token_id);
  if (man.pad_token_id) m.pad_id = static_cast<TokenId>(*man.pad_token_id);
  if (man.raw.contains("chat_template") && man.raw["chat_template"].is_string())
    m.chat_template = man.raw["chat_template"].get<std::string>();
  return m;
}

ModelSource from_genai(const fs::path& dir) {
  const fs::path cfg_path = dir / "genai_config.json";
  const json c = io::read_json_file(cfg_path);
  if (!c.contains("model") || !c["model"].is_object() || !c["model"].contains("decoder") ||
      !c["model"]["decoder"].is_object())
    throw Error(cfg_path.string() + ": expected an object at model.decoder (ONNX Runtime GenAI config)");
  const json& model = c["model"];
  const json& dec = model["decoder"];
  ModelSource m;
  m.dir = dir;
  m.layout = "genai";
  if (!dec.contains("filename") || !dec["filename"].is_string())
    throw Error(cfg_path.string() + ": model.decoder.filename is missing");
  m.step_graph = dir / dec["filename"].get<std::string>();
  if (model.contains("embedding") && model["embedding"].is_object() && model["embedding"].contains("filename"))
    m.embed_graph = dir / model["embedding"]["filename"].get<std::string>();
  m.num_layers = opt_int(dec, "num_hidden_layers");
  m.kv_heads = opt_int(dec, "num_key_value_heads");
  m.head_dim = opt_int(dec, "head_size");
  m.hidden_size = opt_int(dec, "hidden_size");
  m.vocab_size = opt_int(model, "vocab_size");
  if (auto cl = opt_int(model, "context_length")) m.max_length = *cl, m.max_length_from = "genai_config.json";
  if (model.contains("eos_token_id")) add_ids(model["eos_token_id"], m.eos_ids);
  m.bos_id = opt_int(model, "bos_token_id");
  m.pad_id = opt_int(model, "pad_token_id");
  if (c.contains("search") && c["search"].is_object())
    m.share_buffer = c["search"].value("past_present_share_buffer", false);
  m.right_padding = true;  // the GenAI builder's graphs use GroupQueryAttention
  read_hf_side_files(dir, m);
  return m;
}

}  // namespace

ModelSource find_model(const fs::path& path) {
  if (!fs::exists(path)) throw Error(path.string() + ": no such file or folder");
  if (fs::is_regular_file(path)) {
    if (path.extension() != ".onnx") throw Error(path.string() + ": expected a model folder or an .onnx file");
    ModelSource m;
    m.dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    m.layout = "onnx";
    m.step_graph = path;
    read_hf_side_files(m.dir, m);
    return m;
  }
  const fs::path dir = path;
  if (fs::exists(dir / "kvrun.json")) return from_kvrun_package(dir);
  if (fs::exists(dir / "genai_config.json")) return from_genai(dir);

  ModelSource m;
  m.dir = dir;
  auto first_of = [&](std::initializer_list<const char*> names) -> fs::path {
    for (const char* n : names)
      if (fs::exists(dir / n)) return dir / n;
    return {};
  };
  if (auto f = first_of({"decoder_model_merged.onnx", "decoder_with_past_model.onnx", "model.onnx"}); !f.empty()) {
    m.layout = f.filename() == "decoder_model_merged.onnx" ? "optimum-merged" : "optimum";
    m.step_graph = f;
    // optimum's non-merged pair: decoder_model.onnx (no past) + decoder_with_past_model.onnx
    if (f.filename() == "decoder_with_past_model.onnx" && fs::exists(dir / "decoder_model.onnx"))
      m.first_graph = dir / "decoder_model.onnx";
  } else if (auto d = first_of({"llm_decode.onnx", "decode.onnx", "decoder_with_past.onnx"}); !d.empty()) {
    m.layout = "split";
    m.step_graph = d;
    m.first_graph = first_of({"llm_prefill.onnx", "prefill.onnx"});
  } else if (auto l = first_of({"llm.onnx", "llm.fp32.onnx", "llm.int8.onnx", "llm.fp16.onnx"}); !l.empty()) {
    // sherpa-onnx's FunASR-nano export; the graph's signature and metadata confirm it (Decoder).
    m.layout = "sherpa-kv-delta";
    m.step_graph = l;
  } else {
    throw Error(dir.string() +
                ": no model found; looked for kvrun.json, genai_config.json, decoder_model_merged.onnx, "
                "decoder_with_past_model.onnx, model.onnx, llm_decode.onnx (+ llm_prefill.onnx), decode.onnx, "
                "llm.onnx (sherpa-onnx)");
  }
  m.embed_graph = first_of(
      {"embedding.onnx", "embed_tokens.onnx", "embeddings.onnx", "embedding.fp32.onnx", "embedding.int8.onnx"});
  read_hf_side_files(dir, m);
  // FunASR-nano exports keep the LLM's config / tokenizer in a subfolder (Qwen3-0.6B/).
  if ((m.layout == "split" || m.layout == "sherpa-kv-delta") && !fs::exists(dir / "config.json") &&
      !fs::exists(dir / "tokenizer.json")) {
    std::vector<fs::path> subs;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory() && (fs::exists(e.path() / "config.json") || fs::exists(e.path() / "tokenizer.json")))
        subs.push_back(e.path());
    std::sort(subs.begin(), subs.end());
    if (!subs.empty()) {
      m.side_dir = subs.front();
      read_hf_side_files(m.side_dir, m);
    }
  }
  return m;
}

}  // namespace kvrun::runtime
