#include "graph/inspect.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "graph/onnx_model.h"
#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "runtime/model_source.h"

namespace kvrun::graph {
namespace fs = std::filesystem;
using nlohmann::json;

std::string onnx_dtype_name(int t) {
  static const std::map<int, std::string> names = {{1, "float32"},     {2, "uint8"},           {3, "int8"},
                                                   {4, "uint16"},      {5, "int16"},           {6, "int32"},
                                                   {7, "int64"},       {8, "string"},          {9, "bool"},
                                                   {10, "float16"},    {11, "float64"},        {12, "uint32"},
                                                   {13, "uint64"},     {14, "complex64"},      {15, "complex128"},
                                                   {16, "bfloat16"},   {17, "float8e4m3fn"},   {18, "float8e4m3fnuz"},
                                                   {19, "float8e5m2"}, {20, "float8e5m2fnuz"}, {21, "uint4"},
                                                   {22, "int4"}};
  auto it = names.find(t);
  return it == names.end() ? "type" + std::to_string(t) : it->second;
}

int64_t onnx_dtype_bytes(int t, int64_t n) {
  switch (t) {
    case 2:
    case 3:
    case 9:
    case 17:
    case 18:
    case 19:
    case 20:
      return n;
    case 4:
    case 5:
    case 10:
    case 16:
      return 2 * n;
    case 1:
    case 6:
    case 12:
      return 4 * n;
    case 7:
    case 11:
    case 13:
    case 14:
      return 8 * n;
    case 15:
      return 16 * n;
    case 21:
    case 22:
      return (n + 1) / 2;
    default:
      return 0;
  }
}

namespace {

json value_info_json(const onnx::ValueInfoProto& v) {
  json j;
  j["name"] = v.name();
  const auto& t = v.type();
  if (t.has_tensor_type()) {
    j["dtype"] = onnx_dtype_name(t.tensor_type().elem_type());
    if (t.tensor_type().has_shape()) {
      json shape = json::array();
      for (const auto& d : t.tensor_type().shape().dim()) {
        if (d.has_dim_value())
          shape.push_back(d.dim_value());
        else if (d.has_dim_param() && !d.dim_param().empty())
          shape.push_back(d.dim_param());
        else
          shape.push_back(nullptr);
      }
      j["shape"] = shape;
    } else {
      j["shape"] = nullptr;  // rank unknown
    }
  } else {
    j["dtype"] = t.has_sequence_type()   ? "sequence"
                 : t.has_map_type()      ? "map"
                 : t.has_optional_type() ? "optional"
                                         : "unknown";
    j["shape"] = nullptr;
  }
  return j;
}

json graph_json(const fs::path& file) {
  auto m = OnnxModel::load(file);
  const auto& p = m->proto();
  json j;
  j["file"] = file.filename().string();
  j["ir_version"] = p.ir_version();
  j["producer"] = p.producer_name() + (p.producer_version().empty() ? "" : " " + p.producer_version());
  json opsets = json::array();
  for (const auto& o : p.opset_import()) opsets.push_back({{"domain", o.domain()}, {"version", o.version()}});
  j["opset_imports"] = opsets;
  j["inputs"] = json::array();
  j["outputs"] = json::array();
  // Graph inputs that are also initializers are overridable constants, not real inputs.
  std::set<std::string> inits;
  for (const auto& t : p.graph().initializer()) inits.insert(t.name());
  for (const auto& v : p.graph().input())
    if (!inits.count(v.name())) j["inputs"].push_back(value_info_json(v));
  for (const auto& v : p.graph().output()) j["outputs"].push_back(value_info_json(v));

  std::map<std::pair<std::string, std::string>, int64_t> ops;
  std::map<std::string, std::pair<int64_t, int64_t>> by_dtype;  // dtype -> (parameters, bytes)
  std::map<std::string, std::pair<int64_t, int64_t>> external;  // location -> (tensors, bytes)
  int64_t nodes = 0, subgraphs = 0, control_flow = 0, params = 0, bytes = 0, tensors = 0;
  m->for_each_graph([&](onnx::GraphProto& g) {
    for (const auto& n : g.node()) {
      ++nodes;
      ++ops[{n.domain() == "ai.onnx" ? "" : n.domain(), n.op_type()}];
      bool cf = false;
      for (const auto& a : n.attribute()) {
        if (a.has_g()) ++subgraphs, cf = true;
        subgraphs += a.graphs_size();
        if (a.graphs_size()) cf = true;
      }
      if (cf) ++control_flow;
    }
    for (const auto& t : g.initializer()) {
      const int64_t n = OnnxModel::numel(t);
      const int64_t b = onnx_dtype_bytes(t.data_type(), n);
      auto& e = by_dtype[onnx_dtype_name(t.data_type())];
      e.first += n, e.second += b;
      params += n, bytes += b, ++tensors;
      if (t.data_location() == onnx::TensorProto::EXTERNAL)
        for (const auto& kv : t.external_data())
          if (kv.key() == "location") {
            auto& x = external[kv.value()];
            ++x.first, x.second += b;
          }
    }
  });
  j["nodes"] = nodes;
  j["subgraphs"] = subgraphs;
  j["control_flow_nodes"] = control_flow;
  json ophist = json::array();
  std::vector<std::pair<std::pair<std::string, std::string>, int64_t>> sorted(ops.begin(), ops.end());
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  for (const auto& [k, c] : sorted) ophist.push_back({{"domain", k.first}, {"op", k.second}, {"count", c}});
  j["ops"] = ophist;
  json dt = json::object();
  for (const auto& [k, v] : by_dtype) dt[k] = {{"parameters", v.first}, {"bytes", v.second}};
  j["initializers"] = {{"count", tensors}, {"parameters", params}, {"bytes", bytes}, {"by_dtype", dt}};
  json ext = json::array();
  for (const auto& [loc, v] : external) {
    std::error_code ec;
    const auto size = fs::file_size(file.parent_path() / loc, ec);
    ext.push_back({{"file", loc},
                   {"tensors", v.first},
                   {"bytes_used", v.second},
                   {"file_bytes", ec ? json(nullptr) : json(static_cast<int64_t>(size))}});
  }
  j["external_data"] = ext;
  json meta = json::object();
  for (const auto& kv : p.metadata_props()) meta[kv.key()] = kv.value();
  j["metadata"] = meta;
  return j;
}

json decoder_json(const fs::path& path) {
  json j;
  try {
    auto model = Model::load(path, ModelOptions{1, {}});
    const auto& i = model->info();
    j["is_decoder"] = true;
    j["layout"] = i.layout;
    json graphs = json::array();
    for (const auto& g : i.graphs) graphs.push_back(fs::path(g).filename().string());
    j["graphs"] = graphs;
    j["convention"] = i.convention;
    j["num_layers"] = i.num_layers;
    j["num_kv_heads"] = i.num_kv_heads;
    j["head_dim"] = i.head_dim;
    j["kv_seq_axis"] = i.kv_seq_axis;
    j["kv_layout"] = i.kv_seq_axis == 1 ? "[batch, seq, kv_heads, head_dim]" : "[batch, kv_heads, seq, head_dim]";
    j["kv_dtype"] = i.kv_dtype;
    j["hidden_size"] = i.hidden_size;
    j["vocab_size"] = i.vocab_size;
    j["takes_embeddings"] = i.takes_embeddings;
    j["shared_kv_buffer"] = i.shared_kv_buffer;
    j["max_length"] = i.max_length;
  } catch (const std::exception& e) {
    j = {{"is_decoder", false}, {"error", e.what()}};
  }
  return j;
}

}  // namespace

json inspect(const fs::path& path, const InspectOptions& opt) {
  if (!fs::exists(path)) throw Error(path.string() + ": no such file or folder");
  json r;
  r["schema"] = "kvrun-inspect/1";
  r["path"] = path.string();
  std::vector<fs::path> files;
  std::map<std::string, std::string> roles;
  if (fs::is_directory(path)) {
    r["type"] = "folder";
    for (const auto& e : fs::directory_iterator(path))
      if (e.is_regular_file() && e.path().extension() == ".onnx") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    if (files.empty()) throw Error(path.string() + ": expected a folder with .onnx files, found none");
    try {
      const auto src = runtime::find_model(path);
      r["layout"] = src.layout;
      if (!src.step_graph.empty())
        roles[src.step_graph.filename().string()] = src.first_graph.empty() ? "decoder" : "decode";
      if (!src.first_graph.empty()) roles[src.first_graph.filename().string()] = "prefill";
      if (!src.embed_graph.empty()) roles[src.embed_graph.filename().string()] = "embedding";
    } catch (const std::exception& e) {
      r["layout"] = nullptr;
      r["layout_error"] = e.what();
    }
  } else {
    r["type"] = "file";
    r["layout"] = "onnx";
    files.push_back(path);
  }
  r["graphs"] = json::array();
  for (const auto& f : files) {
    json g = graph_json(f);
    auto it = roles.find(f.filename().string());
    g["role"] = it == roles.end() ? (r["type"] == "file" ? json(nullptr) : json("unused")) : json(it->second);
    r["graphs"].push_back(std::move(g));
  }
  if (opt.decoder) r["decoder"] = decoder_json(path);
  return r;
}

namespace {

std::string shape_str(const json& s) {
  if (s.is_null()) return "[?]";
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) o += ", ";
    o += s[i].is_null() ? "?" : s[i].is_string() ? s[i].get<std::string>() : std::to_string(s[i].get<int64_t>());
  }
  return o + "]";
}

std::string human_bytes(int64_t b) {
  char buf[64];
  if (b >= (1 << 20))
    std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(b) / 1e6);
  else if (b >= 1024)
    std::snprintf(buf, sizeof buf, "%.1f KB", static_cast<double>(b) / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(b));
  return buf;
}

}  // namespace

std::string inspect_to_text(const json& r) {
  std::ostringstream o;
  o << r["path"].get<std::string>() << " (" << r["type"].get<std::string>();
  if (r["type"] == "folder") o << ", layout " << (r["layout"].is_null() ? "unknown" : r["layout"].get<std::string>());
  o << ")\n";
  if (r.contains("layout_error")) o << "  layout: " << r["layout_error"].get<std::string>() << "\n";
  if (r.contains("decoder")) {
    const auto& d = r["decoder"];
    if (d["is_decoder"].get<bool>()) {
      o << "decoder: " << d["layout"].get<std::string>() << ", convention " << d["convention"].get<std::string>()
        << ", " << d["num_layers"] << " layers, " << d["num_kv_heads"] << " kv heads, head_dim " << d["head_dim"]
        << ", KV seq axis " << d["kv_seq_axis"] << " " << d["kv_layout"].get<std::string>() << ", kv "
        << d["kv_dtype"].get<std::string>() << (d["takes_embeddings"].get<bool>() ? ", takes inputs_embeds" : "")
        << (d["shared_kv_buffer"].get<bool>() ? ", shared KV buffer" : "") << "\n";
    } else {
      o << "not a decoder kvrun can run: " << d["error"].get<std::string>() << "\n";
    }
  }
  for (const auto& g : r["graphs"]) {
    o << "\n== " << g["file"].get<std::string>();
    if (!g["role"].is_null()) o << " (" << g["role"].get<std::string>() << ")";
    o << "\n  IR " << g["ir_version"] << ", opsets";
    for (const auto& op : g["opset_imports"])
      o << " " << (op["domain"].get<std::string>().empty() ? "ai.onnx" : op["domain"].get<std::string>()) << ":"
        << op["version"];
    if (!g["producer"].get<std::string>().empty()) o << ", producer " << g["producer"].get<std::string>();
    o << "\n  inputs:\n";
    for (const auto& v : g["inputs"])
      o << "    " << v["name"].get<std::string>() << "  " << v["dtype"].get<std::string>() << " "
        << shape_str(v["shape"]) << "\n";
    o << "  outputs:\n";
    for (const auto& v : g["outputs"])
      o << "    " << v["name"].get<std::string>() << "  " << v["dtype"].get<std::string>() << " "
        << shape_str(v["shape"]) << "\n";
    const auto& in = g["initializers"];
    o << "  parameters: " << in["parameters"] << " in " << in["count"] << " initializers, "
      << human_bytes(in["bytes"].get<int64_t>()) << "\n";
    for (const auto& [k, v] : in["by_dtype"].items())
      o << "    " << k << ": " << v["parameters"] << " (" << human_bytes(v["bytes"].get<int64_t>()) << ")\n";
    for (const auto& e : g["external_data"])
      o << "  external data: " << e["file"].get<std::string>() << ", " << e["tensors"] << " tensors, "
        << human_bytes(e["bytes_used"].get<int64_t>()) << " used"
        << (e["file_bytes"].is_null() ? std::string(", file missing")
                                      : ", file " + human_bytes(e["file_bytes"].get<int64_t>()))
        << "\n";
    o << "  nodes: " << g["nodes"] << " (" << g["control_flow_nodes"] << " control-flow nodes, " << g["subgraphs"]
      << " subgraphs)\n  ops:";
    for (const auto& op : g["ops"])
      o << " " << (op["domain"].get<std::string>().empty() ? "" : op["domain"].get<std::string>() + ".")
        << op["op"].get<std::string>() << " x" << op["count"];
    o << "\n";
    if (!g["metadata"].empty()) {
      o << "  metadata:\n";
      for (const auto& [k, v] : g["metadata"].items()) o << "    " << k << " = " << v.get<std::string>() << "\n";
    }
  }
  return o.str();
}

}  // namespace kvrun::graph
