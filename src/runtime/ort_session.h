// Thin ONNX Runtime helpers shared by build (load check), verify and the runtime.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "io/dtype.h"

namespace kvrun::runtime {

// The process-wide ORT environment (created on first use).
Ort::Env& ort_env();

struct SessionConfig {
  int intra_op_threads = 0;  // 0: ORT's default (one per core)
  bool optimize = true;      // ORT_ENABLE_ALL vs basic
  // kvrun's own kernels where they cover a node (runtime/ort_kernels.h); KVRUN_ATTENTION=ort
  // turns them off process-wide.
  bool kvrun_kernels = true;
  // ORT's intra-op threads spin between runs by default; off where the caller has host work
  // of its own between runs (translate's beam search: +5% target tokens/s on 2 cores).
  bool allow_spinning = true;
  // After each run() the arena's free chunks go back to the system: for a graph run once per
  // batch whose intermediates are large (an encoder over whole sentences) while another graph
  // runs many times in between.
  bool shrink_arena = false;
};

struct IoInfo {
  std::string name;
  io::DType dtype = io::DType::F32;
  std::vector<int64_t> shape;         // -1 for symbolic dims
  std::vector<std::string> symbolic;  // dim_param names ("" for fixed)
};

// An ORT session with its I/O signature read once.
class Session {
 public:
  Session(const std::filesystem::path& model, const SessionConfig& cfg = {});
  const std::vector<IoInfo>& inputs() const { return inputs_; }
  const std::vector<IoInfo>& outputs() const { return outputs_; }
  const IoInfo* find_input(const std::string& name) const;
  const IoInfo* find_output(const std::string& name) const;
  // The model's metadata_props (key -> value), e.g. what an exporter recorded about the graph.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  Ort::Session& get() { return session_; }
  const std::filesystem::path& path() const { return path_; }

  // Runs with named inputs; fetches the named outputs (all outputs when empty).
  std::vector<Ort::Value> run(const std::vector<std::string>& input_names, std::vector<Ort::Value>& input_values,
                              const std::vector<std::string>& output_names = {});
  // Runs into `outputs` (one per output name): a value given is written in place
  // (e.g. a preallocated KV buffer); an empty Ort::Value{nullptr} is allocated by ORT.
  void run_into(const std::vector<const char*>& input_names, const std::vector<Ort::Value>& input_values,
                const std::vector<const char*>& output_names, std::vector<Ort::Value>& outputs);

 private:
  std::filesystem::path path_;
  Ort::Session session_;
  bool shrink_arena_ = false;
  std::vector<IoInfo> inputs_, outputs_;
  std::map<std::string, std::string> metadata_;
};

io::DType from_onnx_elem(ONNXTensorElementDataType t);
ONNXTensorElementDataType to_onnx_elem(io::DType t);

// A CPU tensor owning its buffer, convertible to an Ort::Value view.
struct HostTensor {
  io::DType dtype = io::DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  static HostTensor zeros(io::DType t, std::vector<int64_t> shape);
  static HostTensor from_f32(const std::vector<float>& v, std::vector<int64_t> shape, io::DType t = io::DType::F32);
  static HostTensor from_i64(const std::vector<int64_t>& v, std::vector<int64_t> shape);
  int64_t numel() const;
  Ort::Value view();  // non-owning; the HostTensor must outlive the value
};

// Copies any float-typed Ort::Value (F32/F16) into float32.
std::vector<float> to_f32(const Ort::Value& v);
std::vector<int64_t> shape_of(const Ort::Value& v);
HostTensor to_host(const Ort::Value& v);

}  // namespace kvrun::runtime
