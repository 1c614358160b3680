// Marian (MarianMTModel) encoder-decoder graphs for two targets, both fp32:
//   encoder.onnx  input_ids, attention_mask [batch, source] -> last_hidden_state
//                 [batch, source, d_model] and every decoder layer's cross-attention K/V,
//                 present.{i}.encoder.key/value [batch, heads, source, head_dim]: computed
//                 once per sentence, never per beam.
//   decoder.onnx  input_ids [rows, seq], attention_mask [rows, past + seq] (self-attention,
//                 no padding: rows advance together), encoder_attention_mask [batch, source],
//                 past_key_values.{i}.decoder.key/value [rows, heads, past, head_dim],
//                 past_key_values.{i}.encoder.key/value [batch, heads, source, head_dim] ->
//                 logits [rows, seq, target vocab] (float32, final_logits_bias added),
//                 present.{i}.decoder.key/value. rows = batch x beams, sentence-major: the
//                 beams of sentence b are rows b*K .. b*K+K-1 and share its cross K/V (the
//                 cross-attention runs their K*seq queries as one sequence).
// Target ort: GroupQueryAttention for decoder self-attention (past and present may share
// one buffer), fused QKV projections. Target portable: opset-17 standard ops only.
// Post-norm layers (LayerNormalization), token embeddings x sqrt(d_model) when
// scale_embedding, Marian's sinusoidal positions computed by kvrun (model.positions, not read
// from the checkpoint), tied lm_head read from the embedding table in place.
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "arch/decoder.h"
#include "io/safetensors.h"
#include "io/seq2seq_config.h"

namespace kvrun::arch {

struct Seq2SeqBuildOptions {
  Target target = Target::Ort;
  // The lm_head gets a weight of its own ("lm_head.weight") instead of reading the tied
  // embedding table: int8/int4 builds quantize it while the lookups keep float rows.
  bool untie_head = false;
};

// I/O names of the cross and self KV (printf-style with the layer index): optimum's.
inline const char* kCrossPastKey = "past_key_values.%d.encoder.key";
inline const char* kCrossPastValue = "past_key_values.%d.encoder.value";
inline const char* kCrossPresentKey = "present.%d.encoder.key";
inline const char* kCrossPresentValue = "present.%d.encoder.value";
inline const char* kSelfPastKey = "past_key_values.%d.decoder.key";
inline const char* kSelfPastValue = "past_key_values.%d.decoder.value";
inline const char* kSelfPresentKey = "present.%d.decoder.key";
inline const char* kSelfPresentValue = "present.%d.decoder.value";

// Writes encoder.onnx, decoder.onnx and their shared model.onnx.data into `dir`.
// `progress(done, total)` is called as layers are converted.
std::vector<GraphSignature> build_marian(const io::Seq2SeqConfig& cfg, const io::TensorStore& store,
                                         const Seq2SeqBuildOptions& opt, const std::filesystem::path& dir,
                                         const std::function<void(int64_t, int64_t)>& progress);

}  // namespace kvrun::arch
