// Gemma 3 text models (Gemma3ForCausalLM): config parsing (configs/gemma3-270m.json has
// the real 270M shapes), the rules tests/fixtures/gemma3-tiny's transformers goldens
// (tools/make_gemma3_fixture.py) hold the graphs to, prefill in chunks past the sliding
// window, the scaled embedding lookup, verify and synth-checkpoint. The per-fixture golden
// checks (reference, both targets, greedy, all logits) are golden_test.cpp's Gemma3/Golden_.*
// and the generation runtime's runtime_test.cpp's Gemma3/RuntimePackage.*.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "kvrun/build.h"
#include "kvrun/runtime.h"
#include "kvrun/verify.h"
#include "reference/decoder_ref.h"
#include "runtime/decoder.h"
#include "runtime/ort_session.h"
#include "runtime/package_model.h"
#include "test_util.h"

namespace kvrun {
namespace {

using nlohmann::json;
using test::built_package;
using test::expect_error;
using test::fixture;
using test::max_abs_diff;
using test::TempDir;

constexpr double kFp32Tol = 1e-4;
const char* kFixture = "gemma3-tiny";

json config_270m() { return io::read_json_file(test::source_dir() / "configs" / "gemma3-270m.json"); }

TEST(Gemma3Config, Real270mShapes) {
  const io::ModelConfig c = io::parse_model_config(config_270m(), "gemma3-270m.json");
  EXPECT_EQ(c.family, io::Family::Gemma3);
  EXPECT_EQ(c.hidden_size, 640);
  EXPECT_EQ(c.num_layers, 18);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.q_dim(), 1024);  // exceeds hidden
  EXPECT_EQ(c.intermediate_size, 2048);
  EXPECT_EQ(c.vocab_size, 262144);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.sliding_window, 512);
  // no layer_types in this file: sliding_window_pattern 6, layer i global iff (i + 1) % 6 == 0
  for (int64_t l = 0; l < 18; ++l) EXPECT_EQ(c.is_local(l), l != 5 && l != 11 && l != 17) << "layer " << l;
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / 16);  // query_pre_attn_scalar 256
  EXPECT_NEAR(c.embedding_scale, 25.2982, 1e-4);
  EXPECT_EQ(static_cast<float>(c.embedding_scale), static_cast<float>(std::sqrt(640.0)));
  EXPECT_EQ(c.norm_weight_offset, 1.0);
  EXPECT_TRUE(c.sandwich_norms && c.qk_norm && c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
  EXPECT_EQ(c.hidden_act, io::Activation::GeluTanh);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_local_theta, 1e4);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_EQ(c.final_logit_softcap, 0.0);
  EXPECT_NEAR(c.inv_freq(false)[1], 1.0 / std::pow(1e6, 2.0 / 256), 1e-7);
  EXPECT_NEAR(c.inv_freq(true)[1], 1.0 / std::pow(1e4, 2.0 / 256), 1e-7);
  const json j = c.to_json();
  EXPECT_EQ(j.at("family"), "gemma3");
  EXPECT_EQ(j.at("layer_types").at(5), "full_attention");
  EXPECT_EQ(j.at("layer_types").at(4), "sliding_attention");
}

// transformers 5's spelling: layer_types, rope_parameters per layer type (linear scaling on
// the global layers only).
TEST(Gemma3Config, FixtureNativeSpelling) {
  const io::ModelConfig c = io::load_model_config(fixture(kFixture));
  EXPECT_EQ(c.local_layers, (std::vector<bool>{true, true, false, true}));
  EXPECT_EQ(c.sliding_window, 8);
  EXPECT_EQ(c.query_pre_attn_scalar, 24);
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(24.0));
  EXPECT_EQ(c.final_logit_softcap, 12.0);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  const std::vector<float> g = c.inv_freq(false), l = c.inv_freq(true);
  for (size_t i = 0; i < g.size(); ++i) {
    EXPECT_NEAR(g[i], 1.0 / std::pow(1e6, 2.0 * static_cast<double>(i) / 32) / 4, 1e-7) << i;
    EXPECT_NEAR(l[i], 1.0 / std::pow(1e4, 2.0 * static_cast<double>(i) / 32), 1e-7) << i;
  }
}

TEST(Gemma3Config, PatternAndRefusals) {
  json j = config_270m();
  j["num_hidden_layers"] = 4;
  j.erase("_sliding_window_pattern");
  j["sliding_window_pattern"] = 2;
  EXPECT_EQ(io::parse_model_config(j, "cfg").local_layers, (std::vector<bool>{true, false, true, false}));
  auto refused = [&](const std::function<void(json&)>& edit, const std::vector<std::string>& fragments) {
    json k = config_270m();
    edit(k);
    expect_error([&] { io::parse_model_config(k, "cfg.json"); }, fragments);
  };
  refused([](json& k) { k["attn_logit_softcapping"] = 50.0; }, {"cfg.json", "attn_logit_softcapping", "not supported"});
  refused([](json& k) { k["hidden_activation"] = "gelu"; }, {"hidden_activation", "'gelu'", "gelu_pytorch_tanh"});
  refused([](json& k) { k["use_bidirectional_attention"] = true; }, {"use_bidirectional_attention"});
  refused([](json& k) { k["layer_types"] = {"full_attention"}; }, {"layer_types", "18"});
  refused([](json& k) { k["layer_types"] = std::vector<std::string>(18, "chunked_attention"); },
          {"layer_types[0]", "chunked_attention"});
  refused(
      [](json& k) {
        k["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e6}}},
                                {"sliding_attention", {{"rope_type", "linear"}, {"factor", 2.0}}}};
      },
      {"sliding_attention", "linear", "not supported"});
  refused([](json& k) { k["architectures"] = {"Gemma3ForConditionalGeneration"}; },
          {"unsupported architecture", "Gemma3ForConditionalGeneration", "Gemma3ForCausalLM"});
}

// The fixture is sensitive to every Gemma rule: the reference forward with one rule broken
// misses transformers' logits by far more than the tolerance (so the golden tests, which
// hold the graphs to 1e-4, would catch that rule broken in a graph).
TEST(Gemma3Golden, FixtureCatchesEachRule) {
  const test::Golden g = test::load_golden(kFixture);
  const io::ModelConfig good = io::load_model_config(fixture(kFixture));
  const io::TensorStore store(fixture(kFixture));
  const std::vector<int64_t>& prompt = g.prompts[2];  // 26 tokens, window 8
  const std::vector<float> hf = g.prompt_logits(2);
  auto miss = [&](const std::function<void(io::ModelConfig&)>& edit) {
    io::ModelConfig c = good;
    edit(c);
    reference::DecoderRef ref(c, store);
    const std::vector<float> got = ref.forward_ids(prompt, /*all_logits=*/true);
    return max_abs_diff(got.data(), hf.data(), hf.size());
  };
  const double ref_err = miss([](io::ModelConfig&) {});
  std::printf("[ gemma3-tiny reference ] max |logit - HF| %.3g over %zu prompt positions\n", ref_err, prompt.size());
  EXPECT_LE(ref_err, kFp32Tol);
  const std::vector<std::pair<std::string, std::function<void(io::ModelConfig&)>>> broken = {
      {"window - 1", [](io::ModelConfig& c) { c.sliding_window -= 1; }},
      {"window + 1", [](io::ModelConfig& c) { c.sliding_window += 1; }},
      {"no sliding window", [](io::ModelConfig& c) { c.local_layers.clear(); }},
      {"layer types shifted",
       [](io::ModelConfig& c) {
         std::rotate(c.local_layers.begin(), c.local_layers.begin() + 1, c.local_layers.end());
       }},
      {"head_dim^-0.5 scale", [](io::ModelConfig& c) { c.query_pre_attn_scalar = 0; }},
      {"norm weight w", [](io::ModelConfig& c) { c.norm_weight_offset = 0; }},
      {"norm weight 2 + w", [](io::ModelConfig& c) { c.norm_weight_offset = 2; }},
      {"unscaled embeddings", [](io::ModelConfig& c) { c.embedding_scale = 1; }},
      {"bf16-rounded embedding scale", [](io::ModelConfig& c) { c.embedding_scale = 6.90625; }},
      {"global rope on local layers", [](io::ModelConfig& c) { c.rope_local_theta = c.rope_theta; }},
      {"no rope scaling", [](io::ModelConfig& c) { c.rope_scaling.type = "default"; }},
      {"no final softcap", [](io::ModelConfig& c) { c.final_logit_softcap = 0; }},
      {"silu", [](io::ModelConfig& c) { c.hidden_act = io::Activation::Silu; }},
  };
  for (const auto& [name, edit] : broken) {
    const double e = miss(edit);
    std::printf("  broken rule %-30s max |logit - HF| %.3g\n", name.c_str(), e);
    EXPECT_GT(e, 100 * kFp32Tol) << name;
  }
}

// Prefill in chunks of 5 (several of them with a past longer than the window): every
// chunk's last logits match transformers on both targets.
TEST(Gemma3Golden, ChunkedPrefillPastTheWindow) {
  const test::Golden g = test::load_golden(kFixture);
  std::vector<int64_t> seq = g.prompts[2];
  seq.insert(seq.end(), g.greedy[2].begin(), g.greedy[2].end() - 1);
  const std::vector<float> hf = g.continuation_logits(2);
  for (const char* target : {"ort", "portable"}) {
    runtime::PackageModel model(built_package(kFixture, target, "fp32"));
    const int64_t V = model.vocab_size();
    auto st = model.new_state();
    double worst = 0;
    for (size_t at = 0; at < seq.size(); at += 5) {
      const size_t end = std::min(seq.size(), at + 5);
      const std::vector<float> lg = model.forward_ids(st, std::vector<int64_t>(seq.begin() + at, seq.begin() + end));
      worst = std::max(worst, max_abs_diff(lg.data(), hf.data() + (end - 1) * V, static_cast<size_t>(V)));
    }
    std::printf("[ gemma3-tiny %s fp32 ] chunked prefill: max |logit - HF| %.3g\n", target, worst);
    EXPECT_LE(worst, kFp32Tol) << target;
  }
}

// Target ort's local layers keep a bounded cache in the runtime's shared buffer: past the
// window (8) their buffers stop at 2 * 8 - 1 rows while the global layers' grow, the oldest
// rows are dropped, and the logits still equal transformers' at every step (a 26-token
// prompt in one run, which the runtime splits into pieces of one window, then 31 single
// steps). Truncating keeps what the local layers still hold, else starts over.
TEST(Gemma3Runtime, LocalLayersKeepABoundedCache) {
  const test::Golden g = test::load_golden(kFixture);
  const std::vector<int64_t>& prompt = g.prompts[2];
  std::vector<int64_t> seq = prompt;
  seq.insert(seq.end(), g.greedy[2].begin(), g.greedy[2].end() - 1);
  const std::vector<float> hf = g.continuation_logits(2);
  runtime::Decoder dec(runtime::find_model(built_package(kFixture, "ort", "fp32")), {});
  ASSERT_TRUE(dec.bounded_local());
  EXPECT_EQ(dec.signature().sliding_window, 8);
  const int64_t V = dec.vocab();
  auto feed = [&](size_t a, size_t b) {
    runtime::StepFeed f;
    f.batch = 1, f.seq = static_cast<int64_t>(b - a);
    f.ids.assign(seq.begin() + static_cast<int64_t>(a), seq.begin() + static_cast<int64_t>(b));
    f.embeds = dec.embed(f.ids);
    return f;
  };
  auto st = dec.new_state(1, 4);
  std::vector<float> out;
  double worst = 0;
  dec.step(st, feed(0, prompt.size()), out);
  worst = std::max(worst, max_abs_diff(out.data(), hf.data() + (prompt.size() - 1) * V, static_cast<size_t>(V)));
  for (size_t i = prompt.size(); i < seq.size(); ++i) {
    dec.step(st, feed(i, i + 1), out);
    worst = std::max(worst, max_abs_diff(out.data(), hf.data() + i * V, static_cast<size_t>(V)));
  }
  std::printf(
      "[ gemma3-tiny ort ] %zu positions, local cache %lld rows from position %lld, global %lld rows: "
      "max |logit - HF| %.3g\n",
      seq.size(), static_cast<long long>(st.local_capacity), static_cast<long long>(st.local_starts[0]),
      static_cast<long long>(st.capacity), worst);
  EXPECT_LE(worst, kFp32Tol);
  EXPECT_EQ(st.lengths[0], static_cast<int64_t>(seq.size()));
  EXPECT_EQ(st.local_capacity, 15);
  EXPECT_GE(st.capacity, static_cast<int64_t>(seq.size()));
  EXPECT_GT(st.local_starts[0], 0);
  const auto& sig = dec.signature();
  const size_t row = static_cast<size_t>(sig.kv_heads * sig.head_dim) * 4;
  for (size_t l = 0; l < sig.layers.size(); ++l)
    EXPECT_EQ(st.buffers[2 * l].size(), (sig.local_layer[l] ? 15 : static_cast<size_t>(st.capacity)) * row)
        << "layer " << l;
  // back to a length whose window the local buffers still hold, then one they do not
  const int64_t held_from = st.local_starts[0] + 7;
  EXPECT_EQ(dec.truncate(st, held_from), held_from);
  dec.step(st, feed(static_cast<size_t>(held_from), static_cast<size_t>(held_from) + 1), out);
  EXPECT_LE(max_abs_diff(out.data(), hf.data() + held_from * V, static_cast<size_t>(V)), kFp32Tol);
  EXPECT_EQ(dec.truncate(st, 10), 0);
  EXPECT_EQ(st.lengths[0], 0);
  dec.step(st, feed(0, 11), out);
  EXPECT_LE(max_abs_diff(out.data(), hf.data() + 10 * V, static_cast<size_t>(V)), kFp32Tol);
}

// A kept chat cache (Sequence) past the window: a second turn that shares only a prefix the
// local layers have dropped runs from the start, and gives the tokens of a fresh model.
TEST(Gemma3Runtime, SequenceRewindsPastDroppedRows) {
  auto m = Model::load(built_package(kFixture, "ort", "fp32"));
  const test::Golden g = test::load_golden(kFixture);
  GenerationOptions o;
  o.max_new_tokens = 12;
  o.stop_at_eos = false;
  auto ids = [](const std::vector<int64_t>& v) { return std::vector<TokenId>(v.begin(), v.end()); };
  auto seq = m->new_sequence();
  const auto first = seq->generate(Prompt().ids(ids(g.prompts[2])), o);
  std::vector<int64_t> second(g.prompts[2].begin(), g.prompts[2].begin() + 5);
  second.push_back(7);
  const auto again = seq->generate(Prompt().ids(ids(second)), o);
  EXPECT_EQ(again.stats.reused_tokens, 0);
  EXPECT_EQ(again.tokens, m->generate(Prompt().ids(ids(second)), o).tokens);
  EXPECT_EQ(first.tokens, std::vector<TokenId>(g.greedy[2].begin(), g.greedy[2].begin() + 12));
}

// The scale belongs to the lookup: embedding.onnx, PackageModel::embed and the reference
// give sqrt(hidden) x the table's rows; the decoder graphs take them as they are.
TEST(Gemma3Golden, EmbeddingLookupIsScaled) {
  const auto pkg = built_package(kFixture, "ort", "fp32");
  const json man = io::read_json_file(pkg / "kvrun.json");
  const float scale = static_cast<float>(std::sqrt(48.0));
  EXPECT_EQ(static_cast<float>(man.at("embedding").at("scale").get<double>()), scale);
  const std::vector<int64_t> ids = {0, 5, 255, 5};
  const io::TensorStore store(fixture(kFixture));
  const std::vector<float> table = store.get("model.embed_tokens.weight").to_f32();
  std::vector<float> want;
  for (auto id : ids)
    for (int64_t i = 0; i < 48; ++i) want.push_back(table[static_cast<size_t>(id * 48 + i)] * scale);
  runtime::PackageModel model(pkg);
  EXPECT_EQ(model.embed(ids), want);
  reference::DecoderRef ref(io::load_model_config(fixture(kFixture)), store);
  EXPECT_EQ(ref.embed(ids), want);
  runtime::Session s(pkg / "embedding.onnx");
  auto x = runtime::HostTensor::from_i64(ids, {1, 4});
  std::vector<Ort::Value> in;
  in.push_back(x.view());
  EXPECT_EQ(runtime::to_f32(s.run({"input_ids"}, in, {"inputs_embeds"}).at(0)), want);
}

// kvrun verify on prompts longer than the window, both targets.
TEST(Gemma3Verify, BothTargetsPass) {
  std::vector<int64_t> prompt;
  for (int64_t i = 0; i < 20; ++i) prompt.push_back((i * 37 + 11) % 256);
  for (const char* target : {"ort", "portable"}) {
    VerifyOptions vo;
    vo.package = built_package(kFixture, target, "fp32");
    vo.checkpoint = fixture(kFixture);
    vo.prompt = prompt;
    vo.greedy_tokens = 16;
    const VerifyReport r = verify_package(vo);
    EXPECT_TRUE(r.passed) << target << "\n" << r.to_text();
    for (const auto& c : r.checks) EXPECT_LE(c.max_abs_diff, 1e-4) << target << " " << c.name;
  }
}

// synth-checkpoint with a shrunk copy of the 270M config (no layer_types: the pattern puts
// the global layer at 5): identity norms (w = 0, since the norms multiply by 1 + w), and the
// package verifies on both targets with a prompt past the window.
TEST(Gemma3Synth, ShrunkConfigBuildsAndVerifies) {
  TempDir d;
  json j = config_270m();
  j["hidden_size"] = 64;
  j["intermediate_size"] = 128;
  j["num_hidden_layers"] = 6;
  j["head_dim"] = 32;
  j["vocab_size"] = 512;
  j["sliding_window"] = 4;
  j["max_position_embeddings"] = 128;
  j["torch_dtype"] = "float32";
  io::write_text_file_atomic(d / "config.json", j.dump(2));
  SynthOptions so;
  so.config = d / "config.json";
  so.out = d / "ckpt";
  so.std_dev = 0.3;
  synth_checkpoint(so);
  const io::TensorStore store(so.out);
  for (const char* n :
       {"model.norm.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.layers.5.pre_feedforward_layernorm.weight", "model.layers.5.post_feedforward_layernorm.weight",
        "model.layers.3.self_attn.q_norm.weight"}) {
    const std::vector<float> w = store.get(n).to_f32();
    EXPECT_TRUE(std::all_of(w.begin(), w.end(), [](float v) { return v == 0.0f; })) << n;
  }
  EXPECT_FALSE(store.has("lm_head.weight"));
  for (const char* target : {"ort", "portable"}) {
    BuildOptions o;
    o.checkpoint = so.out;
    o.out = d / target;
    o.target = target;
    build_package(o);
    VerifyOptions vo;
    vo.package = o.out;
    for (int64_t i = 0; i < 12; ++i) vo.prompt.push_back((i * 53 + 7) % 512);
    vo.greedy_tokens = 8;
    const VerifyReport r = verify_package(vo);
    EXPECT_TRUE(r.passed) << target << "\n" << r.to_text();
  }
}

}  // namespace
}  // namespace kvrun
