// The one source of truth for Hugging Face tensor names and shapes of the decoder
// families kvrun builds (Llama, Qwen2, Qwen3, Gemma 3). The graph builders, the reference
// forward pass and synth-checkpoint all read names from here; a test checks the
// list against the golden checkpoints written by transformers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "io/safetensors.h"

namespace kvrun::arch {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  enum class Init { Normal, Ones, Zeros } init = Init::Normal;  // for synth-checkpoint
};

// Names of one decoder layer's tensors; bias/norm names are empty when the config has none.
// Norms by role: input_norm before attention, post_norm before the MLP (Llama/Qwen's
// post_attention_layernorm, Gemma's pre_feedforward_layernorm); with sandwich norms (Gemma)
// also attn_out_norm on the attention output (post_attention_layernorm) and mlp_out_norm on
// the MLP output (post_feedforward_layernorm), each before its residual add.
struct LayerTensorNames {
  std::string input_norm, q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
  std::string post_norm, gate, up, down, gate_bias, up_bias, down_bias;
  std::string attn_out_norm, mlp_out_norm;
};

LayerTensorNames layer_tensor_names(const io::ModelConfig& cfg, int64_t layer);
inline const char* kEmbedTokens = "model.embed_tokens.weight";
inline const char* kFinalNorm = "model.norm.weight";
inline const char* kLmHead = "lm_head.weight";

// Every tensor the checkpoint must hold, with its shape, in checkpoint order.
std::vector<TensorSpec> expected_tensors(const io::ModelConfig& cfg);

// Checks that every expected tensor is present with the expected shape and a float
// dtype. Throws kvrun::Error naming the file, the tensor, expected and found.
void check_checkpoint(const io::TensorStore& store, const io::ModelConfig& cfg);

}  // namespace kvrun::arch
