// The one source of truth for MarianMTModel's tensor names (transformers' modeling_marian):
// the graph builder, the reference forward pass and the checkpoint check read them here.
// Embeddings may be stored under any subset of their tied names (model.shared,
// model.{encoder,decoder}.embed_tokens, lm_head); positions are never read (computed).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/seq2seq_config.h"

namespace kvrun::arch {

struct MarianAttentionNames {
  std::string q, k, v, o, q_bias, k_bias, v_bias, o_bias;  // Linear weights [out, in], biases [out]
};

struct MarianLayerNames {
  MarianAttentionNames self_attn, cross_attn;  // cross_attn: decoder layers only
  std::string self_norm, self_norm_bias;       // self_attn_layer_norm
  std::string cross_norm, cross_norm_bias;     // encoder_attn_layer_norm (decoder)
  std::string fc1, fc1_bias, fc2, fc2_bias;
  std::string final_norm, final_norm_bias;  // final_layer_norm
};

MarianLayerNames marian_layer_names(bool decoder, int64_t layer);
inline const char* kMarianFinalLogitsBias = "final_logits_bias";

// The stored name of each tied matrix (the first present of its candidates); throws
// kvrun::Error naming the candidates when none is stored.
struct MarianEmbeddingNames {
  std::string encoder, decoder, lm_head;
};
MarianEmbeddingNames marian_embedding_names(const io::TensorStore& store, const io::Seq2SeqConfig& cfg);

// Checks every tensor the model needs is present with the expected shape and a float
// dtype; throws kvrun::Error naming the checkpoint, the tensor, expected and found.
void check_marian_checkpoint(const io::TensorStore& store, const io::Seq2SeqConfig& cfg);

}  // namespace kvrun::arch
