// Decoder-only LLM graphs (Llama, Qwen2, Qwen3) for two targets:
//   Ort:      one graph for prefill and decode with com.microsoft fused ops
//             (RotaryEmbedding, GroupQueryAttention, SkipSimplifiedLayerNormalization,
//             fused QKV and gate/up), past/present able to share one buffer; local
//             (sliding-window) layers take their own mask, local_attention_mask, so their
//             cache can stay bounded.
//   Portable: opset-17 standard ops only, prefill.onnx + decode.onnx, causal mask
//             and positions computed inside the graph from attention_mask.
// Both take `inputs_embeds`; the embedding table lives in embedding.safetensors.
#pragma once
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graph/builder.h"
#include "graph/nbits.h"
#include "io/model_config.h"
#include "io/safetensors.h"

namespace kvrun::arch {

enum class Target { Ort, Portable };

struct DecoderBuildOptions {
  Target target = Target::Ort;
  io::DType dtype = io::DType::F32;  // weights, activations and KV cache (F32 or F16)
  bool all_logits = false;           // logits for every position instead of the last
  // KV cache (past/present) dtype; F16 under F32 weights: target Ort only, with Casts
  // around GroupQueryAttention (which then runs in float16).
  io::DType kv_dtype = io::DType::F32;
  // Keep a GGUF checkpoint's quantized weights as MatMulNBits (target ort, fp32).
  bool keep_quantized = false;
  int accuracy_level = 4;
  // A tied lm_head gets float weights of its own (quantized afterwards with the other
  // MatMuls) instead of reading the table.
  bool tied_head_float = false;
};

struct GraphSignature {
  std::string role;  // "decoder" (ort), "prefill", "decode" (portable)
  std::string file;
  std::vector<std::string> inputs, outputs;
};

// I/O names of each target's KV convention (printf-style with the layer index).
struct KvNames {
  std::string past_key, past_value, present_key, present_value;
};
KvNames kv_names(Target t);
// Head size of the KV cache (past/present) that a target's graphs hold: the model's head_dim,
// except on target ort where it is not a multiple of 8 (GroupQueryAttention's CPU kernel needs
// one): heads are padded with zeros to the next multiple of 8 there.
int64_t kv_head_dim(const io::ModelConfig& c, Target t);

// Expands a KvNames pattern ("present.%d.key") for one layer.
std::string kv_name(const std::string& pattern, int64_t layer);

// The embedding table as embedding.safetensors holds it: float rows, or MatMulNBits
// blocks (<name>.qweight, .scales, [.zero_points], [.mins]) for quantized packages.
// Graphs read its bytes in place.
struct EmbeddingTable {
  io::DType dtype = io::DType::F32;         // float tables: F32, F16 or BF16
  graph::ExternalData::Entry entry;         // float table bytes
  std::optional<graph::NBitsWeight> nbits;  // quantized table: layout only (vectors empty)
  std::string quantization;                 // e.g. "Q8_0 as 8-bit block 32" (kvrun.json)
  std::map<std::string, graph::ExternalData::Entry> nbits_entries;
  bool quantized() const { return nbits.has_value(); }
  // Registers the table's bytes in `d` under their tensor names.
  void alias_into(graph::ExternalData& d) const;
};

// Writes the decoder graph(s) into `dir`. The embedding table is reused as the lm_head
// when embeddings are tied: a table of the graphs' dtype through Gemm, a quantized one
// through MatMulNBits; under `tied_head_float` (int8/int4 builds) or a table of another
// dtype, the head gets float weights of its own (then quantized with the other MatMuls).
// `progress(done, total)` is called as layers are converted.
std::vector<GraphSignature> build_decoder(const io::ModelConfig& cfg, const io::TensorStore& store,
                                          const DecoderBuildOptions& opt, const std::filesystem::path& dir,
                                          const EmbeddingTable& table,
                                          const std::function<void(int64_t, int64_t)>& progress);

// embedding.onnx: input_ids int64 [batch, seq] -> inputs_embeds, reading the table
// from embedding.safetensors in place.
GraphSignature build_embedding_graph(const io::ModelConfig& cfg, io::DType dt, const std::filesystem::path& dir,
                                     const EmbeddingTable& table);

}  // namespace kvrun::arch
