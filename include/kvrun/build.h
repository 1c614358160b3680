// kvrun public API: build a self-describing ONNX package from a Hugging Face
// checkpoint, write a random checkpoint for any supported config, and verify a
// package against the C++ reference forward pass.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kvrun/error.h"
#include "kvrun/types.h"

namespace kvrun {

// Weight quantization settings shared by `build --precision int8|int4` and `quantize`.
struct QuantSettings {
  int64_t block_size = 32;  // int8/int4: power of two >= 16, along K
  bool symmetric = true;    // int8/int4: false stores a zero point per block
  int accuracy_level = 4;   // MatMulNBits: 0 (unset), 1 fp32, 2 fp16, 3 bf16, 4 int8 compute
  std::string exclude;      // regex (PCRE2) on node and weight names: matches stay in float
};

struct BuildOptions {
  std::filesystem::path checkpoint;  // folder with config.json + safetensors, or a .gguf file
  std::filesystem::path out;         // package folder to create
  std::string target = "ort";        // "ort" (fused com.microsoft ops) | "portable" (opset 17)
  // "fp32" | "fp16" | "int8" | "int4" (fp32 graphs, then quantized) | "source" (a GGUF
  // file's own block types, exactly, as MatMulNBits; target ort) | "auto" (source for a
  // GGUF file, else fp32)
  std::string precision = "auto";
  int64_t max_length = 0;   // positions covered (0: config max_position_embeddings)
  bool all_logits = false;  // logits for every position, not only the last
  // A chat template for the package: tokenizer_config.json (its chat_template) or a
  // .jinja file. Default: the checkpoint's own (tokenizer_config.json, chat_template.jinja,
  // a GGUF file's tokenizer.chat_template); a base model without one runs text as is.
  std::filesystem::path chat_template;
  // KV cache dtype: "auto" (fp16 for int4 on target ort, else the precision's), "fp32",
  // "fp16" (target ort, or precision fp16). A float16 cache halves the bytes each decode step
  // reads from it.
  std::string kv_dtype = "auto";
  bool overwrite = false;  // replace an existing package folder
  bool load_check = true;  // open every graph in ONNX Runtime before committing
  QuantSettings quant;     // --precision int8|int4: weight-only MatMulNBits (ort) / DequantizeLinear (portable int8)
  ProgressFn progress;

  void validate() const;  // throws kvrun::Error
  // "auto" decided for the checkpoint (source for a GGUF file, else fp32).
  std::string resolved_precision() const;
  std::string resolved_kv_dtype() const;  // "fp32" | "fp16" ("auto" decided)
};

struct BuildResult {
  std::filesystem::path out;
  std::vector<std::string> files;
  uint64_t bytes = 0;
  double seconds = 0;
};

// Builds into `<out>.partial-<pid>` and renames at the end: a failed build leaves nothing.
BuildResult build_package(const BuildOptions& opt);

// ---- The package cache: GGUF files run directly (docs/run.md, "GGUF files and the package cache")
//
// Where packages built from GGUF files are kept: $KVRUN_CACHE_DIR, else
// $XDG_CACHE_HOME/kvrun/packages, else ~/.cache/kvrun/packages.
std::filesystem::path package_cache_dir();

// For a GGUF file: its package folder in package_cache_dir(), built on first use (target
// ort, precision auto: the file's own quantization). The folder is named by a sha256 over
// the file's content, kvrun's build-format version and those build options, so the same
// file under another name shares it and a changed file or a kvrun that builds differently
// gets a new one. The file's sha256 is remembered in <cache>/index.json by (path, size,
// mtime, ctime, inode): a later use of an unchanged file hashes nothing. A build announces
// itself with one line on stderr and reports through `progress` (the build's stages, and
// "sha256" in MiB while a new or changed file is hashed). Concurrent first uses build once
// (a lock file per package; the others wait and use the result); a failed build leaves no
// folder. Anything that is not a GGUF file is returned unchanged.
std::filesystem::path ensure_package(const std::filesystem::path& model, const ProgressFn& progress = {});

// kvrun quantize: a package folder (its decoder graphs) or a single .onnx file.
struct QuantizeOptions : QuantSettings {
  std::filesystem::path input;  // package folder or .onnx file
  std::filesystem::path out;    // package folder, or .onnx file (+ <out>.data)
  std::string mode = "int4";    // "int8-dynamic" | "int8" | "int4"
  bool standard_ops = false;    // single .onnx only: opset standard ops (packages: from the target)
  bool overwrite = false;
  bool load_check = true;  // open the quantized graphs in ONNX Runtime before committing
  ProgressFn progress;
};

struct QuantizeResult {
  std::filesystem::path out;
  int64_t quantized_nodes = 0;
  std::vector<std::pair<std::string, std::string>> skipped;  // node, reason
  uint64_t initializer_bytes_before = 0, initializer_bytes_after = 0;
  uint64_t file_bytes_before = 0, file_bytes_after = 0;  // graphs + their data files
  std::string settings_json;                             // what kvrun.json records
  std::string to_text() const;
  std::string to_json() const;
};

QuantizeResult quantize(const QuantizeOptions& opt);

struct SynthOptions {
  std::filesystem::path config;  // a config.json (file or folder holding it)
  std::filesystem::path out;
  uint64_t seed = 0;
  std::string dtype;   // "f32" | "f16" | "bf16"; empty: the config's torch_dtype
  double std_dev = 0;  // 0: config initializer_range (default 0.02)
  bool overwrite = false;
  ProgressFn progress;
  // FunASR-nano layout (model.pt + config.yaml + Qwen3-0.6B/): `config` optionally names
  // the LLM's config.json (default Qwen3-0.6B's); dtype defaults to bf16 as published.
  bool funasr_nano = false;
  std::string size = "real";        // "real" (encoder 512 wide, 50 + 20 blocks) | "tiny"
  std::filesystem::path tokenizer;  // folder whose tokenizer files go into Qwen3-0.6B/
};

// Writes config.json, generation_config.json and model.safetensors with deterministic
// random weights (each tensor seeded from seed + its name).
void synth_checkpoint(const SynthOptions& opt);
// The FunASR-nano writer synth_checkpoint calls when opt.funasr_nano is set.
void synth_funasr_nano(const SynthOptions& opt);

}  // namespace kvrun
