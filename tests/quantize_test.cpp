// The quantizer (src/graph/quantize.cpp, kvrun quantize, build --precision int8|int4):
// quantized packages of the fixture checkpoints against the Hugging Face goldens
// (teacher-forced next-token argmax agreement and KL), the optimum merged decoder
// (weights as outer-scope initializers of If branches), --exclude, sizes, errors.
#include "graph/quantize.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "graph/builder.h"
#include "graph/onnx_model.h"
#include "io/fs.h"
#include "io/safetensors.h"
#include "kvrun/build.h"
#include "kvrun/runtime.h"
#include "kvrun/verify.h"
#include "runtime/ort_session.h"
#include "runtime/package_model.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;

int64_t argmax(const float* v, int64_t n) { return std::max_element(v, v + n) - v; }

double kl(const float* p, const float* q, int64_t n) {
  const double mp = *std::max_element(p, p + n), mq = *std::max_element(q, q + n);
  double zp = 0, zq = 0;
  for (int64_t i = 0; i < n; ++i) zp += std::exp(p[i] - mp), zq += std::exp(q[i] - mq);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double lp = p[i] - mp - std::log(zp), lq = q[i] - mq - std::log(zq);
    s += std::exp(lp) * (lp - lq);
  }
  return s;
}

uint64_t folder_bytes(const fs::path& d) {
  uint64_t b = 0;
  for (const auto& e : fs::directory_iterator(d)) b += fs::file_size(e.path());
  return b;
}

// Quantized packages, made once per test binary run.
fs::path quantized_package(const std::string& fx, const std::string& target, const std::string& mode) {
  static TempDir root;
  static std::map<std::string, fs::path> cache;
  const std::string key = fx + "-" + target + "-" + mode;
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  QuantizeOptions o;
  o.input = built_package(fx, target, "fp32");
  o.out = root / key;
  o.mode = mode;
  quantize(o);
  return cache[key] = o.out;
}

struct Agreement {
  int64_t agree = 0, total = 0;
  double kl_sum = 0;
  double rate() const { return total ? static_cast<double>(agree) / static_cast<double>(total) : 1.0; }
  double mean_kl() const { return total ? kl_sum / static_cast<double>(total) : 0.0; }
};

// Teacher-forced: one position at a time (a prefill of 1, then decode steps), vs HF fp32.
void measure(const fs::path& pkg, const std::string& fx, Agreement& a) {
  test::teacher_forced(pkg, load_golden(fx), [&](const float* hf, const float* got, int64_t V) {
    a.agree += argmax(got, V) == argmax(hf, V);
    a.kl_sum += kl(hf, got, V);
    ++a.total;
  });
}

const std::vector<std::string> kFixtures = {"qwen3-tiny", "qwen2-tiny", "llama-tiny"};

// Floors for the tiny random fixtures. Their logits are chaotic in the weights (std 0.25 at
// fan-in 64: each projection doubles a perturbation), so weight noise that is harmless on
// trained models flips many near tokens here: fp16 (2^-11 relative) already stays just
// above 99%, int8 (~2^-8) lands near 91%, int4 (~2^-4) near 40%. These floors are regression
// checks; the verify gates (98% / 90%, docs/verify.md) are tested on the trained fixture
// (QuantTrained below). The numbers are in PERFORMANCE.md.
void check_mode(const std::string& target, const std::string& mode, double min_rate, double max_kl) {
  Agreement a;
  uint64_t before = 0, after = 0;
  for (const auto& fx : kFixtures) {
    const fs::path pkg = quantized_package(fx, target, mode);
    measure(pkg, fx, a);
    before += folder_bytes(built_package(fx, target, "fp32"));
    after += folder_bytes(pkg);
    const auto j = io::read_json_file(pkg / "kvrun.json");
    EXPECT_EQ(j.at("precision"), mode == "int4" ? "int4" : "int8");
    EXPECT_EQ(j.at("quantization").at("mode"), mode);
  }
  std::printf("[ %s %s ] argmax agreement %.2f%% over %lld positions, mean KL %.3e, packages %.1f KB -> %.1f KB\n",
              mode.c_str(), target.c_str(), 100 * a.rate(), static_cast<long long>(a.total), a.mean_kl(),
              static_cast<double>(before) / 1e3, static_cast<double>(after) / 1e3);
  EXPECT_GE(a.rate(), min_rate) << mode << " " << target;
  EXPECT_LE(a.mean_kl(), max_kl) << mode << " " << target;
  EXPECT_LT(after, before);
}

TEST(QuantGolden, OrtInt8Dynamic) { check_mode("ort", "int8-dynamic", 0.80, 0.15); }
TEST(QuantGolden, OrtInt8) { check_mode("ort", "int8", 0.88, 0.05); }
TEST(QuantGolden, OrtInt4) { check_mode("ort", "int4", 0.30, 3.0); }
TEST(QuantGolden, PortableInt8Dynamic) { check_mode("portable", "int8-dynamic", 0.80, 0.15); }
TEST(QuantGolden, PortableInt8) { check_mode("portable", "int8", 0.88, 0.05); }

// The trained fixture (tests/fixtures/qwen3-trained, tools/make_trained_fixture.py: a 4-layer
// Qwen3 trained on English text, prompts from held-out text, 449 positions) responds to weight
// noise like a real checkpoint, so it is held to the verify gates themselves: int8 >= 98%,
// int4 >= 90% (measured, PERFORMANCE.md: int8 99.1% ort / 99.3% portable, int4 93.1%).
void check_trained(const std::string& target, const std::string& mode, double min_rate, double max_kl) {
  const std::string fx = "qwen3-trained";
  const fs::path pkg = quantized_package(fx, target, mode);
  Agreement a;
  measure(pkg, fx, a);
  std::printf("[ %s %s %s ] argmax agreement %.2f%% over %lld positions, mean KL %.3e, package %.1f KB -> %.1f KB\n",
              fx.c_str(), mode.c_str(), target.c_str(), 100 * a.rate(), static_cast<long long>(a.total), a.mean_kl(),
              static_cast<double>(folder_bytes(built_package(fx, target, "fp32"))) / 1e3,
              static_cast<double>(folder_bytes(pkg)) / 1e3);
  EXPECT_GE(a.rate(), min_rate) << fx << " " << mode << " " << target;
  EXPECT_LE(a.mean_kl(), max_kl) << fx << " " << mode << " " << target;
}

TEST(QuantTrained, OrtInt8) { check_trained("ort", "int8", 0.98, 5e-4); }
TEST(QuantTrained, OrtInt4) { check_trained("ort", "int4", 0.90, 3e-2); }
TEST(QuantTrained, PortableInt8) { check_trained("portable", "int8", 0.98, 5e-4); }
// int8-dynamic is judged as int8 by verify, but does not reach 98% here: 97.8% on both targets
// (10 of 449 positions flip, all where HF's top two logits are close), mean KL 6.8e-4, ~3.7x
// int8 weight-only. Its weights have 7 bits (reduce_range, docs/quantize.md) and its activations
// are quantized per tensor at run time. So this floor is the measured value, not the gate.
TEST(QuantTrained, OrtInt8Dynamic) { check_trained("ort", "int8-dynamic", 0.97, 1.5e-3); }
TEST(QuantTrained, PortableInt8Dynamic) { check_trained("portable", "int8-dynamic", 0.97, 1.5e-3); }

// kvrun verify (default prompt) accepts the trained fixture's int8 and int4 packages by the
// argmax gate (the reference is not flat). int8 is judged over 256 greedy tokens (260
// positions): over 68 its 98% gate allows one flip, and where the reference's top two are
// near-ties the count of flips moves with noise far below the quantization error (portable
// int8: 1 flip before rotary was computed in the graph, 3 after, at the same mean KL 1.8e-4).
TEST(QuantTrained, VerifyAcceptsInt8AndInt4) {
  for (const auto& [target, mode] :
       std::vector<std::pair<std::string, std::string>>{{"ort", "int8"}, {"ort", "int4"}, {"portable", "int8"}}) {
    const fs::path pkg = quantized_package("qwen3-trained", target, mode);
    const CliResult r = run_cli({"verify", pkg.string(), "--greedy-tokens", mode == "int8" ? "256" : "64", "--json"});
    EXPECT_EQ(r.exit_code, 0) << target << " " << mode << "\n" << r.out;
    const auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
    std::printf("[ verify qwen3-trained %s %s ] argmax agreement %.1f%%, mean KL %.2e\n", mode.c_str(), target.c_str(),
                100 * j.at("argmax_agreement").get<double>(), j.at("mean_kl").get<double>());
    EXPECT_TRUE(j.at("passed").get<bool>()) << r.out;
    EXPECT_FALSE(j.at("flat_reference").get<bool>()) << r.out;
    EXPECT_GE(j.at("argmax_agreement").get<double>(), mode == "int4" ? 0.90 : 0.98) << r.out;
  }
}

// `build --precision int8|int4` with the default --kv-dtype (int4: float16 cache, int8:
// float32) passes verify on the trained fixture too.
TEST(QuantTrained, BuildDefaultsVerify) {
  for (const std::string precision : {"int8", "int4"}) {
    const fs::path pkg = built_package("qwen3-trained", "ort", precision);
    EXPECT_EQ(io::read_json_file(pkg / "kvrun.json")["kv_cache"]["dtype"], precision == "int4" ? "F16" : "F32");
    const CliResult r = run_cli({"verify", pkg.string(), "--greedy-tokens", "64", "--json"});
    EXPECT_EQ(r.exit_code, 0) << precision << "\n" << r.out;
    const auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
    std::printf("[ verify qwen3-trained build --precision %s ] argmax agreement %.1f%%, mean KL %.2e\n",
                precision.c_str(), 100 * j.at("argmax_agreement").get<double>(), j.at("mean_kl").get<double>());
    EXPECT_TRUE(j.at("passed").get<bool>()) << r.out;
  }
}

// The quantized graphs use the ops each mode promises; portable ones stay standard.
TEST(QuantGraph, OpsPerModeAndTarget) {
  auto ops_of = [](const fs::path& f) {
    std::map<std::string, int> ops;
    auto m = graph::OnnxModel::load(f);
    m->for_each_graph([&](onnx::GraphProto& g) {
      for (const auto& n : g.node()) ++ops[(n.domain().empty() ? "" : n.domain() + ":") + n.op_type()];
    });
    return ops;
  };
  auto ort4 = ops_of(quantized_package("qwen3-tiny", "ort", "int4") / "decoder.onnx");
  EXPECT_EQ(ort4["com.microsoft:MatMulNBits"], 2 * 4 + 1);  // qkv, o, gate_up, down per layer + lm_head
  EXPECT_EQ(ort4["MatMul"], 0);
  EXPECT_EQ(ort4["Gemm"], 0);
  auto ortd = ops_of(quantized_package("qwen3-tiny", "ort", "int8-dynamic") / "decoder.onnx");
  EXPECT_EQ(ortd["com.microsoft:DynamicQuantizeMatMul"], 9);
  for (const char* f : {"prefill.onnx", "decode.onnx"}) {
    auto p8 = ops_of(quantized_package("qwen3-tiny", "portable", "int8") / f);
    EXPECT_EQ(p8["DequantizeLinear"], 9) << f;
    auto pd = ops_of(quantized_package("qwen3-tiny", "portable", "int8-dynamic") / f);
    EXPECT_EQ(pd["MatMulInteger"], 9) << f;
    EXPECT_EQ(pd["DynamicQuantizeLinear"], 9) << f;
    for (const auto& [op, n] : pd) EXPECT_EQ(op.find(':'), std::string::npos) << op;
  }
  // prefill and decode still share one data file
  const fs::path pp = quantized_package("qwen3-tiny", "portable", "int8");
  EXPECT_TRUE(fs::exists(pp / "decoder.onnx.data"));
  EXPECT_FALSE(fs::exists(pp / "prefill.onnx.data"));
  EXPECT_TRUE(fs::exists(pp / "embedding.safetensors"));  // fp32 table for lookups
}

// kvrun build --precision int4 / int8 goes through the same quantizer; verify judges the
// package by pooled argmax agreement and reports KL.
TEST(QuantBuild, PrecisionInt4AndInt8VerifyAgainstReference) {
  TempDir d;
  for (const char* prec : {"int4", "int8"}) {
    BuildOptions o;
    o.checkpoint = fixture("qwen3-tiny");
    o.out = d / prec;
    o.precision = prec;
    build_package(o);
    const auto j = io::read_json_file(o.out / "kvrun.json");
    EXPECT_EQ(j.at("precision"), prec);
    EXPECT_EQ(j.at("quantization").at("quantized_nodes"), 9);
    VerifyOptions vo;
    vo.package = o.out;
    const VerifyReport r = verify_package(vo);
    std::printf("[ build %s ] verify agreement %.1f%%, mean KL %.3e\n", prec, 100 * r.argmax_agreement, r.mean_kl);
    EXPECT_DOUBLE_EQ(r.min_agreement, std::string(prec) == "int4" ? 0.90 : 0.98);
    EXPECT_EQ(r.passed, r.argmax_agreement >= r.min_agreement) << r.to_text();
    EXPECT_EQ(r.checks.back().name, "all");
    EXPECT_GT(r.mean_kl, 0);
    EXPECT_NE(r.to_text().find("mean_kl"), std::string::npos);
    EXPECT_TRUE(nlohmann::json::parse(r.to_json()).contains("mean_kl"));
  }
  BuildOptions bad;
  bad.checkpoint = fixture("qwen3-tiny");
  bad.out = d / "p4";
  bad.target = "portable";
  bad.precision = "int4";
  try {
    build_package(bad);
    FAIL() << "portable int4 must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MatMulNBits"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(d / "p4"));
}

// Generates 2 tokens after every teacher-forced prefix; counts agreement with HF's argmax.
Agreement generate_agreement(Model& m, const std::string& fx) {
  const Golden g = load_golden(fx);
  Agreement a;
  GenerationOptions o;
  o.max_new_tokens = 2;
  o.stop_at_eos = false;
  for (size_t k = 0; k < g.prompts.size(); ++k) {
    std::vector<int64_t> seq = g.prompts[k];
    seq.insert(seq.end(), g.greedy[k].begin(), g.greedy[k].end());
    std::vector<Prompt> ps;
    for (size_t i = g.prompts[k].size(); i < seq.size(); ++i)
      ps.push_back(Prompt().ids(std::vector<TokenId>(seq.begin(), seq.begin() + static_cast<int64_t>(i))));
    const auto rs = m.generate(ps, o);
    for (size_t r = 0; r < rs.size(); ++r) {
      const size_t pos = g.prompts[k].size() + r;  // index in seq of the expected next token
      a.agree += rs[r].tokens.at(0) == seq[pos];
      ++a.total;
      if (rs[r].tokens[0] == seq[pos] && pos + 1 < seq.size()) {  // second token: a decode step (past branch)
        a.agree += rs[r].tokens.at(1) == seq[pos + 1];
        ++a.total;
      }
    }
  }
  return a;
}

TEST(QuantOptimumMerged, IfBranchesShareQuantizedOuterWeights) {
  TempDir d;
  const fs::path src = fixture("layouts") / "optimum-merged";
  for (const std::string mode : {"int8-dynamic", "int8", "int4"}) {
    const fs::path dir = d / mode;
    fs::create_directories(dir);
    for (const char* f : {"config.json", "generation_config.json"}) fs::copy_file(src / f, dir / f);
    QuantizeOptions o;
    o.input = src / "decoder_model_merged.onnx";
    o.out = dir / "decoder_model_merged.onnx";
    o.mode = mode;
    const QuantizeResult r = quantize(o);
    EXPECT_GT(r.quantized_nodes, 0);
    EXPECT_LT(r.file_bytes_after, r.file_bytes_before);
    auto m = graph::OnnxModel::load(o.out);
    // the branches still have no initializers; the quantized weights are outer-scope
    int branch_inits = 0, float_matmuls = 0;
    m->for_each_graph([&](onnx::GraphProto& g) {
      if (&g != &m->proto().graph()) branch_inits += g.initializer_size();
      for (const auto& n : g.node()) float_matmuls += n.op_type() == "MatMul" || n.op_type() == "Gemm";
    });
    EXPECT_EQ(branch_inits, 0);
    std::printf("[ optimum-merged %s ] %lld nodes quantized, %zu skipped, %.1f KB -> %.1f KB\n", mode.c_str(),
                static_cast<long long>(r.quantized_nodes), r.skipped.size(),
                static_cast<double>(r.file_bytes_before) / 1e3, static_cast<double>(r.file_bytes_after) / 1e3);
    auto model = Model::load(dir);
    EXPECT_EQ(model->info().layout, "optimum-merged");
    const Agreement a = generate_agreement(*model, "qwen3-tiny");
    std::printf("[ optimum-merged %s ] argmax agreement %.2f%% over %lld positions\n", mode.c_str(), 100 * a.rate(),
                static_cast<long long>(a.total));
    EXPECT_GE(a.rate(), mode == "int4" ? 0.40 : mode == "int8" ? 0.88 : 0.85) << mode;  // see check_mode
  }
}

TEST(QuantExclude, RegexKeepsMatchingNodesInFloat) {
  TempDir d;
  QuantizeOptions o;
  o.input = built_package("qwen3-tiny", "ort", "fp32");
  o.out = d / "q";
  o.mode = "int4";
  o.exclude = "lm_head|layers\\.1/mlp";
  const QuantizeResult r = quantize(o);
  EXPECT_EQ(r.quantized_nodes, 9 - 3);
  int excluded = 0;
  for (const auto& [n, why] : r.skipped) excluded += why == "excluded by --exclude";
  EXPECT_EQ(excluded, 3);
  auto m = graph::OnnxModel::load(o.out / "decoder.onnx");
  int gemm = 0, nbits = 0;
  for (const auto& n : m->proto().graph().node()) {
    gemm += n.op_type() == "Gemm";
    nbits += n.op_type() == "MatMulNBits";
  }
  EXPECT_EQ(gemm, 1);
  EXPECT_EQ(nbits, 6);
  // the excluded lm_head still reads the tied table in place, not a copy
  EXPECT_LT(fs::file_size(o.out / "decoder.onnx.data"),
            fs::file_size(built_package("qwen3-tiny", "ort", "fp32") / "decoder.onnx.data"));
  // weight names match too
  o.out = d / "q2";
  o.exclude = "embed_tokens";
  EXPECT_EQ(quantize(o).quantized_nodes, 8);
  // and the CLI
  const CliResult c = run_cli({"quantize", o.input.string(), "-o", (d / "q3").string(), "--mode", "int8", "--exclude",
                               "lm_head", "--json", "-q"});
  ASSERT_EQ(c.exit_code, 0) << c.out;
  const auto j = nlohmann::json::parse(c.out);
  EXPECT_EQ(j.at("quantized_nodes"), 8);
  EXPECT_EQ(j.at("settings").at("mode"), "int8");
}

TEST(QuantErrors, BadInputIsNamedAndLeavesNothing) {
  TempDir d;
  auto expect_error = [&](QuantizeOptions o, const std::string& needle) {
    try {
      quantize(o);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(o.out)) << o.out;
    for (const auto& e : fs::directory_iterator(d.path()))
      EXPECT_EQ(e.path().filename().string().find("partial"), std::string::npos) << e.path();
  };
  io::write_text_file_atomic(d / "junk.onnx", "this is not a protobuf");
  QuantizeOptions o;
  o.input = d / "junk.onnx";
  o.out = d / "out.onnx";
  expect_error(o, "not a valid ONNX model");
  o.input = built_package("qwen3-tiny", "ort", "fp32");
  o.out = d / "out";
  o.mode = "int3";
  expect_error(o, "--mode must be int8-dynamic, int8 or int4, found 'int3'");
  o.mode = "int4";
  o.block_size = 24;
  expect_error(o, "power of two >= 16, found 24");
  o.block_size = 32;
  o.exclude = "(";
  expect_error(o, "not a valid regular expression");
  o.exclude.clear();
  o.input = built_package("qwen3-tiny", "portable", "fp32");
  expect_error(o, "MatMulNBits");
  o.input = quantized_package("qwen3-tiny", "ort", "int4");
  expect_error(o, "precision 'int4'");
  o.input = built_package("qwen3-tiny", "ort", "fp16");
  o.mode = "int8-dynamic";
  expect_error(o, "found none (9 skipped, e.g. /model/layers.0/attn/qkv_proj/MatMul: int8-dynamic needs float32");
  o.mode = "int4";
  const CliResult c = run_cli({"quantize", o.input.string(), "-o", (d / "c").string(), "--mode", "fp8"});
  EXPECT_EQ(c.exit_code, 2);
  EXPECT_NE(c.out.find("kvrun: error: quantize: --mode"), std::string::npos) << c.out;
}

// Direct pass over a model: asymmetric int4 with another block size and accuracy level.
TEST(QuantPass, AsymmetricInt8Block16Accuracy0) {
  TempDir d;
  QuantizeOptions o;
  o.input = built_package("llama-tiny", "ort", "fp32");
  o.out = d / "q";
  o.mode = "int8";
  o.block_size = 16;
  o.symmetric = false;
  o.accuracy_level = 0;
  quantize(o);
  Agreement a;
  measure(o.out, "llama-tiny", a);
  std::printf("[ int8 asym bs16 acc0 llama-tiny ] agreement %.2f%%, mean KL %.3e\n", 100 * a.rate(), a.mean_kl());
  EXPECT_GE(a.rate(), 0.88);
  auto m = graph::OnnxModel::load(o.out / "decoder.onnx");
  int zp = 0, nbits = 0;
  for (const auto& n : m->proto().graph().node())
    if (n.op_type() == "MatMulNBits") zp += n.input_size() == 4, ++nbits;
  EXPECT_GT(nbits, 0);
  EXPECT_EQ(zp, nbits);  // every node has its zero points
}

// Hand-made graph: K = 40 (not a multiple of the block), Gemm with C (-> Add) and with
// transB 0/1, a MatMul, plus nodes that must be skipped; outputs compared with fp32 in ORT.
TEST(QuantPass, GemmLayoutsPaddingAndSkipsMatchFloat) {
  TempDir d;
  const int64_t M = 3, K = 40, N = 24;
  auto rnd = [](size_t n, uint64_t seed) {
    std::vector<float> v(n);
    for (auto& x : v) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      x = static_cast<float>(static_cast<double>(seed >> 40) / static_cast<double>(1ull << 24) - 0.5);
    }
    return v;
  };
  {
    graph::GraphBuilder g(d / "m.onnx", "t");
    g.input("x", io::DType::F32, {M, K});
    const auto w1 = rnd(K * N, 1), c1 = rnd(N, 2), w2 = rnd(N * K, 3), w3 = rnd(K * N, 4);
    const std::string W1 = g.weight("w1", io::DType::F32, {K, N}, w1.data());
    const std::string C1 = g.weight("c1", io::DType::F32, {N}, c1.data());
    const std::string W2 = g.weight("w2", io::DType::F32, {N, K}, w2.data());
    const std::string W3 = g.weight("w3", io::DType::F32, {K, N}, w3.data());
    g.node("Gemm", "/a/Gemm", {"x", W1, C1}, {"y1"});
    g.node("Gemm", "/b/Gemm", {"x", W2}, {"y2"}, {{"transB", 1}});
    g.node("MatMul", "/c/MatMul", {"x", W3}, {"y3"});
    g.node("Gemm", "/d/Gemm", {"x", W3}, {"y4"}, {{"alpha", 2.0f}});
    g.node("MatMul", "/e/MatMul", {"x", g.op("Transpose", "/e/T", {W2})}, {"y5"});
    for (const char* y : {"y1", "y2", "y3", "y4", "y5"}) g.output(y, io::DType::F32, {M, N});
    g.finish();
  }
  const auto x = rnd(M * K, 9);
  auto run = [&](const fs::path& f) {
    runtime::Session s(f);
    runtime::HostTensor xt = runtime::HostTensor::from_f32(x, {M, K});
    std::vector<Ort::Value> in;
    in.push_back(xt.view());
    auto outs = s.run({"x"}, in, {"y1", "y2", "y3", "y4", "y5"});
    std::vector<std::vector<float>> r;
    for (auto& o : outs) r.push_back(runtime::to_f32(o));
    return r;
  };
  const auto ref = run(d / "m.onnx");
  struct Case {
    std::string mode;
    bool standard, symmetric;
    double tol;  // max |diff| / max |ref| per output
  };
  for (const Case& c :
       {Case{"int4", false, true, 0.15}, Case{"int4", false, false, 0.15}, Case{"int8", false, true, 0.02},
        Case{"int8", false, false, 0.02}, Case{"int8", true, true, 0.02}, Case{"int8", true, false, 0.02},
        Case{"int8-dynamic", false, true, 0.05}, Case{"int8-dynamic", true, true, 0.05}}) {
    const std::string what = c.mode + (c.standard ? " standard" : " ort") + (c.symmetric ? " sym" : " asym");
    auto m = graph::OnnxModel::load(d / "m.onnx");
    graph::QuantizeOptions o;
    o.mode = c.mode;
    o.standard_ops = c.standard;
    o.symmetric = c.symmetric;
    o.accuracy_level = 0;
    const graph::QuantizeReport r = graph::quantize(*m, o);
    EXPECT_EQ(r.quantized, 3) << what;
    ASSERT_EQ(r.skipped.size(), 2u) << what;
    EXPECT_EQ(r.skipped[0].reason, "Gemm with alpha != 1") << what;
    EXPECT_NE(r.skipped[1].reason.find("not a constant initializer"), std::string::npos) << what;
    const fs::path out = d / (c.mode + (c.standard ? "s" : "o") + (c.symmetric ? "y" : "n") + ".onnx");
    m->save(out);
    const auto got = run(out);
    for (size_t k = 0; k < ref.size(); ++k) {
      double diff = 0, scale = 0;
      for (size_t i = 0; i < ref[k].size(); ++i) {
        diff = std::max(diff, static_cast<double>(std::fabs(ref[k][i] - got[k][i])));
        scale = std::max(scale, static_cast<double>(std::fabs(ref[k][i])));
      }
      EXPECT_LE(diff / scale, k >= 3 ? 1e-6 : c.tol) << what << " y" << k + 1;
    }
  }
}

}  // namespace
}  // namespace kvrun::test
