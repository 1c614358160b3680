// The generation runtime against Hugging Face goldens: kvrun packages of both
// targets and third-party layouts (optimum merged/plain, GenAI, split), batching,
// chunked prefill, embedding injection, multi-turn cache reuse, sampling, and
// the signature errors.
#include "kvrun/runtime.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "io/fs.h"
#include "io/safetensors.h"
#include "kvrun/error.h"
#include "kvrun/tokenizer.h"
#include "test_util.h"

namespace kvrun {
namespace {

using test::built_package;
using test::fixture;

// The shared goldens (test::load_golden) with ids as TokenId.
struct Golden {
  std::vector<std::vector<TokenId>> prompts, greedy;
};

Golden golden(const std::string& name) {
  const test::Golden t = test::load_golden(name);
  auto ids = [](const std::vector<std::vector<int64_t>>& v) {
    std::vector<std::vector<TokenId>> out;
    for (const auto& r : v) out.emplace_back(r.begin(), r.end());
    return out;
  };
  return {ids(t.prompts), ids(t.greedy)};
}

GenerationOptions greedy_opts(int64_t n = 32) {
  GenerationOptions o;
  o.max_new_tokens = n;
  o.stop_at_eos = false;  // the goldens were made with EOS disabled
  return o;
}

void expect_goldens(Model& m, const Golden& g, const GenerationOptions& o, const std::string& what) {
  for (size_t k = 0; k < g.prompts.size(); ++k) {
    const GenerationResult r = m.generate(Prompt().ids(g.prompts[k]), o);
    const auto n = std::min<size_t>(g.greedy[k].size(), static_cast<size_t>(o.max_new_tokens));
    EXPECT_EQ(r.tokens, std::vector<TokenId>(g.greedy[k].begin(), g.greedy[k].begin() + static_cast<int64_t>(n)))
        << what << ", prompt " << k;
    EXPECT_EQ(r.finish_reason, "length");
  }
}

// ---- kvrun packages, both targets: single prompts, one batch, chunked prefill

class RuntimePackage : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(RuntimePackage, GreedyMatchesHuggingFace) {
  const auto& [fx, target] = GetParam();
  auto m = Model::load(built_package(fx, target, "fp32"));
  EXPECT_EQ(m->info().layout, "kvrun-" + target);
  EXPECT_EQ(m->info().shared_kv_buffer, target == "ort");
  expect_goldens(*m, golden(fx), greedy_opts(), fx + "/" + target);
}

// fp32 weights over a float16 KV cache (`build --kv-dtype fp16`): the trained fixture's
// peaked distributions make its greedy continuations a strict check, single and batched,
// through kvrun's shared-buffer attention kernel.
TEST(RuntimeKvFp16, TrainedGreedyMatchesHuggingFace) {
  const auto pkg = built_package("qwen3-trained", "ort", "fp32", false, "fp16");
  EXPECT_EQ(io::read_json_file(pkg / "kvrun.json")["kv_cache"]["dtype"], "F16");
  auto m = Model::load(pkg);
  EXPECT_TRUE(m->info().shared_kv_buffer);
  EXPECT_EQ(m->info().kv_dtype, "float16");
  const Golden g = golden("qwen3-trained");
  expect_goldens(*m, g, greedy_opts(), "qwen3-trained fp16 KV");
  std::vector<Prompt> ps;
  for (const auto& p : g.prompts) ps.push_back(Prompt().ids(p));
  const auto rs = m->generate(ps, greedy_opts());
  for (size_t k = 0; k < rs.size(); ++k) EXPECT_EQ(rs[k].tokens, g.greedy[k]) << "row " << k;
}

TEST_P(RuntimePackage, BatchOfPromptsOfDifferentLengths) {
  const auto& [fx, target] = GetParam();
  auto m = Model::load(built_package(fx, target, "fp32"));
  const Golden g = golden(fx);
  std::vector<Prompt> ps;
  for (const auto& p : g.prompts) ps.push_back(Prompt().ids(p));
  const auto rs = m->generate(ps, greedy_opts());
  ASSERT_EQ(rs.size(), g.prompts.size());
  for (size_t k = 0; k < rs.size(); ++k) EXPECT_EQ(rs[k].tokens, g.greedy[k]) << "row " << k;
}

TEST_P(RuntimePackage, ChunkedPrefill) {
  const auto& [fx, target] = GetParam();
  auto m = Model::load(built_package(fx, target, "fp32"));
  GenerationOptions o = greedy_opts();
  o.prefill_chunk = 3;
  expect_goldens(*m, golden(fx), o, fx + "/" + target + " chunk 3");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RuntimePackage,
                         ::testing::Combine(::testing::Values("qwen3-tiny", "qwen2-tiny", "llama-tiny"),
                                            ::testing::Values("ort", "portable")),
                         [](const auto& info) {
                           std::string s = std::get<0>(info.param) + "_" + std::get<1>(info.param);
                           for (auto& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

// Gemma 3 (sliding window 8): generation, batches and chunked prefill past the window, both
// targets (ort: the shared buffer with GroupQueryAttention's local window; portable: the
// chain with the local mask).
INSTANTIATE_TEST_SUITE_P(Gemma3, RuntimePackage,
                         ::testing::Combine(::testing::Values("gemma3-tiny"), ::testing::Values("ort", "portable")),
                         [](const auto& info) {
                           std::string s = std::get<0>(info.param) + "_" + std::get<1>(info.param);
                           for (auto& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

// ---- third-party layouts (tests/fixtures/layouts, made by tools/make_layout_fixtures.py)

class RuntimeLayout : public ::testing::TestWithParam<std::string> {};

TEST_P(RuntimeLayout, GreedyMatchesHuggingFace) {
  auto m = Model::load(fixture("layouts") / GetParam());
  expect_goldens(*m, golden("qwen3-tiny"), greedy_opts(), GetParam());
}

TEST_P(RuntimeLayout, Batch) {
  auto m = Model::load(fixture("layouts") / GetParam());
  const Golden g = golden("qwen3-tiny");
  std::vector<Prompt> ps;
  for (const auto& p : g.prompts) ps.push_back(Prompt().ids(p));
  const auto rs = m->generate(ps, greedy_opts());
  for (size_t k = 0; k < rs.size(); ++k) EXPECT_EQ(rs[k].tokens, g.greedy[k]) << GetParam() << " row " << k;
}

INSTANTIATE_TEST_SUITE_P(Layouts, RuntimeLayout, ::testing::Values("optimum-merged", "optimum-plain", "split", "genai"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

TEST(RuntimeLayoutInfo, DetectsEachConvention) {
  auto merged = Model::load(fixture("layouts") / "optimum-merged");
  EXPECT_EQ(merged->info().layout, "optimum-merged");
  EXPECT_FALSE(merged->info().takes_embeddings);
  EXPECT_EQ(merged->info().kv_seq_axis, 2);
  auto split = Model::load(fixture("layouts") / "split");
  EXPECT_EQ(split->info().layout, "split");
  EXPECT_TRUE(split->info().takes_embeddings);
  EXPECT_EQ(split->info().kv_seq_axis, 1);  // [batch, seq, kv_heads, head_dim]
  EXPECT_EQ(split->info().num_kv_heads, 2);
  EXPECT_EQ(split->info().graphs, (std::vector<std::string>{"embedding.onnx", "llm_prefill.onnx", "llm_decode.onnx"}));
  auto genai = Model::load(fixture("layouts") / "genai");
  EXPECT_EQ(genai->info().layout, "genai");
  EXPECT_TRUE(genai->info().shared_kv_buffer);
  EXPECT_EQ(genai->info().num_layers, 2);
}

TEST(RuntimeLayoutInfo, SingleOnnxFile) {
  auto m = Model::load(fixture("layouts") / "optimum-plain" / "model.onnx");
  EXPECT_EQ(m->info().layout, "onnx");
  expect_goldens(*m, golden("qwen3-tiny"), greedy_opts(8), "model.onnx");
}

// ---- signature errors: side-by-side table naming what is missing or unexpected

std::string load_error(const std::filesystem::path& p) {
  try {
    Model::load(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RuntimeErrors, UnexpectedInputIsNamedSideBySide) {
  const std::string e = load_error(fixture("layouts") / "broken-extra-input");
  EXPECT_NE(e.find("does not match the decoder signature"), std::string::npos) << e;
  EXPECT_NE(e.find("expected"), std::string::npos) << e;
  EXPECT_NE(e.find("found"), std::string::npos) << e;
  EXPECT_NE(e.find("(not expected)"), std::string::npos) << e;
  EXPECT_NE(e.find("unexpected input 'speaker_embedding' float32 [1, 192]"), std::string::npos) << e;
  // the rest of the signature is listed too
  EXPECT_NE(e.find("past_key_values.1.value"), std::string::npos) << e;
}

TEST(RuntimeErrors, MissingPresentIsNamed) {
  const std::string e = load_error(fixture("layouts") / "broken-missing-present");
  EXPECT_NE(e.find("missing output 'present.1.value' (layer 1 of 2)"), std::string::npos) << e;
  EXPECT_NE(e.find("present.1.value  float [batch, kv_heads, total, head_dim]"), std::string::npos) << e;
  EXPECT_NE(e.find("(missing)"), std::string::npos) << e;
}

TEST(RuntimeErrors, NoModelInFolder) {
  test::TempDir d;
  const std::string e = load_error(d.path());
  EXPECT_NE(e.find("no model found"), std::string::npos) << e;
  EXPECT_NE(load_error(d / "nope").find("no such file or folder"), std::string::npos);
}

TEST(RuntimeErrors, BadPromptsAndOptions) {
  auto m = Model::load(fixture("layouts") / "optimum-plain");
  GenerationOptions o = greedy_opts(4);
  EXPECT_THROW(m->generate(Prompt().ids({600}), o), Error);                                  // outside vocab 512
  EXPECT_THROW(m->generate(Prompt(), o), Error);                                             // empty
  EXPECT_THROW(m->generate(Prompt().embeddings(std::vector<float>(64, 0.f), 1), o), Error);  // input_ids graph
  EXPECT_THROW(m->generate(Prompt().text("hello"), o), Error);                               // no tokenizer
  GenerationOptions bad = o;
  bad.sampling.top_p = 0.f;
  EXPECT_THROW(m->generate(Prompt().ids({1}), bad), Error);
  bad = o;
  bad.max_length = 3;
  EXPECT_THROW(m->generate(Prompt().ids({1, 2, 3, 4}), bad), Error);  // prompt longer than max length
}

// ---- embeddings injection: embedding rows equal to the table give the same tokens as ids

TEST(RuntimeEmbeddings, InjectedRowsBehaveLikeTheirTokens) {
  for (const std::string target : {"ort", "portable"}) {
    const auto pkg = built_package("qwen3-tiny", target, "fp32");
    auto m = Model::load(pkg);
    const Golden g = golden("qwen3-tiny");
    const auto& ids = g.prompts[2];
    // rows for ids[3..7) taken from the package's own embedding table through a 1-token model call
    io::TensorStore table(pkg / "embedding.safetensors");
    const auto& t = table.get(table.names().at(0));
    std::vector<float> rows;
    for (size_t i = 3; i < 7; ++i) {
      const auto* p = reinterpret_cast<const float*>(t.data) + static_cast<size_t>(ids[i]) * 64;
      rows.insert(rows.end(), p, p + 64);
    }
    Prompt p;
    p.ids({ids.begin(), ids.begin() + 3}).embeddings(rows, 4).ids({ids.begin() + 7, ids.end()});
    EXPECT_EQ(m->prompt_ids(p)[4], -1);
    EXPECT_EQ(m->generate(p, greedy_opts()).tokens, g.greedy[2]) << target;
  }
}

// ---- multi-turn: the cache keeps the common prefix

TEST(RuntimeSequence, ReusesCommonPrefixAndGrows) {
  for (const std::string target : {"ort", "portable"}) {
    auto m = Model::load(built_package("qwen3-tiny", target, "fp32"));
    const Golden g = golden("qwen3-tiny");
    auto seq = m->new_sequence();
    const auto& p = g.prompts[2];
    GenerationResult r1 = seq->generate(Prompt().ids(p), greedy_opts(10));
    EXPECT_EQ(r1.tokens, std::vector<TokenId>(g.greedy[2].begin(), g.greedy[2].begin() + 10));
    // Turn 2: the context continues with the reply; generation goes on from the golden path.
    std::vector<TokenId> ctx = p;
    ctx.insert(ctx.end(), g.greedy[2].begin(), g.greedy[2].begin() + 12);
    GenerationResult r2 = seq->generate(Prompt().ids(ctx), greedy_opts(20));
    EXPECT_EQ(r2.stats.reused_tokens, static_cast<int64_t>(p.size()) + 9) << target;
    EXPECT_EQ(r2.tokens, std::vector<TokenId>(g.greedy[2].begin() + 12, g.greedy[2].end())) << target;
    // Turn 3: a different history shares only the prompt's first tokens.
    std::vector<TokenId> other(p.begin(), p.begin() + 5);
    GenerationResult r3 = seq->generate(Prompt().ids(other), greedy_opts(4));
    EXPECT_EQ(r3.stats.reused_tokens, 4);
    EXPECT_EQ(r3.tokens, m->generate(Prompt().ids(other), greedy_opts(4)).tokens);
  }
}

// ---- sampling and stopping

TEST(RuntimeSampling, SameSeedSameTokensOtherSeedOtherTokens) {
  auto m = Model::load(built_package("qwen3-tiny", "ort", "fp32"));
  GenerationOptions o = greedy_opts(24);
  o.sampling.temperature = 1.5f;
  o.sampling.top_p = 0.95f;
  o.sampling.seed = 7;
  const Prompt p = Prompt().ids({303});
  const auto a = m->generate(p, o).tokens, b = m->generate(p, o).tokens;
  EXPECT_EQ(a, b);
  o.sampling.seed = 8;
  EXPECT_NE(m->generate(p, o).tokens, a);
  // top_k = 1 is greedy whatever the temperature
  o.sampling.top_k = 1;
  const Golden g = golden("qwen3-tiny");
  EXPECT_EQ(m->generate(p, o).tokens, std::vector<TokenId>(g.greedy[0].begin(), g.greedy[0].begin() + 24));
}

TEST(RuntimeSampling, StopIdsEosAndStreaming) {
  auto m = Model::load(built_package("qwen3-tiny", "ort", "fp32"));
  const Golden g = golden("qwen3-tiny");
  GenerationOptions o = greedy_opts(32);
  o.stop_ids = {g.greedy[0][5]};
  std::vector<TokenId> streamed;
  const auto r = m->generate(Prompt().ids(g.prompts[0]), o, [&](size_t row, TokenId t, const std::string&) {
    EXPECT_EQ(row, 0u);
    if (t >= 0) streamed.push_back(t);
    return true;
  });
  const auto first = std::find(g.greedy[0].begin(), g.greedy[0].end(), g.greedy[0][5]);
  EXPECT_EQ(r.tokens, std::vector<TokenId>(g.greedy[0].begin(), first));
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(streamed, r.tokens);
  // a callback returning false stops after that token
  const auto r2 = m->generate(Prompt().ids(g.prompts[0]), greedy_opts(32),
                              [&](size_t, TokenId, const std::string&) { return false; });
  EXPECT_EQ(r2.tokens.size(), 1u);
  EXPECT_EQ(r2.finish_reason, "callback");
  // EOS from generation_config (id 2) stops unless disabled; repetition penalty changes the path
  GenerationOptions pen = greedy_opts(32);
  pen.sampling.repetition_penalty = 1.3f;
  const auto r3 = m->generate(Prompt().ids(g.prompts[0]), pen);
  EXPECT_NE(r3.tokens, g.greedy[0]);
  EXPECT_EQ(m->info().eos_ids, std::vector<TokenId>{2});
}

}  // namespace
}  // namespace kvrun

namespace kvrun {
namespace {

// ---- the CLI: kvrun run reproduces the goldens on both targets and a third-party layout

std::string ids_csv(const std::vector<TokenId>& ids) {
  std::string s;
  for (auto i : ids) {
    if (!s.empty()) s += ',';
    s += std::to_string(i);
  }
  return s;
}

TEST(RuntimeCli, RunReproducesGoldens) {
  const Golden g = golden("qwen3-tiny");
  std::vector<std::string> models = {built_package("qwen3-tiny", "ort", "fp32").string(),
                                     built_package("qwen3-tiny", "portable", "fp32").string(),
                                     (fixture("layouts") / "optimum-merged").string()};
  for (const auto& m : models)
    for (size_t k = 0; k < g.prompts.size(); ++k) {
      const auto r = test::run_cli(
          {"run", m, "--prompt-ids", ids_csv(g.prompts[k]), "--print-ids", "--ignore-eos", "--max-new-tokens", "32"});
      EXPECT_EQ(r.exit_code, 0) << r.out;
      EXPECT_EQ(nlohmann::json::parse(r.out).get<std::vector<TokenId>>(), g.greedy[k]) << m << " prompt " << k;
    }
}

TEST(RuntimeCli, JsonStatsAndErrors) {
  const auto pkg = built_package("qwen3-tiny", "ort", "fp32").string();
  auto r = test::run_cli({"run", pkg, "--prompt-ids", "303", "--json", "--max-new-tokens", "5", "--ignore-eos"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["finish_reason"], "length");
  EXPECT_EQ(j["stats"]["generated_tokens"], 5);
  EXPECT_EQ(j["stats"]["prompt_tokens"], 1);

  r = test::run_cli({"run", (fixture("layouts") / "broken-extra-input").string(), "--prompt-ids", "1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("kvrun: error:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("speaker_embedding"), std::string::npos) << r.out;
  r = test::run_cli({"run", pkg, "--prompt-ids", "1,x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("found 'x'"), std::string::npos) << r.out;
  r = test::run_cli({"run", pkg, "--prompt-ids", "1", "--top-p", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("top_p must be in (0, 1]"), std::string::npos) << r.out;
  EXPECT_EQ(test::run_cli({"run", "--help"}).exit_code, 0);
  EXPECT_EQ(test::run_cli({"chat", "--help"}).exit_code, 0);
}

}  // namespace
}  // namespace kvrun

namespace kvrun {
namespace {

// ---- text: a real byte-level BPE tokenizer over the tiny model's 512 ids
// (tests/fixtures/tiny-tokenizer, made by tools/make_tiny_tokenizer.py with HF tokenizers)

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n;
  }
  return true;
}

struct TextModel {
  test::TempDir dir;
  std::unique_ptr<Model> model;
  TextModel() {
    std::filesystem::copy(built_package("qwen3-tiny", "ort", "fp32"), dir / "pkg",
                          std::filesystem::copy_options::recursive);
    std::filesystem::copy(fixture("tiny-tokenizer") / "tokenizer.json", dir / "pkg" / "tokenizer.json");
    model = Model::load(dir / "pkg");
  }
};

TEST(RuntimeText, PromptTextStreamingAndStopStrings) {
  TextModel tm;
  Model& m = *tm.model;
  ASSERT_NE(m.tokenizer(), nullptr);
  // ids from HF tokenizers for the same text (tools/make_tiny_tokenizer.py prints them)
  EXPECT_EQ(m.prompt_ids(Prompt().text("Hello 你好 😀")),
            (std::vector<TokenId>{41, 70, 77, 305, 222, 473, 336, 248, 224}));

  GenerationOptions o = greedy_opts(32);
  std::string streamed;
  bool all_valid = true;
  auto collect = [&](size_t, TokenId, const std::string& piece) {
    all_valid = all_valid && valid_utf8(piece);
    streamed += piece;
    return true;
  };
  const GenerationResult r = m.generate(Prompt().text("Hello 你好 😀"), o, collect);
  EXPECT_EQ(r.tokens.size(), 32u);
  EXPECT_TRUE(all_valid);
  EXPECT_EQ(streamed, r.text);
  EXPECT_EQ(r.text, m.tokenizer()->decode(r.tokens, true));
  EXPECT_TRUE(valid_utf8(r.text));

  // A stop string from the middle of that text: the output ends right before it.
  size_t at = r.text.size() / 3;
  while (at < r.text.size() && (static_cast<unsigned char>(r.text[at]) >> 6) == 2) ++at;
  ASSERT_LT(at + 4, r.text.size());
  const std::string stop = r.text.substr(at, 4);
  o.stop_strings = {stop};
  streamed.clear();
  const GenerationResult r2 = m.generate(Prompt().text("Hello 你好 😀"), o, collect);
  EXPECT_EQ(r2.finish_reason, "stop");
  EXPECT_EQ(r2.text, r.text.substr(0, r.text.find(stop)));
  EXPECT_EQ(streamed, r2.text);
  EXPECT_LT(r2.tokens.size(), r.tokens.size());
}

TEST(RuntimeText, ChatTemplateFallbackAndCli) {
  TextModel tm;
  // The tiny package ships no chat template: ChatML is the fallback and `run` uses raw text.
  EXPECT_FALSE(tm.model->info().chat_template);
  const auto r = test::run_cli({"run", (tm.dir / "pkg").string(), "--prompt", "Hello 你好 😀", "--json",
                                "--max-new-tokens", "8", "--ignore-eos"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["stats"]["prompt_tokens"], 9);
  EXPECT_EQ(j["tokens"].size(), 8u);
  // chat keeps the cache between turns: the second turn reuses the first turn's positions
  const auto c =
      test::run_cli({"chat", (tm.dir / "pkg").string(), "--max-new-tokens", "4", "--stats"}, "hello\nagain\n/exit\n");
  ASSERT_EQ(c.exit_code, 0) << c.out;
  EXPECT_NE(c.out.find("(0 reused from cache)"), std::string::npos) << c.out;
  EXPECT_EQ(c.out.find("(0 reused from cache)"), c.out.rfind("(0 reused from cache)")) << c.out;
}

}  // namespace
}  // namespace kvrun

#include <onnx/onnx_pb.h>

#include <fstream>

#include "runtime/sampler.h"

namespace kvrun {
namespace {

// ---- KV sequence axis: when the graph's dims do not tell, two tiny prefills do

TEST(RuntimeProbe, AmbiguousKvAxisIsProbed) {
  test::TempDir d;
  onnx::ModelProto mp;
  {
    std::ifstream in(fixture("layouts") / "optimum-plain" / "model.onnx", std::ios::binary);
    ASSERT_TRUE(mp.ParseFromIstream(&in));
  }
  // Make heads and sequence both symbolic with uninformative names.
  auto blur = [](onnx::ValueInfoProto& v) {
    if (v.name().find("key") == std::string::npos && v.name().find("value") == std::string::npos) return;
    auto* shape = v.mutable_type()->mutable_tensor_type()->mutable_shape();
    shape->mutable_dim(1)->set_dim_param("a");
    shape->mutable_dim(2)->set_dim_param(v.name().rfind("past", 0) == 0 ? "b" : "c");
  };
  for (auto& v : *mp.mutable_graph()->mutable_input()) blur(v);
  for (auto& v : *mp.mutable_graph()->mutable_output()) blur(v);
  {
    std::ofstream out(d / "model.onnx", std::ios::binary);
    ASSERT_TRUE(mp.SerializeToOstream(&out));
  }
  std::filesystem::copy(fixture("layouts") / "optimum-plain" / "generation_config.json", d / "generation_config.json");
  auto m = Model::load(d.path());
  EXPECT_EQ(m->info().kv_seq_axis, 2);
  EXPECT_EQ(m->info().num_kv_heads, 2);
  expect_goldens(*m, golden("qwen3-tiny"), greedy_opts(), "probed");
}

// ---- the sampler alone

TEST(RuntimeSampler, FiltersAndPenalties) {
  std::vector<float> base = {2.f, 1.9f, 0.5f, -1.f, -3.f};
  auto draws = [&](SamplingOptions o, int n) {
    std::set<TokenId> seen;
    for (int i = 0; i < n; ++i) {
      runtime::Sampler fresh(o, static_cast<uint64_t>(i));
      std::vector<float> l = base;
      seen.insert(fresh.sample(l));
    }
    return seen;
  };
  SamplingOptions o;
  o.temperature = 1.f;
  EXPECT_EQ(draws(o, 4000).size(), 5u);  // every token reachable (p = 0.003 for the last)
  o.top_k = 2;
  EXPECT_EQ(draws(o, 400), (std::set<TokenId>{0, 1}));
  o.top_k = 0;
  o.min_p = 0.2f;  // p(2)/p(0) = e^-1.5 = 0.22 stays, p(3)/p(0) = e^-3 = 0.05 goes
  EXPECT_EQ(draws(o, 400), (std::set<TokenId>{0, 1, 2}));
  o.min_p = 0.f;
  o.top_p = 0.5f;  // token 0 alone has 0.44 of the mass: 0 and 1 are needed
  EXPECT_EQ(draws(o, 400), (std::set<TokenId>{0, 1}));

  // greedy with penalties
  SamplingOptions g;
  g.repetition_penalty = 2.f;  // 2.0 -> 1.0 < 1.9
  runtime::Sampler s(g);
  s.add_context({0});
  std::vector<float> l = base;
  EXPECT_EQ(s.sample(l), 1);
  SamplingOptions pp;
  pp.presence_penalty = 0.5f;
  runtime::Sampler s2(pp);
  l = base;
  EXPECT_EQ(s2.sample(l), 0);  // nothing generated yet
  l = base;
  EXPECT_EQ(s2.sample(l), 1);  // 0 was generated: 2.0 - 0.5 < 1.9
  SamplingOptions bad;
  bad.min_p = 1.5f;
  EXPECT_THROW(runtime::Sampler{bad}, Error);
}

}  // namespace
}  // namespace kvrun

namespace kvrun {
namespace {

// fp16 packages (fp16 inputs_embeds and KV cache): greedy paths follow the fp32 goldens
// until a near-tie flips them. Measured: prompts 1 and 2 match all 32 tokens; prompt 0
// (one token) flips at token 10 on both targets.
TEST(RuntimeFp16, GreedyFollowsGoldensUntilANearTie) {
  const Golden g = golden("qwen3-tiny");
  for (const std::string target : {"ort", "portable"}) {
    auto m = Model::load(built_package("qwen3-tiny", target, "fp16"));
    EXPECT_EQ(m->info().kv_dtype, "float16");
    for (size_t k = 0; k < g.prompts.size(); ++k) {
      const auto r = m->generate(Prompt().ids(g.prompts[k]), greedy_opts());
      size_t i = 0;
      while (i < r.tokens.size() && r.tokens[i] == g.greedy[k][i]) ++i;
      EXPECT_GE(i, k == 0 ? 8u : 32u) << target << " prompt " << k;
    }
  }
}

}  // namespace
}  // namespace kvrun

namespace kvrun {
namespace {

// A GroupQueryAttention graph without the shared buffer cannot take left-padded rows:
// the runtime runs such a batch row by row and still matches the goldens.
TEST(RuntimeLayoutInfo, GenAiWithoutSharedBufferBatchesCorrectly) {
  test::TempDir d;
  for (const auto& e : std::filesystem::directory_iterator(fixture("layouts") / "genai"))
    std::filesystem::copy(e.path(), d / e.path().filename().string());
  auto cfg = io::read_json_file(d / "genai_config.json");
  cfg["search"]["past_present_share_buffer"] = false;
  io::write_text_file_atomic(d / "genai_config.json", cfg.dump(2));
  auto m = Model::load(d.path());
  EXPECT_FALSE(m->info().shared_kv_buffer);
  const Golden g = golden("qwen3-tiny");
  std::vector<Prompt> ps;
  for (const auto& p : g.prompts) ps.push_back(Prompt().ids(p));
  const auto rs = m->generate(ps, greedy_opts());
  for (size_t k = 0; k < rs.size(); ++k) EXPECT_EQ(rs[k].tokens, g.greedy[k]) << "row " << k;
}

}  // namespace
}  // namespace kvrun
