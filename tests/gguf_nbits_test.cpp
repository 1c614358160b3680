// Every GGUF block type kvrun keeps maps onto ONNX Runtime's MatMulNBits exactly:
// graph::nbits_from_ggml's weights dequantize bit for bit to gguf-py's values
// (tests/fixtures/gguf/*.expected.f32), and so does ORT itself: a one-hot input makes
// each output element one weight, (q - zp) * scale - min computed by MatMulNBits and
// the block-sum correction (accuracy_level 1, float compute), equal to gguf-py's value
// (as a number: a matmul's sum has no signed zeros).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <set>

#include "graph/builder.h"
#include "graph/nbits.h"
#include "io/gguf.h"
#include "runtime/ort_session.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;

std::vector<float> read_f32_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  const std::string b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> out(b.size() / 4);
  std::memcpy(out.data(), b.data(), out.size() * 4);
  return out;
}

// y = onehot(K) . W^T through MatMulNBits: y[k, n] = W[n, k].
std::vector<float> through_ort(const graph::NBitsWeight& w, const fs::path& dir) {
  const fs::path file = dir / "nbits.onnx";
  {
    graph::GraphBuilder g(file, "nbits", {{"", 17}, {"com.microsoft", 1}});
    g.input("x", io::DType::F32, {graph::Dim{w.K}, graph::Dim{w.K}});
    const graph::NBitsNames names = graph::nbits_initializers(g, "w", w);
    const std::string y = graph::nbits_matmul(g, "/w", "x", w, names, /*accuracy_level=*/1);
    g.node("Identity", "/out", {y}, {"y"});
    g.output("y", io::DType::F32, {graph::Dim{w.K}, graph::Dim{w.N}});
    g.finish();
  }
  runtime::Session s(file);
  std::vector<float> eye(static_cast<size_t>(w.K * w.K), 0.f);
  for (int64_t k = 0; k < w.K; ++k) eye[static_cast<size_t>(k * w.K + k)] = 1.f;
  runtime::HostTensor x = runtime::HostTensor::from_f32(eye, {w.K, w.K});
  std::vector<Ort::Value> in;
  in.push_back(x.view());
  auto out = s.run({"x"}, in, {"y"});
  const std::vector<float> yv = runtime::to_f32(out[0]);
  std::vector<float> t(static_cast<size_t>(w.N * w.K));  // back to [N, K]
  for (int64_t k = 0; k < w.K; ++k)
    for (int64_t n = 0; n < w.N; ++n) t[static_cast<size_t>(n * w.K + k)] = yv[k * w.N + n];
  return t;
}

TEST(GgufNBits, EveryKeptTypeIsExactInKvrunAndInOnnxRuntime) {
  TempDir dir;
  const io::GgufFile g(fixture("gguf/types.gguf"));
  const std::vector<float> expected = read_f32_file(fixture("gguf/types.expected.f32"));
  size_t at = 0;
  std::set<std::string> kept;
  for (const auto& t : g.tensors()) {
    const size_t n = static_cast<size_t>(t.numel());
    if (graph::ggml_has_nbits(t.type) && t.ne.size() == 2) {
      SCOPED_TRACE(t.name + " (" + io::ggml_type_name(t.type) + ")");
      const graph::NBitsWeight w =
          graph::nbits_from_ggml(static_cast<io::GgmlType>(t.type), t.data, t.rows(), t.row_elems());
      const std::vector<float> mine = w.to_f32();
      ASSERT_EQ(mine.size(), n);
      EXPECT_EQ(std::memcmp(mine.data(), expected.data() + at, n * 4), 0) << "kvrun's dequantization";
      const std::vector<float> ort = through_ort(w, dir.path());
      // Equal as numbers: a product summed by a matmul cannot carry the sign of a zero weight.
      for (size_t i = 0; i < n; ++i)
        if (!(ort[i] == expected[at + i])) {
          ADD_FAILURE() << "ONNX Runtime element " << i << ": " << ort[i] << ", gguf-py " << expected[at + i] << " ("
                        << w.describe() << ")";
          break;
        }
      kept.insert(io::ggml_type_name(t.type));
    }
    at += n;
  }
  for (const char* ty : {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"})
    EXPECT_TRUE(kept.count(ty)) << ty << " not exercised (tests/fixtures/gguf/types.gguf)";
}

}  // namespace
}  // namespace kvrun::test
