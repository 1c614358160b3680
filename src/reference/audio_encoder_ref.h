// A plain C++ fp32 forward pass of FunASR-nano's audio encoder (SenseVoiceEncoderSmall)
// and adaptor (llm_asr Transformer), written from funasr 1.4.16's modelling code
// (models/sense_voice/model.py, models/llm_asr/adaptor.py, models/transformer/*) for one
// utterance without padding (all masks 1). `kvrun verify` and the tests compare the
// encoder_adaptor graph against it; its own accuracy is asserted against outputs
// recorded from funasr (tests/fixtures/funasr-nano-tiny/).
#pragma once
#include <cstdint>
#include <vector>

#include "arch/sensevoice_encoder.h"
#include "io/safetensors.h"

namespace kvrun::reference {

class AudioEncoderRef {
 public:
  // Converts every weight to fp32 (shapes checked against the config).
  AudioEncoderRef(const arch::AudioEncoderConfig& cfg, const io::TensorStore& store);

  const arch::AudioEncoderConfig& config() const { return cfg_; }
  // feats [T, input_size] -> adaptor output [ceil(T / downsample), llm_dim].
  std::vector<float> forward(const float* feats, int64_t T) const;
  // Encoder only (after tp_norm): [T, d_model].
  std::vector<float> encode(const float* feats, int64_t T) const;
  // Adaptor only: enc [T, d_model] -> [ceil(T / downsample), llm_dim].
  std::vector<float> adapt(const float* enc, int64_t T) const;

  // Matrix and attention kernels use this many threads (default: hardware concurrency).
  void set_threads(int n) { threads_ = n > 0 ? n : 1; }

 private:
  struct Linear {
    int64_t in = 0, out = 0;
    std::vector<float> packed;  // [ceil(out / 16)][in][16], zero padded
    std::vector<float> bias;    // [out]
  };
  struct Norm {
    std::vector<float> gamma, beta;
  };
  struct SanmLayer {
    int64_t in = 0;
    Norm norm1, norm2;
    Linear qkv, out, w1, w2;
    std::vector<float> fsmn;  // [d, kernel]
  };
  struct Block {
    Norm norm1, norm2;
    Linear q, k, v, out, w1, w2;
  };

  Linear load_linear(const io::TensorStore& s, const std::string& module, int64_t in, int64_t out) const;
  Norm load_norm(const io::TensorStore& s, const std::string& module, int64_t dim) const;
  void linear(const Linear& L, const float* x, int64_t T, float* y) const;
  void attention(const float* q, const float* k, const float* v, int64_t ld, int64_t T, int64_t heads, int64_t d,
                 float* out) const;

  arch::AudioEncoderConfig cfg_;
  std::vector<SanmLayer> enc_;
  Norm after_norm_, tp_norm_;
  Linear linear1_, linear2_;
  std::vector<Block> blocks_;
  int threads_ = 1;
};

}  // namespace kvrun::reference
