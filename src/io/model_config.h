// Hugging Face config.json / generation_config.json for the decoder families kvrun builds.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kvrun::io {

enum class Family { Llama, Qwen2, Qwen3 };
const char* family_name(Family f);

struct RopeScaling {
  std::string type = "default";  // default | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // e.g. "Qwen3ForCausalLM"
  Family family = Family::Llama;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2: always; Llama/Qwen3: attention_bias
  bool o_bias = false;    // Llama/Qwen3 attention_bias
  bool mlp_bias = false;  // Llama mlp_bias
  bool qk_norm = false;   // Qwen3 per-head RMSNorm on q and k
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";

  // Throws kvrun::Error naming the field, the expected and the found value.
  void validate() const;
  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  // Inverse rotary frequencies (head_dim/2 of them) with rope scaling applied, rounded
  // to float32 as transformers computes them (angles are then float(pos) * inv_freq[i]).
  std::vector<float> inv_freq() const;
  // cos/sin tables [positions, head_dim/2] for positions 0..positions-1.
  void rope_tables(int64_t positions, std::vector<float>& cos, std::vector<float>& sin) const;
  nlohmann::json to_json() const;
};

// Parses config.json (file or folder holding it).
ModelConfig load_model_config(const std::filesystem::path& path);
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source);

struct GenerationConfig {
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id, pad_token_id;
  bool do_sample = false;
  double temperature = 1.0;
  int64_t top_k = 50;
  double top_p = 1.0;
  double repetition_penalty = 1.0;
  std::optional<int64_t> max_new_tokens;
  nlohmann::json to_json() const;
};

// Reads generation_config.json from `dir` if present, falling back to config.json's ids.
GenerationConfig load_generation_config(const std::filesystem::path& dir, const ModelConfig& cfg);

}  // namespace kvrun::io
