// GGUF files written by llama.cpp's own converter (tools/make_gguf_model_fixtures.py) from
// the tiny Hugging Face fixtures build into packages whose logits equal transformers'
// (the fixtures' goldens) on both targets: llama's permuted q/k rows are put back, Qwen2's
// biases and Qwen3's q/k norms mapped. Bad files fail with one line naming the key or
// tensor, exit code 2 and no package folder.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include "kvrun/build.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;

fs::path gguf_model(const std::string& name) { return fixture("gguf-models") / name; }

class GgufModel : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufModel, BothTargetsMatchTransformers) {
  const std::string name = GetParam();  // llama-tiny, qwen2-tiny, qwen3-tiny
  const Golden g = load_golden(name);
  TempDir d;
  for (const std::string target : {"ort", "portable"}) {
    BuildOptions o;
    o.checkpoint = gguf_model(name + "-f32.gguf");
    o.out = d / target;
    o.target = target;
    build_package(o);
    double worst = 0;
    int64_t positions = 0, same_argmax = 0;
    teacher_forced(o.out, g, [&](const float* hf, const float* got, int64_t V) {
      for (int64_t i = 0; i < V; ++i) worst = std::max(worst, static_cast<double>(std::fabs(hf[i] - got[i])));
      ++positions;
      same_argmax += std::max_element(hf, hf + V) - hf == std::max_element(got, got + V) - got;
    });
    std::printf("[ %s.gguf %s ] %lld positions, max |logit - HF| %.2e\n", name.c_str(), target.c_str(),
                static_cast<long long>(positions), worst);
    EXPECT_LE(worst, 1e-4) << name << " " << target;
    EXPECT_EQ(same_argmax, positions);
  }
}

INSTANTIATE_TEST_SUITE_P(Converted, GgufModel, ::testing::Values("llama-tiny", "qwen2-tiny", "qwen3-tiny"));

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// The offset just past a GGUF string holding `s` (u64 length + bytes).
size_t after_string(const std::string& bytes, const std::string& s) {
  std::string needle(8, '\0');
  const uint64_t n = s.size();
  std::memcpy(needle.data(), &n, 8);
  needle += s;
  const size_t at = bytes.find(needle);
  EXPECT_NE(at, std::string::npos) << s;
  return at + needle.size();
}

void expect_build_fails(const std::string& bytes, const std::vector<std::string>& fragments) {
  TempDir d;
  const fs::path file = d / "bad.gguf";
  std::ofstream(file, std::ios::binary) << bytes;
  const CliResult r = run_cli({"build", file.string(), "-o", (d / "pkg").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  for (const auto& f : fragments) EXPECT_NE(r.out.find(f), std::string::npos) << "missing '" << f << "' in " << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << "one error line: " << r.out;
  for (const auto& e : fs::directory_iterator(d.path())) EXPECT_EQ(e.path().filename(), "bad.gguf") << "left behind";
}

TEST(GgufModelErrors, BadFilesFailWithOneLineNamingWhatIsWrong) {
  const std::string good = read_all(gguf_model("qwen3-tiny-f32.gguf"));
  {  // an architecture kvrun does not build
    std::string b = good;
    const size_t v = after_string(b, "general.architecture") + 4;  // past the u32 value type
    b.replace(v + 8, 5, "phi99");
    expect_build_fails(b, {"general.architecture is 'phi99'", "llama, qwen2, qwen3 and gemma3"});
  }
  {  // metadata of the wrong type: block_count as f32
    std::string b = good;
    const size_t t = after_string(b, "qwen3.block_count");
    const uint32_t f32 = 6;
    std::memcpy(b.data() + t, &f32, 4);
    expect_build_fails(b, {"'qwen3.block_count'", "f32"});
  }
  {  // a tensor type id no ggml version has
    std::string b = good;
    const size_t t = after_string(b, "blk.0.attn_q.weight");
    uint32_t dims;
    std::memcpy(&dims, b.data() + t, 4);
    const uint32_t bogus = 99;
    std::memcpy(b.data() + t + 4 + 8 * dims, &bogus, 4);
    expect_build_fails(b, {"'blk.0.attn_q.weight'", "99"});
  }
  {  // a tensor whose size disagrees with the file: its row grows past the data
    std::string b = good;
    const size_t t = after_string(b, "output_norm.weight");
    const uint64_t huge = uint64_t{1} << 40;
    std::memcpy(b.data() + t + 4, &huge, 8);
    expect_build_fails(b, {"'output_norm.weight'"});
  }
  // truncated in the middle of the tensor data
  expect_build_fails(good.substr(0, good.size() / 2), {"bad.gguf", "tensor '"});
}

}  // namespace
}  // namespace kvrun::test
