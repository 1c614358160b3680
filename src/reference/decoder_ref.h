// A plain C++ fp32 forward pass of a Llama/Qwen2/Qwen3/Gemma 3 decoder with a KV cache,
// written straight from the transformers modelling code. `kvrun verify` and the
// tests compare the ONNX graphs against it; its own accuracy is asserted against
// logits recorded from transformers (tests/fixtures/*/golden_logits.safetensors).
#pragma once
#include <cstdint>
#include <vector>

#include "io/model_config.h"
#include "io/safetensors.h"

namespace kvrun::reference {

class DecoderRef {
 public:
  // Converts every weight to fp32 (checks names and shapes first).
  DecoderRef(const io::ModelConfig& cfg, const io::TensorStore& store);

  const io::ModelConfig& config() const { return cfg_; }
  void reset() { cache_len_ = 0; }
  int64_t cache_length() const { return cache_len_; }

  // Embedding rows (times the config's embedding scale) for ids [n] -> [n, hidden]; ids
  // outside the vocabulary throw kvrun::Error.
  std::vector<float> embed(const std::vector<int64_t>& ids) const;
  // Appends n positions (embeddings [n, hidden]) to the cache and returns logits:
  // [n, vocab] when all_logits, else [1, vocab] for the last position.
  std::vector<float> forward(const float* embeds, int64_t n, bool all_logits = false);
  std::vector<float> forward_ids(const std::vector<int64_t>& ids, bool all_logits = false);

 private:
  struct Layer {
    std::vector<float> input_norm, q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
    std::vector<float> post_norm, gate, up, down, gate_bias, up_bias, down_bias;
    std::vector<float> attn_out_norm, mlp_out_norm;  // sandwich norms (Gemma); empty otherwise
    bool local = false;                              // sliding-window attention
    std::vector<float> kcache, vcache;               // [capacity, kv_dim]
  };
  void ensure_capacity(int64_t total);

  io::ModelConfig cfg_;
  std::vector<float> embed_, final_norm_, lm_head_;  // lm_head_ empty when tied
  std::vector<Layer> layers_;
  std::vector<float> rope_cos_, rope_sin_;              // [positions, head_dim/2]
  std::vector<float> rope_cos_local_, rope_sin_local_;  // local layers' tables (Gemma 3)
  int64_t cache_len_ = 0, capacity_ = 0, rope_positions_ = 0;
};

}  // namespace kvrun::reference
