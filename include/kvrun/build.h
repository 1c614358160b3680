// kvrun public API: build a self-describing ONNX package from a Hugging Face
// checkpoint, write a random checkpoint for any supported config, and verify a
// package against the C++ reference forward pass.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kvrun/error.h"

namespace kvrun {

// (stage, done, total) — called as long work advances; stage e.g. "decoder".
using ProgressFn = std::function<void(const std::string&, int64_t, int64_t)>;

struct BuildOptions {
  std::filesystem::path checkpoint;  // folder with config.json + safetensors
  std::filesystem::path out;         // package folder to create
  std::string target = "ort";        // "ort" (fused com.microsoft ops) | "portable" (opset 17)
  std::string precision = "fp32";    // "fp32" | "fp16"
  int64_t max_length = 0;            // positions covered (0: config max_position_embeddings)
  bool all_logits = false;           // logits for every position, not only the last
  bool overwrite = false;            // replace an existing package folder
  bool load_check = true;            // open every graph in ONNX Runtime before committing
  ProgressFn progress;

  void validate() const;  // throws kvrun::Error
};

struct BuildResult {
  std::filesystem::path out;
  std::vector<std::string> files;
  uint64_t bytes = 0;
  double seconds = 0;
};

// Builds into `<out>.partial-<pid>` and renames at the end: a failed build leaves nothing.
BuildResult build_package(const BuildOptions& opt);

struct SynthOptions {
  std::filesystem::path config;  // a config.json (file or folder holding it)
  std::filesystem::path out;
  uint64_t seed = 0;
  std::string dtype;   // "f32" | "f16" | "bf16"; empty: the config's torch_dtype
  double std_dev = 0;  // 0: config initializer_range (default 0.02)
  bool overwrite = false;
  ProgressFn progress;
};

// Writes config.json, generation_config.json and model.safetensors with deterministic
// random weights (each tensor seeded from seed + its name).
void synth_checkpoint(const SynthOptions& opt);

}  // namespace kvrun
