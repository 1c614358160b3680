// kvrun quantize: a package's decoder graphs (sharing one data file) or a single .onnx.
#include "package/quantize_package.h"

#include <nlohmann/json.hpp>
#include <set>

#include "graph/builder.h"
#include "io/fs.h"
#include "kvrun/build.h"
#include "runtime/ort_session.h"

namespace kvrun {
namespace fs = std::filesystem;
using nlohmann::json;

namespace build {

namespace {

void merge(graph::QuantizeReport& into, const graph::QuantizeReport& r) {
  into.quantized += r.quantized;
  into.skipped.insert(into.skipped.end(), r.skipped.begin(), r.skipped.end());
  into.bytes_before += r.bytes_before;
  into.bytes_after += r.bytes_after;
  for (const auto& [k, v] : r.ops) into.ops[k] += v;
}

// The external data file the decoder graphs use (other than the embedding table).
std::string data_file_of(const graph::OnnxModel& m, const std::string& embedding_file) {
  std::string found;
  graph::OnnxModel::for_each_graph(const_cast<onnx::GraphProto&>(m.proto().graph()), [&](onnx::GraphProto& g) {
    for (const auto& t : g.initializer())
      if (t.data_location() == onnx::TensorProto::EXTERNAL)
        for (const auto& kv : t.external_data())
          if (kv.key() == "location" && kv.value() != embedding_file && found.empty()) found = kv.value();
  });
  return found;
}

}  // namespace

void require_some_quantized(const graph::QuantizeReport& r, const std::string& what) {
  if (r.quantized > 0) return;
  std::string why = r.skipped.empty() ? "it has no MatMul or Gemm node"
                                      : std::to_string(r.skipped.size()) + " skipped, e.g. " + r.skipped[0].node +
                                            ": " + r.skipped[0].reason;
  throw Error("quantize: " + what +
              ": expected at least one MatMul/Gemm with a constant weight to quantize, found none (" + why + ")");
}

graph::QuantizeReport quantize_package_graphs(const fs::path& src, const fs::path& dst, graph::QuantizeOptions gopt,
                                              uint64_t* file_bytes_before, uint64_t* file_bytes_after) {
  const json manifest = io::read_json_file(src / "kvrun.json");
  const std::string where = (src / "kvrun.json").string();
  const std::string precision = manifest.value("precision", "");
  if (precision != "fp32" && precision != "fp16")
    throw Error("quantize: " + where + " has precision '" + precision +
                "'; expected an fp32 or fp16 package (quantize the original build, not a quantized one)");
  const std::string target = manifest.value("target", "");
  gopt.standard_ops = target == "portable";
  gopt.validate();
  // decoder-only packages keep the embedding table in a file of its own, left as it is
  const std::string emb_file =
      manifest.contains("embedding") ? manifest.at("embedding").value("file", "embedding.safetensors") : "";

  std::vector<std::string> files;
  for (const auto& [role, g] : manifest.at("graphs").items())
    if (role != "embedding") files.push_back(g.at("file").get<std::string>());
  if (files.empty()) throw Error("quantize: " + where + " lists no decoder graph");

  std::vector<std::unique_ptr<graph::OnnxModel>> models;
  std::string data_name;
  uint64_t before = 0;
  for (const auto& f : files) {
    models.push_back(graph::OnnxModel::load(src / f));
    before += fs::file_size(src / f);
    if (data_name.empty()) data_name = data_file_of(*models.back(), emb_file);
  }
  if (data_name.empty()) data_name = files[0] + ".data";
  if (fs::exists(src / data_name)) before += fs::file_size(src / data_name);

  graph::QuantizeReport total;
  const int64_t n_models = static_cast<int64_t>(models.size());
  for (int64_t i = 0; i < n_models; ++i) {
    auto per = gopt;
    if (gopt.progress) per.progress = [&, i](int64_t d, int64_t t) { gopt.progress(i * t + d, n_models * t); };
    merge(total, graph::quantize(*models[static_cast<size_t>(i)], per));
  }
  require_some_quantized(total, src.string());
  auto data = std::make_shared<graph::ExternalData>(dst / data_name);
  graph::SaveOptions so;
  so.shared_data = data;
  so.keep_locations = {emb_file};
  for (size_t i = 0; i < files.size(); ++i) models[i]->save(dst / files[i], so);
  data->commit();
  uint64_t after = 0;
  for (const auto& f : files) after += fs::file_size(dst / f);
  if (fs::exists(dst / data_name)) after += fs::file_size(dst / data_name);
  if (file_bytes_before) *file_bytes_before = before;
  if (file_bytes_after) *file_bytes_after = after;
  return total;
}

json quantization_record(const graph::QuantizeOptions& gopt, const graph::QuantizeReport& r) {
  json j = gopt.to_json();
  j["quantized_nodes"] = r.quantized;
  j["skipped_nodes"] = r.skipped.size();
  return j;
}

std::string precision_of_mode(const std::string& mode) { return mode == "int4" ? "int4" : "int8"; }

}  // namespace build

std::string QuantizeResult::to_text() const {
  char line[512];
  std::snprintf(line, sizeof line,
                "quantized %s: %lld nodes, %zu skipped; initializers %.2f MB -> %.2f MB, graph files %.2f MB -> "
                "%.2f MB\n",
                out.string().c_str(), static_cast<long long>(quantized_nodes), skipped.size(),
                static_cast<double>(initializer_bytes_before) / 1e6, static_cast<double>(initializer_bytes_after) / 1e6,
                static_cast<double>(file_bytes_before) / 1e6, static_cast<double>(file_bytes_after) / 1e6);
  std::string s = line;
  for (const auto& [n, why] : skipped) s += "  skipped " + n + ": " + why + "\n";
  return s;
}

std::string QuantizeResult::to_json() const {
  json sk = json::array();
  for (const auto& [n, why] : skipped) sk.push_back({{"node", n}, {"reason", why}});
  return json{{"out", out.string()},
              {"quantized_nodes", quantized_nodes},
              {"skipped_nodes", sk},
              {"initializer_bytes_before", initializer_bytes_before},
              {"initializer_bytes_after", initializer_bytes_after},
              {"file_bytes_before", file_bytes_before},
              {"file_bytes_after", file_bytes_after},
              {"settings", json::parse(settings_json)}}
      .dump(2);
}

QuantizeResult quantize(const QuantizeOptions& opt) {
  graph::QuantizeOptions g;
  static_cast<QuantSettings&>(g) = opt;
  g.mode = opt.mode;
  g.standard_ops = opt.standard_ops;
  if (opt.progress) g.progress = [&](int64_t d, int64_t t) { opt.progress("quantize", d, t); };
  g.validate();
  if (opt.input.empty()) throw Error("quantize: an input package folder or .onnx file is required");
  if (opt.out.empty()) throw Error("quantize: an output path is required (-o)");
  if (!fs::exists(opt.input)) throw Error("quantize: " + opt.input.string() + ": no such file or folder");
  if (fs::exists(opt.out) && fs::equivalent(opt.out, opt.input))
    throw Error("quantize: the output must differ from the input " + opt.input.string());

  QuantizeResult res;
  res.out = opt.out;
  graph::QuantizeReport rep;
  json settings;
  if (fs::is_directory(opt.input)) {
    if (!fs::exists(opt.input / "kvrun.json"))
      throw Error("quantize: " + opt.input.string() +
                  " is a folder without kvrun.json; expected a kvrun package folder or an .onnx file");
    json manifest = io::read_json_file(opt.input / "kvrun.json");
    io::StagedDir staged(opt.out, opt.overwrite);
    const fs::path dir = staged.path();
    rep = build::quantize_package_graphs(opt.input, dir, g, &res.file_bytes_before, &res.file_bytes_after);
    g.standard_ops = manifest.value("target", "") == "portable";
    // every other file of the package, as it is
    for (const auto& e : fs::directory_iterator(opt.input)) {
      const fs::path to = dir / e.path().filename();
      if (e.path().filename() == "kvrun.json" || fs::exists(to)) continue;
      fs::copy(e.path(), to, fs::copy_options::recursive);
    }
    settings = build::quantization_record(g, rep);
    manifest["precision"] = build::precision_of_mode(opt.mode);
    manifest["quantization"] = settings;
    io::write_text_file_atomic(dir / "kvrun.json", manifest.dump(2) + "\n");
    if (opt.load_check)
      for (const auto& [role, gr] : manifest.at("graphs").items()) {
        runtime::SessionConfig sc;
        sc.optimize = false;
        runtime::Session s(dir / gr.at("file").get<std::string>(), sc);
      }
    staged.commit();
  } else {
    if (fs::exists(opt.out) && !opt.overwrite)
      throw Error("quantize: " + opt.out.string() + " exists (use --overwrite)");
    auto m = graph::OnnxModel::load(opt.input);
    res.file_bytes_before = fs::file_size(opt.input);
    std::set<std::string> locations;
    m->for_each_graph([&](onnx::GraphProto& gr) {
      for (const auto& t : gr.initializer())
        for (const auto& kv : t.external_data())
          if (kv.key() == "location") locations.insert(kv.value());
    });
    for (const auto& l : locations) res.file_bytes_before += fs::file_size(opt.input.parent_path() / l);
    rep = graph::quantize(*m, g);
    build::require_some_quantized(rep, opt.input.string());
    const fs::path data = opt.out.string() + ".data";
    try {
      m->save(opt.out);
      if (opt.load_check) {
        runtime::SessionConfig sc;
        sc.optimize = false;
        runtime::Session s(opt.out, sc);
      }
    } catch (...) {
      std::error_code ec;
      fs::remove(opt.out, ec);
      fs::remove(data, ec);
      throw;
    }
    res.file_bytes_after = fs::file_size(opt.out);
    if (fs::exists(data)) res.file_bytes_after += fs::file_size(data);
    settings = build::quantization_record(g, rep);
  }
  res.quantized_nodes = rep.quantized;
  for (const auto& s : rep.skipped) res.skipped.emplace_back(s.node, s.reason);
  res.initializer_bytes_before = rep.bytes_before;
  res.initializer_bytes_after = rep.bytes_after;
  res.settings_json = settings.dump();
  return res;
}

}  // namespace kvrun
