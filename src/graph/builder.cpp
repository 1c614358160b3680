#include "graph/builder.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <fstream>

#include "io/fs.h"
#include "kvrun/error.h"

namespace kvrun::graph {
namespace fs = std::filesystem;

int onnx_elem_type(io::DType t) {
  using T = onnx::TensorProto;
  switch (t) {
    case io::DType::F32:
      return T::FLOAT;
    case io::DType::F16:
      return T::FLOAT16;
    case io::DType::BF16:
      return T::BFLOAT16;
    case io::DType::F64:
      return T::DOUBLE;
    case io::DType::I64:
      return T::INT64;
    case io::DType::I32:
      return T::INT32;
    case io::DType::I16:
      return T::INT16;
    case io::DType::I8:
      return T::INT8;
    case io::DType::U8:
      return T::UINT8;
    case io::DType::BOOL:
      return T::BOOL;
  }
  return T::UNDEFINED;
}

namespace {
constexpr size_t kInlineLimit = 1024;  // bytes; smaller tensors stay inside the .onnx
constexpr int64_t kPageAlign = 4096;   // large tensors start on a page boundary (mmap-able)
constexpr size_t kLargeTensor = 64 * 1024;

void set_dims(onnx::ValueInfoProto* vi, io::DType t, const std::vector<Dim>& dims) {
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx_elem_type(t));
  auto* shape = tt->mutable_shape();
  for (const Dim& d : dims) {
    auto* dim = shape->add_dim();
    if (std::holds_alternative<int64_t>(d))
      dim->set_dim_value(std::get<int64_t>(d));
    else
      dim->set_dim_param(std::get<std::string>(d));
  }
}
}  // namespace

ExternalData::ExternalData(const fs::path& path) : path_(path) {}
ExternalData::~ExternalData() = default;

ExternalData::Entry ExternalData::put(const std::string& name, const void* data, size_t n) {
  if (auto it = entries_.find(name); it != entries_.end()) {
    if (it->second.length != static_cast<int64_t>(n))
      throw Error("external data '" + name + "' written twice with different sizes");
    return it->second;
  }
  if (!file_) file_ = std::make_unique<io::AtomicFile>(path_);
  const int64_t align = n >= kLargeTensor ? kPageAlign : 64;
  static const char zeros[kPageAlign] = {};
  const int64_t pad = (align - offset_ % align) % align;
  file_->write(zeros, static_cast<size_t>(pad));
  offset_ += pad;
  file_->write(data, n);
  Entry e{path_.filename().string(), offset_, static_cast<int64_t>(n)};
  offset_ += static_cast<int64_t>(n);
  entries_[name] = e;
  return e;
}

const ExternalData::Entry* ExternalData::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

void ExternalData::alias(const std::string& name, Entry e) { entries_[name] = std::move(e); }

void ExternalData::commit() {
  if (file_) file_->commit();
  file_.reset();
}

GraphBuilder::GraphBuilder(fs::path onnx_path, std::string graph_name, std::map<std::string, int64_t> opsets,
                           std::shared_ptr<ExternalData> data)
    : path_(std::move(onnx_path)), model_(std::make_unique<onnx::ModelProto>()), data_(std::move(data)) {
  if (!data_) {
    data_ = std::make_shared<ExternalData>(path_.parent_path() / (path_.filename().string() + ".data"));
    own_data_ = true;
  }
  model_->set_ir_version(8);  // opset 17 needs IR >= 8; IR 8 loads in every runtime that knows opset 17
  model_->set_producer_name("kvrun");
  model_->set_producer_version("0.1.0");
  for (const auto& [domain, version] : opsets) {
    auto* op = model_->add_opset_import();
    op->set_domain(domain);
    op->set_version(version);
  }
  graph_ = model_->mutable_graph();
  graph_->set_name(std::move(graph_name));
}

GraphBuilder::~GraphBuilder() = default;

void GraphBuilder::input(const std::string& name, io::DType t, const std::vector<Dim>& dims) {
  set_dims(graph_->add_input(), t, dims);
  graph_->mutable_input()->rbegin()->set_name(name);
}

void GraphBuilder::output(const std::string& name, io::DType t, const std::vector<Dim>& dims) {
  set_dims(graph_->add_output(), t, dims);
  graph_->mutable_output()->rbegin()->set_name(name);
}

std::string GraphBuilder::tensor(const std::string& name, io::DType t, const std::vector<int64_t>& shape,
                                 const void* data) {
  auto* tp = graph_->add_initializer();
  tp->set_name(name);
  tp->set_data_type(onnx_elem_type(t));
  size_t n = io::dtype_size(t);
  for (auto d : shape) {
    tp->add_dims(d);
    n *= static_cast<size_t>(d);
  }
  if (n < kInlineLimit) {
    tp->set_raw_data(data, n);
    return name;
  }
  graph_->mutable_initializer()->RemoveLast();
  data_->put(name, data, n);
  return external(name, t, shape);
}

std::string GraphBuilder::external(const std::string& name, io::DType t, const std::vector<int64_t>& shape) {
  const ExternalData::Entry* e = data_->find(name);
  if (!e) throw Error("initializer '" + name + "' has no bytes in the external data file (a kvrun bug)");
  auto* tp = graph_->add_initializer();
  tp->set_name(name);
  tp->set_data_type(onnx_elem_type(t));
  for (auto d : shape) tp->add_dims(d);
  tp->set_data_location(onnx::TensorProto::EXTERNAL);
  auto add = [&](const char* k, const std::string& v) {
    auto* x = tp->add_external_data();
    x->set_key(k);
    x->set_value(v);
  };
  add("location", e->location);
  add("offset", std::to_string(e->offset));
  add("length", std::to_string(e->length));
  return name;
}

std::string GraphBuilder::weight(const std::string& name, io::DType t, const std::vector<int64_t>& shape,
                                 const float* data) {
  size_t n = 1;
  for (auto d : shape) n *= static_cast<size_t>(d);
  if (t == io::DType::F32) return tensor(name, t, shape, data);
  if (t != io::DType::F16) throw Error("weight '" + name + "': expected F32 or F16 storage");
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = io::f32_to_f16(data[i]);
  return tensor(name, t, shape, h.data());
}

std::string GraphBuilder::const_i64(const std::string& name, const std::vector<int64_t>& v, bool scalar) {
  std::vector<int64_t> shape;
  if (!scalar) shape.push_back(static_cast<int64_t>(v.size()));
  return tensor(name, io::DType::I64, shape, v.data());
}

std::string GraphBuilder::const_f32(const std::string& name, const std::vector<float>& v, bool scalar) {
  std::vector<int64_t> shape;
  if (!scalar) shape.push_back(static_cast<int64_t>(v.size()));
  return tensor(name, io::DType::F32, shape, v.data());
}

std::string GraphBuilder::const_scalar(const std::string& name, io::DType t, double value) {
  if (t == io::DType::F16) {
    const uint16_t h = io::f32_to_f16(static_cast<float>(value));
    return tensor(name, t, {}, &h);
  }
  if (t == io::DType::I64) {
    const int64_t v = static_cast<int64_t>(value);
    return tensor(name, t, {}, &v);
  }
  if (t == io::DType::U8) {
    const auto v = static_cast<uint8_t>(value);
    return tensor(name, t, {}, &v);
  }
  const float f = static_cast<float>(value);
  return tensor(name, io::DType::F32, {}, &f);
}

std::vector<std::string> GraphBuilder::node(const std::string& op, const std::string& name,
                                            const std::vector<std::string>& inputs,
                                            const std::vector<std::string>& outputs, const std::vector<Attr>& attrs,
                                            const std::string& domain) {
  auto* n = graph_->add_node();
  n->set_op_type(op);
  n->set_name(name);
  if (!domain.empty()) n->set_domain(domain);
  for (const auto& i : inputs) n->add_input(i);
  for (const auto& o : outputs) n->add_output(o);
  for (const Attr& a : attrs) {
    auto* ap = n->add_attribute();
    ap->set_name(a.name);
    std::visit(
        [&](const auto& v) {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, int64_t>) {
            ap->set_type(onnx::AttributeProto::INT);
            ap->set_i(v);
          } else if constexpr (std::is_same_v<V, float>) {
            ap->set_type(onnx::AttributeProto::FLOAT);
            ap->set_f(v);
          } else if constexpr (std::is_same_v<V, std::string>) {
            ap->set_type(onnx::AttributeProto::STRING);
            ap->set_s(v);
          } else if constexpr (std::is_same_v<V, std::vector<int64_t>>) {
            ap->set_type(onnx::AttributeProto::INTS);
            for (auto x : v) ap->add_ints(x);
          } else {
            ap->set_type(onnx::AttributeProto::FLOATS);
            for (auto x : v) ap->add_floats(x);
          }
        },
        a.value);
  }
  return outputs;
}

std::string GraphBuilder::op(const std::string& op_type, const std::string& name,
                             const std::vector<std::string>& inputs, const std::vector<Attr>& attrs,
                             const std::string& domain) {
  return node(op_type, name, inputs, {name + "/output_0"}, attrs, domain)[0];
}

void GraphBuilder::metadata(const std::string& key, const std::string& value) {
  auto* p = model_->add_metadata_props();
  p->set_key(key);
  p->set_value(value);
}

std::vector<std::string> GraphBuilder::input_names() const {
  std::vector<std::string> v;
  for (const auto& i : graph_->input()) v.push_back(i.name());
  return v;
}

std::vector<std::string> GraphBuilder::output_names() const {
  std::vector<std::string> v;
  for (const auto& o : graph_->output()) v.push_back(o.name());
  return v;
}

void GraphBuilder::finish() {
  std::string bytes;
  if (!model_->SerializeToString(&bytes)) throw Error(path_.string() + ": cannot serialize the ONNX model");
  io::AtomicFile f(path_);
  f.write(bytes.data(), bytes.size());
  f.commit();
  if (own_data_) {
    data_->commit();
    check_model_file(path_);
  }
}

void check_model_file(const fs::path& path) {
  try {
    onnx::checker::check_model(path.string());
  } catch (const std::exception& e) {
    throw Error(path.string() + ": ONNX checker rejected the graph kvrun wrote (a kvrun bug): " + e.what());
  }
}

}  // namespace kvrun::graph
