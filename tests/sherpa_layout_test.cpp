// FunASR-nano exported by other tools (tests/fixtures/funasr-export, made by
// tools/make_funasr_export_fixtures.py from the tiny FunASR-nano folder): the sherpa-onnx
// layout (llm.onnx, a KV-delta graph with a fixed max_total_len cache, + embedding.onnx) and
// the older split layout (llm_prefill.onnx + llm_decode.onnx + embedding.onnx). kvrun::Model
// must load the LLM part of both and give the reference's greedy ids (expected.json, from the
// goldens of tests/fixtures/funasr-nano-tiny) for prefix ids + adaptor rows + suffix ids.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "kvrun/error.h"
#include "kvrun/runtime.h"
#include "runtime/ort_session.h"
#include "runtime/signature.h"
#include "test_util.h"

namespace kvrun {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::fixture;

fs::path export_dir() { return fixture("funasr-export"); }

const json& expected() {
  static const json j = [] {
    std::ifstream in(export_dir() / "expected.json");
    return json::parse(in);
  }();
  return j;
}

std::vector<TokenId> ids_of(const json& j) {
  std::vector<TokenId> v;
  for (const auto& x : j) v.push_back(static_cast<TokenId>(x.get<int64_t>()));
  return v;
}

// One run of the goldens: prefix ids + the first N adaptor rows of the clip (float
// embeddings, from the goldens' safetensors) + suffix ids, and the reference's greedy ids.
struct GoldenRun {
  std::string name;
  Prompt prompt;
  std::vector<TokenId> greedy;
  int64_t context = 0;
};

const std::vector<GoldenRun>& runs() {
  static const std::vector<GoldenRun> all = [] {
    const io::TensorStore goldens(export_dir() / expected()["goldens"].get<std::string>());
    const auto H = expected()["hidden_size"].get<int64_t>();
    std::vector<GoldenRun> v;
    for (const auto& r : expected()["runs"]) {
      const int64_t n = r["N"].get<int64_t>();
      const std::vector<float> all_rows = goldens.get(r["clip"].get<std::string>() + ".adaptor_out").to_f32();
      std::vector<float> rows(all_rows.begin(), all_rows.begin() + n * H);
      GoldenRun run;
      run.name = r["clip"].get<std::string>() + "/" + r["variant"].get<std::string>();
      run.prompt.ids(ids_of(r["prefix_ids"])).embeddings(rows, n).ids(ids_of(r["suffix_ids"]));
      run.greedy = ids_of(r["greedy_ids"]);
      run.context = r["context_len"].get<int64_t>();
      v.push_back(std::move(run));
    }
    return v;
  }();
  return all;
}

const GoldenRun& run_named(const std::string& name) {
  for (const auto& r : runs())
    if (r.name == name) return r;
  throw Error("no run " + name + " in expected.json");
}

GenerationOptions greedy() {
  GenerationOptions o;
  o.max_new_tokens = expected()["max_new_tokens"].get<int64_t>();
  o.stop_ids = {static_cast<TokenId>(expected()["eos_id"].get<int64_t>())};
  return o;
}

TEST(SherpaLayout, DetectedFromSignatureAndMetadata) {
  auto m = Model::load(export_dir() / "sherpa");
  const ModelInfo& i = m->info();
  EXPECT_EQ(i.layout, "sherpa-kv-delta");
  EXPECT_TRUE(i.kv_delta);
  EXPECT_FALSE(i.shared_kv_buffer);
  EXPECT_TRUE(i.takes_embeddings);
  EXPECT_EQ(i.max_length, expected()["max_total_len"].get<int64_t>());
  EXPECT_EQ(i.kv_seq_axis, 1);  // [batch, max_total_len, kv_heads, head_dim]
  EXPECT_EQ(i.hidden_size, expected()["hidden_size"].get<int64_t>());
  EXPECT_EQ(i.vocab_size, 151936);
  EXPECT_EQ(i.graphs, (std::vector<std::string>{"embedding.onnx", "llm.onnx"}));
  EXPECT_NE(i.convention.find("cache_key_%d -> key_delta_%d"), std::string::npos) << i.convention;
  // eos from the LLM's config.json in the Qwen3-0.6B/ subfolder
  EXPECT_NE(std::find(i.eos_ids.begin(), i.eos_ids.end(), 151645), i.eos_ids.end());
  EXPECT_NE(i.to_text().find("fixed buffer + new rows"), std::string::npos);
}

// What a front end reads from encoder_adaptor.onnx (runtime::Session::metadata()).
TEST(SherpaLayout, EncoderAdaptorMetadata) {
  for (const char* layout : {"sherpa", "split"}) {
    runtime::Session enc(export_dir() / layout / "encoder_adaptor.onnx");
    const auto& md = enc.metadata();
    EXPECT_EQ(md.at("model_type"), "sense_voice_encoder_adaptor");
    EXPECT_EQ(md.at("lfr_window_size"), "7");
    EXPECT_EQ(md.at("lfr_window_shift"), "6");
    EXPECT_EQ(md.at("normalize_samples"), "0");
    EXPECT_EQ(md.at("encoder_output_size"), "16");
    EXPECT_EQ(md.at("llm_dim"), "8");
    ASSERT_EQ(enc.inputs().size(), 1u);
    EXPECT_EQ(runtime::io_str(enc.inputs()[0]), "float32 [1, T, 560]");
    EXPECT_EQ(enc.outputs().at(0).name, "encoder_out");
  }
}

TEST(SherpaLayout, GreedyMatchesReference) {
  auto m = Model::load(export_dir() / "sherpa");
  ASSERT_EQ(runs().size(), 10u);
  for (const auto& r : runs()) {
    const auto g = m->generate(r.prompt, greedy());
    EXPECT_EQ(g.tokens, r.greedy) << r.name;
    EXPECT_EQ(g.stats.prompt_tokens, r.context) << r.name;
  }
}

TEST(SherpaLayout, ChunkedPrefillMatches) {
  auto m = Model::load(export_dir() / "sherpa");
  GenerationOptions o = greedy();
  o.prefill_chunk = 7;  // cache_position starts past 0 with several rows
  const GoldenRun& r = run_named("kvrun_16k/hotwords");
  EXPECT_EQ(m->generate(r.prompt, o).tokens, r.greedy);
}

TEST(SherpaLayout, BatchOfEqualRowsAndMixedLengths) {
  auto m = Model::load(export_dir() / "sherpa");
  // Equal lengths (29 positions each): one batch, the deltas copied from ORT's outputs into
  // each row's buffer.
  const std::vector<const GoldenRun*> same = {&run_named("hello_16k/default"), &run_named("stereo_16k/default"),
                                              &run_named("call_8k/default")};
  std::vector<Prompt> ps;
  for (const GoldenRun* r : same) ps.push_back(r->prompt);
  auto rs = m->generate(ps, greedy());
  ASSERT_EQ(rs.size(), same.size());
  for (size_t k = 0; k < same.size(); ++k) EXPECT_EQ(rs[k].tokens, same[k]->greedy) << same[k]->name;
  // Different lengths: cache_position is shared by the batch, so the rows run one after another.
  ps.clear();
  for (const auto& r : runs()) ps.push_back(r.prompt);
  rs = m->generate(ps, greedy());
  ASSERT_EQ(rs.size(), runs().size());
  for (size_t k = 0; k < rs.size(); ++k) EXPECT_EQ(rs[k].tokens, runs()[k].greedy) << runs()[k].name;
}

TEST(SherpaLayout, SequenceReusesTheFixedCache) {
  auto m = Model::load(export_dir() / "sherpa");
  auto seq = m->new_sequence();
  const GoldenRun& a = run_named("kvrun_16k/default");
  const GoldenRun& b = run_named("kvrun_16k/lang_en");
  EXPECT_EQ(seq->generate(a.prompt, greedy()).tokens, a.greedy);
  // Another prompt variant: the common text prefix is reused, the rest is written over the
  // stale rows of the buffer.
  const auto r = seq->generate(b.prompt, greedy());
  EXPECT_EQ(r.tokens, b.greedy);
  EXPECT_GT(r.stats.reused_tokens, 0);
  EXPECT_EQ(seq->generate(a.prompt, greedy()).tokens, a.greedy);
}

TEST(SherpaLayout, ContextOverMaxTotalLenIsRefused) {
  auto m = Model::load(export_dir() / "sherpa");
  const int64_t cap = m->info().max_length;
  std::vector<TokenId> many(static_cast<size_t>(cap + 1), 198);
  test::expect_error([&] { m->generate(Prompt().ids(many), greedy()); },
                     {"prompt of " + std::to_string(cap + 1) + " positions", "maximum length " + std::to_string(cap),
                      "max_total_len of llm.onnx", "not truncated"});
  auto seq = m->new_sequence();
  test::expect_error([&] { seq->generate(Prompt().ids(many), greedy()); },
                     {std::to_string(cap + 1), std::to_string(cap), "max_total_len"});
  // A prompt that fits but leaves no room: generation stops at the cap, reported as "length".
  std::vector<TokenId> fits(static_cast<size_t>(cap - 1), 198);
  const auto r = m->generate(Prompt().ids(fits), GenerationOptions{});
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(static_cast<int64_t>(r.tokens.size()), 2);  // positions cap - 1 and cap
}

TEST(FunasrSplitLayout, LoadsAndMatchesReference) {
  auto m = Model::load(export_dir() / "split");
  const ModelInfo& i = m->info();
  EXPECT_EQ(i.layout, "split");
  EXPECT_FALSE(i.kv_delta);
  EXPECT_EQ(i.kv_seq_axis, 2);  // the HF cache layout [batch, kv_heads, seq, head_dim]
  EXPECT_EQ(i.graphs, (std::vector<std::string>{"embedding.onnx", "llm_prefill.onnx", "llm_decode.onnx"}));
  EXPECT_EQ(i.num_kv_heads, 1);
  for (const auto& r : runs()) EXPECT_EQ(m->generate(r.prompt, greedy()).tokens, r.greedy) << r.name;
}

TEST(FunasrSplitLayout, LeftPaddedBatchOfAllRuns) {
  // Rows of different lengths, left-padded: the padded keys are masked and RoPE only sees
  // position differences, so each row gives its own greedy ids.
  auto m = Model::load(export_dir() / "split");
  std::vector<Prompt> ps;
  for (const auto& r : runs()) ps.push_back(r.prompt);
  const auto rs = m->generate(ps, greedy());
  for (size_t k = 0; k < rs.size(); ++k) EXPECT_EQ(rs[k].tokens, runs()[k].greedy) << runs()[k].name;
}

// ---- a folder the runtime cannot feed: side-by-side signature error

// Copies sherpa/ into `dir` with llm.onnx edited by `edit`.
void edited_copy(const fs::path& dir, const std::function<void(onnx::ModelProto&)>& edit) {
  const fs::path src = export_dir() / "sherpa";
  fs::copy(src, dir, fs::copy_options::recursive);
  onnx::ModelProto mp;
  {
    std::ifstream in(src / "llm.onnx", std::ios::binary);
    ASSERT_TRUE(mp.ParseFromIstream(&in));
  }
  edit(mp);
  std::ofstream out(dir / "llm.onnx", std::ios::binary | std::ios::trunc);
  ASSERT_TRUE(mp.SerializeToOstream(&out));
}

TEST(SherpaLayoutErrors, MissingInputIsShownSideBySide) {
  test::TempDir d;
  edited_copy(d / "m", [](onnx::ModelProto& mp) {
    auto* g = mp.mutable_graph();
    for (auto& i : *g->mutable_input())
      if (i.name() == "cache_position") i.set_name("step_index");
    for (auto& n : *g->mutable_node())
      for (auto& x : *n.mutable_input())
        if (x == "cache_position") x = "step_index";
  });
  test::expect_error([&] { Model::load(d / "m"); },
                     {"does not match the decoder signature", "expected", "found", "cache_position  int64 [seq]",
                      "(missing)", "(not expected)", "step_index  int64 [seq]",
                      "missing input 'cache_position' (a KV-delta graph takes the positions of the new rows)",
                      "cache_key_1  float [batch, max_total_len, kv_heads, head_dim]"});
}

TEST(SherpaLayoutErrors, MetadataDisagreeingWithTheGraphIsRefused) {
  test::TempDir d;
  edited_copy(d / "m", [](onnx::ModelProto& mp) {
    for (auto& p : *mp.mutable_metadata_props())
      if (p.key() == "max_total_len") p.set_value("512");
  });
  test::expect_error([&] { Model::load(d / "m"); }, {"metadata max_total_len is 512 but the graph has 128"});
}

}  // namespace
}  // namespace kvrun
