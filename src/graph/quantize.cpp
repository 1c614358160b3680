#include "graph/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "graph/nbits.h"
#include "io/dtype.h"
#include "kvrun/error.h"
#include "text/regex.h"

namespace kvrun::graph {
namespace {

const char* kMs = "com.microsoft";

bool power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

int64_t int_attr(const onnx::NodeProto& n, const std::string& name, int64_t dflt) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return a.i();
  return dflt;
}
float float_attr(const onnx::NodeProto& n, const std::string& name, float dflt) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return a.f();
  return dflt;
}

void set_attr(onnx::NodeProto& n, const std::string& name, int64_t v) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

onnx::TensorProto make_tensor(const std::string& name, int elem, const std::vector<int64_t>& dims, const void* data,
                              size_t n) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(elem);
  for (auto d : dims) t.add_dims(d);
  t.set_raw_data(std::string(static_cast<const char*>(data), n));
  return t;
}

// Float scales stored in the activation type (MatMulNBits wants scales typed like A).
onnx::TensorProto scale_tensor(const std::string& name, const std::vector<float>& s, bool f16,
                               const std::vector<int64_t>& dims) {
  if (!f16) return make_tensor(name, onnx::TensorProto::FLOAT, dims, s.data(), s.size() * 4);
  std::vector<uint16_t> h(s.size());
  for (size_t i = 0; i < s.size(); ++i) h[i] = io::f32_to_f16(s[i]);
  return make_tensor(name, onnx::TensorProto::FLOAT16, dims, h.data(), h.size() * 2);
}

// A weight seen as [N, K]: element (n, k) at w[n * sn + k * sk].
struct WeightView {
  const float* w;
  int64_t N, K, sn, sk;
  float at(int64_t n, int64_t k) const { return w[n * sn + k * sk]; }
};

// Per-channel int8 over the whole K: q [rows, cols] laid out as asked, scale/zp per n.
struct PerChannel {
  std::vector<int8_t> q;
  std::vector<float> scale;
  std::vector<int8_t> zp;
};

PerChannel quantize_per_channel(const WeightView& v, bool sym, bool out_kn, int qmax) {
  PerChannel r;
  r.q.resize(static_cast<size_t>(v.N * v.K));
  r.scale.resize(static_cast<size_t>(v.N));
  if (!sym) r.zp.resize(static_cast<size_t>(v.N));
  for (int64_t n = 0; n < v.N; ++n) {
    float mn = 0, mx = 0, amax = 0;
    for (int64_t k = 0; k < v.K; ++k) {
      const float x = v.at(n, k);
      mn = std::min(mn, x), mx = std::max(mx, x), amax = std::max(amax, std::fabs(x));
    }
    float scale;
    int zp = 0;
    if (sym) {
      scale = amax / static_cast<float>(qmax);
    } else {
      scale = (mx - mn) / 255.f;
      zp = scale > 0 ? std::clamp(static_cast<int>(std::lround(-128.f - mn / scale)), -128, 127) : 0;
      r.zp[static_cast<size_t>(n)] = static_cast<int8_t>(zp);
    }
    const float inv = scale > 0 ? 1.f / scale : 0.f;
    r.scale[static_cast<size_t>(n)] = scale;
    for (int64_t k = 0; k < v.K; ++k) {
      const int q =
          std::clamp(static_cast<int>(std::lround(v.at(n, k) * inv)) + zp, sym ? -qmax : -128, sym ? qmax : 127);
      r.q[static_cast<size_t>(out_kn ? k * v.N + n : n * v.K + k)] = static_cast<int8_t>(q);
    }
  }
  return r;
}

struct Scope {
  onnx::GraphProto* g;
  Scope* parent;
  std::map<std::string, onnx::TensorProto*> inits;
  std::set<std::string> inputs;  // graph inputs may override initializers of the same name
};

class Quantizer {
 public:
  Quantizer(OnnxModel& m, const QuantizeOptions& o) : m_(m), o_(o) {
    if (!o.exclude.empty()) {
      try {
        exclude_ = std::make_unique<text::Regex>(o.exclude);
      } catch (const Error& e) {
        throw Error("quantize: --exclude '" + o.exclude + "' is not a valid regular expression (" + e.what() + ")");
      }
    }
  }

  QuantizeReport run() {
    m_.for_each_graph([&](onnx::GraphProto& g) {
      for (const auto& t : g.initializer()) used_names_.insert(t.name());
      for (const auto& i : g.input()) used_names_.insert(i.name());
      for (const auto& n : g.node()) {
        used_names_.insert(n.name());
        for (const auto& o : n.output()) used_names_.insert(o);
      }
    });
    m_.for_each_graph([&](onnx::GraphProto& g) {
      for (const auto& t : g.initializer()) rep_.bytes_before += tensor_bytes(t);
      for (const auto& n : g.node())
        if (n.domain().empty() && (n.op_type() == "MatMul" || n.op_type() == "Gemm")) ++total_;
    });
    walk(*m_.proto().mutable_graph(), nullptr);
    remove_unused();
    add_opset();
    m_.for_each_graph([&](onnx::GraphProto& g) {
      for (const auto& t : g.initializer()) rep_.bytes_after += tensor_bytes(t);
    });
    if (o_.progress) o_.progress(total_, total_);
    return rep_;
  }

 private:
  static uint64_t tensor_bytes(const onnx::TensorProto& t) {
    try {
      return static_cast<uint64_t>(OnnxModel::numel(t)) * io::dtype_size(OnnxModel::dtype(t));
    } catch (const Error&) {
      return 0;
    }
  }

  void walk(onnx::GraphProto& g, Scope* parent) {
    Scope s{&g, parent, {}, {}};
    for (auto& t : *g.mutable_initializer()) s.inits[t.name()] = &t;
    for (const auto& i : g.input()) s.inputs.insert(i.name());
    google::protobuf::RepeatedPtrField<onnx::NodeProto> out;
    for (auto& n : *g.mutable_node()) {
      for (auto& a : *n.mutable_attribute()) {
        if (a.has_g()) walk(*a.mutable_g(), &s);
        for (auto& sg : *a.mutable_graphs()) walk(sg, &s);
      }
      std::vector<onnx::NodeProto> repl;
      if (n.domain().empty() && (n.op_type() == "MatMul" || n.op_type() == "Gemm")) {
        std::string why = rewrite(n, s, repl);
        if (!why.empty()) rep_.skipped.push_back({n.name().empty() ? n.output(0) : n.name(), why});
        if (o_.progress) o_.progress(++done_, total_);
      }
      if (repl.empty()) {
        *out.Add() = std::move(n);
      } else {
        ++rep_.quantized;
        for (auto& r : repl) {
          ++rep_.ops[r.op_type()];
          *out.Add() = std::move(r);
        }
      }
    }
    g.mutable_node()->Swap(&out);
  }

  bool matches(const std::string& s) const {
    std::vector<std::pair<size_t, size_t>> m;
    exclude_->find_all(s, m);
    return !m.empty();
  }

  // The initializer a name refers to in this scope, with the graph that owns it.
  std::pair<onnx::TensorProto*, Scope*> find_init(const std::string& name, Scope& s) {
    for (Scope* p = &s; p; p = p->parent) {
      if (p->inputs.count(name)) return {nullptr, nullptr};
      if (auto it = p->inits.find(name); it != p->inits.end()) return {it->second, p};
    }
    return {nullptr, nullptr};
  }

  std::string base_name(const onnx::NodeProto& n) {
    std::string s = n.name().empty() ? n.output(0) : n.name();
    for (const char* suffix : {"/MatMul", "/Gemm"})
      if (s.size() > std::strlen(suffix) && s.ends_with(suffix)) return s.substr(0, s.size() - std::strlen(suffix));
    return s;
  }

  std::string fresh(const std::string& base) {
    std::string s = base;
    for (int i = 1; used_names_.count(s); ++i) s = base + "_" + std::to_string(i);
    used_names_.insert(s);
    return s;
  }

  onnx::NodeProto node(const std::string& op, const std::string& name, const std::vector<std::string>& in,
                       const std::vector<std::string>& out, const std::string& domain = "") {
    onnx::NodeProto n;
    n.set_op_type(op);
    n.set_name(name);
    if (!domain.empty()) n.set_domain(domain);
    for (const auto& i : in) n.add_input(i);
    for (const auto& o : out) n.add_output(o);
    return n;
  }

  void add_init(Scope* owner, onnx::TensorProto t) {
    auto* p = owner->g->add_initializer();
    *p = std::move(t);
    owner->inits[p->name()] = p;
  }

  // Returns "" when `n` was rewritten into `repl`, else why it was skipped.
  std::string rewrite(const onnx::NodeProto& n, Scope& s, std::vector<onnx::NodeProto>& repl) {
    const bool gemm = n.op_type() == "Gemm";
    if (n.input_size() < 2 || n.output_size() < 1) return "malformed node";
    const std::string& wname = n.input(1);
    if (exclude_ && (matches(n.name()) || matches(wname))) return "excluded by --exclude";
    auto [w, owner] = find_init(wname, s);
    if (!w) return "weight '" + wname + "' is not a constant initializer";
    if (w->dims_size() != 2)
      return "weight '" + wname + "' has rank " + std::to_string(w->dims_size()) + ", expected 2";
    const int dt = w->data_type();
    if (dt != onnx::TensorProto::FLOAT && dt != onnx::TensorProto::FLOAT16)
      return "weight '" + wname + "' has element type " + std::to_string(dt) + ", expected float32 or float16";
    const bool f16 = dt == onnx::TensorProto::FLOAT16;
    bool transB = false;
    std::string C;
    if (gemm) {
      if (int_attr(n, "transA", 0) != 0) return "Gemm with transA=1";
      if (float_attr(n, "alpha", 1.f) != 1.f) return "Gemm with alpha != 1";
      transB = int_attr(n, "transB", 0) != 0;
      if (n.input_size() > 2 && !n.input(2).empty()) {
        if (float_attr(n, "beta", 1.f) != 1.f) return "Gemm with a C input and beta != 1";
        C = n.input(2);
      }
    }
    // [N, K] view of the weight: MatMul's B is [K, N]; Gemm transB=1 is [N, K].
    const int64_t d0 = w->dims(0), d1 = w->dims(1);
    const int64_t K = transB ? d1 : d0, N = transB ? d0 : d1;
    if (o_.mode == "int8-dynamic" && f16) return "int8-dynamic needs float32 activations, weight is float16";
    if (o_.standard_ops && f16) return "standard-op quantization needs float32 activations, weight is float16";

    const std::string base = base_name(n);
    const std::string A = n.input(0);
    const std::string Y = C.empty() ? n.output(0) : fresh(base + "/quant_output_0");
    const std::string key = wname + (transB ? "#t" : "#n");
    auto cached = cache_.find(key);
    if (cached == cache_.end()) {
      const std::vector<float> wf = m_.to_f32(*w);
      const WeightView v{wf.data(), N, K, transB ? K : 1, transB ? 1 : N};
      std::vector<std::string> names;
      if (o_.mode == "int8-dynamic" || (o_.mode == "int8" && o_.standard_ops)) {
        const bool dq = o_.mode == "int8";
        const bool sym = dq ? o_.symmetric : true;
        // DequantizeLinear keeps Gemm's [N, K] (axis 0); the integer matmuls want [K, N].
        const bool out_kn = !(dq && transB);
        // int8-dynamic: 7-bit weights (ORT's reduce_range). The u8 x s8 kernels of x86
        // without VNNI add pairs of products in saturating int16 (vpmaddubsw); 255 * 127 * 2
        // overflows, 255 * 63 * 2 does not (measured: KL 1.2 -> 0.026 on qwen3-tiny).
        PerChannel pc = quantize_per_channel(v, sym, out_kn, dq ? 127 : 63);
        const std::string qn = fresh(wname + "_quant_int8"), sn = fresh(wname + "_quant_scale");
        add_init(owner, make_tensor(qn, onnx::TensorProto::INT8,
                                    out_kn ? std::vector<int64_t>{K, N} : std::vector<int64_t>{N, K}, pc.q.data(),
                                    pc.q.size()));
        add_init(owner, scale_tensor(sn, pc.scale, false, {N}));
        names = {qn, sn};
        if (!sym) {
          const std::string zn = fresh(wname + "_quant_zero_point");
          add_init(owner, make_tensor(zn, onnx::TensorProto::INT8, {N}, pc.zp.data(), pc.zp.size()));
          names.push_back(zn);
        }
      } else {
        if (o_.standard_ops)
          throw Error(
              "quantize: int4 needs the com.microsoft MatMulNBits op, which portable (standard-op) graphs "
              "cannot use; quantize an --target ort package, or use int8 / int8-dynamic");
        const int bits = o_.mode == "int4" ? 4 : 8;
        const NBitsWeight b = nbits_quantize(v.w, N, K, v.sn, v.sk, bits, o_.block_size, o_.symmetric);
        const std::string tag = bits == 4 ? "_Q4" : "_Q8";
        const std::string qn = fresh(wname + tag), sn = fresh(wname + tag + "_scales");
        add_init(owner, make_tensor(qn, onnx::TensorProto::UINT8, {N, b.kb(), b.blob()}, b.B.data(), b.B.size()));
        add_init(owner, scale_tensor(sn, b.scales, f16, {N * b.kb()}));
        names = {qn, sn};
        if (!o_.symmetric) {
          const std::string zn = fresh(wname + tag + "_zero_points");
          add_init(owner, make_tensor(zn, onnx::TensorProto::UINT8, {static_cast<int64_t>(b.zp.size())}, b.zp.data(),
                                      b.zp.size()));
          names.push_back(zn);
        }
      }
      replaced_.insert(wname);
      cached = cache_.emplace(key, names).first;
    }
    const std::vector<std::string>& q = cached->second;

    if (o_.mode == "int8-dynamic" && !o_.standard_ops) {
      repl.push_back(node("DynamicQuantizeMatMul", fresh(base + "/DynamicQuantizeMatMul"), {A, q[0], q[1]}, {Y}, kMs));
    } else if (o_.mode == "int8-dynamic") {
      const std::string nm = fresh(base + "/DynamicQuantizeLinear");
      const std::string aq = nm + "/output_0", as = nm + "/output_1", az = nm + "/output_2";
      repl.push_back(node("DynamicQuantizeLinear", nm, {A}, {aq, as, az}));
      const std::string mi = fresh(base + "/MatMulInteger");
      repl.push_back(node("MatMulInteger", mi, {aq, q[0], az}, {mi + "/output_0"}));
      const std::string ca = fresh(base + "/Cast");
      repl.push_back(node("Cast", ca, {mi + "/output_0"}, {ca + "/output_0"}));
      set_attr(repl.back(), "to", onnx::TensorProto::FLOAT);
      const std::string sc = fresh(base + "/ScaleMul");
      repl.push_back(node("Mul", sc, {as, q[1]}, {sc + "/output_0"}));
      repl.push_back(node("Mul", fresh(base + "/OutputMul"), {ca + "/output_0", sc + "/output_0"}, {Y}));
    } else if (o_.standard_ops) {  // int8 weight-only, standard ops
      const std::string dq = fresh(base + "/DequantizeLinear");
      std::vector<std::string> in = {q[0], q[1]};
      if (q.size() > 2) in.push_back(q[2]);
      repl.push_back(node("DequantizeLinear", dq, in, {dq + "/output_0"}));
      set_attr(repl.back(), "axis", transB ? 0 : 1);
      if (gemm) {
        repl.push_back(node("Gemm", fresh(base + "/Gemm"), {A, dq + "/output_0"}, {Y}));
        if (transB) set_attr(repl.back(), "transB", 1);
      } else {
        repl.push_back(node("MatMul", fresh(base + "/MatMul"), {A, dq + "/output_0"}, {Y}));
      }
    } else {
      std::vector<std::string> in = {A};
      in.insert(in.end(), q.begin(), q.end());
      repl.push_back(node("MatMulNBits", fresh(base + "/MatMulNBits"), in, {Y}, kMs));
      auto& mn = repl.back();
      set_attr(mn, "K", K);
      set_attr(mn, "N", N);
      set_attr(mn, "bits", o_.mode == "int4" ? 4 : 8);
      set_attr(mn, "block_size", o_.block_size);
      if (o_.accuracy_level > 0) set_attr(mn, "accuracy_level", o_.accuracy_level);
    }
    if (!C.empty()) repl.push_back(node("Add", fresh(base + "/BiasAdd"), {Y, C}, {n.output(0)}));
    return "";
  }

  // Drops the original float weights once no node (in any graph) reads them.
  void remove_unused() {
    std::set<std::string> read;
    m_.for_each_graph([&](onnx::GraphProto& g) {
      for (const auto& n : g.node())
        for (const auto& i : n.input()) read.insert(i);
      for (const auto& o : g.output()) read.insert(o.name());
    });
    m_.for_each_graph([&](onnx::GraphProto& g) {
      auto* inits = g.mutable_initializer();
      for (int i = inits->size() - 1; i >= 0; --i) {
        const std::string& nm = inits->Get(i).name();
        if (replaced_.count(nm) && !read.count(nm)) inits->DeleteSubrange(i, 1);
      }
    });
  }

  void add_opset() {
    if (o_.standard_ops || rep_.quantized == 0) return;
    for (const auto& op : m_.proto().opset_import())
      if (op.domain() == kMs) return;
    auto* op = m_.proto().add_opset_import();
    op->set_domain(kMs);
    op->set_version(1);
  }

  OnnxModel& m_;
  const QuantizeOptions& o_;
  std::unique_ptr<text::Regex> exclude_;
  QuantizeReport rep_;
  int64_t total_ = 0, done_ = 0;
  std::map<std::string, std::vector<std::string>> cache_;
  std::set<std::string> replaced_, used_names_;
};

}  // namespace

void QuantizeOptions::validate() const {
  if (mode != "int8-dynamic" && mode != "int8" && mode != "int4")
    throw Error("quantize: --mode must be int8-dynamic, int8 or int4, found '" + mode + "'");
  if (mode != "int8-dynamic" && (!power_of_two(block_size) || block_size < 16))
    throw Error("quantize: --block-size must be a power of two >= 16, found " + std::to_string(block_size));
  if (accuracy_level < 0 || accuracy_level > 4)
    throw Error("quantize: --accuracy-level must be 0..4, found " + std::to_string(accuracy_level));
  if (mode == "int8-dynamic" && !symmetric)
    throw Error("quantize: int8-dynamic stores symmetric per-channel weights; --asymmetric applies to int8 and int4");
  if (mode == "int4" && standard_ops)
    throw Error(
        "quantize: int4 needs the com.microsoft MatMulNBits op, which portable (standard-op) graphs cannot "
        "use; quantize an --target ort package, or use int8 / int8-dynamic");
}

nlohmann::json QuantizeOptions::to_json() const {
  nlohmann::json j = {{"mode", mode}, {"exclude", exclude}, {"standard_ops", standard_ops}};
  if (mode == "int8-dynamic") {
    j["weights"] = "int8 per output channel, symmetric";
    j["activations"] = "uint8 per tensor, quantized at run time";
  } else {
    j["block_size"] = standard_ops ? nlohmann::json(nullptr) : nlohmann::json(block_size);
    j["symmetric"] = symmetric;
    if (!standard_ops) j["accuracy_level"] = accuracy_level;
    j["weights"] = standard_ops ? "int8 per output channel (DequantizeLinear)" : mode + " blockwise (MatMulNBits)";
  }
  return j;
}

nlohmann::json QuantizeReport::to_json() const {
  nlohmann::json sk = nlohmann::json::array();
  for (const auto& s : skipped) sk.push_back({{"node", s.node}, {"reason", s.reason}});
  return {{"quantized_nodes", quantized},
          {"skipped_nodes", sk},
          {"initializer_bytes_before", bytes_before},
          {"initializer_bytes_after", bytes_after},
          {"ops", ops}};
}

std::string QuantizeReport::to_text() const {
  char line[256];
  std::snprintf(line, sizeof line, "quantized %lld nodes, skipped %zu; initializers %.2f MB -> %.2f MB (%.1f%%)\n",
                static_cast<long long>(quantized), skipped.size(), static_cast<double>(bytes_before) / 1e6,
                static_cast<double>(bytes_after) / 1e6,
                bytes_before ? 100.0 * static_cast<double>(bytes_after) / static_cast<double>(bytes_before) : 100.0);
  std::string s = line;
  for (const auto& k : skipped) s += "  skipped " + k.node + ": " + k.reason + "\n";
  return s;
}

QuantizeReport quantize(OnnxModel& m, const QuantizeOptions& opt) {
  opt.validate();
  return Quantizer(m, opt).run();
}

}  // namespace kvrun::graph
