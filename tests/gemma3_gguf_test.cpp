// The real Gemma 3 270M (Q4_K_M GGUF from PyPI, fetched by scripts/fetch-gemma3.sh):
// kvrun builds it from the file alone and its greedy tokens equal those of transformers
// loading the same GGUF in fp32 (tests/fixtures/gemma3-270m-gguf/goldens.json, made by
// tools/make_gemma3_gguf_goldens.py) wherever transformers' top-two margin is clear.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "kvrun/build.h"
#include "runtime/package_model.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;

// Steps whose reference top-1/top-2 margin is below this may go either way: kvrun's
// MatMulNBits (accuracy_level 4) quantizes activations to int8 per block, as llama.cpp does.
constexpr double kClearMargin = 0.05;

const fs::path& gemma_package() {
  static TempDir dir;
  static const fs::path pkg = [] {
    BuildOptions o;
    o.checkpoint = gemma3_270m_gguf();
    o.out = dir / "gemma3-270m";
    build_package(o);
    return o.out;
  }();
  return pkg;
}

#define SKIP_WITHOUT_GEMMA()                                                               \
  if (!fs::exists(gemma3_270m_gguf()))                                                     \
  GTEST_SKIP() << gemma3_270m_gguf() << " is absent (scripts/fetch-gemma3.sh fetches it; " \
               << "scripts/test.sh does so before the tests)"

TEST(Gemma3RealGguf, PackageFromTheFileAlone) {
  SKIP_WITHOUT_GEMMA();
  const nlohmann::json m = io::read_json_file(gemma_package() / "kvrun.json");
  EXPECT_EQ(m.at("precision"), "source");
  EXPECT_EQ(m.at("model").at("architecture"), "Gemma3ForCausalLM");
  EXPECT_EQ(m.at("embedding").at("dtype"), "U8");  // the Q8_0 table stays 8-bit
  for (const char* f : {"tokenizer.gguf", "embedding.safetensors", "decoder.onnx", "hf_config.json"})
    EXPECT_TRUE(fs::exists(gemma_package() / f)) << f;
  const auto types = m.at("quantization").at("tensor_types");
  for (const char* t : {"Q5_0", "Q8_0", "Q4_K", "Q6_K"}) EXPECT_GT(types.value(t, 0), 0) << t;
  // Package size against the GGUF file (MatMulNBits has no 5- or 6-bit codes and wants
  // float32 scales, so Q5_0/Q6_K blocks take 8 bits and Q8_0 scales 4 bytes).
  uint64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(gemma_package())) bytes += fs::file_size(e.path());
  const double ratio = static_cast<double>(bytes) / static_cast<double>(fs::file_size(gemma3_270m_gguf()));
  std::printf("[ gemma3-270m ] package %.1f MB, %.2fx the GGUF file\n", static_cast<double>(bytes) / 1e6, ratio);
  EXPECT_LT(ratio, 1.5);
}

TEST(Gemma3RealGguf, GreedyTokensEqualTransformersWhereTheMarginIsClear) {
  SKIP_WITHOUT_GEMMA();
  const nlohmann::json gold = io::read_json_file(fixture("gemma3-270m-gguf") / "goldens.json");
  runtime::PackageModel model(gemma_package());
  int64_t compared = 0;
  for (const auto& p : gold.at("prompts")) {
    const auto ids = p.at("ids").get<std::vector<int64_t>>();
    const auto greedy = p.at("greedy").get<std::vector<int64_t>>();
    const auto margin = p.at("margin").get<std::vector<double>>();
    const auto top10 = p.at("top10");
    // steps before the first unclear one
    size_t clear = 0;
    while (clear < greedy.size() && margin[clear] >= kClearMargin) ++clear;
    auto st = model.new_state();
    std::vector<float> logits = model.forward_ids(st, ids);
    // the prompt's last position: the reference's top-10 logits
    double max_diff = 0;
    for (const auto& e : top10) {
      const auto id = e.at(0).get<int64_t>();
      max_diff = std::max(max_diff, std::fabs(logits[static_cast<size_t>(id)] - e.at(1).get<double>()));
    }
    std::vector<int64_t> got;
    for (size_t t = 0; t < clear; ++t) {
      const auto next = std::max_element(logits.begin(), logits.end()) - logits.begin();
      got.push_back(next);
      if (next != greedy[t]) break;
      logits = model.forward_ids(st, {next});
    }
    std::printf("[ gemma3-270m ] %4zu prompt ids: %zu clear steps, top-10 max |diff| %.3f, \"%s\"\n", ids.size(),
                clear, max_diff, p.at("text").get<std::string>().substr(0, 40).c_str());
    EXPECT_EQ(got, std::vector<int64_t>(greedy.begin(), greedy.begin() + static_cast<std::ptrdiff_t>(clear)))
        << p.at("text");
    EXPECT_LT(max_diff, 0.5) << p.at("text");
    compared += static_cast<int64_t>(clear);
  }
  EXPECT_GE(compared, 100);  // the goldens hold enough clear steps to mean something
}

}  // namespace
}  // namespace kvrun::test
