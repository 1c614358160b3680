#include "runtime/ort_session.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <fstream>

#include "kvrun/error.h"
#include "runtime/ort_kernels.h"

namespace kvrun::runtime {

Ort::Env& ort_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "kvrun");
  return env;
}

io::DType from_onnx_elem(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
      return io::DType::F32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
      return io::DType::F16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16:
      return io::DType::BF16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
      return io::DType::F64;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
      return io::DType::I64;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
      return io::DType::I32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16:
      return io::DType::I16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
      return io::DType::I8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
      return io::DType::U8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
      return io::DType::BOOL;
    default:
      throw Error("unsupported ONNX tensor element type " + std::to_string(static_cast<int>(t)));
  }
}

ONNXTensorElementDataType to_onnx_elem(io::DType t) {
  switch (t) {
    case io::DType::F32:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case io::DType::F16:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case io::DType::BF16:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case io::DType::F64:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
    case io::DType::I64:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case io::DType::I32:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case io::DType::I16:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
    case io::DType::I8:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case io::DType::U8:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case io::DType::BOOL:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

namespace {
Ort::Session open_session(const std::filesystem::path& model, const SessionConfig& cfg) {
  if (!std::filesystem::exists(model)) throw Error(model.string() + ": no such model file");
  Ort::SessionOptions so;
  if (cfg.intra_op_threads > 0) so.SetIntraOpNumThreads(cfg.intra_op_threads);
  if (!cfg.allow_spinning) so.AddConfigEntry("session.intra_op.allow_spinning", "0");
  // ONNX Runtime's per-node profile (docs/PERFORMANCE.md): KVRUN_ORT_PROFILE=<file prefix>.
  if (const char* prof = std::getenv("KVRUN_ORT_PROFILE"); prof && *prof) so.EnableProfiling(prof);
  so.SetGraphOptimizationLevel(cfg.optimize ? GraphOptimizationLevel::ORT_ENABLE_ALL
                                            : GraphOptimizationLevel::ORT_ENABLE_BASIC);
  try {
    if (cfg.kvrun_kernels && kvrun_kernels_enabled()) {
      if (const auto bytes = with_kvrun_attention(model)) {
        so.Add(kvrun_op_domain());
        const std::string dir = std::filesystem::absolute(model).parent_path().string();
        so.AddConfigEntry("session.model_external_initializers_file_folder_path", dir.c_str());
        return Ort::Session(ort_env(), bytes->data(), bytes->size(), so);
      }
    }
    return Ort::Session(ort_env(), model.c_str(), so);
  } catch (const Ort::Exception& e) {
    throw Error(model.string() + ": ONNX Runtime cannot load the model: " + e.what());
  }
}

// ORT maps external-data files privately and keeps a mapping alive while any node reads the
// tensor (an embedding table read by Gather and, tied, by the output Gemm). Pre-packing reads
// every page of it once, so the whole table stays resident beside its packed copy. Pages of
// such a mapping that were never written (its Anonymous count is 0) are dropped after load:
// later reads fault them in again from the page cache, identical. Linux only; elsewhere nothing.
void drop_clean_pages_of(const std::filesystem::path& dir) {
  std::ifstream smaps("/proc/self/smaps");
  if (!smaps) return;
  const std::string prefix = std::filesystem::absolute(dir).lexically_normal().string() + "/";
  struct Range {
    uintptr_t begin = 0, end = 0;
    bool ours = false;
    long anonymous = -1;
  };
  std::vector<Range> ranges;
  std::string line;
  while (std::getline(smaps, line)) {
    const auto dash = line.find('-');
    const auto space = line.find(' ');
    if (dash != std::string::npos && space != std::string::npos && dash < space &&
        line.find_first_not_of("0123456789abcdef") == dash) {
      Range r;
      r.begin = std::stoull(line.substr(0, dash), nullptr, 16);
      r.end = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16);
      const auto slash = line.find('/');
      r.ours = slash != std::string::npos && line.compare(slash, prefix.size(), prefix) == 0;
      ranges.push_back(r);
    } else if (!ranges.empty() && line.rfind("Anonymous:", 0) == 0) {
      ranges.back().anonymous = std::atol(line.c_str() + 10);
    }
  }
  for (const Range& r : ranges)
    if (r.ours && r.anonymous == 0 && r.end > r.begin)
      madvise(reinterpret_cast<void*>(r.begin), r.end - r.begin, MADV_DONTNEED);
}

IoInfo read_info(const std::string& name, const Ort::TypeInfo& ti) {
  IoInfo info;
  info.name = name;
  if (ti.GetONNXType() != ONNX_TYPE_TENSOR) throw Error("graph input/output '" + name + "' is not a tensor");
  auto tt = ti.GetTensorTypeAndShapeInfo();
  info.dtype = from_onnx_elem(tt.GetElementType());
  info.shape = tt.GetShape();
  const size_t rank = info.shape.size();
  std::vector<const char*> sym(rank, nullptr);
  if (rank) tt.GetSymbolicDimensions(sym.data(), rank);
  for (size_t i = 0; i < rank; ++i) info.symbolic.emplace_back(sym[i] ? sym[i] : "");
  return info;
}
}  // namespace

Session::Session(const std::filesystem::path& model, const SessionConfig& cfg)
    : path_(model), session_(open_session(model, cfg)), shrink_arena_(cfg.shrink_arena) {
  drop_clean_pages_of(model.parent_path().empty() ? std::filesystem::path(".") : model.parent_path());
  Ort::AllocatorWithDefaultOptions alloc;
  for (size_t i = 0; i < session_.GetInputCount(); ++i)
    inputs_.push_back(read_info(session_.GetInputNameAllocated(i, alloc).get(), session_.GetInputTypeInfo(i)));
  for (size_t i = 0; i < session_.GetOutputCount(); ++i)
    outputs_.push_back(read_info(session_.GetOutputNameAllocated(i, alloc).get(), session_.GetOutputTypeInfo(i)));
  const Ort::ModelMetadata meta = session_.GetModelMetadata();
  for (const auto& key : meta.GetCustomMetadataMapKeysAllocated(alloc))
    if (auto value = meta.LookupCustomMetadataMapAllocated(key.get(), alloc)) metadata_[key.get()] = value.get();
}

const IoInfo* Session::find_input(const std::string& name) const {
  for (const auto& i : inputs_)
    if (i.name == name) return &i;
  return nullptr;
}

const IoInfo* Session::find_output(const std::string& name) const {
  for (const auto& o : outputs_)
    if (o.name == name) return &o;
  return nullptr;
}

std::vector<Ort::Value> Session::run(const std::vector<std::string>& input_names, std::vector<Ort::Value>& input_values,
                                     const std::vector<std::string>& output_names) {
  std::vector<const char*> in, out;
  for (const auto& n : input_names) in.push_back(n.c_str());
  std::vector<std::string> outs = output_names;
  if (outs.empty())
    for (const auto& o : outputs_) outs.push_back(o.name);
  for (const auto& n : outs) out.push_back(n.c_str());
  try {
    Ort::RunOptions ro;
    if (shrink_arena_) ro.AddConfigEntry("memory.enable_memory_arena_shrinkage", "cpu:0");
    return session_.Run(ro, in.data(), input_values.data(), in.size(), out.data(), out.size());
  } catch (const Ort::Exception& e) {
    throw Error(path_.string() + ": run failed: " + e.what());
  }
}

void Session::run_into(const std::vector<const char*>& input_names, const std::vector<Ort::Value>& input_values,
                       const std::vector<const char*>& output_names, std::vector<Ort::Value>& outputs) {
  try {
    session_.Run(Ort::RunOptions{nullptr}, input_names.data(), input_values.data(), input_names.size(),
                 output_names.data(), outputs.data(), output_names.size());
  } catch (const Ort::Exception& e) {
    throw Error(path_.string() + ": run failed: " + e.what());
  }
}

HostTensor HostTensor::zeros(io::DType t, std::vector<int64_t> shape) {
  HostTensor h;
  h.dtype = t;
  h.shape = std::move(shape);
  h.bytes.assign(static_cast<size_t>(h.numel()) * io::dtype_size(t), 0);
  return h;
}

HostTensor HostTensor::from_f32(const std::vector<float>& v, std::vector<int64_t> shape, io::DType t) {
  HostTensor h = zeros(t, std::move(shape));
  if (static_cast<int64_t>(v.size()) != h.numel())
    throw Error("tensor data has " + std::to_string(v.size()) + " values, shape needs " + std::to_string(h.numel()));
  if (t == io::DType::F32) {
    if (!v.empty()) std::memcpy(h.bytes.data(), v.data(), v.size() * 4);
  } else if (t == io::DType::F16) {
    auto* p = reinterpret_cast<uint16_t*>(h.bytes.data());
    for (size_t i = 0; i < v.size(); ++i) p[i] = io::f32_to_f16(v[i]);
  } else {
    throw Error("HostTensor::from_f32: expected F32 or F16");
  }
  return h;
}

HostTensor HostTensor::from_i64(const std::vector<int64_t>& v, std::vector<int64_t> shape) {
  HostTensor h = zeros(io::DType::I64, std::move(shape));
  if (static_cast<int64_t>(v.size()) != h.numel())
    throw Error("tensor data has " + std::to_string(v.size()) + " values, shape needs " + std::to_string(h.numel()));
  if (!v.empty()) std::memcpy(h.bytes.data(), v.data(), v.size() * 8);  // an empty vector's data() may be null
  return h;
}

int64_t HostTensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

Ort::Value HostTensor::view() {
  static const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  static uint8_t empty_dummy[8] = {};
  void* p = bytes.empty() ? empty_dummy : bytes.data();
  return Ort::Value::CreateTensor(mem, p, bytes.size(), shape.data(), shape.size(), to_onnx_elem(dtype));
}

std::vector<int64_t> shape_of(const Ort::Value& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

std::vector<float> to_f32(const Ort::Value& v) {
  auto info = v.GetTensorTypeAndShapeInfo();
  const size_t n = info.GetElementCount();
  std::vector<float> out(n);
  io::to_f32(from_onnx_elem(info.GetElementType()), v.GetTensorRawData(), out.data(), n);
  return out;
}

HostTensor to_host(const Ort::Value& v) {
  auto info = v.GetTensorTypeAndShapeInfo();
  HostTensor h = HostTensor::zeros(from_onnx_elem(info.GetElementType()), info.GetShape());
  if (!h.bytes.empty()) std::memcpy(h.bytes.data(), v.GetTensorRawData(), h.bytes.size());
  return h;
}

}  // namespace kvrun::runtime
