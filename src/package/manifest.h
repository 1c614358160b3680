// kvrun.json — the package manifest: what the graphs are, their I/O names, the KV
// layout, special tokens, generation defaults and chat template. Written by build,
// read by verify and the runtime. Format version 1.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "arch/decoder.h"
#include "io/model_config.h"

namespace kvrun::build {

inline constexpr int kManifestVersion = 1;
// Bump when build_package writes a different package for the same checkpoint and options
// (graphs, weights layout, files): packages cached from GGUF files are keyed by it, so the
// next use rebuilds them (ensure_package, package/gguf_cache.cpp).
inline constexpr int kBuildFormatVersion = 1;

struct ManifestInputs {
  const io::ModelConfig& cfg;
  const io::GenerationConfig& gen;
  arch::Target target;
  io::DType dtype;     // weights and activations (inputs_embeds)
  io::DType kv_dtype;  // past/present
  int64_t max_length;
  bool all_logits;
  const std::vector<arch::GraphSignature>& graphs;
  const std::vector<std::string>& copied_files;
  nlohmann::json chat_template;
  std::string source_checkpoint;
};

nlohmann::json make_manifest(const ManifestInputs& in);

// What the runtime needs from a manifest, validated on load.
struct Manifest {
  std::filesystem::path dir;
  std::string target;                   // "ort" | "portable"
  std::string precision;                // "fp32" | "fp16"
  io::DType dtype = io::DType::F32;     // inputs_embeds
  io::DType kv_dtype = io::DType::F32;  // past/present
  std::string architecture;
  int64_t hidden_size = 0, vocab_size = 0, num_layers = 0, num_kv_heads = 0, head_dim = 0, max_length = 0;
  bool last_position_only = true;
  std::string embedding_file, embedding_tensor;
  double embedding_scale = 1.0;  // embedding.scale: rows are multiplied by it in fp32 (Gemma: sqrt(hidden))
  std::map<std::string, arch::GraphSignature> graphs;  // by role
  arch::KvNames kv;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::string source_checkpoint;
  nlohmann::json raw;

  const arch::GraphSignature& graph(const std::string& role) const;
};

// Reads <dir>/kvrun.json; throws kvrun::Error naming the field when it is malformed.
Manifest load_manifest(const std::filesystem::path& dir);

}  // namespace kvrun::build
