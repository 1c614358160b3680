// Finds what a model folder holds: which graphs play which role, where the
// embeddings come from, and the facts the runtime needs from side files
// (kvrun.json, genai_config.json, config.json, generation_config.json) -- never a
// file written by hand for kvrun.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "kvrun/types.h"

namespace kvrun::runtime {

struct ModelSource {
  std::string layout;  // kvrun-ort | kvrun-portable | genai | optimum | optimum-merged | split | sherpa-kv-delta | onnx
  std::filesystem::path dir;
  std::filesystem::path side_dir;     // where config.json / the tokenizer were found when not in `dir`
  std::filesystem::path step_graph;   // graph with past inputs (or the only graph)
  std::filesystem::path first_graph;  // optional: prefill graph without past inputs
  std::filesystem::path embed_graph;  // optional: input_ids -> inputs_embeds graph
  std::filesystem::path embed_table;  // optional: safetensors holding the embedding table
  std::string embed_tensor;
  float embed_scale = 1.0f;     // rows of embed_table are multiplied by this (kvrun.json embedding.scale)
  bool share_buffer = false;    // past and present may be one buffer (GroupQueryAttention graphs)
  bool right_padding = false;   // batches must be right-padded (GroupQueryAttention reads lengths from the mask)
  int64_t max_length = 0;       // longest sequence the graphs support; 0: not stated
  std::string max_length_from;  // where max_length comes from, for messages
  std::optional<int64_t> num_layers, kv_heads, head_dim, hidden_size, vocab_size;
  std::vector<TokenId> eos_ids;
  std::optional<TokenId> bos_id, pad_id;
  std::string chat_template;  // from kvrun.json when present
};

// `path`: a folder or one .onnx file. Throws kvrun::Error listing what was looked for.
ModelSource find_model(const std::filesystem::path& path);

}  // namespace kvrun::runtime
