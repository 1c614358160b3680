// Hugging Face config.json / generation_config.json for the decoder families kvrun builds.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kvrun::io {

enum class Family { Llama, Qwen2, Qwen3, Gemma3 };
const char* family_name(Family f);

// The MLP's gate activation: silu (SwiGLU) or tanh-approximated GELU (Gemma's
// gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))).
enum class Activation { Silu, GeluTanh };

struct RopeScaling {
  std::string type = "default";  // default | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  std::vector<double> factors;  // type "factors": inv_freq[i] / factors[i] (a GGUF file's rope_freqs)
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
  Activation hidden_act = Activation::Silu;
  // Gemma 3 ("sandwich" norms): the attention and MLP outputs are normed before their
  // residual adds (post_attention_layernorm, post_feedforward_layernorm) and the MLP
  // input by pre_feedforward_layernorm.
  bool sandwich_norms = false;
  // RMSNorm multiplies by (norm_weight_offset + w): 1 for Hugging Face Gemma folders,
  // whose norm weights are stored minus one; 0 elsewhere (and for sources that store the
  // folded weights). Applied where norm weights are read (graphs, reference).
  double norm_weight_offset = 0.0;
  // Embedding rows are multiplied by this in fp32 on lookup (Gemma: sqrt(hidden_size)).
  // inputs_embeds (the decoder graphs' input) are the scaled rows, as in transformers.
  double embedding_scale = 1.0;
  // Attention scale = query_pre_attn_scalar^-0.5; 0 means head_dim (the usual scale).
  double query_pre_attn_scalar = 0;
  // Local (sliding-window) layers: key p0 is visible to query p1 iff p1 - p0 < sliding_window.
  int64_t sliding_window = 0;
  std::vector<bool> local_layers;     // per layer, true = local; empty when every layer is global
  double rope_local_theta = 10000.0;  // local layers' rotary base (no rope scaling); rope_theta
                                      // and rope_scaling are the global layers'
  double final_logit_softcap = 0;     // > 0: logits = tanh(logits / c) * c
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";

  // Throws kvrun::Error naming the field, the expected and the found value.
  void validate() const;
  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  bool is_local(int64_t layer) const { return !local_layers.empty() && local_layers[static_cast<size_t>(layer)]; }
  bool has_local_layers() const;
  bool has_global_layers() const;
  double attention_scale() const;  // the softmax scale of q.k
  // Inverse rotary frequencies (head_dim/2 of them) with rope scaling applied, rounded
  // to float32 as transformers computes them (angles are then float(pos) * inv_freq[i]).
  // `local`: the local layers' frequencies (rope_local_theta, unscaled).
  std::vector<float> inv_freq(bool local = false) const;
  // cos/sin tables [positions, head_dim/2] for positions 0..positions-1.
  void rope_tables(int64_t positions, std::vector<float>& cos, std::vector<float>& sin, bool local = false) const;
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
