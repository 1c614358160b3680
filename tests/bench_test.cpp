// kvrun bench: the report's counts and byte figures against the fixture's own
// config and weights, the JSON schema, option errors and the CLI.
#include "kvrun/bench.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "io/safetensors.h"
#include "kvrun/error.h"
#include "test_util.h"

namespace kvrun {
namespace {

using test::built_package;
using test::fixture;

BenchOptions small_options() {
  BenchOptions o;
  o.prompt_lens = {5, 9};
  o.gen_len = 4;
  o.runs = 3;
  o.warmup = 1;
  o.threads = 1;
  o.probe_bandwidth = false;
  return o;
}

TEST(Bench, ReportCountsBytesAndSpreads) {
  const auto pkg = built_package("qwen3-tiny", "ort", "fp32");
  int calls = 0;
  const BenchReport r = bench(pkg, small_options(), [&](int64_t, int done, int total) {
    ++calls;
    EXPECT_LE(done, total);
    EXPECT_EQ(total, 4);
  });
  EXPECT_EQ(calls, 8);  // 2 prompt lengths x (1 warm-up + 3 runs)
  EXPECT_EQ(r.layout, "kvrun-ort");
  EXPECT_EQ(r.precision, "fp32");
  EXPECT_EQ(r.threads, 1);
  // qwen3-tiny: 2 layers, 2 KV heads, head_dim 32, fp32 cache -> 2 * 2 * 2 * 32 * 4 bytes per position.
  EXPECT_EQ(r.kv_bytes_per_token, 2 * 2 * 2 * 32 * 4);
  EXPECT_EQ(r.kv_cache_bytes, r.kv_bytes_per_token * (9 + 4));
  // A decode step reads every weight of the checkpoint once (tied lm_head included).
  const io::TensorStore ckpt(fixture("qwen3-tiny"));
  int64_t ckpt_bytes = 0;
  for (const auto& name : ckpt.names()) ckpt_bytes += static_cast<int64_t>(ckpt.get(name).nbytes);
  EXPECT_GE(r.weights_bytes, ckpt_bytes);
  EXPECT_LT(r.weights_bytes, ckpt_bytes * 2);
  ASSERT_EQ(r.cases.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const BenchCase& c = r.cases[i];
    EXPECT_EQ(c.prompt_len, i == 0 ? 5 : 9);
    EXPECT_EQ(c.gen_len, 4);
    for (const Spread& s : {c.prefill_tokens_per_second, c.decode_tokens_per_second, c.time_to_first_token_s}) {
      EXPECT_GT(s.min, 0);
      EXPECT_LE(s.min, s.median);
      EXPECT_LE(s.median, s.max);
    }
    EXPECT_EQ(c.decode_bytes_per_token, r.weights_bytes + r.kv_bytes_per_token * (c.prompt_len + 2));
    EXPECT_EQ(c.roofline_tokens_per_second, 0);  // no probe
  }
  EXPECT_GT(r.peak_rss_bytes, r.weights_bytes);

  std::istringstream lines(r.to_json());
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("schema"), "kvrun-bench/1");
    EXPECT_EQ(j.at("engine"), "kvrun");
    EXPECT_EQ(j.at("prompt_len"), n == 0 ? 5 : 9);
    EXPECT_EQ(j.at("runs"), 3);
    EXPECT_EQ(j.at("weights_bytes"), r.weights_bytes);
    EXPECT_DOUBLE_EQ(j.at("decode_tokens_per_second").at("median").get<double>(),
                     r.cases[static_cast<size_t>(n)].decode_tokens_per_second.median);
    ++n;
  }
  EXPECT_EQ(n, 2);
  EXPECT_NE(r.to_text().find("decode tok/s"), std::string::npos);
}

TEST(Bench, BandwidthProbeAndRoofline) {
  const double bw = measure_read_bandwidth(16 << 20, 1);
  EXPECT_GT(bw, 1e8);   // any machine reads faster than 100 MB/s
  EXPECT_LT(bw, 1e13);  // and slower than 10 TB/s
  BenchOptions o = small_options();
  o.prompt_lens = {4};
  o.runs = 1;
  o.probe_bandwidth = true;
  o.bandwidth_bytes = 16 << 20;
  const BenchReport r = bench(built_package("qwen3-tiny", "portable", "fp32"), o);
  EXPECT_EQ(r.layout, "kvrun-portable");
  ASSERT_EQ(r.cases.size(), 1u);
  const BenchCase& c = r.cases[0];
  EXPECT_GT(r.bandwidth_bytes_per_second, 0);
  EXPECT_NEAR(c.roofline_tokens_per_second * static_cast<double>(c.decode_bytes_per_token),
              r.bandwidth_bytes_per_second, 1e-6 * r.bandwidth_bytes_per_second);
  EXPECT_NEAR(c.roofline_fraction, c.decode_tokens_per_second.median / c.roofline_tokens_per_second, 1e-12);
}

TEST(Bench, BadOptionsAreNamed) {
  const auto pkg = built_package("qwen3-tiny", "ort", "fp32");
  auto expect_error = [&](BenchOptions o, const std::string& what) {
    try {
      bench(pkg, o);
      FAIL() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  BenchOptions o = small_options();
  o.runs = 0;
  expect_error(o, "--runs");
  o = small_options();
  o.gen_len = 1;
  expect_error(o, "--gen-len");
  o = small_options();
  o.prompt_lens = {};
  expect_error(o, "--prompt-len");
  o = small_options();
  o.prompt_ids = {1, 2, 3};  // shorter than the prompts
  expect_error(o, "--prompt-ids");
  o = small_options();
  o.prompt_lens = {300};  // qwen3-tiny packages hold 256 positions
  expect_error(o, "maximum length");
}

TEST(Bench, Cli) {
  const auto pkg = built_package("qwen3-tiny", "ort", "fp32").string();
  auto r = test::run_cli({"bench", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--prompt-len"), std::string::npos);
  r = test::run_cli({"bench", pkg, "--prompt-len", "3", "--gen-len", "3", "--runs", "1", "--no-bandwidth", "--json",
                     "-q", "--threads", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("prompt_len"), 3);
  EXPECT_EQ(j.at("gen_len"), 3);
  r = test::run_cli({"bench", pkg, "--prompt-len", "3", "--gen-len", "2", "--runs", "1", "--no-bandwidth", "-q",
                     "--prompt-ids", "7,8,9,10", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = test::run_cli({"bench", pkg, "--prompt-len", "3,x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("--prompt-len"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kvrun
