#include "package/manifest.h"

#include "arch/tensor_names.h"
#include "io/fs.h"
#include "kvrun/error.h"

namespace kvrun::build {
namespace fs = std::filesystem;
using nlohmann::json;

json make_manifest(const ManifestInputs& in) {
  const io::ModelConfig& c = in.cfg;
  const arch::KvNames kv = arch::kv_names(in.target);
  json graphs = json::object();
  for (const auto& g : in.graphs) graphs[g.role] = {{"file", g.file}, {"inputs", g.inputs}, {"outputs", g.outputs}};
  json special = {{"eos_token_ids", in.gen.eos_token_ids}};
  special["bos_token_id"] = in.gen.bos_token_id ? json(*in.gen.bos_token_id) : json(nullptr);
  special["pad_token_id"] = in.gen.pad_token_id ? json(*in.gen.pad_token_id) : json(nullptr);
  const bool ort = in.target == arch::Target::Ort;
  json embedding = {{"file", "embedding.safetensors"},
                    {"tensor", arch::kEmbedTokens},
                    {"dtype", io::dtype_to_safetensors(in.dtype)},
                    {"graph", "embedding.onnx"}};
  // inputs_embeds are the table's rows times this (float32), as transformers' scaled embedding
  if (c.embedding_scale != 1.0) embedding["scale"] = c.embedding_scale;
  return {
      {"format", "kvrun-package"},
      {"version", kManifestVersion},
      {"producer", "kvrun 0.1.0"},
      {"target", ort ? "ort" : "portable"},
      {"precision", in.dtype == io::DType::F16 ? "fp16" : "fp32"},
      {"model", c.to_json()},
      {"max_length", in.max_length},
      {"embedding", embedding},
      {"graphs", graphs},
      {"inputs_embeds", {{"name", "inputs_embeds"}, {"dtype", io::dtype_to_safetensors(in.dtype)}}},
      // GroupQueryAttention reads per-row lengths (right padding); the portable graphs
      // derive positions from cumsum(mask) (left padding).
      {"attention_mask", {{"name", "attention_mask"}, {"dtype", "I64"}, {"padding", ort ? "right" : "left"}}},
      {"logits", {{"name", "logits"}, {"dtype", "F32"}, {"last_position_only", !in.all_logits}}},
      {"kv_cache",
       {{"layers", c.num_layers},
        {"kv_heads", c.num_kv_heads},
        {"head_dim", arch::kv_head_dim(c, in.target)},  // target ort pads heads to a multiple of 8
        {"layout", "batch,kv_heads,sequence,head_dim"},
        {"sequence_axis", 2},
        {"dtype", io::dtype_to_safetensors(in.kv_dtype)},
        {"past_key", kv.past_key},
        {"past_value", kv.past_value},
        {"present_key", kv.present_key},
        {"present_value", kv.present_value},
        // GroupQueryAttention writes in place when past and present are one buffer of max_length.
        {"past_present_share_buffer", ort},
        {"empty_past_for_first_step", ort}}},
      {"special_tokens", special},
      {"generation", in.gen.to_json()},
      {"chat_template", in.chat_template},
      {"files", in.copied_files},
      {"source", {{"checkpoint", in.source_checkpoint}, {"architecture", c.architecture}}},
  };
}

const arch::GraphSignature& Manifest::graph(const std::string& role) const {
  auto it = graphs.find(role);
  if (it == graphs.end()) throw Error((dir / "kvrun.json").string() + ": no graph with role '" + role + "'");
  return it->second;
}

namespace {
const json& field(const json& j, const std::string& key, const std::string& src) {
  if (!j.is_object() || !j.contains(key)) throw Error(src + ": missing field '" + key + "'");
  return j[key];
}
int64_t int_field(const json& j, const std::string& key, const std::string& src) {
  const json& v = field(j, key, src);
  if (!v.is_number_integer() || v.get<int64_t>() < 0)
    throw Error(src + ": field '" + key + "' must be a non-negative integer, found " + v.dump());
  return v.get<int64_t>();
}
std::string str_field(const json& j, const std::string& key, const std::string& src) {
  const json& v = field(j, key, src);
  if (!v.is_string()) throw Error(src + ": field '" + key + "' must be a string, found " + v.dump());
  return v.get<std::string>();
}
}  // namespace

Manifest load_manifest(const fs::path& dir) {
  const fs::path file = dir / "kvrun.json";
  if (!fs::exists(file)) throw Error(dir.string() + ": not a kvrun package (no kvrun.json)");
  const std::string src = file.string();
  Manifest m;
  m.dir = dir;
  m.raw = io::read_json_file(file);
  if (str_field(m.raw, "format", src) != "kvrun-package") throw Error(src + ": format is not 'kvrun-package'");
  if (int_field(m.raw, "version", src) != kManifestVersion)
    throw Error(src + ": manifest version " + m.raw["version"].dump() + ", this kvrun reads version " +
                std::to_string(kManifestVersion));
  if (m.raw.value("kind", "") == "seq2seq")
    throw Error(src + ": a translation (encoder-decoder) package: run it with kvrun translate");
  m.target = str_field(m.raw, "target", src);
  m.precision = str_field(m.raw, "precision", src);
  const json& model = field(m.raw, "model", src);
  m.architecture = str_field(model, "architecture", src);
  m.hidden_size = int_field(model, "hidden_size", src);
  m.vocab_size = int_field(model, "vocab_size", src);
  m.num_layers = int_field(model, "num_layers", src);
  m.max_length = int_field(m.raw, "max_length", src);
  const json& kv = field(m.raw, "kv_cache", src);
  m.num_kv_heads = int_field(kv, "kv_heads", src);
  m.head_dim = int_field(kv, "head_dim", src);
  m.kv_dtype = io::dtype_from_safetensors(str_field(kv, "dtype", src));
  m.dtype = io::dtype_from_safetensors(str_field(field(m.raw, "inputs_embeds", src), "dtype", src));
  m.kv = {str_field(kv, "past_key", src), str_field(kv, "past_value", src), str_field(kv, "present_key", src),
          str_field(kv, "present_value", src)};
  m.last_position_only = field(field(m.raw, "logits", src), "last_position_only", src).get<bool>();
  const json& emb = field(m.raw, "embedding", src);
  m.embedding_file = str_field(emb, "file", src);
  m.embedding_tensor = str_field(emb, "tensor", src);
  if (emb.contains("scale")) {
    if (!emb["scale"].is_number() || !(emb["scale"].get<double>() > 0))
      throw Error(src + ": field 'embedding.scale' must be a positive number, found " + emb["scale"].dump());
    m.embedding_scale = emb["scale"].get<double>();
  }
  for (const auto& [role, g] : field(m.raw, "graphs", src).items()) {
    arch::GraphSignature s;
    s.role = role;
    s.file = str_field(g, "file", src);
    if (s.file.find('/') != std::string::npos || s.file.find("..") != std::string::npos)
      throw Error(src + ": graph file '" + s.file + "' must be a file name inside the package");
    s.inputs = field(g, "inputs", src).get<std::vector<std::string>>();
    s.outputs = field(g, "outputs", src).get<std::vector<std::string>>();
    m.graphs[role] = std::move(s);
  }
  const json& sp = field(m.raw, "special_tokens", src);
  m.eos_token_ids = field(sp, "eos_token_ids", src).get<std::vector<int64_t>>();
  if (sp.contains("bos_token_id") && sp["bos_token_id"].is_number_integer()) m.bos_token_id = sp["bos_token_id"];
  if (sp.contains("pad_token_id") && sp["pad_token_id"].is_number_integer()) m.pad_token_id = sp["pad_token_id"];
  if (m.raw.contains("source") && m.raw["source"].contains("checkpoint"))
    m.source_checkpoint = m.raw["source"]["checkpoint"].get<std::string>();
  return m;
}

}  // namespace kvrun::build
