// The real Gemma 3 270M (Q4_K_M GGUF from PyPI, fetched by scripts/fetch-gemma3.sh):
// kvrun builds it from the file alone and its greedy tokens equal those of transformers
// loading the same GGUF in fp32 (tests/fixtures/gemma3-270m-gguf/goldens.json, made by
// tools/make_gemma3_gguf_goldens.py) wherever transformers' top-two margin is clear.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "kvrun/build.h"
#include "runtime/package_model.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;

// Two packages of the same file. `exact`: MatMulNBits computing in float32
// (accuracy_level 1), which must reproduce transformers' fp32 logits; it is slow (ORT
// dequantizes 8-bit weights on every call), so it runs on the short prompts' first steps.
// `default`: accuracy_level 4, where MatMulNBits quantizes activations to int8 per block
// as llama.cpp does; measured within 1.05 of transformers' logits (0.8 when rotary read
// cos/sin tables: activation rounding moves with noise that small), so its greedy tokens
// are compared where the reference's top-two margin is at least 1.5. Both run
// teacher-forced on the reference's greedy tokens.
struct Case {
  int accuracy_level;
  double logit_tolerance, clear_margin;
  size_t max_prompt, max_steps;
};
constexpr Case kExact{1, 2e-3, 0.01, 16, 4};
constexpr Case kDefault{4, 1.25, 1.5, 1 << 20, 32};

const fs::path& gemma_package(int accuracy_level) {
  static TempDir dir;
  static std::map<int, fs::path> pkgs;
  auto it = pkgs.find(accuracy_level);
  if (it != pkgs.end()) return it->second;
  BuildOptions o;
  o.checkpoint = gemma3_270m_gguf();
  o.out = dir / ("gemma3-270m-a" + std::to_string(accuracy_level));
  o.quant.accuracy_level = accuracy_level;
  build_package(o);
  return pkgs[accuracy_level] = o.out;
}

void expect_matches_transformers(const Case& c) {
  const nlohmann::json gold = io::read_json_file(fixture("gemma3-270m-gguf") / "goldens.json");
  runtime::PackageModel model(gemma_package(c.accuracy_level));
  int64_t compared = 0;
  for (const auto& p : gold.at("prompts")) {
    const auto ids = p.at("ids").get<std::vector<int64_t>>();
    if (ids.size() > c.max_prompt) continue;
    const auto greedy = p.at("greedy").get<std::vector<int64_t>>();
    const auto margin = p.at("margin").get<std::vector<double>>();
    const auto top1 = p.at("top1_logit").get<std::vector<double>>();
    // Teacher-forced on the reference's greedy tokens: at every step whose reference margin
    // is clear, kvrun's argmax must be the reference's token.
    auto st = model.new_state();
    std::vector<float> logits = model.forward_ids(st, ids);
    double max_diff = 0;  // the prompt's top-10, then each step's top-1 logit
    for (const auto& e : p.at("top10"))
      max_diff = std::max(max_diff, std::fabs(logits[e.at(0).get<size_t>()] - e.at(1).get<double>()));
    const size_t steps = std::min(greedy.size(), c.max_steps);
    int64_t checked = 0, agreed = 0;
    for (size_t t = 0; t < steps; ++t) {
      const auto next = std::max_element(logits.begin(), logits.end()) - logits.begin();
      max_diff = std::max(max_diff, std::fabs(logits[static_cast<size_t>(greedy[t])] - top1[t]));
      if (margin[t] >= c.clear_margin) {
        ++checked;
        agreed += next == greedy[t];
        EXPECT_EQ(next, greedy[t]) << p.at("text") << " step " << t << " (reference margin " << margin[t] << ")";
      }
      if (t + 1 < steps) logits = model.forward_ids(st, {greedy[t]});
    }
    std::printf("[ gemma3-270m a%d ] %4zu prompt ids: %2lld/%2lld clear steps agree, max |logit diff| %.4f, \"%s\"\n",
                c.accuracy_level, ids.size(), static_cast<long long>(agreed), static_cast<long long>(checked), max_diff,
                p.at("text").get<std::string>().substr(0, 32).c_str());
    EXPECT_LT(max_diff, c.logit_tolerance) << p.at("text");
    compared += checked;
  }
  EXPECT_GE(compared, 20);  // enough steps to mean something
}

#define SKIP_WITHOUT_GEMMA()                                                               \
  if (!fs::exists(gemma3_270m_gguf()))                                                     \
  GTEST_SKIP() << gemma3_270m_gguf() << " is absent (scripts/fetch-gemma3.sh fetches it; " \
               << "scripts/test.sh does so before the tests)"

TEST(Gemma3RealGguf, PackageFromTheFileAlone) {
  SKIP_WITHOUT_GEMMA();
  const fs::path pkg = gemma_package(kDefault.accuracy_level);
  const nlohmann::json m = io::read_json_file(pkg / "kvrun.json");
  EXPECT_EQ(m.at("precision"), "source");
  EXPECT_EQ(m.at("model").at("architecture"), "Gemma3ForCausalLM");
  EXPECT_EQ(m.at("embedding").at("dtype"), "U8");  // the Q8_0 table stays 8-bit
  for (const char* f : {"tokenizer.gguf", "embedding.safetensors", "decoder.onnx", "hf_config.json"})
    EXPECT_TRUE(fs::exists(pkg / f)) << f;
  const auto types = m.at("quantization").at("tensor_types");
  for (const char* t : {"Q5_0", "Q8_0", "Q4_K", "Q6_K"}) EXPECT_GT(types.value(t, 0), 0) << t;
  // Package size against the GGUF file: at most 1.25x (MatMulNBits has no 5- or 6-bit
  // codes and wants float32 scales, so Q5_0/Q6_K blocks take 8 bits and Q8_0 scales 4
  // bytes; measured 1.19x).
  uint64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(pkg)) bytes += fs::file_size(e.path());
  const double ratio = static_cast<double>(bytes) / static_cast<double>(fs::file_size(gemma3_270m_gguf()));
  std::printf("[ gemma3-270m ] package %.1f MB, %.2fx the GGUF file\n", static_cast<double>(bytes) / 1e6, ratio);
  EXPECT_LE(ratio, 1.25);
}

TEST(Gemma3RealGguf, FloatComputeReproducesTransformers) {
  SKIP_WITHOUT_GEMMA();
  expect_matches_transformers(kExact);
}

TEST(Gemma3RealGguf, DefaultPackageGreedyEqualsTransformersWhereTheMarginIsClear) {
  SKIP_WITHOUT_GEMMA();
  expect_matches_transformers(kDefault);
}

}  // namespace
}  // namespace kvrun::test
