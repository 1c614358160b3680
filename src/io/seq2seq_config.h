// config.json / generation_config.json of the encoder-decoder families kvrun builds:
// Marian (MarianMTModel, the OPUS-MT translators). Facts: ../shared/context/marian.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kvrun::io {

// The MLP activation of an encoder-decoder transformer.
enum class Seq2SeqActivation { Swish, Gelu, Relu };

struct Seq2SeqConfig {
  std::string architecture;  // "MarianMTModel"
  int64_t d_model = 0;
  int64_t encoder_layers = 0, decoder_layers = 0;
  int64_t encoder_heads = 0, decoder_heads = 0;
  int64_t encoder_ffn_dim = 0, decoder_ffn_dim = 0;
  int64_t vocab_size = 0;          // source (encoder) vocabulary
  int64_t decoder_vocab_size = 0;  // target vocabulary = logits width
  int64_t max_position_embeddings = 0;
  Seq2SeqActivation activation = Seq2SeqActivation::Swish;
  bool scale_embedding = false;  // token embeddings x sqrt(d_model)
  bool share_encoder_decoder_embeddings = true;
  double layer_norm_eps = 1e-5;
  int64_t pad_token_id = 0, eos_token_id = 0, decoder_start_token_id = 0;
  std::string torch_dtype = "float32";

  void validate() const;  // throws kvrun::Error naming the field
  int64_t encoder_head_dim() const { return d_model / encoder_heads; }
  int64_t decoder_head_dim() const { return d_model / decoder_heads; }
  double embedding_scale() const;  // sqrt(d_model) in float32 when scale_embedding, else 1
  // Marian's sinusoidal positions, not interleaved: row p = [sin(p w_0) .. sin(p w_{d/2-1}),
  // cos(p w_0) .. cos(p w_{d/2-1})], w_i = 1 / 10000^(2i/d), as transformers'
  // MarianSinusoidalPositionalEmbedding (float32 [positions, d_model]).
  std::vector<float> positions(int64_t count) const;
  nlohmann::json to_json() const;
};

// Whether config.json (or the folder holding it) describes an encoder-decoder model.
bool is_seq2seq_config(const nlohmann::json& j);
Seq2SeqConfig parse_seq2seq_config(const nlohmann::json& j, const std::string& source);
Seq2SeqConfig load_seq2seq_config(const std::filesystem::path& path);

// generation_config.json of a seq2seq model (HF generate's fields kvrun honours).
struct Seq2SeqGenerationConfig {
  int64_t num_beams = 1;
  int64_t max_length = 20;  // total target length including the start token (HF)
  std::optional<int64_t> max_new_tokens;
  int64_t min_length = 0;
  double length_penalty = 1.0;
  std::string early_stopping = "false";  // "false" | "true" | "never"
  std::vector<std::vector<int64_t>> bad_words_ids;
  std::optional<int64_t> forced_eos_token_id;
  bool renormalize_logits = false;
  std::vector<int64_t> eos_token_ids;
  int64_t decoder_start_token_id = 0, pad_token_id = 0;
  nlohmann::json to_json() const;
};
// Reads generation_config.json from `dir` when present, else config.json's fields.
Seq2SeqGenerationConfig load_seq2seq_generation_config(const std::filesystem::path& dir, const Seq2SeqConfig& cfg);

}  // namespace kvrun::io
