// kvrun's own ONNX Runtime kernels, swapped in when a session opens; the graphs on disk
// stay standard (com.microsoft ops) and run in any ONNX Runtime.
//
// ai.kvrun GroupQueryAttention: same inputs, outputs and attributes as com.microsoft's.
// A decode step (one position per row, past and present sharing one buffer) runs
// kvrun's DecodeAttention (runtime/attention_kernel.h); every other call is handed to
// ONNX Runtime's own kernel, so prefill and chunked prefill are ORT's.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <filesystem>
#include <optional>
#include <string>

namespace kvrun::runtime {

inline constexpr const char* kKvrunDomain = "ai.kvrun";

// The process-wide custom-op domain holding kvrun's kernels (add it to SessionOptions).
Ort::CustomOpDomain& kvrun_op_domain();

// The model's bytes with every float32 GroupQueryAttention node that kvrun's kernel
// covers moved to the ai.kvrun domain; nullopt when there is none (or the file is too
// large to be a graph with external weights). Reads only the .onnx file.
std::optional<std::string> with_kvrun_attention(const std::filesystem::path& model);

// Whether sessions use kvrun's kernels: true unless KVRUN_ATTENTION=ort.
bool kvrun_kernels_enabled();

}  // namespace kvrun::runtime
