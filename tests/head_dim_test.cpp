// Head sizes that are not a multiple of 16 on target ort (ONNX Runtime's GroupQueryAttention
// rotates only heads of a multiple of 16): rotary before the node, heads padded to a multiple
// of 8 where needed. Hugging Face goldens (tools/make_goldens.py): qwen3-hd40 (head_dim 40,
// q/k norms, tied) and llama-hd72 (head_dim 72); a synthetic head_dim 36 (padded to 40).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "kvrun/build.h"
#include "kvrun/runtime.h"
#include "kvrun/verify.h"
#include "runtime/decoder.h"
#include "runtime/ort_kernels.h"
#include "runtime/ort_session.h"
#include "runtime/package_model.h"
#include "test_util.h"

namespace kvrun {
namespace {

using test::built_package;
using test::fixture;

// max |a - b| / max(1, max |b|): the usual 1e-3 relative tolerance of fp32 logits.
double rel_diff(const float* a, const float* b, int64_t n) {
  double d = 0, scale = 1;
  for (int64_t i = 0; i < n; ++i) {
    d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(b[i])));
  }
  return d / scale;
}

std::vector<TokenId> to_ids(const std::vector<int64_t>& v) { return {v.begin(), v.end()}; }

GenerationOptions greedy(int64_t n = 32) {
  GenerationOptions o;
  o.max_new_tokens = n;
  o.stop_at_eos = false;
  return o;
}

class HeadDim : public ::testing::TestWithParam<std::tuple<std::string, int64_t>> {};

TEST_P(HeadDim, BuildsWithoutPaddingAndRotaryOutsideGqa) {
  const auto& [fx, D] = GetParam();
  const auto pkg = built_package(fx, "ort", "fp32");
  const auto man = io::read_json_file(pkg / "kvrun.json");
  EXPECT_EQ(man["kv_cache"]["head_dim"], D);  // a multiple of 8: no padding
  EXPECT_EQ(man["model"]["head_dim"], D);
  auto m = Model::load(pkg);
  EXPECT_EQ(m->info().head_dim, D);
  EXPECT_TRUE(m->info().shared_kv_buffer);
  // GroupQueryAttention without cos/sin caches, run by kvrun's decode kernel too
  EXPECT_TRUE(runtime::with_kvrun_attention(pkg / "decoder.onnx").has_value());
}

TEST_P(HeadDim, VerifyPasses) {
  const auto& [fx, D] = GetParam();
  VerifyOptions vo;
  vo.package = built_package(fx, "ort", "fp32");
  vo.checkpoint = fixture(fx);
  const VerifyReport r = verify_package(vo);
  EXPECT_TRUE(r.passed) << r.to_text();
}

TEST_P(HeadDim, TeacherForcedLogitsMatchHuggingFace) {
  const auto& [fx, D] = GetParam();
  const test::Golden g = test::load_golden(fx);
  double worst = 0;
  test::teacher_forced(built_package(fx, "ort", "fp32"), g, [&](const float* hf, const float* got, int64_t V) {
    worst = std::max(worst, rel_diff(got, hf, V));
  });
  EXPECT_LT(worst, 1e-3) << fx;
}

// Greedy: ort == portable == Hugging Face, one prompt at a time, as one batch (right
// padding, shared buffer, kvrun's decode kernel) and with chunked prefill.
TEST_P(HeadDim, GreedyMatchesPortableAndHuggingFace) {
  const auto& [fx, D] = GetParam();
  const test::Golden g = test::load_golden(fx);
  auto ort = Model::load(built_package(fx, "ort", "fp32"));
  auto portable = Model::load(built_package(fx, "portable", "fp32"));
  std::vector<Prompt> ps;
  for (const auto& p : g.prompts) ps.push_back(Prompt().ids(to_ids(p)));
  GenerationOptions chunked = greedy();
  chunked.prefill_chunk = 3;
  for (size_t k = 0; k < ps.size(); ++k) {
    const auto want = to_ids(g.greedy[k]);
    EXPECT_EQ(ort->generate(ps[k], greedy()).tokens, want) << fx << " ort, prompt " << k;
    EXPECT_EQ(portable->generate(ps[k], greedy()).tokens, want) << fx << " portable, prompt " << k;
    EXPECT_EQ(ort->generate(ps[k], chunked).tokens, want) << fx << " ort chunk 3, prompt " << k;
  }
  const auto rs = ort->generate(ps, greedy());
  ASSERT_EQ(rs.size(), ps.size());
  for (size_t k = 0; k < rs.size(); ++k) EXPECT_EQ(rs[k].tokens, to_ids(g.greedy[k])) << fx << " batch row " << k;
}

// The runtime's shared buffer: a batch of prompts of different lengths (rows prefilled one
// by one, then decode steps of the whole batch) and chunked prefill give the logits of
// one prompt at a time.
TEST_P(HeadDim, BatchAndChunkedPrefillLogitsMatchSingle) {
  const auto& [fx, D] = GetParam();
  const test::Golden g = test::load_golden(fx);
  runtime::Decoder dec(runtime::find_model(built_package(fx, "ort", "fp32")), {});
  ASSERT_TRUE(dec.shared());
  const int64_t V = dec.vocab(), B = static_cast<int64_t>(g.prompts.size()), steps = 6;
  auto feed = [&](const std::vector<TokenId>& ids) {
    runtime::StepFeed f;
    f.batch = 1, f.seq = static_cast<int64_t>(ids.size()), f.ids = ids;
    if (dec.takes_embeddings()) f.embeds = dec.embed(ids);
    return f;
  };
  // one at a time: prefill, then `steps` greedy tokens; logits after each
  std::vector<std::vector<std::vector<float>>> single(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    auto st = dec.new_state(1, 64);
    std::vector<float> out;
    dec.step(st, feed(to_ids(g.prompts[static_cast<size_t>(b)])), out);
    single[static_cast<size_t>(b)].push_back(out);
    for (int64_t i = 0; i < steps; ++i) {
      dec.step(st, feed({static_cast<TokenId>(g.greedy[static_cast<size_t>(b)][static_cast<size_t>(i)])}), out);
      single[static_cast<size_t>(b)].push_back(out);
    }
  }
  // chunked prefill (chunks of 3), batch 1
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = g.prompts[static_cast<size_t>(b)];
    auto st = dec.new_state(1, 64);
    std::vector<float> out;
    for (size_t i = 0; i < p.size(); i += 3)
      dec.step(st,
               feed(to_ids(
                   {p.begin() + static_cast<int64_t>(i), p.begin() + static_cast<int64_t>(std::min(i + 3, p.size()))})),
               out);
    EXPECT_LT(rel_diff(out.data(), single[static_cast<size_t>(b)][0].data(), V), 1e-4) << fx << " chunked row " << b;
  }
  // one batch: rows prefilled one by one, then decode steps of all rows together
  auto st = dec.new_state(B, 64);
  std::vector<float> out;
  for (int64_t b = 0; b < B; ++b) {
    dec.step_row(st, b, feed(to_ids(g.prompts[static_cast<size_t>(b)])), out);
    EXPECT_LT(rel_diff(out.data(), single[static_cast<size_t>(b)][0].data(), V), 1e-4) << fx << " prefill row " << b;
  }
  for (int64_t i = 0; i < steps; ++i) {
    runtime::StepFeed f;
    f.batch = B, f.seq = 1;
    for (int64_t b = 0; b < B; ++b)
      f.ids.push_back(static_cast<TokenId>(g.greedy[static_cast<size_t>(b)][static_cast<size_t>(i)]));
    if (dec.takes_embeddings()) f.embeds = dec.embed(f.ids);
    dec.step(st, f, out);
    for (int64_t b = 0; b < B; ++b)
      EXPECT_LT(rel_diff(out.data() + b * V, single[static_cast<size_t>(b)][static_cast<size_t>(i + 1)].data(), V),
                1e-4)
          << fx << " decode step " << i << " row " << b;
  }
}

// The graph itself, one call: a right-padded batch of first prompts (GroupQueryAttention's
// positions 0.. for every row) gives each row's Hugging Face logits.
TEST_P(HeadDim, RightPaddedFirstPromptBatchMatchesHuggingFace) {
  const auto& [fx, D] = GetParam();
  const test::Golden g = test::load_golden(fx);
  const auto pkg = built_package(fx, "ort", "fp32", /*all_logits=*/true);
  runtime::PackageModel pm(pkg);
  const auto& man = pm.manifest();
  const int64_t B = static_cast<int64_t>(g.prompts.size()), H = man.hidden_size, V = man.vocab_size;
  int64_t S = 0;
  for (const auto& p : g.prompts) S = std::max<int64_t>(S, static_cast<int64_t>(p.size()));
  std::vector<float> emb(static_cast<size_t>(B * S * H), 0.f);
  std::vector<int64_t> mask(static_cast<size_t>(B * S), 0);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = g.prompts[static_cast<size_t>(b)];
    const std::vector<float> e = pm.embed(p);
    std::copy(e.begin(), e.end(), emb.begin() + b * S * H);
    std::fill_n(mask.begin() + b * S, p.size(), 1);
  }
  runtime::HostTensor te = runtime::HostTensor::from_f32(emb, {B, S, H}),
                      tm = runtime::HostTensor::from_i64(mask, {B, S});
  std::vector<runtime::HostTensor> past;
  std::vector<std::string> names = {"inputs_embeds", "attention_mask"}, outs = {"logits"};
  for (int64_t l = 0; l < man.num_layers; ++l) {
    names.push_back(arch::kv_name(man.kv.past_key, l));
    names.push_back(arch::kv_name(man.kv.past_value, l));
    outs.push_back(arch::kv_name(man.kv.present_key, l));
    outs.push_back(arch::kv_name(man.kv.present_value, l));
    past.push_back(runtime::HostTensor::zeros(io::DType::F32, {B, man.num_kv_heads, 0, man.head_dim}));
    past.push_back(runtime::HostTensor::zeros(io::DType::F32, {B, man.num_kv_heads, 0, man.head_dim}));
  }
  std::vector<Ort::Value> vals;
  vals.push_back(te.view());
  vals.push_back(tm.view());
  for (auto& t : past) vals.push_back(t.view());
  runtime::Session s(pkg / man.graph("decoder").file);
  const std::vector<float> logits = runtime::to_f32(s.run(names, vals, outs).at(0));  // [B, S, V]
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<float> hf = g.prompt_logits(static_cast<size_t>(b));
    const int64_t n = static_cast<int64_t>(g.prompts[static_cast<size_t>(b)].size());
    for (int64_t i = 0; i < n; ++i)
      EXPECT_LT(rel_diff(logits.data() + (b * S + i) * V, hf.data() + i * V, V), 1e-3)
          << fx << " row " << b << " pos " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Goldens, HeadDim,
                         ::testing::Values(std::make_tuple(std::string("qwen3-hd40"), int64_t{40}),
                                           std::make_tuple(std::string("llama-hd72"), int64_t{72})),
                         [](const auto& info) {
                           std::string s = std::get<0>(info.param);
                           for (auto& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

// head_dim 36 (no multiple of 8): the ort graph pads heads to 40 with zeros; the KV cache
// holds the padded heads. Synthetic weights, checked by kvrun verify and against portable.
TEST(HeadDimPadded, Synthetic36PadsTo40AndVerifies) {
  test::TempDir d;
  nlohmann::json cfg = io::read_json_file(fixture("qwen3-hd40") / "config.json");
  cfg["head_dim"] = 36;
  io::write_text_file_atomic(d / "config.json", cfg.dump(2));
  SynthOptions so;
  so.config = d / "config.json";
  so.out = d / "ckpt";
  so.std_dev = 0.25;  // peaked distributions: greedy paths far from ties
  synth_checkpoint(so);
  for (const char* target : {"ort", "portable"}) {
    BuildOptions o;
    o.checkpoint = so.out;
    o.out = d / target;
    o.target = target;
    build_package(o);
  }
  const auto man = io::read_json_file(d / "ort" / "kvrun.json");
  EXPECT_EQ(man["kv_cache"]["head_dim"], 40);
  EXPECT_EQ(man["model"]["head_dim"], 36);
  VerifyOptions vo;
  vo.package = d / "ort";
  const VerifyReport r = verify_package(vo);
  EXPECT_TRUE(r.passed) << r.to_text();
  auto ort = Model::load(d / "ort");
  auto portable = Model::load(d / "portable");
  EXPECT_EQ(ort->info().head_dim, 40);
  const std::vector<Prompt> ps = {Prompt().ids({3, 17, 99, 5, 64}), Prompt().ids({7}),
                                  Prompt().ids({1, 2, 3, 4, 5, 6, 7, 8, 9})};
  const auto a = ort->generate(ps, greedy(12)), b = portable->generate(ps, greedy(12));
  for (size_t k = 0; k < ps.size(); ++k) {
    EXPECT_EQ(a[k].tokens, b[k].tokens) << "row " << k;
    EXPECT_EQ(ort->generate(ps[k], greedy(12)).tokens, b[k].tokens) << "single " << k;
  }
}

}  // namespace
}  // namespace kvrun
