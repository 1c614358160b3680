#include "io/model_config.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "io/fs.h"
#include "io/gguf_checkpoint.h"
#include "io/json_fields.h"
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
    case Family::Gemma3:
      return "gemma3";
  }
  return "?";
}

namespace {

// Gemma 3 specifics (transformers' Gemma3TextConfig / Gemma3ForCausalLM).
void parse_gemma3(const json& j, const std::string& src, const json* local_rope, ModelConfig& c) {
  c.sandwich_norms = true;
  // Gemma3RMSNorm: x * (1 + w); a GGUF file stores (1 + w) already (io/gguf_checkpoint.h).
  c.norm_weight_offset = get_num(j, "kvrun_norm_weight_offset", src, 1.0);
  c.embedding_scale = static_cast<double>(static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size))));
  c.query_pre_attn_scalar = get_num(j, "query_pre_attn_scalar", src, 256.0);
  if (!(c.query_pre_attn_scalar > 0))
    throw Error(src + ": query_pre_attn_scalar must be > 0, found " + j["query_pre_attn_scalar"].dump());
  if (j.contains("attn_logit_softcapping") && !j["attn_logit_softcapping"].is_null())
    throw Error(src + ": attn_logit_softcapping " + j["attn_logit_softcapping"].dump() +
                " is not supported (Gemma 3 has none; expected null)");
  c.final_logit_softcap = get_num(j, "final_logit_softcapping", src, 0.0);
  if (c.final_logit_softcap < 0)
    throw Error(src + ": final_logit_softcapping must be > 0 or null, found " + j["final_logit_softcapping"].dump());
  if (get_bool(j, "use_bidirectional_attention", src, false))
    throw Error(src + ": use_bidirectional_attention=true (an embedding model) is not supported (expected false)");
  // Layer types: layer_types when given, else every sliding_window_pattern-th layer is global.
  c.local_layers.assign(static_cast<size_t>(std::max<int64_t>(c.num_layers, 0)), false);
  if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const json& lt = j["layer_types"];
    if (!lt.is_array() || static_cast<int64_t>(lt.size()) != c.num_layers)
      throw Error(src + ": layer_types must list num_hidden_layers (" + std::to_string(c.num_layers) +
                  ") entries, found " + lt.dump());
    for (size_t i = 0; i < lt.size(); ++i) {
      if (lt[i] == "sliding_attention")
        c.local_layers[i] = true;
      else if (lt[i] != "full_attention")
        throw Error(src + ": layer_types[" + std::to_string(i) + "] is " + lt[i].dump() +
                    " (expected \"sliding_attention\" or \"full_attention\")");
    }
  } else {
    const char* key = j.contains("sliding_window_pattern") ? "sliding_window_pattern" : "_sliding_window_pattern";
    const int64_t pattern = get_int(j, key, src, int64_t{6});
    if (pattern <= 0) throw Error(src + ": " + key + " must be >= 1, found " + std::to_string(pattern));
    for (int64_t i = 0; i < c.num_layers; ++i) c.local_layers[static_cast<size_t>(i)] = (i + 1) % pattern != 0;
  }
  if (c.has_local_layers()) {
    c.sliding_window = get_int(j, "sliding_window", src);
    if (c.sliding_window <= 0)
      throw Error(src + ": sliding_window must be >= 1, found " + std::to_string(c.sliding_window));
  } else {
    c.local_layers.clear();
  }
  c.rope_local_theta = get_num(j, "rope_local_base_freq", src, 10000.0);
  if (local_rope) {
    if (!local_rope->is_object()) throw Error(src + ": rope_parameters.sliding_attention must be an object");
    const std::string type = local_rope->value("rope_type", std::string("default"));
    if (type != "default")
      throw Error(src + ": rope_parameters.sliding_attention rope_type '" + type +
                  "' is not supported (local layers: expected 'default')");
    c.rope_local_theta = get_num(*local_rope, "rope_theta", src + " rope_parameters.sliding_attention", 10000.0);
  }
  if (!(c.rope_local_theta > 0)) throw Error(src + ": rope_local_base_freq must be > 0");
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
  } else if (c.architecture == "Gemma3ForCausalLM") {
    c.family = Family::Gemma3;
  } else {
    throw Error(src + ": unsupported architecture '" + c.architecture +
                "' (supported: Qwen3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM, Gemma3ForCausalLM)");
  }
  const bool gemma = c.family == Family::Gemma3;
  c.hidden_size = get_int(j, "hidden_size", src);
  c.intermediate_size = get_int(j, "intermediate_size", src);
  c.num_layers = get_int(j, "num_hidden_layers", src);
  c.num_heads = get_int(j, "num_attention_heads", src);
  c.num_kv_heads = get_int(j, "num_key_value_heads", src, c.num_heads);
  c.head_dim = get_int(j, "head_dim", src, c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.vocab_size = get_int(j, "vocab_size", src);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, 2048);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  c.rope_theta = get_num(j, "rope_theta", src, gemma ? 1e6 : 10000.0);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, gemma);
  // Gemma names the MLP activation hidden_activation (hidden_act, when present, is not used).
  const char* act_key = gemma ? "hidden_activation" : "hidden_act";
  if (j.contains(act_key) && !j[act_key].is_null() && !j[act_key].is_string())
    throw Error(src + ": field '" + act_key + "' must be a string, found " + j[act_key].dump());
  const std::string act = j.contains(act_key) && j[act_key].is_string() ? j[act_key].get<std::string>()
                          : gemma                                       ? "gelu_pytorch_tanh"
                                                                        : "silu";
  const std::string want_act = gemma ? "gelu_pytorch_tanh" : "silu";
  if (act != want_act)
    throw Error(src + ": " + act_key + " '" + act + "' is not supported (expected '" + want_act + "')");
  c.hidden_act = gemma ? Activation::GeluTanh : Activation::Silu;
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
    case Family::Gemma3:
      c.qk_norm = true;
      c.qkv_bias = c.o_bias = attention_bias;
      break;
  }
  if (c.family != Family::Llama && get_bool(j, "use_sliding_window", src, false))
    throw Error(src + ": use_sliding_window=true is not supported (expected false)");
  // transformers >= 5 nests rope settings in "rope_parameters" {rope_theta, rope_type, ...}
  // (for Gemma 3 one such object per layer type); 4.x checkpoints use top-level rope_theta
  // + rope_scaling (Gemma 3: + rope_local_base_freq). Both are read.
  const json* rope = nullptr;
  const json* local_rope = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    const json& rp = j["rope_parameters"];
    if (gemma && (rp.contains("full_attention") || rp.contains("sliding_attention"))) {
      if (rp.contains("full_attention") && !rp["full_attention"].is_null()) rope = &rp["full_attention"];
      if (rp.contains("sliding_attention") && !rp["sliding_attention"].is_null()) local_rope = &rp["sliding_attention"];
    } else {
      rope = &rp;
    }
    if (rope) c.rope_theta = get_num(*rope, "rope_theta", src + " rope_parameters", c.rope_theta);
  } else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    rope = &j["rope_scaling"];
  }
  if (gemma) {
    parse_gemma3(j, src, local_rope, c);
  } else if (j.contains("layer_types") && j["layer_types"].is_array()) {
    for (const auto& t : j["layer_types"])
      if (t != "full_attention")
        throw Error(src + ": layer_types contains " + t.dump() + "; only full_attention layers are supported");
  }
  if (rope) {
    const json& r = *rope;
    if (!r.is_object()) throw Error(src + ": rope_scaling must be an object or null");
    for (const char* k : {"rope_type", "type"})
      if (r.contains(k) && !r[k].is_string())
        throw Error(src + ": rope '" + k + "' must be a string, found " + r[k].dump());
    c.rope_scaling.type = r.value("rope_type", r.value("type", std::string("default")));
    if (c.rope_scaling.type != "default" && c.rope_scaling.type != "linear" && c.rope_scaling.type != "llama3" &&
        c.rope_scaling.type != "factors")
      throw Error(src + ": rope_scaling type '" + c.rope_scaling.type +
                  "' is not supported (supported: default, linear, llama3)");
    if (c.rope_scaling.type == "factors") {  // a GGUF file's rope_freqs.weight (io/gguf_checkpoint.h)
      if (!r.contains("factors") || !r["factors"].is_array())
        throw Error(src + ": rope_scaling type 'factors' needs an array 'factors'");
      for (const auto& v : r["factors"]) {
        if (!v.is_number() || !(v.get<double>() > 0))
          throw Error(src + ": rope_scaling factors must be positive numbers, found " + v.dump());
        c.rope_scaling.factors.push_back(v.get<double>());
      }
    }
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
  if (!local_layers.empty() && static_cast<int64_t>(local_layers.size()) != num_layers)
    throw Error("layer_types has " + std::to_string(local_layers.size()) + " entries for " +
                std::to_string(num_layers) + " layers");
  if (has_local_layers() && sliding_window <= 0)
    throw Error("sliding_window must be >= 1 for sliding_attention layers");
  if (!(embedding_scale > 0)) throw Error("the embedding scale must be > 0");
}

bool ModelConfig::has_local_layers() const {
  return std::find(local_layers.begin(), local_layers.end(), true) != local_layers.end();
}

bool ModelConfig::has_global_layers() const {
  return std::find(local_layers.begin(), local_layers.end(), true) == local_layers.end() ||
         std::find(local_layers.begin(), local_layers.end(), false) != local_layers.end();
}

double ModelConfig::attention_scale() const {
  return 1.0 / std::sqrt(query_pre_attn_scalar > 0 ? query_pre_attn_scalar : static_cast<double>(head_dim));
}

std::vector<float> ModelConfig::inv_freq(bool local) const {
  const int64_t half = head_dim / 2;
  const double theta = local ? rope_local_theta : rope_theta;
  std::vector<float> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    f[i] = 1.0f / static_cast<float>(std::pow(static_cast<float>(theta), static_cast<double>(expo)));
  }
  if (local) return f;  // local layers (Gemma 3) rotate unscaled
  if (rope_scaling.type == "linear") {
    for (auto& v : f) v = static_cast<float>(v / rope_scaling.factor);
  } else if (rope_scaling.type == "factors") {  // llama.cpp: theta_i / freq_factors[i]
    if (static_cast<int64_t>(rope_scaling.factors.size()) != half)
      throw Error("rope_scaling has " + std::to_string(rope_scaling.factors.size()) +
                  " factors, expected head_dim/2 = " + std::to_string(half));
    for (int64_t i = 0; i < half; ++i) f[i] = static_cast<float>(f[i] / rope_scaling.factors[static_cast<size_t>(i)]);
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

void ModelConfig::rope_tables(int64_t positions, std::vector<float>& cos, std::vector<float>& sin, bool local) const {
  const std::vector<float> f = inv_freq(local);
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
  if (!rope_scaling.factors.empty()) j["rope_scaling"]["factors"] = rope_scaling.factors;
  if (family == Family::Gemma3) {
    j["hidden_act"] = hidden_act == Activation::GeluTanh ? "gelu_pytorch_tanh" : "silu";
    j["sandwich_norms"] = sandwich_norms;
    j["norm_weight_offset"] = norm_weight_offset;
    j["embedding_scale"] = embedding_scale;
    j["query_pre_attn_scalar"] = query_pre_attn_scalar;
    j["sliding_window"] = sliding_window;
    json types = json::array();
    for (int64_t l = 0; l < num_layers; ++l) types.push_back(is_local(l) ? "sliding_attention" : "full_attention");
    j["layer_types"] = types;
    j["rope_local_theta"] = rope_local_theta;
    j["final_logit_softcapping"] = final_logit_softcap > 0 ? json(final_logit_softcap) : json(nullptr);
  }
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
