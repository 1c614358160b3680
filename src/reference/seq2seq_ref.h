// A plain C++ fp32 forward pass of a Marian encoder-decoder (MarianMTModel), written
// straight from transformers' modeling_marian: post-norm layers, scaled token embeddings
// plus sinusoidal positions, cross-attention K/V computed once per sentence, a growing
// self-attention cache, lm_head + final_logits_bias. `kvrun verify` and the tests compare
// the ONNX graphs against it; its own accuracy is asserted against transformers' logits
// (tests/fixtures/marian-tiny/golden_logits.safetensors).
#pragma once
#include <cstdint>
#include <vector>

#include "io/safetensors.h"
#include "io/seq2seq_config.h"

namespace kvrun::reference {

class Seq2SeqRef {
 public:
  // Converts every weight to fp32 (checks names and shapes first).
  Seq2SeqRef(const io::Seq2SeqConfig& cfg, const io::TensorStore& store);
  const io::Seq2SeqConfig& config() const { return cfg_; }

  // Encoder output [n, d_model] of one sentence (no padding); ids outside the source
  // vocabulary or more positions than max_position_embeddings throw kvrun::Error.
  std::vector<float> encode(const std::vector<int64_t>& ids) const;

  // One sentence's decoder state: cross-attention K/V of every layer (from the encoder
  // output) and the self-attention cache.
  struct State {
    int64_t source_len = 0, length = 0;
    std::vector<std::vector<float>> cross_k, cross_v;  // per layer [source_len, d_model]
    std::vector<std::vector<float>> self_k, self_v;    // per layer [length, d_model]
  };
  State start(const std::vector<float>& encoder_out, int64_t source_len) const;
  // Appends the target tokens to the state; returns logits [n, decoder_vocab] (float32,
  // final_logits_bias added) for every new position.
  std::vector<float> decode(State& st, const std::vector<int64_t>& tokens) const;

 private:
  struct Attention {
    std::vector<float> q, k, v, o, qb, kb, vb, ob;
  };
  struct Layer {
    Attention self, cross;
    std::vector<float> self_norm, self_norm_b, cross_norm, cross_norm_b, fc1, fc1_b, fc2, fc2_b, final_norm,
        final_norm_b;
  };
  void ffn(const Layer& L, int64_t ffn_dim, std::vector<float>& h, int64_t n) const;

  io::Seq2SeqConfig cfg_;
  std::vector<float> enc_embed_, dec_embed_, lm_head_, logits_bias_, positions_;
  std::vector<Layer> enc_, dec_;
};

}  // namespace kvrun::reference
