// graph::OnnxModel: load any ONNX file with its external data, save it back.
#include "graph/onnx_model.h"

#include <gtest/gtest.h>

#include <fstream>

#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "test_util.h"

namespace kvrun {
namespace {

using test::fixture;

TEST(OnnxModel, RoundTripKeepsTheModelRunning) {
  for (const std::string layout : {"optimum-merged", "genai"}) {
    test::TempDir d;
    const auto src = fixture("layouts") / layout;
    for (const auto& e : std::filesystem::directory_iterator(src))
      if (e.path().extension() == ".json") std::filesystem::copy(e.path(), d / e.path().filename().string());
    const std::string file = layout == "genai" ? "model.onnx" : "decoder_model_merged.onnx";
    auto m = graph::OnnxModel::load(src / file);
    int graphs = 0;
    m->for_each_graph([&](onnx::GraphProto&) { ++graphs; });
    EXPECT_EQ(graphs, layout == "genai" ? 1 : 3) << layout;
    m->save(d / file);
    EXPECT_TRUE(std::filesystem::exists(d / (file + ".data"))) << layout;
    auto model = Model::load(d.path());
    GenerationOptions o;
    o.max_new_tokens = 8;
    o.stop_at_eos = false;
    EXPECT_EQ(model->generate(Prompt().ids({303}), o).tokens,
              (std::vector<TokenId>{142, 150, 425, 495, 122, 495, 122, 473}))
        << layout;
  }
}

TEST(OnnxModel, BadFilesGiveClearErrors) {
  test::TempDir d;
  auto expect_error = [](const std::filesystem::path& p, const std::string& what) {
    try {
      graph::OnnxModel::load(p);
      ADD_FAILURE() << "no error for " << p;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error(d / "missing.onnx", "no such file");
  // truncated protobuf
  const auto src = fixture("layouts") / "optimum-plain" / "model.onnx";
  std::string bytes;
  {
    std::ifstream in(src, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::ofstream(d / "trunc.onnx", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  expect_error(d / "trunc.onnx", "not a valid ONNX model");
  std::ofstream(d / "junk.onnx", std::ios::binary) << "this is not a model";
  expect_error(d / "junk.onnx", "not a valid ONNX model");
  // external data shorter than the tensors it should hold
  std::filesystem::copy(fixture("layouts") / "genai" / "model.onnx", d / "model.onnx");
  std::ofstream(d / "model.onnx.data", std::ios::binary) << "short";
  expect_error(d / "model.onnx", "but the file has 5 bytes");
}

}  // namespace
}  // namespace kvrun
