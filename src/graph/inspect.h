// kvrun inspect: what an ONNX file or a model folder holds -- I/O with dtypes and
// (named) shapes, the decoder convention and KV layout the runtime finds, opsets,
// op histogram (subgraphs included), parameters and bytes per dtype, external data
// files, metadata. The report is a JSON document (schema in docs/inspect.md); the
// text form is rendered from it.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace kvrun::graph {

struct InspectOptions {
  bool decoder = true;  // load the model with kvrun's runtime to report the KV layout
};

// `path`: one .onnx file or a folder. Throws kvrun::Error for a missing path, a folder
// without .onnx files, or a corrupt/truncated ONNX file.
nlohmann::json inspect(const std::filesystem::path& path, const InspectOptions& opt = {});
std::string inspect_to_text(const nlohmann::json& report);

// Name of an ONNX TensorProto element type ("float32", "int64", "float8e4m3fn", ...).
std::string onnx_dtype_name(int elem_type);
// Bytes of `n` elements of an ONNX element type (int4/uint4 packed two per byte); 0 for strings.
int64_t onnx_dtype_bytes(int elem_type, int64_t n);

}  // namespace kvrun::graph
