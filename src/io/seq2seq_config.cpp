#include "io/seq2seq_config.h"

#include <cmath>

#include "io/fs.h"
#include "io/json_fields.h"
#include "kvrun/error.h"

namespace kvrun::io {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string arch_of(const json& j) {
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    return j["architectures"][0].get<std::string>();
  return "";
}

std::string model_type_of(const json& j) {
  return j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>() : "";
}

}  // namespace

bool is_seq2seq_config(const json& j) {
  return model_type_of(j) == "marian" || arch_of(j) == "MarianMTModel" || arch_of(j) == "MarianModel";
}

Seq2SeqConfig parse_seq2seq_config(const json& j, const std::string& src) {
  if (!j.is_object()) throw Error(src + ": expected a JSON object");
  Seq2SeqConfig c;
  c.architecture = arch_of(j);
  if (c.architecture.empty()) c.architecture = "MarianMTModel";
  if (!is_seq2seq_config(j))
    throw Error(src + ": not a Marian config (model_type '" + model_type_of(j) + "', architecture '" + c.architecture +
                "'); kvrun builds MarianMTModel among encoder-decoder models");
  if (c.architecture != "MarianMTModel")
    throw Error(src + ": architecture " + c.architecture +
                " has no language-model head; kvrun builds MarianMTModel (the translation model)");
  c.d_model = get_int(j, "d_model", src);
  c.encoder_layers = get_int(j, "encoder_layers", src);
  c.decoder_layers = get_int(j, "decoder_layers", src);
  c.encoder_heads = get_int(j, "encoder_attention_heads", src);
  c.decoder_heads = get_int(j, "decoder_attention_heads", src);
  c.encoder_ffn_dim = get_int(j, "encoder_ffn_dim", src);
  c.decoder_ffn_dim = get_int(j, "decoder_ffn_dim", src);
  c.vocab_size = get_int(j, "vocab_size", src);
  c.decoder_vocab_size = get_int(j, "decoder_vocab_size", src, c.vocab_size);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src);
  const std::string act = j.contains("activation_function") && j["activation_function"].is_string()
                              ? j["activation_function"].get<std::string>()
                              : "gelu";
  if (act == "swish" || act == "silu")
    c.activation = Seq2SeqActivation::Swish;
  else if (act == "gelu")
    c.activation = Seq2SeqActivation::Gelu;
  else if (act == "relu")
    c.activation = Seq2SeqActivation::Relu;
  else
    throw Error(src + ": activation_function '" + act + "' is not supported (expected swish, silu, gelu or relu)");
  c.scale_embedding = get_bool(j, "scale_embedding", src, false);
  c.share_encoder_decoder_embeddings = get_bool(j, "share_encoder_decoder_embeddings", src, true);
  if (get_bool(j, "normalize_before", src, false))
    throw Error(src + ": normalize_before true (pre-norm) is not Marian's layout; kvrun builds post-norm Marian");
  if (get_bool(j, "normalize_embedding", src, false) || get_bool(j, "add_bias_logits", src, false) ||
      get_bool(j, "add_final_layer_norm", src, false))
    throw Error(src +
                ": normalize_embedding / add_bias_logits / add_final_layer_norm are not supported (Marian has none)");
  if (j.contains("static_position_embeddings") && !get_bool(j, "static_position_embeddings", src, true))
    throw Error(src + ": static_position_embeddings false (learned positions) is not supported");
  c.pad_token_id = get_int(j, "pad_token_id", src, c.decoder_vocab_size - 1);
  c.eos_token_id = get_int(j, "eos_token_id", src, 0);
  c.decoder_start_token_id = get_int(j, "decoder_start_token_id", src, c.pad_token_id);
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"].get<std::string>();
  if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"].get<std::string>();
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(src + ": " + e.what());
  }
  return c;
}

void Seq2SeqConfig::validate() const {
  auto positive = [](const char* name, int64_t v, int64_t limit) {
    if (v <= 0 || v > limit)
      throw Error(std::string(name) + " must be in [1, " + std::to_string(limit) + "], found " + std::to_string(v));
  };
  positive("d_model", d_model, 1 << 16);
  positive("encoder_layers", encoder_layers, 1024);
  positive("decoder_layers", decoder_layers, 1024);
  positive("encoder_attention_heads", encoder_heads, 1024);
  positive("decoder_attention_heads", decoder_heads, 1024);
  positive("encoder_ffn_dim", encoder_ffn_dim, 1 << 20);
  positive("decoder_ffn_dim", decoder_ffn_dim, 1 << 20);
  positive("vocab_size", vocab_size, 1 << 24);
  positive("decoder_vocab_size", decoder_vocab_size, 1 << 24);
  positive("max_position_embeddings", max_position_embeddings, 1 << 20);
  if (d_model % encoder_heads != 0 || d_model % decoder_heads != 0)
    throw Error("d_model (" + std::to_string(d_model) + ") must be a multiple of the attention heads (" +
                std::to_string(encoder_heads) + ", " + std::to_string(decoder_heads) + ")");
  if (d_model % 2 != 0) throw Error("d_model must be even for sinusoidal positions, found " + std::to_string(d_model));
  auto id = [&](const char* name, int64_t v) {
    if (v < 0 || v >= decoder_vocab_size)
      throw Error(std::string(name) + " " + std::to_string(v) + " is outside the target vocabulary [0, " +
                  std::to_string(decoder_vocab_size) + ")");
  };
  id("pad_token_id", pad_token_id);
  id("eos_token_id", eos_token_id);
  id("decoder_start_token_id", decoder_start_token_id);
  if (share_encoder_decoder_embeddings && vocab_size != decoder_vocab_size)
    throw Error("shared encoder/decoder embeddings need vocab_size == decoder_vocab_size, found " +
                std::to_string(vocab_size) + " and " + std::to_string(decoder_vocab_size));
}

double Seq2SeqConfig::embedding_scale() const {
  return scale_embedding ? static_cast<double>(static_cast<float>(std::sqrt(static_cast<double>(d_model)))) : 1.0;
}

std::vector<float> Seq2SeqConfig::positions(int64_t count) const {
  const int64_t half = d_model / 2;
  std::vector<float> t(static_cast<size_t>(count * d_model));
  for (int64_t p = 0; p < count; ++p)
    for (int64_t i = 0; i < half; ++i) {
      // numpy float64, as transformers: pos / 10000^(2 * (j // 2) / dim)
      const double angle = static_cast<double>(p) / std::pow(10000.0, static_cast<double>(2 * i) / d_model);
      t[static_cast<size_t>(p * d_model + i)] = static_cast<float>(std::sin(angle));
      t[static_cast<size_t>(p * d_model + half + i)] = static_cast<float>(std::cos(angle));
    }
  return t;
}

json Seq2SeqConfig::to_json() const {
  const char* act = activation == Seq2SeqActivation::Swish  ? "swish"
                    : activation == Seq2SeqActivation::Gelu ? "gelu"
                                                            : "relu";
  return {{"architecture", architecture},
          {"model_type", "marian"},
          {"d_model", d_model},
          {"encoder_layers", encoder_layers},
          {"decoder_layers", decoder_layers},
          {"encoder_attention_heads", encoder_heads},
          {"decoder_attention_heads", decoder_heads},
          {"encoder_ffn_dim", encoder_ffn_dim},
          {"decoder_ffn_dim", decoder_ffn_dim},
          {"vocab_size", vocab_size},
          {"decoder_vocab_size", decoder_vocab_size},
          {"max_position_embeddings", max_position_embeddings},
          {"activation_function", act},
          {"scale_embedding", scale_embedding},
          {"share_encoder_decoder_embeddings", share_encoder_decoder_embeddings},
          {"pad_token_id", pad_token_id},
          {"eos_token_id", eos_token_id},
          {"decoder_start_token_id", decoder_start_token_id}};
}

Seq2SeqConfig load_seq2seq_config(const fs::path& path) {
  const fs::path file = fs::is_directory(path) ? path / "config.json" : path;
  return parse_seq2seq_config(read_json_file(file), file.string());
}

json Seq2SeqGenerationConfig::to_json() const {
  return {{"num_beams", num_beams},
          {"max_length", max_length},
          {"max_new_tokens", max_new_tokens ? json(*max_new_tokens) : json(nullptr)},
          {"min_length", min_length},
          {"length_penalty", length_penalty},
          {"early_stopping", early_stopping},
          {"bad_words_ids", bad_words_ids},
          {"forced_eos_token_id", forced_eos_token_id ? json(*forced_eos_token_id) : json(nullptr)},
          {"renormalize_logits", renormalize_logits},
          {"eos_token_id", eos_token_ids},
          {"decoder_start_token_id", decoder_start_token_id},
          {"pad_token_id", pad_token_id}};
}

Seq2SeqGenerationConfig load_seq2seq_generation_config(const fs::path& dir, const Seq2SeqConfig& cfg) {
  Seq2SeqGenerationConfig g;
  g.decoder_start_token_id = cfg.decoder_start_token_id;
  g.pad_token_id = cfg.pad_token_id;
  g.eos_token_ids = {cfg.eos_token_id};
  json j = json::object();
  std::string src = (dir / "generation_config.json").string();
  if (fs::exists(dir / "generation_config.json")) {
    j = read_json_file(dir / "generation_config.json");
  } else if (fs::exists(dir / "config.json")) {
    j = read_json_file(dir / "config.json");  // older checkpoints keep generate's fields there
    src = (dir / "config.json").string();
  }
  if (!j.is_object()) throw Error(src + ": expected a JSON object");
  g.num_beams = get_int(j, "num_beams", src, 1);
  g.max_length = get_int(j, "max_length", src, 20);
  if (j.contains("max_new_tokens") && !j["max_new_tokens"].is_null())
    g.max_new_tokens = get_int(j, "max_new_tokens", src);
  g.min_length = get_int(j, "min_length", src, 0);
  g.length_penalty = get_num(j, "length_penalty", src, 1.0);
  if (j.contains("early_stopping") && !j["early_stopping"].is_null()) {
    const json& e = j["early_stopping"];
    if (e.is_boolean())
      g.early_stopping = e.get<bool>() ? "true" : "false";
    else if (e.is_string() && e.get<std::string>() == "never")
      g.early_stopping = "never";
    else
      throw Error(src + ": early_stopping must be true, false or \"never\", found " + e.dump());
  }
  if (j.contains("bad_words_ids") && !j["bad_words_ids"].is_null()) {
    const json& b = j["bad_words_ids"];
    bool ok = b.is_array();
    if (ok)
      for (const auto& seq : b) {
        if (!seq.is_array() || seq.empty()) {
          ok = false;
          break;
        }
        std::vector<int64_t> ids;
        for (const auto& v : seq) {
          if (!v.is_number_integer()) ok = false;
          if (ok) ids.push_back(v.get<int64_t>());
        }
        if (!ok) break;
        g.bad_words_ids.push_back(std::move(ids));
      }
    if (!ok) throw Error(src + ": bad_words_ids must be a list of non-empty lists of token ids, found " + b.dump());
  }
  if (auto f = get_opt_id(j, "forced_eos_token_id")) g.forced_eos_token_id = *f;
  g.renormalize_logits = get_bool(j, "renormalize_logits", src, false);
  if (const auto eos = get_ids(j, "eos_token_id"); !eos.empty()) g.eos_token_ids = eos;
  if (auto s = get_opt_id(j, "decoder_start_token_id")) g.decoder_start_token_id = *s;
  if (auto p = get_opt_id(j, "pad_token_id")) g.pad_token_id = *p;
  if (g.num_beams < 1 || g.num_beams > 1024)
    throw Error(src + ": num_beams must be in [1, 1024], found " + std::to_string(g.num_beams));
  if (g.max_length < 1) throw Error(src + ": max_length must be >= 1, found " + std::to_string(g.max_length));
  return g;
}

}  // namespace kvrun::io
