// Any ONNX file loaded for inspection and rewriting (inspect, fix, quantize):
// the protobuf plus its external data files, mapped rather than copied, with every
// reference checked (location inside the model's folder, offset + length inside
// the file). save() writes the model and one external data file atomically.
#pragma once
#include <onnx/onnx_pb.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "io/dtype.h"
#include "io/mapped_file.h"

namespace kvrun::graph {

class ExternalData;  // graph/builder.h

struct SaveOptions {
  size_t inline_limit = 1024;  // smaller initializers stay inside the .onnx
  std::string data_file;       // default: "<out file name>.data"
  // Several graphs sharing one data file (prefill.onnx + decode.onnx): tensors go to
  // this file, de-duplicated by name; the caller commits it and then runs the checker.
  std::shared_ptr<ExternalData> shared_data;
  // External references to these files (relative locations, e.g. "embedding.safetensors")
  // are kept as they are; the caller makes sure the file sits beside the output.
  std::vector<std::string> keep_locations;
};

class OnnxModel {
 public:
  // Throws kvrun::Error for a missing, truncated or corrupt file or a bad external reference.
  static std::unique_ptr<OnnxModel> load(const std::filesystem::path& path);

  onnx::ModelProto& proto() { return proto_; }
  const onnx::ModelProto& proto() const { return proto_; }
  const std::filesystem::path& path() const { return path_; }

  // Little-endian bytes of a tensor, wherever they live (raw_data, external data, or
  // the typed fields, converted once and cached). Valid while the model lives.
  std::span<const uint8_t> bytes(const onnx::TensorProto& t) const;
  // The tensor as float32 (FLOAT, FLOAT16, BFLOAT16, DOUBLE).
  std::vector<float> to_f32(const onnx::TensorProto& t) const;
  static int64_t numel(const onnx::TensorProto& t);
  static io::DType dtype(const onnx::TensorProto& t);  // throws for types kvrun does not handle

  // Every graph: the main graph, then the bodies of If/Loop/Scan nodes, depth first.
  static void for_each_graph(onnx::GraphProto& g, const std::function<void(onnx::GraphProto&)>& fn);
  void for_each_graph(const std::function<void(onnx::GraphProto&)>& fn) { for_each_graph(*proto_.mutable_graph(), fn); }

  // Writes `out` (+ its data file) through temporary files; checks the result with the
  // ONNX checker. Initializers whose bytes changed are written from the proto.
  void save(const std::filesystem::path& out, const SaveOptions& opt = {}) const;

 private:
  OnnxModel() = default;
  const io::MappedFile& mapped(const std::string& location) const;

  std::filesystem::path path_;
  onnx::ModelProto proto_;
  mutable std::map<std::string, std::unique_ptr<io::MappedFile>> files_;
  mutable std::map<const onnx::TensorProto*, std::vector<uint8_t>> converted_;
  mutable std::mutex mu_;
};

}  // namespace kvrun::graph
