// The audio half of FunASR-nano as one ONNX graph, `encoder_adaptor.onnx`:
// SenseVoiceEncoderSmall (SAN-M: self-attention + FSMN memory, funasr
// models/sense_voice/model.py) followed by the llm_asr `Transformer` adaptor
// (models/llm_asr/adaptor.py). Activations are always float32: the adaptor output
// reaches ~1e3, beyond what float16 carries safely.
//
//   speech              float32 [batch, frames, input_size]  LFR features (CMVN applied if any)
//   speech_lengths      int64 [batch]                        valid frames per row (lengths_input)
//   encoder_out         float32 [batch, ceil(frames / k), llm_dim]  k = adaptor downsample rate (1)
//   encoder_out_lengths int64 [batch]                        (lengths_input)
// Node names tell where each node came from, e.g.
// /audio_encoder/encoders.3/self_attn/fsmn/Conv, /audio_adaptor/blocks.1/feed_forward/w_2/MatMul.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "arch/decoder.h"
#include "graph/quantize.h"
#include "io/safetensors.h"
#include "kvrun/build.h"

namespace kvrun::arch {

struct AudioEncoderConfig {
  // Tensor name prefixes inside the store.
  std::string encoder_prefix = "audio_encoder.", adaptor_prefix = "audio_adaptor.";
  // Encoder (SenseVoiceEncoderSmall).
  int64_t input_size = 560;  // LFR feature width (80 mel x lfr_m 7)
  int64_t d_model = 512;     // output_size
  int64_t heads = 4;         // attention_heads (config only; shapes cannot tell)
  int64_t ffn = 2048;        // linear_units
  int64_t blocks = 50;       // num_blocks: encoders0 + (blocks - 1) x encoders
  int64_t tp_blocks = 20;    // tp_encoders
  int64_t kernel = 11;       // FSMN kernel_size
  int64_t sanm_shift = 0;    // sanm_shfit (config only)
  double enc_eps = 1e-5;     // torch.nn.LayerNorm default
  // Adaptor (llm_asr Transformer).
  int64_t downsample = 1;           // downsample_rate k: linear1 input = d_model * k
  int64_t adaptor_ffn = 2048;       // linear1 output (ffn_dim)
  int64_t llm_dim = 1024;           // linear2 output
  int64_t adaptor_heads = 8;        // attention_heads (config only, default 8)
  int64_t adaptor_layers = 2;       // n_layer
  int64_t adaptor_block_ffn = 256;  // blocks' feed_forward width (llm_dim // 4 in funasr)
  double adaptor_eps = 1e-12;       // funasr.models.transformer.layer_norm.LayerNorm

  // Dimensions from the tensor shapes of `store` (names under the two prefixes), heads,
  // shift and layer counts checked against / taken from the FunASR config.yaml, passed
  // whole (its `audio_encoder_conf` and `audio_adaptor_conf` maps are read; an empty or
  // null json means defaults). Throws kvrun::Error naming what was expected and found.
  static AudioEncoderConfig from(const io::TensorStore& store, const nlohmann::json& yaml_config = {},
                                 const std::string& encoder_prefix = "audio_encoder.",
                                 const std::string& adaptor_prefix = "audio_adaptor.");
  void validate() const;  // throws kvrun::Error
  // What kvrun.json records (the lead puts it under the "asr" section).
  nlohmann::json to_json() const;
  static AudioEncoderConfig from_json(const nlohmann::json& j);

  // Full tensor names.
  std::string enc(const std::string& s) const { return encoder_prefix + s; }
  std::string adp(const std::string& s) const { return adaptor_prefix + s; }
  // "encoders0.0", "encoders.N", "tp_encoders.N" for encoder layer i in [0, blocks + tp_blocks).
  std::string encoder_layer(int64_t i) const;
  int64_t output_frames(int64_t frames) const { return (frames + downsample - 1) / downsample; }
};

// Writes `onnx_path` (+ `<file name>.data` beside it) for the target:
//   Ort:      com.microsoft MultiHeadAttention and SkipLayerNormalization,
//   Portable: opset-17 standard ops only.
// Weights are float32 (quantize afterwards with quantize_audio_encoder).
// progress("audio encoder", layers done, layers total).
// lengths_input: adds input `speech_lengths` int64 [batch] (valid frames of each row; rows
// padded at the end with anything) and output `encoder_out_lengths` int64 [batch]
// ((len - 1) // k + 1). Frames past a row's length are masked as funasr masks them (attention
// keys, FSMN input and output), so each row's valid output equals that row run alone.
GraphSignature build_audio_encoder(const AudioEncoderConfig& cfg, const io::TensorStore& store,
                                   const std::filesystem::path& onnx_path, Target target,
                                   const ProgressFn& progress = {}, bool lengths_input = false);

// Quantizes the MatMuls of a written encoder_adaptor graph (`src` may equal `dst`; the data
// file becomes `<dst file name>.data`). Activations stay float32 between nodes. precision:
//   "int8"             kEncoderInt8Mode ("int8-dynamic"): int8 per-channel weights, activations
//                      quantized per tensor at run time; ort: com.microsoft DynamicQuantizeMatMul,
//                      portable: DynamicQuantizeLinear + MatMulInteger (opset 17). The fastest.
//   "int8-weight-only" ort: MatMulNBits 8-bit (blocks along K); portable: DequantizeLinear + MatMul.
//                      More accurate, slower (see the .cpp for the measurements).
//   "int4"             ort: MatMulNBits 4-bit; portable: refused (kvrun::Error).
// `settings`: block size, symmetry, accuracy level, exclude regex (kvrun::QuantSettings). `used`
// receives the options applied; kvrun.json can record build::quantization_record(*used, report).
graph::QuantizeReport quantize_audio_encoder(const std::filesystem::path& src, const std::filesystem::path& dst,
                                             const std::string& precision, Target target,
                                             const QuantSettings& settings = {},
                                             graph::QuantizeOptions* used = nullptr);

// The graph quantizer mode behind precision "int8" (measured, see the .cpp).
extern const char* const kEncoderInt8Mode;

}  // namespace kvrun::arch
