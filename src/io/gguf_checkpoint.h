// A GGUF file seen as a Hugging Face checkpoint: tensors under their transformers
// names (shape [out, in], quantized ones as ggml blocks, see TensorView::ggml_type) and
// the equivalent config.json / generation_config.json, for the architectures llama,
// qwen2, qwen3 and gemma3.
//
// llama.cpp's converter permutes the q/k rows of `llama` models for its interleaved
// rotary; they are put back in transformers' rotate-half order here (a row permutation,
// so quantized blocks move whole). What the format leaves out for gemma3 is llama.cpp's
// convention: sliding-window pattern 6, local rope base 10000, query scale
// 1/sqrt(key_length), embeddings scaled by sqrt(hidden), norms stored as (1 + w).
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/safetensors.h"

namespace kvrun::io {

class GgufCheckpoint {
 public:
  explicit GgufCheckpoint(const std::filesystem::path& path);
  const GgufFile& file() const { return *file_; }
  const std::string& architecture() const { return arch_; }  // GGUF's general.architecture
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // config.json and generation_config.json as transformers would write them.
  const nlohmann::json& hf_config() const { return config_; }
  nlohmann::json generation_config() const;

 private:
  std::unique_ptr<GgufFile> file_;
  std::string arch_;
  nlohmann::json config_;
  std::map<std::string, TensorView> tensors_;
  std::vector<std::vector<uint8_t>> owned_;  // permuted q/k rows of llama files
};

// Writes a GGUF v3 file holding only the metadata keys of `src` that start with one of
// `key_prefixes` (no tensors): a package's tokenizer.gguf. Atomic (temp file, rename).
void write_gguf_metadata(const std::filesystem::path& path, const GgufFile& src,
                         const std::vector<std::string>& key_prefixes);

// True for a regular file starting with the GGUF magic.
bool is_gguf_file(const std::filesystem::path& path);

}  // namespace kvrun::io
