#include "graph/onnx_model.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <onnx/checker.h>
#include <onnx/defs/schema.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>

#include "graph/builder.h"
#include "io/fs.h"
#include "kvrun/error.h"

namespace kvrun::graph {
namespace fs = std::filesystem;

std::unique_ptr<OnnxModel> OnnxModel::load(const fs::path& path) {
  if (!fs::exists(path)) throw Error(path.string() + ": no such file");
  if (!fs::is_regular_file(path)) throw Error(path.string() + ": not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open");
  std::unique_ptr<OnnxModel> m(new OnnxModel());
  m->path_ = path;
  {
    google::protobuf::io::IstreamInputStream zis(&in);
    google::protobuf::io::CodedInputStream cis(&zis);
    cis.SetTotalBytesLimit(INT_MAX);
    if (!m->proto_.ParseFromCodedStream(&cis) || !cis.ConsumedEntireMessage())
      throw Error(path.string() + ": not a valid ONNX model (truncated or corrupt protobuf, " +
                  std::to_string(fs::file_size(path)) + " bytes)");
  }
  if (!m->proto_.has_graph()) throw Error(path.string() + ": the ONNX model has no graph");
  // Check every external reference now, so later reads cannot go out of bounds.
  std::string problem;
  m->for_each_graph([&](onnx::GraphProto& g) {
    for (const auto& t : g.initializer()) {
      if (t.data_location() != onnx::TensorProto::EXTERNAL) continue;
      std::string loc;
      int64_t off = 0, len = -1;
      for (const auto& kv : t.external_data()) {
        if (kv.key() == "location")
          loc = kv.value();
        else if (kv.key() == "offset")
          off = std::stoll(kv.value());
        else if (kv.key() == "length")
          len = std::stoll(kv.value());
      }
      const fs::path lp(loc);
      if (loc.empty() || lp.is_absolute() || loc.find("..") != std::string::npos) {
        problem = "tensor '" + t.name() + "' has external location '" + loc +
                  "'; expected a file name relative to the model's folder";
        return;
      }
      const auto& f = m->mapped(loc);
      const int64_t need = OnnxModel::numel(t) * static_cast<int64_t>(io::dtype_size(OnnxModel::dtype(t)));
      if (len < 0) len = need;
      if (off < 0 || len != need || static_cast<uint64_t>(off) + static_cast<uint64_t>(len) > f.size()) {
        problem = "tensor '" + t.name() + "' needs " + std::to_string(need) + " bytes at offset " +
                  std::to_string(off) + " of " + loc + " (length field " + std::to_string(len) +
                  "), but the file has " + std::to_string(f.size()) + " bytes";
        return;
      }
    }
  });
  if (!problem.empty()) throw Error(path.string() + ": " + problem);
  return m;
}

const io::MappedFile& OnnxModel::mapped(const std::string& location) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto& f = files_[location];
  if (!f) f = std::make_unique<io::MappedFile>(path_.parent_path() / location);
  return *f;
}

io::DType OnnxModel::dtype(const onnx::TensorProto& t) {
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT:
      return io::DType::F32;
    case onnx::TensorProto::FLOAT16:
      return io::DType::F16;
    case onnx::TensorProto::BFLOAT16:
      return io::DType::BF16;
    case onnx::TensorProto::DOUBLE:
      return io::DType::F64;
    case onnx::TensorProto::INT64:
      return io::DType::I64;
    case onnx::TensorProto::INT32:
      return io::DType::I32;
    case onnx::TensorProto::INT16:
      return io::DType::I16;
    case onnx::TensorProto::INT8:
      return io::DType::I8;
    case onnx::TensorProto::UINT8:
      return io::DType::U8;
    case onnx::TensorProto::BOOL:
      return io::DType::BOOL;
    default:
      throw Error("tensor '" + t.name() + "' has ONNX element type " + std::to_string(t.data_type()) +
                  ", which kvrun does not handle");
  }
}

int64_t OnnxModel::numel(const onnx::TensorProto& t) {
  int64_t n = 1;
  for (auto d : t.dims()) {
    if (d < 0 || (d > 0 && n > INT64_MAX / d)) throw Error("tensor '" + t.name() + "' has an invalid shape");
    n *= d;
  }
  return n;
}

std::span<const uint8_t> OnnxModel::bytes(const onnx::TensorProto& t) const {
  const size_t need = static_cast<size_t>(numel(t)) * io::dtype_size(dtype(t));
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    std::string loc;
    int64_t off = 0;
    for (const auto& kv : t.external_data()) {
      if (kv.key() == "location")
        loc = kv.value();
      else if (kv.key() == "offset")
        off = std::stoll(kv.value());
    }
    const auto& f = mapped(loc);
    if (static_cast<uint64_t>(off) + need > f.size())
      throw Error(path_.string() + ": tensor '" + t.name() + "' reaches past the end of " + loc);
    return {f.data() + off, need};
  }
  if (t.has_raw_data()) {
    if (t.raw_data().size() != need)
      throw Error(path_.string() + ": tensor '" + t.name() + "' has " + std::to_string(t.raw_data().size()) +
                  " bytes of raw_data, its shape needs " + std::to_string(need));
    return {reinterpret_cast<const uint8_t*>(t.raw_data().data()), need};
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = converted_.find(&t);
  if (it == converted_.end()) {
    std::vector<uint8_t> b(need);
    auto copy = [&](const auto& field, size_t elem) {
      if (static_cast<size_t>(field.size()) * elem != need)
        throw Error(path_.string() + ": tensor '" + t.name() + "' has " + std::to_string(field.size()) +
                    " values, its shape needs " + std::to_string(need / elem));
      for (int i = 0; i < field.size(); ++i) {
        const auto v = field.Get(i);
        std::memcpy(b.data() + static_cast<size_t>(i) * elem, &v, elem);
      }
    };
    switch (t.data_type()) {
      case onnx::TensorProto::FLOAT:
        copy(t.float_data(), 4);
        break;
      case onnx::TensorProto::DOUBLE:
        copy(t.double_data(), 8);
        break;
      case onnx::TensorProto::INT64:
        copy(t.int64_data(), 8);
        break;
      default: {
        // int32_data carries INT32, INT16, INT8, UINT8, BOOL, FLOAT16, BFLOAT16 (one value per entry).
        const size_t es = io::dtype_size(dtype(t));
        if (static_cast<size_t>(t.int32_data_size()) * es != need)
          throw Error(path_.string() + ": tensor '" + t.name() + "' has " + std::to_string(t.int32_data_size()) +
                      " values, its shape needs " + std::to_string(need / es));
        for (int i = 0; i < t.int32_data_size(); ++i) {
          const int32_t v = t.int32_data(i);
          std::memcpy(b.data() + static_cast<size_t>(i) * es, &v, es);  // little-endian low bytes
        }
      }
    }
    it = converted_.emplace(&t, std::move(b)).first;
  }
  return {it->second.data(), it->second.size()};
}

std::vector<float> OnnxModel::to_f32(const onnx::TensorProto& t) const {
  const auto b = bytes(t);
  std::vector<float> out(static_cast<size_t>(numel(t)));
  io::to_f32(dtype(t), b.data(), out.data(), out.size());
  return out;
}

void OnnxModel::for_each_graph(onnx::GraphProto& g, const std::function<void(onnx::GraphProto&)>& fn) {
  fn(g);
  for (auto& n : *g.mutable_node())
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) for_each_graph(*a.mutable_g(), fn);
      for (auto& sg : *a.mutable_graphs()) for_each_graph(sg, fn);
    }
}

void OnnxModel::save(const fs::path& out, const SaveOptions& opt) const {
  onnx::ModelProto copy = proto_;
  const std::string data_name = opt.data_file.empty() ? out.filename().string() + ".data" : opt.data_file;
  auto data = opt.shared_data ? opt.shared_data : std::make_shared<ExternalData>(out.parent_path() / data_name);
  // Pair the copy's initializers with the original's (same traversal order) for their bytes.
  std::vector<const onnx::TensorProto*> originals;
  const_cast<OnnxModel*>(this)->for_each_graph([&](onnx::GraphProto& g) {
    for (const auto& t : g.initializer()) originals.push_back(&t);
  });
  size_t k = 0;
  bool any_external = false;
  for_each_graph(*copy.mutable_graph(), [&](onnx::GraphProto& g) {
    for (auto& t : *g.mutable_initializer()) {
      const onnx::TensorProto* src = originals.at(k);
      const std::string key = opt.shared_data ? t.name() : std::to_string(k) + "/" + t.name();
      ++k;
      if (src->data_location() == onnx::TensorProto::EXTERNAL && !opt.keep_locations.empty()) {
        std::string loc;
        for (const auto& kv : src->external_data())
          if (kv.key() == "location") loc = kv.value();
        if (std::find(opt.keep_locations.begin(), opt.keep_locations.end(), loc) != opt.keep_locations.end())
          continue;  // the copy already carries the original reference
      }
      const auto b = bytes(*src);
      if (b.size() < opt.inline_limit) {
        std::string raw(reinterpret_cast<const char*>(b.data()), b.size());
        t.clear_external_data();
        t.set_data_location(onnx::TensorProto::DEFAULT);
        t.clear_float_data(), t.clear_int32_data(), t.clear_int64_data(), t.clear_double_data();
        t.set_raw_data(std::move(raw));
        continue;
      }
      const ExternalData::Entry e = data->put(key, b.data(), b.size());
      any_external = true;
      t.clear_raw_data(), t.clear_float_data(), t.clear_int32_data(), t.clear_int64_data(), t.clear_double_data();
      t.clear_external_data();
      t.set_data_location(onnx::TensorProto::EXTERNAL);
      auto add = [&](const char* kk, const std::string& v) {
        auto* p = t.add_external_data();
        p->set_key(kk);
        p->set_value(v);
      };
      add("location", e.location);
      add("offset", std::to_string(e.offset));
      add("length", std::to_string(e.length));
    }
  });
  {
    io::AtomicFile f(out);
    const std::string s = copy.SerializeAsString();
    f.write(s.data(), s.size());
    if (any_external && !opt.shared_data) data->commit();
    f.commit();
  }
  // The ONNX checker from Debian's libonnx knows IRs and opsets up to its release; newer
  // models are checked by ONNX Runtime when loaded instead.
  bool checkable = copy.ir_version() <= onnx::IR_VERSION;
  const auto& ranges = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map();
  for (const auto& op : copy.opset_import()) {
    auto it = ranges.find(op.domain() == "ai.onnx" ? "" : op.domain());
    if (it == ranges.end() || op.version() > it->second.second) checkable = false;
  }
  if (checkable && !opt.shared_data) check_model_file(out);
}

}  // namespace kvrun::graph
