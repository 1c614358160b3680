#include "io/model_config.h"

#include <cmath>
#include <numbers>

#include "io/fs.h"
#include "io/gguf_checkpoint.h"
#include "kvrun/error.h"

namespace kvrun::io {
namespace fs = std::filesystem;
using nlohmann::json;

const char* family_name(Family f) {
  switch (f) {
    case Family::Llama:
      return "llama";
    case Family::Qwen2:
      return "qwen2";
    case Family::Qwen3:
      return "qwen3";
  }
  return "?";
}

namespace {

int64_t get_int(const json& j, const std::string& key, const std::string& src, std::optional<int64_t> dflt = {}) {
  if (!j.contains(key) || j[key].is_null()) {
    if (dflt) return *dflt;
    throw Error(src + ": missing required field '" + key + "' (expected an integer)");
  }
  if (!j[key].is_number_integer())
    throw Error(src + ": field '" + key + "' must be an integer, found " + j[key].dump());
  return j[key].get<int64_t>();
}

double get_num(const json& j, const std::string& key, const std::string& src, double dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number()) throw Error(src + ": field '" + key + "' must be a number, found " + j[key].dump());
  return j[key].get<double>();
}

bool get_bool(const json& j, const std::string& key, const std::string& src, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) throw Error(src + ": field '" + key + "' must be true or false, found " + j[key].dump());
  return j[key].get<bool>();
}

std::optional<int64_t> get_opt_id(const json& j, const std::string& key) {
  if (!j.contains(key) || !j[key].is_number_integer()) return std::nullopt;
  return j[key].get<int64_t>();
}

std::vector<int64_t> get_ids(const json& j, const std::string& key) {
  std::vector<int64_t> out;
  if (!j.contains(key)) return out;
  if (j[key].is_number_integer()) out.push_back(j[key].get<int64_t>());
  if (j[key].is_array())
    for (const auto& v : j[key])
      if (v.is_number_integer()) out.push_back(v.get<int64_t>());
  return out;
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& src) {
  if (!j.is_object()) throw Error(src + ": expected a JSON object");
  ModelConfig c;
  if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
      !j["architectures"][0].is_string())
    throw Error(src + ": missing 'architectures' (expected e.g. [\"Qwen3ForCausalLM\"])");
  c.architecture = j["architectures"][0].get<std::string>();
  if (c.architecture == "LlamaForCausalLM") {
    c.family = Family::Llama;
  } else if (c.architecture == "Qwen2ForCausalLM") {
    c.family = Family::Qwen2;
  } else if (c.architecture == "Qwen3ForCausalLM") {
    c.family = Family::Qwen3;
  } else {
    throw Error(src + ": unsupported architecture '" + c.architecture +
                "' (supported: Qwen3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM)");
  }
  c.hidden_size = get_int(j, "hidden_size", src);
  c.intermediate_size = get_int(j, "intermediate_size", src);
  c.num_layers = get_int(j, "num_hidden_layers", src);
  c.num_heads = get_int(j, "num_attention_heads", src);
  c.num_kv_heads = get_int(j, "num_key_value_heads", src, c.num_heads);
  c.head_dim = get_int(j, "head_dim", src, c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.vocab_size = get_int(j, "vocab_size", src);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, 2048);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  c.rope_theta = get_num(j, "rope_theta", src, 10000.0);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  if (j.contains("hidden_act") && !j["hidden_act"].is_string())
    throw Error(src + ": field 'hidden_act' must be a string, found " + j["hidden_act"].dump());
  const std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu") throw Error(src + ": hidden_act '" + act + "' is not supported (expected 'silu')");
  const bool attention_bias = get_bool(j, "attention_bias", src, false);
  switch (c.family) {
    case Family::Qwen2:
      c.qkv_bias = true;  // Qwen2Attention always has q/k/v bias, never o_proj bias
      break;
    case Family::Qwen3:
      c.qk_norm = true;
      c.qkv_bias = c.o_bias = attention_bias;
      break;
    case Family::Llama:
      c.qkv_bias = c.o_bias = attention_bias;
      c.mlp_bias = get_bool(j, "mlp_bias", src, false);
      break;
  }
  if (c.family != Family::Llama && get_bool(j, "use_sliding_window", src, false))
    throw Error(src + ": use_sliding_window=true is not supported (expected false)");
  // transformers >= 5 nests rope settings in "rope_parameters" {rope_theta, rope_type, ...};
  // 4.x checkpoints use top-level rope_theta + rope_scaling. Both are read.
  const json* rope = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    rope = &j["rope_parameters"];
    c.rope_theta = get_num(*rope, "rope_theta", src + " rope_parameters", c.rope_theta);
  } else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    rope = &j["rope_scaling"];
  }
  if (j.contains("layer_types") && j["layer_types"].is_array())
    for (const auto& t : j["layer_types"])
      if (t != "full_attention")
        throw Error(src + ": layer_types contains " + t.dump() + "; only full_attention layers are supported");
  if (rope) {
    const json& r = *rope;
    if (!r.is_object()) throw Error(src + ": rope_scaling must be an object or null");
    for (const char* k : {"rope_type", "type"})
      if (r.contains(k) && !r[k].is_string())
        throw Error(src + ": rope '" + k + "' must be a string, found " + r[k].dump());
    c.rope_scaling.type = r.value("rope_type", r.value("type", std::string("default")));
    if (c.rope_scaling.type != "default" && c.rope_scaling.type != "linear" && c.rope_scaling.type != "llama3")
      throw Error(src + ": rope_scaling type '" + c.rope_scaling.type +
                  "' is not supported (supported: default, linear, llama3)");
    c.rope_scaling.factor = get_num(r, "factor", src, 1.0);
    c.rope_scaling.low_freq_factor = get_num(r, "low_freq_factor", src, 1.0);
    c.rope_scaling.high_freq_factor = get_num(r, "high_freq_factor", src, 4.0);
    c.rope_scaling.original_max_position_embeddings =
        get_int(r, "original_max_position_embeddings", src, int64_t{8192});
  }
  c.bos_token_id = get_opt_id(j, "bos_token_id");
  c.pad_token_id = get_opt_id(j, "pad_token_id");
  c.eos_token_ids = get_ids(j, "eos_token_id");
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"];
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(src + ": " + e.what());
  }
  return c;
}

void ModelConfig::validate() const {
  auto positive = [](const char* name, int64_t v, int64_t limit) {
    if (v <= 0 || v > limit)
      throw Error(std::string(name) + " must be in [1, " + std::to_string(limit) + "], found " + std::to_string(v));
  };
  positive("hidden_size", hidden_size, 1 << 16);
  positive("intermediate_size", intermediate_size, 1 << 20);
  positive("num_hidden_layers", num_layers, 1024);
  positive("num_attention_heads", num_heads, 1024);
  positive("num_key_value_heads", num_kv_heads, 1024);
  positive("head_dim", head_dim, 1024);
  positive("vocab_size", vocab_size, 1 << 24);
  positive("max_position_embeddings", max_position_embeddings, 1 << 24);
  if (num_heads % num_kv_heads != 0)
    throw Error("num_attention_heads (" + std::to_string(num_heads) + ") must be a multiple of num_key_value_heads (" +
                std::to_string(num_kv_heads) + ")");
  if (head_dim % 2 != 0) throw Error("head_dim must be even for rotary embeddings, found " + std::to_string(head_dim));
  if (!(rms_norm_eps > 0)) throw Error("rms_norm_eps must be > 0");
  if (!(rope_theta > 0)) throw Error("rope_theta must be > 0");
  if (!(rope_scaling.factor > 0)) throw Error("rope_scaling.factor must be > 0");
}

std::vector<float> ModelConfig::inv_freq() const {
  const int64_t half = head_dim / 2;
  std::vector<float> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    f[i] = 1.0f / static_cast<float>(std::pow(static_cast<float>(rope_theta), static_cast<double>(expo)));
  }
  if (rope_scaling.type == "linear") {
    for (auto& v : f) v = static_cast<float>(v / rope_scaling.factor);
  } else if (rope_scaling.type == "llama3") {
    // Same formula as transformers' _compute_llama3_parameters.
    const double factor = rope_scaling.factor, lo = rope_scaling.low_freq_factor, hi = rope_scaling.high_freq_factor;
    const double old_ctx = static_cast<double>(rope_scaling.original_max_position_embeddings);
    const double low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
    for (auto& v : f) {
      const double wavelen = 2 * std::numbers::pi / static_cast<double>(v);
      if (wavelen > low_wavelen) {
        v = v / factor;
      } else if (wavelen >= high_wavelen) {  // medium band: smooth interpolation
        const double smooth = (old_ctx / wavelen - lo) / (hi - lo);
        v = static_cast<float>((1 - smooth) * v / factor + smooth * v);
      }
    }
  }
  return f;
}

void ModelConfig::rope_tables(int64_t positions, std::vector<float>& cos, std::vector<float>& sin) const {
  const std::vector<float> f = inv_freq();
  const size_t half = f.size();
  cos.resize(static_cast<size_t>(positions) * half);
  sin.resize(cos.size());
  for (int64_t p = 0; p < positions; ++p)
    for (size_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * f[i];  // float32 product, as transformers does
      cos[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
}

json ModelConfig::to_json() const {
  json j = {{"architecture", architecture},
            {"family", family_name(family)},
            {"hidden_size", hidden_size},
            {"intermediate_size", intermediate_size},
            {"num_layers", num_layers},
            {"num_heads", num_heads},
            {"num_kv_heads", num_kv_heads},
            {"head_dim", head_dim},
            {"vocab_size", vocab_size},
            {"max_position_embeddings", max_position_embeddings},
            {"rms_norm_eps", rms_norm_eps},
            {"rope_theta", rope_theta},
            {"rope_scaling",
             {{"type", rope_scaling.type},
              {"factor", rope_scaling.factor},
              {"low_freq_factor", rope_scaling.low_freq_factor},
              {"high_freq_factor", rope_scaling.high_freq_factor},
              {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}}},
            {"tie_word_embeddings", tie_word_embeddings},
            {"qkv_bias", qkv_bias},
            {"o_bias", o_bias},
            {"mlp_bias", mlp_bias},
            {"qk_norm", qk_norm}};
  return j;
}

ModelConfig load_model_config(const fs::path& path) {
  if (is_gguf_file(path)) return parse_model_config(GgufCheckpoint(path).hf_config(), path.string());
  const fs::path file = fs::is_directory(path) ? path / "config.json" : path;
  return parse_model_config(read_json_file(file), file.string());
}

GenerationConfig load_generation_config(const fs::path& dir, const ModelConfig& cfg) {
  GenerationConfig g;
  g.eos_token_ids = cfg.eos_token_ids;
  g.bos_token_id = cfg.bos_token_id;
  g.pad_token_id = cfg.pad_token_id;
  const bool gguf = is_gguf_file(dir);
  const fs::path file = gguf ? dir : dir / "generation_config.json";
  if (!fs::exists(file)) return g;
  const json j = gguf ? GgufCheckpoint(dir).generation_config() : read_json_file(file);
  const std::string src = file.string();
  if (!j.is_object()) throw Error(src + ": expected a JSON object");
  if (auto ids = get_ids(j, "eos_token_id"); !ids.empty()) g.eos_token_ids = ids;
  if (auto v = get_opt_id(j, "bos_token_id")) g.bos_token_id = v;
  if (auto v = get_opt_id(j, "pad_token_id")) g.pad_token_id = v;
  g.do_sample = get_bool(j, "do_sample", src, false);
  g.temperature = get_num(j, "temperature", src, 1.0);
  g.top_k = get_int(j, "top_k", src, int64_t{50});
  g.top_p = get_num(j, "top_p", src, 1.0);
  g.repetition_penalty = get_num(j, "repetition_penalty", src, 1.0);
  if (j.contains("max_new_tokens") && j["max_new_tokens"].is_number_integer()) g.max_new_tokens = j["max_new_tokens"];
  return g;
}

json GenerationConfig::to_json() const {
  json j = {{"eos_token_ids", eos_token_ids},
            {"do_sample", do_sample},
            {"temperature", temperature},
            {"top_k", top_k},
            {"top_p", top_p},
            {"repetition_penalty", repetition_penalty}};
  j["bos_token_id"] = bos_token_id ? json(*bos_token_id) : json(nullptr);
  j["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
  if (max_new_tokens) j["max_new_tokens"] = *max_new_tokens;
  return j;
}

}  // namespace kvrun::io
