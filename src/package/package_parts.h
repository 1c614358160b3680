// Pieces of `kvrun build` shared by the decoder-only builder (package.cpp) and the
// speech-model builder (asr_package.cpp).
#pragma once
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "arch/decoder.h"
#include "graph/quantize.h"
#include "io/fs.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "kvrun/build.h"

namespace kvrun::build {

// The graph quantizer's options for `build --precision int8|int4`.
graph::QuantizeOptions quant_options(const BuildOptions& o);

// The decoder half of a package written into `dir`: embedding table, embedding and
// decoder graphs, tokenizer/config files copied from `files_dir`, kvrun.json, and the
// int8/int4 decoder graphs. Appends the graphs to `graphs`; returns the manifest written.
nlohmann::json build_llm_parts(const std::filesystem::path& dir, const BuildOptions& opt, const io::ModelConfig& cfg,
                               const io::GenerationConfig& gen, const io::TensorStore& store,
                               const std::filesystem::path& files_dir, std::vector<arch::GraphSignature>& graphs);

// Writes embedding.safetensors and says where its bytes are. `mode`: "float" (rows of
// dtype `dt`: F32, F16 or BF16), "source" (a GGUF table kept in its own quantization
// when it has an exact MatMulNBits form, else float).
arch::EmbeddingTable write_embedding_table(const std::filesystem::path& file, const io::TensorStore& store,
                                           io::DType dt, const std::string& mode);

// Opens each graph file in ONNX Runtime (throws what ORT reports).
void load_check(const std::filesystem::path& dir, const std::vector<std::string>& files, const ProgressFn& progress);

// Lists the staged folder, renames it into place and fills the result.
BuildResult finish_build(io::StagedDir& staged, const BuildOptions& opt, std::chrono::steady_clock::time_point t0);

// A FunASR-nano folder as published: config.yaml naming FunASRNano (or its encoder and
// adaptor), model.pt, and the LLM's config and tokenizer in a sub-folder.
bool is_funasr_nano_folder(const std::filesystem::path& dir);
struct FunAsrFolder {
  nlohmann::json yaml;                  // config.yaml
  std::filesystem::path llm_dir;        // the LLM's config.json + tokenizer
  std::filesystem::path weights;        // model.pt (or .pth / .bin / .safetensors)
  nlohmann::json adaptor_conf() const;  // audio_adaptor_conf ({} when absent)
};
// Throws kvrun::Error naming what is missing.
FunAsrFolder read_funasr_folder(const std::filesystem::path& dir);
BuildResult build_funasr_nano_package(const BuildOptions& opt);

// A Hugging Face encoder-decoder translation folder (config.json of MarianMTModel).
bool is_seq2seq_folder(const std::filesystem::path& dir);
BuildResult build_seq2seq_package(const BuildOptions& opt);

}  // namespace kvrun::build
