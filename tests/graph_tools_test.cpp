// kvrun inspect / kvrun fix: graph tools on small graphs built here and on the layout fixtures.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <variant>

#include "graph/fix.h"
#include "graph/inspect.h"
#include "graph/onnx_model.h"
#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "runtime/ort_session.h"
#include "test_util.h"

namespace kvrun {
namespace {

namespace fs = std::filesystem;
using test::fixture;
using Dim = std::variant<int64_t, std::string>;

void set_shape(onnx::ValueInfoProto* v, const std::string& name, int elem, const std::vector<Dim>& dims) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(elem);
  auto* s = t->mutable_shape();
  for (const auto& d : dims) {
    auto* x = s->add_dim();
    if (std::holds_alternative<int64_t>(d))
      x->set_dim_value(std::get<int64_t>(d));
    else
      x->set_dim_param(std::get<std::string>(d));
  }
}

onnx::ModelProto new_model(int64_t opset) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.set_producer_name("graph_tools_test");
  auto* o = m.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  m.mutable_graph()->set_name("g");
  return m;
}

onnx::NodeProto* add_node(onnx::GraphProto* g, const std::string& op, std::vector<std::string> in,
                          std::vector<std::string> out) {
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(op + "_" + out[0]);
  for (auto& i : in) n->add_input(i);
  for (auto& o : out) n->add_output(o);
  return n;
}

void add_int(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void add_i64_init(onnx::GraphProto* g, const std::string& name, std::vector<int64_t> v) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::INT64);
  t->add_dims(static_cast<int64_t>(v.size()));
  for (auto x : v) t->add_int64_data(x);
}

void add_f32_init(onnx::GraphProto* g, const std::string& name, std::vector<int64_t> dims, uint32_t seed) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  int64_t n = 1;
  for (auto d : dims) t->add_dims(d), n *= d;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int64_t i = 0; i < n; ++i) t->add_float_data(u(rng));
}

fs::path write(const onnx::ModelProto& m, const fs::path& p) {
  std::ofstream f(p, std::ios::binary);
  m.SerializeToOstream(&f);
  return p;
}

// Runs a model on float inputs (values i * 0.1 - 1, or an int64/bool feed) and returns every output as float.
std::vector<std::vector<float>> run_model(const fs::path& p, const std::vector<std::vector<int64_t>>& shapes,
                                          bool cond = false) {
  runtime::Session s(p);
  std::vector<std::string> names;
  std::vector<runtime::HostTensor> ts;
  for (size_t i = 0; i < s.inputs().size(); ++i) {
    const auto& io = s.inputs()[i];
    names.push_back(io.name);
    if (io.dtype == io::DType::BOOL) {
      auto t = runtime::HostTensor::zeros(io::DType::BOOL, {});
      t.bytes[0] = cond;
      ts.push_back(t);
      continue;
    }
    int64_t n = 1;
    for (auto d : shapes.at(i)) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(k % 23) * 0.1f - 1.f;
    ts.push_back(runtime::HostTensor::from_f32(v, shapes.at(i), io.dtype));
  }
  std::vector<Ort::Value> vals;
  for (auto& t : ts) vals.push_back(t.view());
  auto outs = s.run(names, vals);
  std::vector<std::vector<float>> r;
  for (auto& o : outs) r.push_back(runtime::to_f32(o));
  return r;
}

void expect_near(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b, float tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size()) << "output " << i;
    for (size_t k = 0; k < a[i].size(); ++k) ASSERT_NEAR(a[i][k], b[i][k], tol) << "output " << i << " [" << k << "]";
  }
}

int64_t opset_of(const fs::path& p) {
  auto m = graph::OnnxModel::load(p);
  for (const auto& o : m->proto().opset_import())
    if (o.domain().empty()) return o.version();
  return 0;
}

TEST(Fix, ReduceAxesInputsToOpset17GiveIdenticalOutputs) {
  test::TempDir d;
  auto m = new_model(18);
  auto* g = m.mutable_graph();
  set_shape(g->add_input(), "x", onnx::TensorProto::FLOAT, {int64_t{2}, int64_t{3}, std::string("n")});
  add_i64_init(g, "axes1", {1});
  add_node(g, "ReduceMean", {"x", "axes1"}, {"mean"});
  auto* c = add_node(g, "Constant", {}, {"axes_c"});
  auto* a = c->add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  a->mutable_t()->set_data_type(onnx::TensorProto::INT64);
  a->mutable_t()->add_dims(2);
  a->mutable_t()->add_int64_data(0);
  a->mutable_t()->add_int64_data(-1);
  add_int(add_node(g, "ReduceMax", {"x", "axes_c"}, {"max"}), "keepdims", 0);
  add_i64_init(g, "axes2", {2});
  add_node(g, "ReduceSum", {"x", "axes2"}, {"sum"});
  add_node(g, "ReduceL2", {"x"}, {"all"});  // no axes: reduce everything
  add_node(g, "Relu", {"x"}, {"dead"});     // unused: dead-code removes it
  for (auto n : {"mean", "max", "sum", "all"}) g->add_output()->set_name(n);
  // Outputs without type info are rejected by ORT; give them types.
  for (auto& o : *g->mutable_output())
    o.mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT),
        o.mutable_type()->mutable_tensor_type()->mutable_shape();
  // an "ai.onnx" import duplicate, cleaned up by opset-imports
  auto* dup = m.add_opset_import();
  dup->set_domain("ai.onnx");
  dup->set_version(18);
  auto* unused = m.add_opset_import();
  unused->set_domain("com.microsoft");
  unused->set_version(1);
  const auto in = write(m, d / "in.onnx");
  graph::FixOptions o;
  o.opset = 17;
  o.check = true;
  const auto r = graph::fix_model(in, d / "out.onnx", o);
  EXPECT_EQ(r.opset_to, 17);
  EXPECT_TRUE(r.onnx_checked);
  EXPECT_TRUE(r.checked) << r.check_skipped;
  for (const auto& x : r.diffs) EXPECT_EQ(x.max_abs_diff, 0) << x.name;
  auto out = graph::OnnxModel::load(d / "out.onnx");
  ASSERT_EQ(out->proto().opset_import_size(), 1);
  for (const auto& n : out->proto().graph().node()) {
    EXPECT_NE(n.op_type(), "Relu");
    if (n.op_type() == "ReduceMean" || n.op_type() == "ReduceMax") {
      EXPECT_EQ(n.input_size(), 1) << n.op_type();
    }
    if (n.op_type() == "ReduceSum") {
      EXPECT_EQ(n.input_size(), 2);
    }
  }
  const std::vector<std::vector<int64_t>> shapes = {{2, 3, 5}};
  expect_near(run_model(in, shapes), run_model(d / "out.onnx", shapes), 0.f);
  // and back up to 18: axes become inputs again
  o.opset = 18;
  graph::fix_model(d / "out.onnx", d / "up.onnx", o);
  EXPECT_EQ(opset_of(d / "up.onnx"), 18);
  expect_near(run_model(in, shapes), run_model(d / "up.onnx", shapes), 0.f);
}

TEST(Fix, SplitNumOutputsBecomesSizes) {
  test::TempDir d;
  auto m = new_model(18);
  auto* g = m.mutable_graph();
  set_shape(g->add_input(), "x", onnx::TensorProto::FLOAT, {int64_t{2}, int64_t{7}});
  set_shape(g->add_input(), "y", onnx::TensorProto::FLOAT, {int64_t{2}, std::string("len")});
  auto* s1 = add_node(g, "Split", {"x"}, {"a", "b", "c"});
  add_int(s1, "axis", 1);
  add_int(s1, "num_outputs", 3);
  auto* s2 = add_node(g, "Split", {"y"}, {"p", "q"});
  add_int(s2, "axis", -1);
  add_int(s2, "num_outputs", 2);
  for (auto n : {"a", "b", "c", "p", "q"}) {
    auto* o = g->add_output();
    o->set_name(n);
    o->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT),
        o->mutable_type()->mutable_tensor_type()->mutable_shape();
  }
  const auto in = write(m, d / "in.onnx");
  graph::FixOptions o;
  o.opset = 17;
  graph::fix_model(in, d / "out.onnx", o);
  auto out = graph::OnnxModel::load(d / "out.onnx");
  for (const auto& n : out->proto().graph().node())
    if (n.op_type() == "Split") {
      EXPECT_EQ(n.input_size(), 2);
      for (const auto& a : n.attribute()) EXPECT_NE(a.name(), "num_outputs");
    }
  for (int64_t len : {5, 6}) {
    const std::vector<std::vector<int64_t>> shapes = {{2, 7}, {2, len}};
    expect_near(run_model(in, shapes), run_model(d / "out.onnx", shapes), 0.f);
  }
}

TEST(Fix, Fp16RoundTripWithinTolerance) {
  test::TempDir d;
  auto m = new_model(17);
  auto* g = m.mutable_graph();
  set_shape(g->add_input(), "x", onnx::TensorProto::FLOAT, {std::string("batch"), int64_t{32}});
  add_f32_init(g, "w", {32, 16}, 1);
  add_f32_init(g, "b", {16}, 2);
  add_node(g, "MatMul", {"x", "w"}, {"xw"});
  add_node(g, "Add", {"xw", "b"}, {"y"});
  set_shape(g->add_output(), "y", onnx::TensorProto::FLOAT, {std::string("batch"), int64_t{16}});
  const auto in = write(m, d / "in.onnx");
  graph::FixOptions o;
  o.passes = {"fp16"};
  o.check = true;
  const auto r = graph::fix_model(in, d / "half.onnx", o);
  ASSERT_TRUE(r.checked) << r.check_skipped;
  ASSERT_EQ(r.diffs.size(), 1u);
  EXPECT_EQ(r.diffs[0].dtype, "float16");
  EXPECT_LT(r.diffs[0].max_abs_diff, 2e-2);
  {
    runtime::Session s(d / "half.onnx");
    EXPECT_EQ(s.inputs()[0].dtype, io::DType::F16);
    EXPECT_EQ(s.outputs()[0].dtype, io::DType::F16);
    auto h = graph::OnnxModel::load(d / "half.onnx");
    for (const auto& t : h->proto().graph().initializer()) EXPECT_EQ(t.data_type(), onnx::TensorProto::FLOAT16);
  }
  o.passes = {"fp32"};
  graph::fix_model(d / "half.onnx", d / "back.onnx", o);
  runtime::Session s(d / "back.onnx");
  EXPECT_EQ(s.inputs()[0].dtype, io::DType::F32);
  const std::vector<std::vector<int64_t>> shapes = {{3, 32}};
  expect_near(run_model(in, shapes), run_model(d / "back.onnx", shapes), 2e-2f);
}

TEST(Fix, PassesReachIntoIfBranches) {
  test::TempDir d;
  auto m = new_model(18);
  auto* g = m.mutable_graph();
  set_shape(g->add_input(), "cond", onnx::TensorProto::BOOL, {});
  set_shape(g->add_input(), "x", onnx::TensorProto::FLOAT, {int64_t{4}, int64_t{6}});
  add_i64_init(g, "axes", {1});  // outer-scope constant read inside the branch
  auto* n = add_node(g, "If", {"cond"}, {"y"});
  auto* then_a = n->add_attribute();
  then_a->set_name("then_branch");
  then_a->set_type(onnx::AttributeProto::GRAPH);
  auto* tg = then_a->mutable_g();
  tg->set_name("then");
  add_node(tg, "ReduceMean", {"x", "axes"}, {"t_out"});
  set_shape(tg->add_output(), "t_out", onnx::TensorProto::FLOAT, {int64_t{4}, int64_t{1}});
  auto* else_a = n->add_attribute();
  else_a->set_name("else_branch");
  else_a->set_type(onnx::AttributeProto::GRAPH);
  auto* eg = else_a->mutable_g();
  eg->set_name("else");
  auto* sp = add_node(eg, "Split", {"x"}, {"e_a", "e_b", "e_c", "e_d", "e_e", "e_f"});
  add_int(sp, "axis", 1);
  add_int(sp, "num_outputs", 6);
  set_shape(eg->add_output(), "e_b", onnx::TensorProto::FLOAT, {int64_t{4}, int64_t{1}});
  set_shape(g->add_output(), "y", onnx::TensorProto::FLOAT, {int64_t{4}, int64_t{1}});
  const auto in = write(m, d / "in.onnx");
  graph::FixOptions o;
  o.opset = 17;
  const auto r = graph::fix_model(in, d / "out.onnx", o);
  int64_t total = 0;
  for (const auto& p : r.passes)
    if (p.name == "reduce-axes" || p.name == "split-num-outputs") total += p.changes;
  EXPECT_EQ(total, 2);
  const std::vector<std::vector<int64_t>> shapes = {{}, {4, 6}};
  for (bool c : {true, false}) expect_near(run_model(in, shapes, c), run_model(d / "out.onnx", shapes, c), 0.f);
}

TEST(Fix, RefusesWhatItCannotConvertAndWritesNothing) {
  test::TempDir d;
  auto m = new_model(18);
  auto* g = m.mutable_graph();
  set_shape(g->add_input(), "x", onnx::TensorProto::FLOAT, {int64_t{2}, int64_t{3}});
  set_shape(g->add_input(), "ax", onnx::TensorProto::INT64, {int64_t{1}});
  add_node(g, "ReduceMean", {"x", "ax"}, {"y"});
  set_shape(g->add_output(), "y", onnx::TensorProto::FLOAT, {});
  const auto in = write(m, d / "in.onnx");
  graph::FixOptions o;
  o.opset = 17;
  try {
    graph::fix_model(in, d / "out.onnx", o);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("neither an initializer nor a Constant"), std::string::npos) << e.what();
  }
  // Ops that do not exist at the target opset are named.
  auto m2 = new_model(20);
  auto* g2 = m2.mutable_graph();
  set_shape(g2->add_input(), "x", onnx::TensorProto::FLOAT, {int64_t{2}});
  add_node(g2, "Gelu", {"x"}, {"y"});
  set_shape(g2->add_output(), "y", onnx::TensorProto::FLOAT, {int64_t{2}});
  write(m2, d / "gelu.onnx");
  try {
    graph::fix_model(d / "gelu.onnx", d / "out.onnx", o);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Gelu exists from opset 20 on"), std::string::npos) << e.what();
  }
  o.passes = {"nope"};
  EXPECT_THROW(graph::fix_model(in, d / "out.onnx", o), Error);
  EXPECT_FALSE(fs::exists(d / "out.onnx"));
  EXPECT_FALSE(fs::exists(d / "out.onnx.data"));
}

TEST(Fix, CorruptOrTruncatedFilesGiveClearErrors) {
  test::TempDir d;
  std::string bytes;
  {
    std::ifstream f(fixture("layouts") / "optimum-plain" / "model.onnx", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  std::ofstream(d / "trunc.onnx", std::ios::binary) << bytes.substr(0, bytes.size() / 3);
  std::ofstream(d / "junk.onnx", std::ios::binary) << "not an onnx file at all";
  for (const char* f : {"trunc.onnx", "junk.onnx", "missing.onnx"}) {
    EXPECT_THROW(graph::fix_model(d / f, d / "out.onnx", {}), Error) << f;
    EXPECT_THROW(graph::inspect(d / f), Error) << f;
    const auto cli = test::run_cli({"inspect", (d / f).string()});
    EXPECT_EQ(cli.exit_code, 2) << cli.out;
    EXPECT_NE(cli.out.find("kvrun: error:"), std::string::npos) << cli.out;
  }
  EXPECT_FALSE(fs::exists(d / "out.onnx"));
}

void expect_decoder(const nlohmann::json& r, int seq_axis, const std::string& what) {
  const auto& dec = r.at("decoder");
  ASSERT_TRUE(dec.at("is_decoder").get<bool>()) << what << ": " << dec.dump();
  EXPECT_EQ(dec.at("num_layers"), 2) << what;
  EXPECT_EQ(dec.at("num_kv_heads"), 2) << what;
  EXPECT_EQ(dec.at("head_dim"), 32) << what;
  EXPECT_EQ(dec.at("kv_seq_axis"), seq_axis) << what;
  EXPECT_FALSE(dec.at("convention").get<std::string>().empty()) << what;
}

TEST(Inspect, LayoutFixturesReportTheirKvLayout) {
  const std::map<std::string, std::pair<std::string, std::string>> expect = {
      {"optimum-merged", {"optimum-merged", "past_key_values"}},
      {"optimum-plain", {"optimum", "past_key_values"}},
      {"split", {"split", "past_key_"}},
      {"genai", {"genai", "past_key_values"}}};
  for (const auto& [name, want] : expect) {
    const auto r = graph::inspect(fixture("layouts") / name);
    EXPECT_EQ(r.at("type"), "folder");
    EXPECT_EQ(r.at("layout"), want.first) << name;
    expect_decoder(r, name == "split" ? 1 : 2, name);
    EXPECT_GE(r.at("graphs").size(), 1u);
    for (const auto& g : r.at("graphs")) {
      EXPECT_GT(g.at("initializers").at("parameters").get<int64_t>(), 0) << name;
      EXPECT_FALSE(g.at("ops").empty());
    }
    if (name == "genai") {
      const auto& g = r.at("graphs")[0];
      ASSERT_EQ(g.at("external_data").size(), 1u);
      EXPECT_EQ(g.at("external_data")[0].at("file"), "model.onnx.data");
      bool gqa = false;
      for (const auto& op : g.at("ops"))
        gqa = gqa || (op.at("op") == "GroupQueryAttention" && op.at("domain") == "com.microsoft");
      EXPECT_TRUE(gqa);
    }
    if (name == "optimum-merged") {
      EXPECT_EQ(r.at("graphs")[0].at("subgraphs"), 2);
      EXPECT_EQ(r.at("graphs")[0].at("inputs")[0].at("shape")[0], "batch_size");
    }
  }
  for (const char* broken : {"broken-extra-input", "broken-missing-present"}) {
    const auto r = graph::inspect(fixture("layouts") / broken);
    EXPECT_FALSE(r.at("decoder").at("is_decoder").get<bool>()) << broken;
    EXPECT_FALSE(r.at("decoder").at("error").get<std::string>().empty());
    EXPECT_EQ(r.at("graphs").size(), 1u);
  }
  // A non-decoder file: everything else is still reported.
  const auto r = graph::inspect(fixture("layouts") / "split" / "embedding.onnx");
  EXPECT_FALSE(r.at("decoder").at("is_decoder").get<bool>());
  EXPECT_EQ(r.at("graphs")[0].at("outputs")[0].at("name"), "inputs_embeds");
}

TEST(Inspect, BuiltPackageAndJsonFromTheCli) {
  const auto pkg = test::built_package("qwen3-tiny", "portable", "fp32");
  const auto r = graph::inspect(pkg);
  EXPECT_EQ(r.at("layout"), "kvrun-portable");
  expect_decoder(r, 2, "package");
  const auto cli = test::run_cli({"inspect", pkg.string(), "--json"});
  ASSERT_EQ(cli.exit_code, 0) << cli.out;
  const auto j = nlohmann::json::parse(cli.out);
  for (const char* k : {"schema", "path", "type", "layout", "graphs", "decoder"}) EXPECT_TRUE(j.contains(k)) << k;
  for (const char* k : {"file", "role", "ir_version", "producer", "opset_imports", "inputs", "outputs", "nodes",
                        "subgraphs", "control_flow_nodes", "ops", "initializers", "external_data", "metadata"})
    EXPECT_TRUE(j.at("graphs")[0].contains(k)) << k;
  const auto text = test::run_cli({"inspect", pkg.string()});
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("KV seq axis 2"), std::string::npos) << text.out;
}

TEST(Fix, OptimumMergedToOpset17KeepsGenerating) {
  test::TempDir d;
  const auto src = fixture("layouts") / "optimum-merged";
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().extension() == ".json") fs::copy(e.path(), d / e.path().filename().string());
  const auto cli = test::run_cli({"fix", (src / "decoder_model_merged.onnx").string(), "-o",
                                  (d / "decoder_model_merged.onnx").string(), "--opset", "17", "--json"});
  ASSERT_EQ(cli.exit_code, 0) << cli.out;
  const auto j = nlohmann::json::parse(cli.out);
  EXPECT_EQ(j.at("opset").at("to"), 17);
  EXPECT_EQ(j.at("ir_version").at("to"), 8);
  EXPECT_TRUE(j.at("onnx_checker").get<bool>());
  EXPECT_EQ(opset_of(d / "decoder_model_merged.onnx"), 17);
  nlohmann::json golden;
  std::ifstream(fixture("qwen3-tiny") / "golden.json") >> golden;
  auto model = Model::load(d.path());
  GenerationOptions o;
  o.max_new_tokens = 8;
  o.stop_at_eos = false;
  for (size_t i = 0; i < 2; ++i) {
    const auto prompt = golden.at("prompts")[i].get<std::vector<TokenId>>();
    auto want = golden.at("greedy")[i].get<std::vector<TokenId>>();
    want.resize(8);
    EXPECT_EQ(model->generate(Prompt().ids(prompt), o).tokens, want) << i;
  }
}

}  // namespace
}  // namespace kvrun
