// A small typed layer over onnx.pb.h for emitting inference graphs.
//
// - Node names follow `/model/layers.3/attn/q_proj/MatMul`; a node's outputs are
//   `<node name>/output_<k>` unless named explicitly, so every intermediate can be
//   found in a profile or a debugger.
// - Weights are streamed to one external data file beside the .onnx (large tensors
//   page-aligned so ONNX Runtime can map them), so multi-GB models never sit in a
//   protobuf; small constants stay inline.
// - finish() writes the .onnx atomically, runs the ONNX checker on the written file.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "io/dtype.h"
#include "io/fs.h"

namespace onnx {
class ModelProto;
class GraphProto;
}  // namespace onnx

namespace kvrun::graph {

// A tensor dimension: a fixed size or a symbolic name ("batch", "sequence_length").
using Dim = std::variant<int64_t, std::string>;

struct Attr {
  std::string name;
  std::variant<int64_t, float, std::string, std::vector<int64_t>, std::vector<float>> value;
  Attr(std::string n, int64_t v) : name(std::move(n)), value(v) {}
  Attr(std::string n, int v) : name(std::move(n)), value(static_cast<int64_t>(v)) {}
  Attr(std::string n, float v) : name(std::move(n)), value(v) {}
  Attr(std::string n, double v) : name(std::move(n)), value(static_cast<float>(v)) {}
  Attr(std::string n, const char* v) : name(std::move(n)), value(std::string(v)) {}
  Attr(std::string n, std::string v) : name(std::move(n)), value(std::move(v)) {}
  Attr(std::string n, std::vector<int64_t> v) : name(std::move(n)), value(std::move(v)) {}
  Attr(std::string n, std::vector<float> v) : name(std::move(n)), value(std::move(v)) {}
};

// ONNX TensorProto element type for a kvrun dtype.
int onnx_elem_type(io::DType t);

// One external data file that several graphs may share (split prefill/decode graphs
// reference the same bytes). Tensors are de-duplicated by name.
class ExternalData {
 public:
  explicit ExternalData(const std::filesystem::path& path);
  ~ExternalData();
  struct Entry {
    std::string location;
    int64_t offset = 0, length = 0;
  };
  // Appends `n` bytes under `name` (or returns the existing entry for that name).
  Entry put(const std::string& name, const void* data, size_t n);
  const Entry* find(const std::string& name) const;
  // Registers bytes that already live in another file of the package (e.g. the
  // embedding table inside embedding.safetensors) so graphs reference them in place.
  void alias(const std::string& name, Entry e);
  int64_t bytes() const { return offset_; }
  void commit();

 private:
  std::filesystem::path path_;
  std::unique_ptr<io::AtomicFile> file_;
  std::map<std::string, Entry> entries_;
  int64_t offset_ = 0;
};

class GraphBuilder {
 public:
  // `onnx_path`: where finish() writes the model. Weights go to `data` when given
  // (the caller commits it), else to `<file name>.data` beside the model.
  GraphBuilder(std::filesystem::path onnx_path, std::string graph_name,
               std::map<std::string, int64_t> opsets = {{"", 17}}, std::shared_ptr<ExternalData> data = nullptr);
  ~GraphBuilder();
  GraphBuilder(const GraphBuilder&) = delete;
  GraphBuilder& operator=(const GraphBuilder&) = delete;

  void input(const std::string& name, io::DType t, const std::vector<Dim>& dims);
  void output(const std::string& name, io::DType t, const std::vector<Dim>& dims);

  // A weight: converted from float32 to `t` (F32 or F16) and written to external data.
  std::string weight(const std::string& name, io::DType t, const std::vector<int64_t>& shape, const float* data);
  // Raw bytes of any dtype; stored inline when small, external otherwise.
  std::string tensor(const std::string& name, io::DType t, const std::vector<int64_t>& shape, const void* data);
  std::string const_i64(const std::string& name, const std::vector<int64_t>& values, bool scalar = false);
  std::string const_f32(const std::string& name, const std::vector<float>& values, bool scalar = false);
  std::string const_scalar(const std::string& name, io::DType t, double value);

  // Adds a node; returns its output names (`n_outputs` auto-named) — empty output names
  // given in `outputs` mark optional outputs that are not produced.
  std::vector<std::string> node(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                                const std::vector<std::string>& outputs, const std::vector<Attr>& attrs = {},
                                const std::string& domain = "");
  // One auto-named output.
  std::string op(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                 const std::vector<Attr>& attrs = {}, const std::string& domain = "");

  void metadata(const std::string& key, const std::string& value);
  std::vector<std::string> input_names() const;
  std::vector<std::string> output_names() const;
  bool has_external(const std::string& name) const { return data_->find(name) != nullptr; }
  // Declares an initializer whose bytes are already in the shared ExternalData (by name).
  std::string external(const std::string& name, io::DType t, const std::vector<int64_t>& shape);

  // Writes the model (via a temporary name). With its own data file, also commits the
  // data and runs the ONNX checker; with shared data the caller commits the data and
  // then calls check_model_file().
  void finish();

 private:
  std::filesystem::path path_;
  std::unique_ptr<onnx::ModelProto> model_;
  onnx::GraphProto* graph_;
  std::shared_ptr<ExternalData> data_;
  bool own_data_ = false;
};

// Runs the ONNX checker on a written model (external data must be in place).
void check_model_file(const std::filesystem::path& path);

}  // namespace kvrun::graph
