// The CLI end to end: bad input gives one clear error line, a non-zero exit and no
// output folder; --help everywhere; synth-checkpoint + build + verify round trip.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "io/safetensors.h"
#include "kvrun/build.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;

// A copy of a fixture checkpoint whose tensors pass through `edit` (name -> new name or
// "" to drop; shape/data may be replaced) before being written as one model.safetensors.
struct EditedTensor {
  std::string name;
  io::DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

fs::path edited_checkpoint(const TempDir& tmp, const std::string& fixture_name,
                           const std::function<void(std::vector<EditedTensor>&)>& edit) {
  const fs::path dir = tmp / ("ckpt-" + fixture_name);
  fs::create_directories(dir);
  fs::copy_file(fixture(fixture_name) / "config.json", dir / "config.json");
  const io::TensorStore store(fixture(fixture_name));
  std::vector<EditedTensor> ts;
  for (const auto& n : store.names()) {
    const auto& v = store.get(n);
    ts.push_back({n, v.dtype, v.shape, std::vector<uint8_t>(v.data, v.data + v.nbytes)});
  }
  edit(ts);
  std::vector<io::TensorToWrite> w;
  for (const auto& t : ts) w.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  io::write_safetensors(dir / "model.safetensors", w);
  return dir;
}

// Asserts a failed build: non-zero exit, the message fragments, and nothing left behind.
void expect_build_fails(const TempDir& tmp, const fs::path& ckpt, const std::vector<std::string>& fragments) {
  const fs::path out = tmp / "pkg";
  const CliResult r = run_cli({"build", ckpt.string(), "-o", out.string(), "-q"});
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("kvrun: error:"), std::string::npos) << r.out;
  for (const auto& f : fragments) EXPECT_NE(r.out.find(f), std::string::npos) << "missing '" << f << "' in: " << r.out;
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().filename().string().find(".partial-"), std::string::npos) << e.path();
}

TEST(CliErrors, UnsupportedArchitecture) {
  TempDir tmp;
  const fs::path ckpt = edited_checkpoint(tmp, "qwen3-tiny", [](auto&) {});
  nlohmann::json cfg = io::read_json_file(ckpt / "config.json");
  cfg["architectures"] = {"GPT2LMHeadModel"};
  std::ofstream(ckpt / "config.json") << cfg.dump();
  expect_build_fails(tmp, ckpt, {"config.json", "unsupported architecture 'GPT2LMHeadModel'", "Qwen3ForCausalLM"});
}

TEST(CliErrors, MissingTensor) {
  TempDir tmp;
  const fs::path ckpt = edited_checkpoint(tmp, "qwen2-tiny", [](std::vector<EditedTensor>& ts) {
    std::erase_if(ts, [](const EditedTensor& t) { return t.name == "model.layers.1.self_attn.k_proj.bias"; });
  });
  expect_build_fails(tmp, ckpt, {"model.layers.1.self_attn.k_proj.bias", "missing", "expected shape [32]"});
}

TEST(CliErrors, MisnamedTensor) {
  TempDir tmp;
  const fs::path ckpt = edited_checkpoint(tmp, "llama-tiny", [](std::vector<EditedTensor>& ts) {
    for (auto& t : ts)
      if (t.name == "model.norm.weight") t.name = "model.final_norm.weight";
  });
  expect_build_fails(tmp, ckpt, {"'model.norm.weight' is missing", "expected shape [64]"});
}

TEST(CliErrors, WrongShape) {
  TempDir tmp;
  const fs::path ckpt = edited_checkpoint(tmp, "qwen3-tiny", [](std::vector<EditedTensor>& ts) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.mlp.up_proj.weight") t.shape = {64, 128};  // transposed
  });
  expect_build_fails(
      tmp, ckpt,
      {"model.safetensors", "model.layers.0.mlp.up_proj.weight", "has shape [64, 128]", "expected [128, 64]"});
}

TEST(CliErrors, TruncatedSafetensors) {
  TempDir tmp;
  const fs::path ckpt = edited_checkpoint(tmp, "qwen3-tiny", [](auto&) {});
  fs::resize_file(ckpt / "model.safetensors", fs::file_size(ckpt / "model.safetensors") - 100);
  expect_build_fails(tmp, ckpt, {"model.safetensors", "past the data buffer", "truncated"});
}

TEST(CliErrors, LyingHeaderLength) {
  TempDir tmp;
  const fs::path ckpt = edited_checkpoint(tmp, "qwen3-tiny", [](auto&) {});
  {
    std::fstream f(ckpt / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t huge = 1ull << 40;
    f.write(reinterpret_cast<const char*>(&huge), 8);
  }
  expect_build_fails(tmp, ckpt, {"model.safetensors", "header length 1099511627776 exceeds the limit"});
}

// --kv-dtype: combinations the graphs cannot express are refused before anything is
// written; auto gives int4 on target ort a float16 cache, int8 and fp32 a float32 one.
TEST(CliErrors, KvDtypeCombinations) {
  TempDir tmp;
  const fs::path out = tmp / "pkg";
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--target", "portable", "--kv-dtype", "fp16"},
        std::vector<std::string>{"--precision", "fp16", "--kv-dtype", "fp32"}}) {
    std::vector<std::string> args = {"build", fixture("qwen3-tiny").string(), "-o", out.string(), "-q"};
    args.insert(args.end(), extra.begin(), extra.end());
    const CliResult r = run_cli(args);
    EXPECT_NE(r.exit_code, 0) << r.out;
    EXPECT_NE(r.out.find("--kv-dtype"), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(out));
  }
  for (const auto& [precision, kv] : {std::pair{"int4", "F16"}, std::pair{"int8", "F32"}, std::pair{"fp32", "F32"}}) {
    BuildOptions o;
    o.checkpoint = fixture("qwen3-tiny");
    o.out = tmp / precision;
    o.precision = precision;
    build_package(o);
    EXPECT_EQ(io::read_json_file(o.out / "kvrun.json")["kv_cache"]["dtype"], kv) << precision;
  }
}

TEST(CliErrors, MissingCheckpointFolder) {
  TempDir tmp;
  expect_build_fails(tmp, tmp / "does-not-exist", {"does-not-exist"});
}

TEST(CliErrors, VerifyAgainstMismatchedCheckpoint) {
  const fs::path pkg = built_package("qwen3-tiny", "ort", "fp32");
  const CliResult r = run_cli({"verify", pkg.string(), "--checkpoint", fixture("llama-tiny").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("does not match the package"), std::string::npos) << r.out;
}

TEST(CliErrors, BadPromptIds) {
  const fs::path pkg = built_package("qwen3-tiny", "ort", "fp32");
  CliResult r = run_cli({"verify", pkg.string(), "--prompt-ids", "1,x,3"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("'x'"), std::string::npos) << r.out;
  r = run_cli({"verify", pkg.string(), "--prompt-ids", "1,99999"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("99999"), std::string::npos) << r.out;
}

TEST(Cli, HelpForEveryCommand) {
  for (const std::string cmd : {"build", "verify", "synth-checkpoint"}) {
    const CliResult r = run_cli({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd;
    EXPECT_NE(r.out.find("--"), std::string::npos) << cmd;
  }
  const CliResult b = run_cli({"build", "--help"});
  for (const char* flag : {"--target", "--precision", "--max-length", "--all-logits", "--overwrite"})
    EXPECT_NE(b.out.find(flag), std::string::npos) << flag;
}

// A config the goldens do not cover (Llama with attention and MLP biases, linear rope
// scaling): synth-checkpoint -> build both targets -> verify against the reference.
TEST(Cli, SynthBuildVerifyRoundTrip) {
  TempDir tmp;
  const nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                              {"hidden_size", 96},
                              {"intermediate_size", 160},
                              {"num_hidden_layers", 2},
                              {"num_attention_heads", 6},
                              {"num_key_value_heads", 2},
                              {"vocab_size", 300},
                              {"max_position_embeddings", 128},
                              {"attention_bias", true},
                              {"mlp_bias", true},
                              {"rope_theta", 10000.0},
                              {"rope_scaling", {{"rope_type", "linear"}, {"factor", 2.0}}},
                              {"tie_word_embeddings", true},
                              {"eos_token_id", 2},
                              {"torch_dtype", "float32"}};
  std::ofstream(tmp / "config.json") << cfg.dump();
  CliResult r = run_cli({"synth-checkpoint", "--config", (tmp / "config.json").string(), "-o", (tmp / "ckpt").string(),
                         "--seed", "7", "--std", "0.2", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (const std::string target : {"ort", "portable"}) {
    const fs::path pkg = tmp / ("pkg-" + target);
    r = run_cli({"build", (tmp / "ckpt").string(), "-o", pkg.string(), "--target", target, "-q"});
    ASSERT_EQ(r.exit_code, 0) << r.out;
    r = run_cli({"verify", pkg.string(), "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.out;
    EXPECT_TRUE(nlohmann::json::parse(r.out)["passed"].get<bool>()) << r.out;
  }
  // same seed -> same bytes
  r = run_cli({"synth-checkpoint", "--config", (tmp / "config.json").string(), "-o", (tmp / "ckpt2").string(), "--seed",
               "7", "--std", "0.2", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(io::read_text_file(tmp / "ckpt" / "model.safetensors", 1 << 30),
            io::read_text_file(tmp / "ckpt2" / "model.safetensors", 1 << 30));
}

}  // namespace
}  // namespace kvrun::test
