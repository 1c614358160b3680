#include "graph/fix.h"

#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <sstream>

#include "graph/inspect.h"
#include "graph/onnx_model.h"
#include "io/dtype.h"
#include "kvrun/error.h"
#include "runtime/ort_session.h"

namespace kvrun::graph {
namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& fix_pass_names() {
  static const std::vector<std::string> v = {
      "opset-imports", "reduce-axes", "split-num-outputs", "opset", "ir", "dead-code", "fp16", "fp32"};
  return v;
}
const std::vector<std::string>& fix_default_passes() {
  static const std::vector<std::string> v = {"opset-imports", "reduce-axes", "split-num-outputs",
                                             "opset",         "ir",          "dead-code"};
  return v;
}

namespace {

constexpr int64_t kMinOpset = 13, kMaxOpset = 21;

// IR version of the ONNX release that introduced an opset (13..21).
int64_t ir_for_opset(int64_t opset) {
  if (opset <= 14) return 7;
  if (opset <= 18) return 8;
  if (opset <= 20) return 9;
  return 10;
}

bool is_default_domain(const std::string& d) { return d.empty() || d == "ai.onnx"; }

// ---- scope: constants (initializers, Constant outputs) and known shapes, chained to outer graphs

struct Scope {
  const Scope* parent = nullptr;
  std::map<std::string, const onnx::TensorProto*> consts;
  std::map<std::string, std::vector<int64_t>> shapes;  // -1: unknown dim

  const onnx::TensorProto* find_const(const std::string& n) const {
    for (const Scope* s = this; s; s = s->parent) {
      auto it = s->consts.find(n);
      if (it != s->consts.end()) return it->second;
    }
    return nullptr;
  }
  const std::vector<int64_t>* find_shape(const std::string& n) const {
    for (const Scope* s = this; s; s = s->parent) {
      auto it = s->shapes.find(n);
      if (it != s->shapes.end()) return &it->second;
    }
    return nullptr;
  }
};

void add_shape(Scope& s, const onnx::ValueInfoProto& v) {
  if (!v.type().has_tensor_type() || !v.type().tensor_type().has_shape()) return;
  std::vector<int64_t> d;
  for (const auto& x : v.type().tensor_type().shape().dim()) d.push_back(x.has_dim_value() ? x.dim_value() : -1);
  s.shapes[v.name()] = d;
}

Scope make_scope(const onnx::GraphProto& g, const Scope* parent) {
  Scope s;
  s.parent = parent;
  for (const auto& t : g.initializer()) {
    s.consts[t.name()] = &t;
    s.shapes[t.name()] = {t.dims().begin(), t.dims().end()};
  }
  for (const auto& n : g.node())
    if (n.op_type() == "Constant" && is_default_domain(n.domain()) && n.output_size() == 1)
      for (const auto& a : n.attribute())
        if (a.name() == "value" && a.has_t()) s.consts[n.output(0)] = &a.t();
  for (const auto& v : g.input()) add_shape(s, v);
  for (const auto& v : g.output()) add_shape(s, v);
  for (const auto& v : g.value_info()) add_shape(s, v);
  return s;
}

// Post-order walk: subgraphs first (their scope chained to the enclosing one), then the graph.
// `where` names the graph for messages ("main graph", "If 'n'.then_branch").
using GraphFn = std::function<void(onnx::GraphProto&, const Scope&, const std::string& where)>;
void walk(onnx::GraphProto& g, const Scope* parent, const std::string& where, const GraphFn& fn) {
  const Scope s = make_scope(g, parent);
  for (auto& n : *g.mutable_node())
    for (auto& a : *n.mutable_attribute()) {
      const std::string sub = where + " > " + n.op_type() + " '" + n.name() + "'." + a.name();
      if (a.has_g()) walk(*a.mutable_g(), &s, sub, fn);
      for (auto& sg : *a.mutable_graphs()) walk(sg, &s, sub, fn);
    }
  fn(g, s, where);
}
void walk(onnx::ModelProto& m, const GraphFn& fn) { walk(*m.mutable_graph(), nullptr, "main graph", fn); }

std::string node_str(const onnx::NodeProto& n, const std::string& where) {
  return "node '" + n.name() + "' (" + n.op_type() + ", outputs " + (n.output_size() ? n.output(0) : "") + ") in " +
         where;
}

const onnx::AttributeProto* attr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}
void remove_attr(onnx::NodeProto& n, const std::string& name) {
  auto* as = n.mutable_attribute();
  for (int i = 0; i < as->size(); ++i)
    if (as->Get(i).name() == name) {
      as->DeleteSubrange(i, 1);
      return;
    }
}
int64_t attr_i(const onnx::NodeProto& n, const std::string& name, int64_t def) {
  const auto* a = attr(n, name);
  return a ? a->i() : def;
}
std::string attr_s(const onnx::NodeProto& n, const std::string& name, const std::string& def) {
  const auto* a = attr(n, name);
  return a ? a->s() : def;
}

// Fresh names unused anywhere in the model.
class Names {
 public:
  explicit Names(onnx::ModelProto& m) {
    walk(m, [&](onnx::GraphProto& g, const Scope&, const std::string&) {
      for (const auto& t : g.initializer()) used_.insert(t.name());
      for (const auto& v : g.input()) used_.insert(v.name());
      for (const auto& n : g.node()) {
        used_.insert(n.name());
        for (const auto& o : n.output()) used_.insert(o);
        for (const auto& i : n.input()) used_.insert(i);
      }
    });
  }
  std::string fresh(const std::string& base) {
    for (int k = 0;; ++k) {
      std::string s = base + "_kvfix" + (k ? std::to_string(k) : "");
      if (used_.insert(s).second) return s;
    }
  }

 private:
  std::set<std::string> used_;
};

std::vector<int64_t> int_values(const OnnxModel& m, const onnx::TensorProto& t) {
  const auto b = m.bytes(t);
  std::vector<int64_t> v(static_cast<size_t>(OnnxModel::numel(t)));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t.data_type() == onnx::TensorProto::INT64) {
      std::memcpy(&v[i], b.data() + 8 * i, 8);
    } else if (t.data_type() == onnx::TensorProto::INT32) {
      int32_t x;
      std::memcpy(&x, b.data() + 4 * i, 4);
      v[i] = x;
    } else {
      throw Error("tensor '" + t.name() + "': expected int64 or int32 values, found " + onnx_dtype_name(t.data_type()));
    }
  }
  return v;
}

onnx::TensorProto int64_tensor(const std::string& name, const std::vector<int64_t>& v, bool scalar = false) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx::TensorProto::INT64);
  if (!scalar) t.add_dims(static_cast<int64_t>(v.size()));
  t.set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * 8));
  return t;
}

void set_inputs(onnx::NodeProto& n, const std::vector<std::string>& ins) {
  n.clear_input();
  for (const auto& i : ins) n.add_input(i);
}

const std::set<std::string>& reduce_ops() {
  static const std::set<std::string> s = {"ReduceL1",  "ReduceL2",       "ReduceLogSum", "ReduceLogSumExp",
                                          "ReduceMax", "ReduceMean",     "ReduceMin",    "ReduceProd",
                                          "ReduceSum", "ReduceSumSquare"};
  return s;
}
int64_t reduce_axes_input_since(const std::string& op) { return op == "ReduceSum" ? 13 : 18; }

// ---- passes

void pass_opset_imports(onnx::ModelProto& m, PassReport& r) {
  std::map<std::string, int64_t> versions;
  for (const auto& o : m.opset_import()) {
    const std::string d = is_default_domain(o.domain()) ? "" : o.domain();
    if (o.domain() == "ai.onnx") ++r.changes, r.notes.push_back("\"ai.onnx\" merged into the default domain \"\"");
    auto [it, fresh] = versions.emplace(d, o.version());
    if (!fresh) {
      if (it->second != o.version())
        r.notes.push_back("domain \"" + d + "\" imported as " + std::to_string(it->second) + " and " +
                          std::to_string(o.version()) + "; kept " + std::to_string(std::max(it->second, o.version())));
      it->second = std::max(it->second, o.version());
      ++r.changes;
    }
  }
  std::set<std::string> used;
  walk(m, [&](onnx::GraphProto& g, const Scope&, const std::string&) {
    for (auto& n : *g.mutable_node()) {
      if (n.domain() == "ai.onnx") n.set_domain(""), ++r.changes;
      used.insert(n.domain());
    }
  });
  for (const auto& f : m.functions()) {
    used.insert(f.domain());
    for (const auto& n : f.node()) used.insert(is_default_domain(n.domain()) ? "" : n.domain());
  }
  used.insert("");  // a model always imports the default domain
  m.clear_opset_import();
  for (const auto& [d, v] : versions) {  // std::map: "" first, then sorted
    if (!used.count(d)) {
      r.notes.push_back("unused domain \"" + d + "\" dropped");
      ++r.changes;
      continue;
    }
    auto* o = m.add_opset_import();
    o->set_domain(d);
    o->set_version(v);
  }
  for (const auto& d : used)
    if (!versions.count(d) && !d.empty())
      throw Error("nodes use domain \"" + d + "\", but the model has no opset import for it");
}

void pass_reduce_axes(OnnxModel& model, int64_t target, PassReport& r) {
  Names names(model.proto());
  walk(model.proto(), [&](onnx::GraphProto& g, const Scope& s, const std::string& where) {
    for (auto& n : *g.mutable_node()) {
      if (!is_default_domain(n.domain()) || !reduce_ops().count(n.op_type())) continue;
      const int64_t since = reduce_axes_input_since(n.op_type());
      const bool has_input = n.input_size() >= 2 && !n.input(1).empty();
      const auto* noop = attr(n, "noop_with_empty_axes");
      if (target < since) {
        if (has_input) {
          const auto* t = s.find_const(n.input(1));
          if (!t)
            throw Error(node_str(n, where) + ": opset " + std::to_string(target) +
                        " needs the reduction axes as an attribute, so they must be constant; found them computed "
                        "at run time ('" +
                        n.input(1) + "' is neither an initializer nor a Constant)");
          const auto axes = int_values(model, *t);
          if (axes.empty() && noop && noop->i() == 1)
            throw Error(node_str(n, where) +
                        ": empty axes with noop_with_empty_axes=1 (identity) has no form in "
                        "opset " +
                        std::to_string(target));
          set_inputs(n, {n.input(0)});
          if (!axes.empty()) {
            auto* a = n.add_attribute();
            a->set_name("axes");
            a->set_type(onnx::AttributeProto::INTS);
            for (auto x : axes) a->add_ints(x);
          }
          ++r.changes;
        } else if (n.input_size() >= 2) {
          set_inputs(n, {n.input(0)});
        }
        if (noop) {
          if (noop->i() == 1 && !attr(n, "axes"))
            throw Error(node_str(n, where) + ": noop_with_empty_axes=1 without axes (identity) has no form in opset " +
                        std::to_string(target));
          remove_attr(n, "noop_with_empty_axes");
          ++r.changes;
        }
      } else if (const auto* a = attr(n, "axes")) {
        const std::vector<int64_t> axes(a->ints().begin(), a->ints().end());
        const std::string name = names.fresh(n.output(0) + "_axes");
        *g.add_initializer() = int64_tensor(name, axes);
        remove_attr(n, "axes");
        set_inputs(n, {n.input(0), name});
        ++r.changes;
      }
    }
  });
}

void pass_split(OnnxModel& model, int64_t target, PassReport& r) {
  if (target >= 18) return;
  Names names(model.proto());
  walk(model.proto(), [&](onnx::GraphProto& g, const Scope& s, const std::string& where) {
    if (std::none_of(g.node().begin(), g.node().end(), [](const auto& n) {
          return n.op_type() == "Split" && is_default_domain(n.domain()) && attr(n, "num_outputs");
        }))
      return;
    google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
    for (auto& n : *g.mutable_node()) {
      if (n.op_type() != "Split" || !is_default_domain(n.domain()) || !attr(n, "num_outputs")) {
        *nodes.Add() = std::move(n);
        continue;
      }
      const int64_t k = attr_i(n, "num_outputs", 0);
      if (k != n.output_size() || k < 1)
        throw Error(node_str(n, where) + ": num_outputs is " + std::to_string(k) + " but the node has " +
                    std::to_string(n.output_size()) + " outputs");
      int64_t axis = attr_i(n, "axis", 0);
      // Sizes: from the outputs' known shapes, else the input's axis length (ceil split, last one smaller).
      std::vector<int64_t> sizes;
      const auto* in_shape = s.find_shape(n.input(0));
      for (const auto& o : n.output()) {
        const auto* os = s.find_shape(o);
        if (!os || !in_shape || os->size() != in_shape->size()) break;
        const int64_t ax = axis < 0 ? axis + static_cast<int64_t>(os->size()) : axis;
        if (ax < 0 || ax >= static_cast<int64_t>(os->size()) || (*os)[ax] < 0) break;
        sizes.push_back((*os)[ax]);
      }
      if (static_cast<int64_t>(sizes.size()) != k) {
        sizes.clear();
        if (in_shape) {
          const int64_t ax = axis < 0 ? axis + static_cast<int64_t>(in_shape->size()) : axis;
          if (ax >= 0 && ax < static_cast<int64_t>(in_shape->size()) && (*in_shape)[ax] >= 0) {
            const int64_t len = (*in_shape)[ax], chunk = (len + k - 1) / k;
            for (int64_t i = 0; i < k; ++i) sizes.push_back(std::max<int64_t>(0, std::min(chunk, len - i * chunk)));
          }
        }
      }
      std::string split_name;
      if (!sizes.empty()) {
        split_name = names.fresh(n.output(0) + "_split");
        *g.add_initializer() = int64_tensor(split_name, sizes);
        std::string note = node_str(n, where) + ": sizes";
        for (auto x : sizes) {
          note += ' ';
          note += std::to_string(x);
        }
        r.notes.push_back(note);
      } else {
        // Axis length unknown before run time: sizes = [c]*(k-1) + [len - c*(k-1)], c = ceil(len / k).
        const std::string base = n.output(0);
        auto add_const = [&](const std::string& what, std::vector<int64_t> v) {
          const std::string nm = names.fresh(base + "_" + what);
          *g.add_initializer() = int64_tensor(nm, v);
          return nm;
        };
        auto add_node = [&](const std::string& op, std::vector<std::string> ins, const std::string& what) {
          auto* x = nodes.Add();
          x->set_op_type(op);
          x->set_name(names.fresh(base + "_" + what));
          for (auto& i : ins) x->add_input(i);
          x->add_output(names.fresh(base + "_" + what + "_out"));
          return x;
        };
        const std::string shape = add_node("Shape", {n.input(0)}, "shape")->output(0);
        const std::string len = add_node("Gather", {shape, add_const("axis", {axis})}, "len")->output(0);
        const std::string num = add_node("Add", {len, add_const("km1", {k - 1})}, "num")->output(0);
        const std::string c = add_node("Div", {num, add_const("k", {k})}, "chunk")->output(0);
        const std::string used = add_node("Mul", {c, add_const("km1b", {k - 1})}, "used")->output(0);
        const std::string last = add_node("Sub", {len, used}, "last")->output(0);
        std::vector<std::string> parts(static_cast<size_t>(k - 1), c);
        parts.push_back(last);
        auto* cat = add_node("Concat", parts, "sizes");
        auto* a = cat->add_attribute();
        a->set_name("axis");
        a->set_type(onnx::AttributeProto::INT);
        a->set_i(0);
        split_name = cat->output(0);
        r.notes.push_back(node_str(n, where) + ": axis length unknown, sizes computed in the graph");
      }
      remove_attr(n, "num_outputs");
      set_inputs(n, {n.input(0), split_name});
      ++r.changes;
      *nodes.Add() = std::move(n);
    }
    g.mutable_node()->Swap(&nodes);
  });
}

// Ops added after opset 13 (name -> first opset).
const std::map<std::string, int64_t>& op_since() {
  static const std::map<std::string, int64_t> m = {{"Trilu", 14},
                                                   {"HardSwish", 14},
                                                   {"CastLike", 15},
                                                   {"Bernoulli", 15},
                                                   {"OptionalHasElement", 15},
                                                   {"OptionalGetElement", 15},
                                                   {"Optional", 15},
                                                   {"GridSample", 16},
                                                   {"LayerNormalization", 17},
                                                   {"SequenceMap", 17},
                                                   {"DFT", 17},
                                                   {"STFT", 17},
                                                   {"BlackmanWindow", 17},
                                                   {"HannWindow", 17},
                                                   {"HammingWindow", 17},
                                                   {"MelWeightMatrix", 17},
                                                   {"Col2Im", 18},
                                                   {"BitwiseAnd", 18},
                                                   {"BitwiseOr", 18},
                                                   {"BitwiseXor", 18},
                                                   {"BitwiseNot", 18},
                                                   {"CenterCropPad", 18},
                                                   {"GroupNormalization", 18},
                                                   {"Mish", 18},
                                                   {"DeformConv", 19},
                                                   {"AffineGrid", 20},
                                                   {"Gelu", 20},
                                                   {"ImageDecoder", 20},
                                                   {"RegexFullMatch", 20},
                                                   {"StringConcat", 20},
                                                   {"StringSplit", 20}};
  return m;
}

void pass_opset(OnnxModel& model, int64_t source, int64_t target, PassReport& r) {
  auto& m = model.proto();
  if (source == target && (target < kMinOpset || target > kMaxOpset)) {
    r.notes.push_back("opset " + std::to_string(target) + " kept; ops not checked (kvrun's rules cover opsets " +
                      std::to_string(kMinOpset) + " to " + std::to_string(kMaxOpset) + ")");
    return;
  }
  if (target < kMinOpset || target > kMaxOpset)
    throw Error("--opset " + std::to_string(target) + ": kvrun converts between opsets " + std::to_string(kMinOpset) +
                " and " + std::to_string(kMaxOpset));
  if (source != target && (source < kMinOpset || source > kMaxOpset))
    throw Error("the model uses opset " + std::to_string(source) + "; kvrun converts between opsets " +
                std::to_string(kMinOpset) + " and " + std::to_string(kMaxOpset));
  const int64_t lo = std::min(source, target);
  const bool known = target <= onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map().at("").second;
  std::vector<std::string> problems;
  walk(m, [&](onnx::GraphProto& g, const Scope&, const std::string& where) {
    for (auto& n : *g.mutable_node()) {
      if (!is_default_domain(n.domain())) continue;
      const std::string& op = n.op_type();
      auto bad = [&](const std::string& why) { problems.push_back(node_str(n, where) + ": " + why); };
      const auto& since = op_since();
      if (auto it = since.find(op); it != since.end() && target < it->second) {
        bad(op + " exists from opset " + std::to_string(it->second) + " on");
        continue;
      }
      if (reduce_ops().count(op)) {
        const bool input = n.input_size() >= 2 && !n.input(1).empty();
        const int64_t s = reduce_axes_input_since(op);
        if (target < s && (input || attr(n, "noop_with_empty_axes")))
          bad("axes given as an input (opset >= " + std::to_string(s) + "); run the reduce-axes pass");
        if (target >= s && attr(n, "axes"))
          bad("axes given as an attribute (opset < " + std::to_string(s) + "); run the reduce-axes pass");
      } else if (op == "Split") {
        if (target < 18 && attr(n, "num_outputs")) bad("num_outputs (opset 18); run the split-num-outputs pass");
      } else if (op == "Reshape") {
        if (target < 14 && attr_i(n, "allowzero", 0) != 0) bad("allowzero=1 exists from opset 14 on");
      } else if (op == "Shape") {
        if (target < 15 && (attr(n, "start") || attr(n, "end"))) bad("start/end exist from opset 15 on");
      } else if (op == "BatchNormalization") {
        if (target < 14 && attr_i(n, "training_mode", 0) != 0) bad("training_mode=1 exists from opset 14 on");
      } else if (op == "GRU" || op == "LSTM" || op == "RNN") {
        if (target < 14 && attr_i(n, "layout", 0) != 0) bad("layout=1 exists from opset 14 on");
      } else if (op == "ScatterElements" || op == "ScatterND") {
        const std::string red = attr_s(n, "reduction", "none");
        if (target < 16 && red != "none") bad("reduction exists from opset 16 on");
        if (target < 18 && (red == "max" || red == "min")) bad("reduction=" + red + " exists from opset 18 on");
      } else if (op == "Pad") {
        if (target < 18 && n.input_size() >= 4 && !n.input(3).empty()) bad("the axes input exists from opset 18 on");
        if (target < 19 && attr_s(n, "mode", "constant") == "wrap") bad("mode=wrap exists from opset 19 on");
      } else if (op == "Resize") {
        if (target < 18 && (attr_i(n, "antialias", 0) != 0 || attr(n, "axes") ||
                            attr_s(n, "keep_aspect_ratio_policy", "stretch") != "stretch"))
          bad("antialias / axes / keep_aspect_ratio_policy exist from opset 18 on");
        if (target < 19 && attr_s(n, "coordinate_transformation_mode", "") == "half_pixel_symmetric")
          bad("coordinate_transformation_mode=half_pixel_symmetric exists from opset 19 on");
      } else if (op == "Cast" || op == "CastLike") {
        const int64_t to = attr_i(n, "to", 0);
        if (target < 19 && to >= 17 && to <= 20) bad("float8 types exist from opset 19 on");
        if (target < 21 && (to == 21 || to == 22)) bad("int4/uint4 exist from opset 21 on");
        if (target < 19 && attr(n, "saturate")) {
          remove_attr(n, "saturate");  // only meaningful for float8 targets
          ++r.changes;
        }
      } else if (op == "GroupNormalization") {
        if (lo < 21 && std::max(source, target) >= 21)
          bad("scale/bias changed from per-group (opset 18) to per-channel (opset 21); not converted");
      }
      if (known && !onnx::OpSchemaRegistry::Schema(op, static_cast<int>(target), ""))
        bad("no operator " + op + " in opset " + std::to_string(target));
    }
  });
  if (!problems.empty()) {
    std::string msg = "cannot convert from opset " + std::to_string(source) + " to " + std::to_string(target) + ": " +
                      std::to_string(problems.size()) + " node(s) not convertible:";
    for (const auto& p : problems) msg += "\n  " + p;
    throw Error(msg);
  }
  for (auto& o : *m.mutable_opset_import())
    if (is_default_domain(o.domain()) && o.version() != target) o.set_version(target), ++r.changes;
  if (source != target) r.notes.push_back("opset " + std::to_string(source) + " -> " + std::to_string(target));
}

void collect_types(const onnx::TypeProto& t, std::set<int>& types) {
  if (t.has_tensor_type()) types.insert(t.tensor_type().elem_type());
}

void pass_ir(onnx::ModelProto& m, int64_t target_ir, PassReport& r) {
  std::set<int> types;
  walk(m, [&](onnx::GraphProto& g, const Scope&, const std::string&) {
    for (const auto& t : g.initializer()) types.insert(t.data_type());
    for (const auto& v : g.input()) collect_types(v.type(), types);
    for (const auto& v : g.output()) collect_types(v.type(), types);
    for (const auto& v : g.value_info()) collect_types(v.type(), types);
    for (const auto& n : g.node())
      if (n.op_type() == "Cast") types.insert(static_cast<int>(attr_i(n, "to", 0)));
  });
  for (int t : types) {
    const int64_t t_ir = (t >= 17 && t <= 20) ? 9 : (t == 21 || t == 22) ? 10 : 3;
    if (t_ir > target_ir)
      throw Error("IR version " + std::to_string(target_ir) + ": the model uses " + onnx_dtype_name(t) +
                  ", which needs IR " + std::to_string(t_ir));
  }
  if (m.ir_version() != target_ir) {
    r.notes.push_back("IR " + std::to_string(m.ir_version()) + " -> " + std::to_string(target_ir));
    m.set_ir_version(target_ir);
    ++r.changes;
  }
}

// Names a graph reads from outside itself (recursively through nested bodies).
void outer_reads(const onnx::GraphProto& g, std::set<std::string>& out) {
  std::set<std::string> local;
  for (const auto& v : g.input()) local.insert(v.name());
  for (const auto& t : g.initializer()) local.insert(t.name());
  for (const auto& n : g.node())
    for (const auto& o : n.output()) local.insert(o);
  std::set<std::string> reads;
  for (const auto& n : g.node()) {
    for (const auto& i : n.input()) reads.insert(i);
    for (const auto& a : n.attribute()) {
      if (a.has_g()) outer_reads(a.g(), reads);
      for (const auto& sg : a.graphs()) outer_reads(sg, reads);
    }
  }
  for (const auto& o : g.output()) reads.insert(o.name());
  for (const auto& x : reads)
    if (!local.count(x)) out.insert(x);
}

void pass_dead_code(onnx::ModelProto& m, PassReport& r) {
  int64_t nodes_removed = 0, inits_removed = 0;
  walk(m, [&](onnx::GraphProto& g, const Scope&, const std::string&) {
    std::set<std::string> live;
    for (const auto& o : g.output()) live.insert(o.name());
    std::vector<bool> keep(static_cast<size_t>(g.node_size()), false);
    for (int i = g.node_size() - 1; i >= 0; --i) {
      const auto& n = g.node(i);
      bool used = false;
      for (const auto& o : n.output()) used = used || (!o.empty() && live.count(o));
      if (!used) continue;
      keep[static_cast<size_t>(i)] = true;
      for (const auto& in : n.input()) live.insert(in);
      for (const auto& a : n.attribute()) {
        if (a.has_g()) outer_reads(a.g(), live);
        for (const auto& sg : a.graphs()) outer_reads(sg, live);
      }
    }
    google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
    for (int i = 0; i < g.node_size(); ++i)
      if (keep[static_cast<size_t>(i)])
        *nodes.Add() = std::move(*g.mutable_node(i));
      else
        ++nodes_removed;
    g.mutable_node()->Swap(&nodes);
    std::set<std::string> inputs;
    for (const auto& v : g.input()) inputs.insert(v.name());
    google::protobuf::RepeatedPtrField<onnx::TensorProto> inits;
    for (auto& t : *g.mutable_initializer())
      if (live.count(t.name()) || inputs.count(t.name()))
        *inits.Add() = std::move(t);
      else
        ++inits_removed;
    g.mutable_initializer()->Swap(&inits);
    google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> vis;
    for (auto& v : *g.mutable_value_info())
      if (live.count(v.name())) *vis.Add() = std::move(v);
    g.mutable_value_info()->Swap(&vis);
  });
  r.changes = nodes_removed + inits_removed;
  if (r.changes)
    r.notes.push_back(std::to_string(nodes_removed) + " nodes and " + std::to_string(inits_removed) +
                      " initializers removed");
}

void set_elem(onnx::ValueInfoProto& v, int from, int to, int64_t& changes) {
  auto* t = v.mutable_type();
  if (t->has_tensor_type() && t->tensor_type().elem_type() == from)
    t->mutable_tensor_type()->set_elem_type(to), ++changes;
}

// Renames what nodes read (nested bodies included: they see outer names).
void rename_node_reads(onnx::GraphProto& g, const std::string& from, const std::string& to, bool nested = false) {
  for (auto& n : *g.mutable_node()) {
    for (auto& i : *n.mutable_input())
      if (i == from) i = to;
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) rename_node_reads(*a.mutable_g(), from, to, true);
      for (auto& sg : *a.mutable_graphs()) rename_node_reads(sg, from, to, true);
    }
  }
  if (nested)  // a body's outputs may name outer values
    for (auto& o : *g.mutable_output())
      if (o.name() == from) o.set_name(to);
}

onnx::NodeProto cast_node(const std::string& name, const std::string& in, const std::string& out, int to) {
  onnx::NodeProto c;
  c.set_op_type("Cast");
  c.set_name(name);
  c.add_input(in);
  c.add_output(out);
  auto* a = c.add_attribute();
  a->set_name("to");
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(to);
  return c;
}

// fp32 -> fp16 storage and I/O: float initializers stored as float16 and cast back to float32
// where they are read; float32 graph inputs/outputs become float16 with a Cast at the edge.
// The computation stays float32, so every op keeps its CPU kernel.
void pass_fp16(OnnxModel& model, PassReport& r) {
  auto& m = model.proto();
  Names names(m);
  constexpr int F32 = onnx::TensorProto::FLOAT, F16 = onnx::TensorProto::FLOAT16;
  int64_t converted = 0, kept = 0;
  walk(m, [&](onnx::GraphProto& g, const Scope&, const std::string&) {
    std::set<std::string> graph_inputs;
    for (const auto& v : g.input()) graph_inputs.insert(v.name());
    std::vector<onnx::NodeProto> casts;
    for (auto& t : *g.mutable_initializer()) {
      if (t.data_type() != F32 || graph_inputs.count(t.name())) continue;
      const auto v = model.to_f32(t);
      bool ok = v.size() >= 16;
      std::vector<uint16_t> h(v.size());
      for (size_t i = 0; i < v.size() && ok; ++i) {
        h[i] = io::f32_to_f16(v[i]);
        const float back = io::f16_to_f32(h[i]);
        if (std::isfinite(v[i]) && (!std::isfinite(back) || (v[i] != 0.f && back == 0.f))) ok = false;
      }
      if (!ok) {
        ++kept;
        continue;
      }
      const std::string orig = t.name(), stored = names.fresh(orig + "_fp16");
      t.clear_float_data();
      t.clear_external_data();
      t.set_data_location(onnx::TensorProto::DEFAULT);
      t.set_data_type(F16);
      t.set_raw_data(std::string(reinterpret_cast<const char*>(h.data()), h.size() * 2));
      t.set_name(stored);
      casts.push_back(cast_node(names.fresh(orig + "_cast"), stored, orig, F32));
      ++converted;
    }
    if (!casts.empty()) {
      google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
      for (auto& c : casts) *nodes.Add() = std::move(c);
      for (auto& n : *g.mutable_node()) *nodes.Add() = std::move(n);
      g.mutable_node()->Swap(&nodes);
    }
  });
  // Main graph I/O.
  auto& g = *m.mutable_graph();
  std::set<std::string> inits;
  for (const auto& t : g.initializer()) inits.insert(t.name());
  std::vector<onnx::NodeProto> front, back;
  int64_t io = 0;
  for (auto& v : *g.mutable_input()) {
    if (inits.count(v.name()) || !v.type().has_tensor_type() || v.type().tensor_type().elem_type() != F32) continue;
    const std::string inner = names.fresh(v.name() + "_fp32");
    rename_node_reads(g, v.name(), inner);
    front.push_back(cast_node(names.fresh(v.name() + "_cast"), v.name(), inner, F32));
    v.mutable_type()->mutable_tensor_type()->set_elem_type(F16);
    ++io;
  }
  for (int i = 0; i < g.output_size(); ++i) {
    auto& v = *g.mutable_output(i);
    if (!v.type().has_tensor_type() || v.type().tensor_type().elem_type() != F32) continue;
    if (inits.count(v.name()) ||
        std::any_of(g.input().begin(), g.input().end(), [&](const auto& x) { return x.name() == v.name(); }))
      continue;  // a graph input or constant passed through: left as it is
    const std::string name = v.name(), inner = names.fresh(name + "_fp32");
    // The producer now writes `inner`, readers read it; a Cast writes the float16 output.
    for (auto& n : *g.mutable_node())
      for (auto& o : *n.mutable_output())
        if (o == name) o = inner;
    rename_node_reads(g, name, inner);
    back.push_back(cast_node(names.fresh(name + "_cast"), inner, name, F16));
    v.mutable_type()->mutable_tensor_type()->set_elem_type(F16);
    ++io;
  }
  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  for (auto& c : front) *nodes.Add() = std::move(c);
  for (auto& n : *g.mutable_node()) *nodes.Add() = std::move(n);
  for (auto& c : back) *nodes.Add() = std::move(c);
  g.mutable_node()->Swap(&nodes);
  r.changes = converted + io;
  r.notes.push_back(std::to_string(converted) + " float32 initializers stored as float16 (" + std::to_string(kept) +
                    " kept: fewer than 16 values or out of float16 range), " + std::to_string(io) +
                    " graph inputs/outputs made float16; compute stays float32");
}

// fp16 -> fp32: float16 initializers, Constants, Cast targets, graph I/O and value_info become float32.
void pass_fp32(OnnxModel& model, PassReport& r) {
  constexpr int F32 = onnx::TensorProto::FLOAT, F16 = onnx::TensorProto::FLOAT16;
  auto widen = [&](onnx::TensorProto& t) {
    const auto v = model.to_f32(t);
    t.clear_int32_data();
    t.clear_external_data();
    t.set_data_location(onnx::TensorProto::DEFAULT);
    t.set_data_type(F32);
    t.set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
    ++r.changes;
  };
  walk(model.proto(), [&](onnx::GraphProto& g, const Scope&, const std::string&) {
    for (auto& t : *g.mutable_initializer())
      if (t.data_type() == F16) widen(t);
    for (auto& n : *g.mutable_node())
      for (auto& a : *n.mutable_attribute()) {
        if (a.has_t() && a.t().data_type() == F16) widen(*a.mutable_t());
        if (n.op_type() == "Cast" && a.name() == "to" && a.i() == F16) a.set_i(F32), ++r.changes;
      }
    for (auto& v : *g.mutable_input()) set_elem(v, F16, F32, r.changes);
    for (auto& v : *g.mutable_output()) set_elem(v, F16, F32, r.changes);
    for (auto& v : *g.mutable_value_info()) set_elem(v, F16, F32, r.changes);
  });
}

int64_t default_opset(const onnx::ModelProto& m) {
  int64_t v = 0;
  for (const auto& o : m.opset_import())
    if (is_default_domain(o.domain())) v = std::max<int64_t>(v, o.version());
  return v;
}

}  // namespace

std::vector<PassReport> apply_fixes(OnnxModel& model, const FixOptions& opt) {
  std::vector<std::string> chosen = opt.passes.empty() ? fix_default_passes() : opt.passes;
  for (const auto& p : chosen)
    if (std::find(fix_pass_names().begin(), fix_pass_names().end(), p) == fix_pass_names().end()) {
      std::string all;
      for (const auto& n : fix_pass_names()) all += (all.empty() ? "" : ", ") + n;
      throw Error("--passes: unknown pass '" + p + "'; expected some of: " + all);
    }
  auto on = [&](const std::string& p) { return std::find(chosen.begin(), chosen.end(), p) != chosen.end(); };
  if (on("fp16") && on("fp32")) throw Error("--passes: fp16 and fp32 go opposite ways; choose one");
  auto& m = model.proto();
  const int64_t source = default_opset(m);
  const int64_t target = opt.opset ? opt.opset : source;
  if (opt.opset && (opt.opset < kMinOpset || opt.opset > kMaxOpset))
    throw Error("--opset " + std::to_string(opt.opset) + ": kvrun converts between opsets " +
                std::to_string(kMinOpset) + " and " + std::to_string(kMaxOpset));
  std::vector<PassReport> out;
  for (const auto& p : fix_pass_names()) {
    if (!on(p)) continue;
    PassReport r;
    r.name = p;
    if (p == "opset-imports") pass_opset_imports(m, r);
    if (p == "reduce-axes") pass_reduce_axes(model, target, r);
    if (p == "split-num-outputs") pass_split(model, target, r);
    if (p == "opset") {
      if (source == 0 && target == 0) continue;
      pass_opset(model, source, target, r);
    }
    if (p == "ir") {
      const int64_t need = ir_for_opset(target), cur = m.ir_version();
      int64_t ir = 0;
      if (opt.ir)
        ir = std::max(std::min(cur, opt.ir), std::min(need, std::max(cur, opt.ir)));
      else if (target > source)
        ir = std::max(cur, need);
      else if (target < source)
        ir = std::min(cur, need);
      else
        continue;  // nothing asks for an IR change
      if (opt.ir && opt.ir < need)
        throw Error("--ir " + std::to_string(opt.ir) + ": opset " + std::to_string(target) + " needs IR version " +
                    std::to_string(need) + " or newer");
      pass_ir(m, ir, r);
    }
    if (p == "dead-code") pass_dead_code(m, r);
    if (p == "fp16") pass_fp16(model, r);
    if (p == "fp32") pass_fp32(model, r);
    out.push_back(std::move(r));
  }
  return out;
}

namespace {

// ---- --check: both models on the same random inputs

int64_t dim_size(const std::string& name, const std::map<std::string, int64_t>& dims,
                 std::map<std::string, int64_t>& used) {
  if (auto it = dims.find(name); it != dims.end()) return used[name] = it->second;
  if (name.find('+') != std::string::npos) {
    int64_t sum = 0;
    std::stringstream ss(name);
    std::string part;
    while (std::getline(ss, part, '+')) {
      part.erase(0, part.find_first_not_of(' '));
      part.erase(part.find_last_not_of(' ') + 1);
      sum += dim_size(part, dims, used);
    }
    return used[name] = sum;
  }
  std::string low = name;
  std::transform(low.begin(), low.end(), low.begin(), [](unsigned char c) { return std::tolower(c); });
  int64_t v = 3;
  if (low.find("batch") != std::string::npos) v = 1;
  if (low.find("past") != std::string::npos) v = 0;
  return used[name] = v;
}

runtime::HostTensor random_tensor(const runtime::IoInfo& io, const std::vector<double>& values,
                                  const std::vector<int64_t>& shape) {
  runtime::HostTensor t = runtime::HostTensor::zeros(io.dtype, shape);
  const size_t n = static_cast<size_t>(t.numel());
  for (size_t i = 0; i < n; ++i) {
    const double v = values[i];
    auto put = [&](auto x) { std::memcpy(t.bytes.data() + i * sizeof(x), &x, sizeof(x)); };
    switch (io.dtype) {
      case io::DType::F32:
        put(static_cast<float>(v));
        break;
      case io::DType::F16:
        put(io::f32_to_f16(static_cast<float>(v)));
        break;
      case io::DType::BF16:
        put(io::f32_to_bf16(static_cast<float>(v)));
        break;
      case io::DType::F64:
        put(v);
        break;
      case io::DType::I64:
        put(static_cast<int64_t>(v));
        break;
      case io::DType::I32:
        put(static_cast<int32_t>(v));
        break;
      case io::DType::I16:
        put(static_cast<int16_t>(v));
        break;
      case io::DType::I8:
        put(static_cast<int8_t>(v));
        break;
      case io::DType::U8:
        put(static_cast<uint8_t>(v));
        break;
      case io::DType::BOOL:
        put(static_cast<uint8_t>(0));
        break;
    }
  }
  return t;
}

std::vector<double> as_double(const runtime::HostTensor& t) {
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) {
    auto get = [&](auto x) {
      std::memcpy(&x, t.bytes.data() + i * sizeof(x), sizeof(x));
      return x;
    };
    switch (t.dtype) {
      case io::DType::F32:
        v[i] = get(float{});
        break;
      case io::DType::F16:
        v[i] = io::f16_to_f32(get(uint16_t{}));
        break;
      case io::DType::BF16:
        v[i] = io::bf16_to_f32(get(uint16_t{}));
        break;
      case io::DType::F64:
        v[i] = get(double{});
        break;
      case io::DType::I64:
        v[i] = static_cast<double>(get(int64_t{}));
        break;
      case io::DType::I32:
        v[i] = get(int32_t{});
        break;
      case io::DType::I16:
        v[i] = get(int16_t{});
        break;
      case io::DType::I8:
        v[i] = get(int8_t{});
        break;
      case io::DType::U8:
      case io::DType::BOOL:
        v[i] = get(uint8_t{});
        break;
    }
  }
  return v;
}

void run_check(const fs::path& old_path, const fs::path& new_path, const FixOptions& opt, FixReport& rep) {
  runtime::Session a(old_path), b(new_path);
  std::mt19937 rng(0);
  std::vector<std::string> names;
  std::vector<runtime::HostTensor> ta, tb;
  for (const auto& io : a.inputs()) {
    std::vector<int64_t> shape;
    for (size_t d = 0; d < io.shape.size(); ++d)
      shape.push_back(io.shape[d] >= 0
                          ? io.shape[d]
                          : dim_size(io.symbolic[d].empty() ? "?" : io.symbolic[d], opt.dims, rep.check_dims));
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<double> vals(static_cast<size_t>(n));
    const bool is_float = io.dtype == io::DType::F32 || io.dtype == io::DType::F16 || io.dtype == io::DType::BF16 ||
                          io.dtype == io::DType::F64;
    std::uniform_real_distribution<double> uf(-1, 1);
    std::uniform_int_distribution<int> ui(0, 3);
    for (auto& v : vals) v = is_float ? uf(rng) : ui(rng);
    const auto* bi = b.find_input(io.name);
    if (!bi) throw Error(new_path.string() + ": input '" + io.name + "' of the original model is missing");
    names.push_back(io.name);
    ta.push_back(random_tensor(io, vals, shape));
    tb.push_back(random_tensor(*bi, vals, shape));
  }
  std::vector<Ort::Value> va, vb;
  for (auto& t : ta) va.push_back(t.view());
  for (auto& t : tb) vb.push_back(t.view());
  std::vector<std::string> outs;
  for (const auto& o : a.outputs()) outs.push_back(o.name);
  std::vector<Ort::Value> ra;
  try {
    ra = a.run(names, va, outs);
  } catch (const std::exception& e) {
    std::string dims;
    for (const auto& [k, v] : rep.check_dims) dims += (dims.empty() ? "" : ", ") + k + "=" + std::to_string(v);
    rep.check_skipped =
        "the original model did not run on random inputs (dims " + dims + "; set them with --dim NAME=N): " + e.what();
    return;
  }
  auto rb = b.run(names, vb, outs);
  for (size_t i = 0; i < outs.size(); ++i) {
    const auto ha = runtime::to_host(ra[i]), hb = runtime::to_host(rb[i]);
    if (ha.shape != hb.shape) throw Error("--check: output '" + outs[i] + "' changed shape after the fix");
    const auto da = as_double(ha), db = as_double(hb);
    OutputDiff d;
    d.name = outs[i];
    d.dtype = io::dtype_name(hb.dtype);
    d.shape = ha.shape;
    for (size_t k = 0; k < da.size(); ++k) {
      if (std::isnan(da[k]) && std::isnan(db[k])) continue;
      const double diff = std::fabs(da[k] - db[k]);
      d.max_abs_diff = std::isnan(diff) ? INFINITY : std::max(d.max_abs_diff, diff);
    }
    rep.diffs.push_back(d);
  }
  rep.checked = true;
}

bool checker_range(const onnx::ModelProto& m) {
  if (m.ir_version() > onnx::IR_VERSION) return false;
  const auto& ranges = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map();
  for (const auto& op : m.opset_import()) {
    auto it = ranges.find(op.domain() == "ai.onnx" ? "" : op.domain());
    if (it == ranges.end() || op.version() > it->second.second) return false;
  }
  return true;
}

// Removes a staging folder on scope exit.
struct StageGuard {
  fs::path dir;
  ~StageGuard() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

}  // namespace

FixReport fix_model(const fs::path& in, const fs::path& out, const FixOptions& opt) {
  if (out.empty()) throw Error("fix: expected an output path (-o)");
  if (out.extension() != ".onnx") throw Error(out.string() + ": expected an output file name ending in .onnx");
  std::error_code ec;
  if (fs::exists(out, ec) && fs::equivalent(in, out, ec))
    throw Error(out.string() + ": the output must not be the input file (its weights are mapped while writing)");
  auto model = OnnxModel::load(in);
  FixReport rep;
  rep.input = in.string();
  rep.output = out.string();
  rep.opset_from = default_opset(model->proto());
  rep.ir_from = model->proto().ir_version();
  rep.passes = apply_fixes(*model, opt);
  rep.opset_to = default_opset(model->proto());
  rep.ir_to = model->proto().ir_version();

  // Write into a staging folder next to the output, check there, then move into place.
  fs::path dir = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  if (!fs::is_directory(dir)) throw Error(dir.string() + ": output folder does not exist");
  StageGuard stage{dir / ("." + out.filename().string() + ".fix-" + std::to_string(::getpid()))};
  fs::create_directories(stage.dir);
  SaveOptions so;
  so.data_file = out.filename().string() + ".data";
  const fs::path staged = stage.dir / out.filename();
  try {
    model->save(staged, so);
  } catch (const Error& e) {
    throw Error(out.string() +
                ": the fixed model does not pass the ONNX checker (nothing written; the input may "
                "already be invalid in this way): " +
                e.what());
  }
  rep.onnx_checked = checker_range(model->proto());
  try {
    runtime::Session s(staged);
  } catch (const std::exception& e) {
    throw Error(out.string() + ": ONNX Runtime refuses the fixed model (nothing written): " + e.what());
  }
  rep.ort_loaded = true;
  if (opt.check) run_check(in, staged, opt, rep);
  const fs::path data_staged = stage.dir / so.data_file;
  fs::rename(staged, out);
  if (fs::exists(data_staged))
    fs::rename(data_staged, dir / so.data_file);
  else
    fs::remove(dir / so.data_file, ec);  // a stale data file of an earlier output would mislead
  return rep;
}

json FixReport::to_json() const {
  json j;
  j["input"] = input;
  j["output"] = output;
  j["opset"] = {{"from", opset_from}, {"to", opset_to}};
  j["ir_version"] = {{"from", ir_from}, {"to", ir_to}};
  j["passes"] = json::array();
  for (const auto& p : passes) j["passes"].push_back({{"name", p.name}, {"changes", p.changes}, {"notes", p.notes}});
  j["onnx_checker"] = onnx_checked;
  j["ort_loaded"] = ort_loaded;
  json c;
  c["ran"] = checked;
  if (!check_skipped.empty()) c["skipped"] = check_skipped;
  c["dims"] = check_dims;
  c["outputs"] = json::array();
  for (const auto& d : diffs)
    c["outputs"].push_back(
        {{"name", d.name}, {"dtype", d.dtype}, {"shape", d.shape}, {"max_abs_diff", d.max_abs_diff}});
  j["check"] = c;
  return j;
}

std::string FixReport::to_text() const {
  std::ostringstream o;
  o << "wrote " << output << " (opset " << opset_from << " -> " << opset_to << ", IR " << ir_from << " -> " << ir_to
    << ")\n";
  for (const auto& p : passes) {
    o << "  " << p.name << ": " << p.changes << " change" << (p.changes == 1 ? "" : "s") << "\n";
    for (const auto& n : p.notes) o << "    " << n << "\n";
  }
  o << "  ONNX checker: " << (onnx_checked ? "passed" : "skipped (IR/opset newer than libonnx knows)")
    << "; ONNX Runtime: " << (ort_loaded ? "loads" : "not loaded") << "\n";
  if (!check_skipped.empty()) o << "  check skipped: " << check_skipped << "\n";
  if (checked) {
    o << "  check (random inputs";
    for (const auto& [k, v] : check_dims) o << ", " << k << "=" << v;
    o << "):\n";
    for (const auto& d : diffs) o << "    " << d.name << " " << d.dtype << ": max abs diff " << d.max_abs_diff << "\n";
  }
  return o.str();
}

}  // namespace kvrun::graph
