// Marian (MarianMTModel) translation models: config parsing, the C++ reference forward and
// kvrun's encoder/decoder graphs (both targets) against transformers' encoder states and
// teacher-forced logits (tests/fixtures/marian-tiny, tools/make_marian_fixtures.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "io/safetensors.h"
#include "io/seq2seq_config.h"
#include "kvrun/build.h"
#include "kvrun/translate.h"
#include "reference/seq2seq_ref.h"
#include "runtime/seq2seq_model.h"
#include "runtime/seq2seq_package.h"
#include "test_util.h"

namespace kvrun {
namespace {

using test::built_package;
using test::expect_error;
using test::fixture;
using test::max_abs_diff;

constexpr double kFp32Tol = 1e-4;
const char* kFixture = "marian-tiny";

// The sentences golden_logits.safetensors holds: s{k}.input_ids, .encoder_last_hidden_state,
// .decoder_input_ids ([pad] + HF's greedy output), .logits (teacher-forced, float32).
struct LogitsCase {
  std::string key;
  std::vector<int64_t> input_ids, decoder_input_ids;
  std::vector<float> encoder, logits;
};

std::vector<LogitsCase> logits_cases() {
  const io::TensorStore s(fixture(kFixture) / "golden_logits.safetensors");
  std::vector<LogitsCase> out;
  for (const auto& name : s.names()) {
    if (!name.ends_with(".input_ids") || name.find("decoder") != std::string::npos) continue;
    LogitsCase c;
    c.key = name.substr(0, name.size() - 10);
    auto ids = [&](const std::string& n) {
      const io::TensorView& t = s.get(n);
      std::vector<int64_t> v(static_cast<size_t>(t.numel()));
      std::memcpy(v.data(), t.data, v.size() * 8);
      return v;
    };
    c.input_ids = ids(c.key + ".input_ids");
    c.decoder_input_ids = ids(c.key + ".decoder_input_ids");
    c.encoder = s.get(c.key + ".encoder_last_hidden_state").to_f32();
    c.logits = s.get(c.key + ".logits").to_f32();
    out.push_back(std::move(c));
  }
  return out;
}

TEST(MarianConfig, FixtureAndPositions) {
  const io::Seq2SeqConfig c = io::load_seq2seq_config(fixture(kFixture));
  EXPECT_EQ(c.architecture, "MarianMTModel");
  EXPECT_EQ(c.activation, io::Seq2SeqActivation::Swish);
  EXPECT_TRUE(c.scale_embedding);
  EXPECT_EQ(c.pad_token_id, c.decoder_vocab_size - 1);
  EXPECT_EQ(c.decoder_start_token_id, c.pad_token_id);
  // not interleaved: sin in the first half, cos in the second; row 0 = [0.., 1..]
  const auto p = c.positions(3);
  const int64_t d = c.d_model;
  EXPECT_EQ(p[0], 0.0f);
  EXPECT_EQ(p[static_cast<size_t>(d / 2)], 1.0f);
  EXPECT_FLOAT_EQ(p[static_cast<size_t>(d + 1)], static_cast<float>(std::sin(1.0 / std::pow(10000.0, 2.0 / d))));
  EXPECT_FLOAT_EQ(p[static_cast<size_t>(2 * d + d / 2 + 1)],
                  static_cast<float>(std::cos(2.0 / std::pow(10000.0, 2.0 / d))));
}

TEST(MarianConfig, Refusals) {
  nlohmann::json j = io::read_json_file(fixture(kFixture) / "config.json");
  auto with = [&](const char* key, nlohmann::json v) {
    nlohmann::json k = j;
    k[key] = std::move(v);
    return k;
  };
  expect_error([&] { io::parse_seq2seq_config(with("normalize_before", true), "c.json"); }, {"c.json", "pre-norm"});
  expect_error([&] { io::parse_seq2seq_config(with("activation_function", "tanh"), "c.json"); },
               {"activation_function", "tanh"});
  expect_error([&] { io::parse_seq2seq_config(with("d_model", 30), "c.json"); }, {"d_model", "multiple"});
  expect_error([&] { io::parse_seq2seq_config(with("pad_token_id", 1 << 20), "c.json"); }, {"pad_token_id", "outside"});
}

TEST(MarianReference, MatchesTransformers) {
  const io::Seq2SeqConfig c = io::load_seq2seq_config(fixture(kFixture));
  const reference::Seq2SeqRef ref(c, io::TensorStore(fixture(kFixture)));
  const auto cases = logits_cases();
  ASSERT_GE(cases.size(), 2u);
  const auto V = static_cast<size_t>(c.decoder_vocab_size);
  for (const auto& k : cases) {
    const std::vector<float> enc = ref.encode(k.input_ids);
    ASSERT_EQ(enc.size(), k.encoder.size());
    const double enc_diff = max_abs_diff(enc.data(), k.encoder.data(), enc.size());
    // all target positions at once, then one at a time
    auto st = ref.start(enc, static_cast<int64_t>(k.input_ids.size()));
    const std::vector<float> all = ref.decode(st, k.decoder_input_ids);
    ASSERT_EQ(all.size(), k.logits.size());
    double worst = max_abs_diff(all.data(), k.logits.data(), all.size());
    auto st1 = ref.start(enc, static_cast<int64_t>(k.input_ids.size()));
    for (size_t t = 0; t < k.decoder_input_ids.size(); ++t) {
      const std::vector<float> one = ref.decode(st1, {k.decoder_input_ids[t]});
      worst = std::max(worst, max_abs_diff(one.data(), k.logits.data() + t * V, V));
    }
    // The reference sums in its own order (float32 dots, double norms and softmax): relative
    // to the largest logit (the fixture's EOS bias makes them ~20) it stays within 1e-5.
    double scale = 1;
    for (float v : k.logits) scale = std::max(scale, static_cast<double>(std::fabs(v)));
    std::printf("[ marian reference %s ] %zu source, %zu target: encoder %.2g, logits %.2g (max |logit| %.1f)\n",
                k.key.c_str(), k.input_ids.size(), k.decoder_input_ids.size(), enc_diff, worst, scale);
    EXPECT_LE(enc_diff, kFp32Tol) << k.key;
    EXPECT_LE(worst, 1e-5 * scale) << k.key;
  }
}

// A folder without its tokenizer files fails with one line naming the file, and leaves no
// package behind; a decoder-only command on a translation package says what to use.
TEST(MarianBuild, BadInput) {
  test::TempDir tmp;
  const auto src = tmp.path() / "model";
  std::filesystem::create_directories(src);
  for (const auto& e : std::filesystem::directory_iterator(fixture(kFixture)))
    if (e.path().filename() != "vocab.json") std::filesystem::copy(e.path(), src / e.path().filename());
  BuildOptions o;
  o.checkpoint = src;
  o.out = tmp.path() / "pkg";
  expect_error([&] { build_package(o); }, {"vocab.json", "missing"});
  EXPECT_FALSE(std::filesystem::exists(o.out));
  o.precision = "fp16";
  expect_error([&] { build_package(o); }, {"fp16", "fp32, int8 or int4"});
  const test::CliResult r = test::run_cli({"run", built_package(kFixture, "ort", "fp32").string(), "--prompt", "hi"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("kvrun translate"), std::string::npos) << r.out;
}

// int8/int4 builds quantize every projection and the lm_head (which gets its own weight, the
// lookups keep float rows) and translate. Their accuracy is not asserted on this fixture: its
// weights are scaled up for peaked outputs, which makes attention nearly one-hot and chaotic
// under any weight rounding (int8 MatMulNBits reproduces the dequantized weights exactly;
// excluding only the fused QKV projections brings the encoder error from 1.7 to 0.18).
TEST(MarianBuild, QuantizedPackagesTranslate) {
  for (const auto& [target, precision] :
       std::vector<std::pair<std::string, std::string>>{{"ort", "int8"}, {"ort", "int4"}, {"portable", "int8"}}) {
    const auto pkg = built_package(kFixture, target, precision);
    const nlohmann::json m = io::read_json_file(pkg / "kvrun.json");
    EXPECT_EQ(m.at("precision"), precision);
    EXPECT_EQ(m.at("quantization").at("quantized_nodes").get<int64_t>(), 3 * 4 + 2 + 2 * 6 + 1) << target << precision;
    EXPECT_LT(std::filesystem::file_size(pkg / "model.onnx.data"),
              std::filesystem::file_size(built_package(kFixture, target, "fp32") / "model.onnx.data"));
    const auto r = Translator::load(pkg)->translate({"Hello", ">>fr<< How are you today?"}, TranslateOptions{});
    ASSERT_EQ(r.size(), 2u);
    for (const auto& t : r) EXPECT_EQ(t.hypotheses.size(), 1u);
  }
}

// kvrun translate: stdin lines in, one translation per line in input order (an empty line
// stays empty); --json carries the hypotheses; invalid UTF-8 is one error line, exit 2.
TEST(MarianCli, TranslateLinesJsonAndErrors) {
  const auto pkg = built_package(kFixture, "ort", "fp32").string();
  const nlohmann::json g = io::read_json_file(fixture(kFixture) / "golden.json");
  std::string in;
  std::vector<std::string> want;
  for (const auto& s : g.at("sentences")) {
    in += s.at("text").get<std::string>() + "\n";
    want.push_back(s.at("text").get<std::string>().empty() ? "" : s.at("beam_text").get<std::string>());
  }
  const test::CliResult r = test::run_cli({"translate", pkg, "--batch-size", "3"}, in);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::vector<std::string> lines;
  size_t a = 0;
  for (size_t b; (b = r.out.find('\n', a)) != std::string::npos; a = b + 1) lines.push_back(r.out.substr(a, b - a));
  EXPECT_EQ(lines, want);
  const test::CliResult j = test::run_cli({"translate", pkg, "--text", "Hello", "--json", "--n-best", "2"});
  ASSERT_EQ(j.exit_code, 0) << j.out;
  const auto o = nlohmann::json::parse(j.out.substr(0, j.out.find('\n')));
  EXPECT_EQ(o.at("source"), "Hello");
  EXPECT_EQ(o.at("hypotheses").size(), 2u);
  const test::CliResult bad = test::run_cli({"translate", pkg, "--text", std::string("caf\xc3", 4)});
  EXPECT_EQ(bad.exit_code, 2) << bad.out;
  EXPECT_NE(bad.out.find("UTF-8"), std::string::npos) << bad.out;
}

// Sampling (temperature > 0): the same seed gives the same tokens; pad is never chosen (the
// model's bad_words_ids); an output that runs to max_length ends with the forced EOS.
TEST(MarianTranslate, SamplingIsSeededAndKeepsTheProcessors) {
  const auto t = Translator::load(built_package(kFixture, "ort", "fp32"));
  const nlohmann::json g = io::read_json_file(fixture(kFixture) / "golden.json");
  std::vector<std::string> texts;
  for (const auto& s : g.at("sentences")) texts.push_back(s.at("text"));
  TranslateOptions o;
  o.sampling.temperature = 3.0f;
  o.sampling.seed = 7;
  const auto a = t->translate(texts, o), b = t->translate(texts, o);
  o.sampling.seed = 8;
  const auto c = t->translate(texts, o);
  int differ = 0, long_outputs = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (texts[i].empty()) continue;
    const auto& h = a[i].hypotheses.at(0);
    EXPECT_EQ(h.tokens, b[i].hypotheses.at(0).tokens) << i;
    differ += h.tokens != c[i].hypotheses.at(0).tokens;
    for (TokenId tok : h.tokens) EXPECT_NE(tok, g.at("special_ids").at("pad").get<TokenId>()) << i;
    EXPECT_EQ(h.tokens.back(), 0) << i;  // EOS, chosen or forced at max_length - 1
    EXPECT_LE(h.tokens.size(), 31u) << i;
    long_outputs += h.tokens.size() == 31;
    EXPECT_LT(h.score, 0.0) << i;
  }
  EXPECT_GT(differ, 0);
  EXPECT_GT(long_outputs, 0);
}

class MarianPackage : public ::testing::TestWithParam<std::string> {};

// Encoder states, then the decoder one position at a time on its cache: every step's logits
// within 1e-4 of transformers'. Two rows (beams) of one sentence share its cross K/V and give
// the same logits.
TEST_P(MarianPackage, TeacherForcedLogitsMatchTransformers) {
  runtime::Seq2SeqPackage pkg(built_package(kFixture, GetParam(), "fp32"));
  const auto V = static_cast<size_t>(pkg.vocab_size());
  for (const auto& k : logits_cases()) {
    const auto e = pkg.encode(k.input_ids);
    const double enc_diff = max_abs_diff(e.hidden.data(), k.encoder.data(), k.encoder.size());
    auto st = pkg.new_state(2);
    double worst = 0, rows = 0;
    for (size_t t = 0; t < k.decoder_input_ids.size(); ++t) {
      const int64_t tok = k.decoder_input_ids[t];
      const std::vector<float> lg = pkg.decode(e, st, {tok, tok}, 1);
      ASSERT_EQ(lg.size(), 2 * V);
      worst = std::max(worst, max_abs_diff(lg.data(), k.logits.data() + t * V, V));
      rows = std::max(rows, max_abs_diff(lg.data(), lg.data() + V, V));
    }
    std::printf("[ marian %s %s ] encoder %.2g, logits %.2g over %zu steps\n", GetParam().c_str(), k.key.c_str(),
                enc_diff, worst, k.decoder_input_ids.size());
    EXPECT_LE(enc_diff, kFp32Tol) << k.key;
    EXPECT_LE(worst, kFp32Tol) << k.key;
    EXPECT_EQ(rows, 0.0) << k.key;
  }
}

// Greedy decoding through the package with HF's processors for this model (bad_words_ids
// [[pad]], forced EOS at max_length - 1) gives transformers' greedy output for every golden
// sentence.
TEST_P(MarianPackage, GreedyMatchesTransformers) {
  runtime::Seq2SeqPackage pkg(built_package(kFixture, GetParam(), "fp32"));
  const nlohmann::json g = io::read_json_file(fixture(kFixture) / "golden.json");
  const int64_t pad = g.at("special_ids").at("pad"), eos = g.at("special_ids").at("eos");
  const int64_t max_length = g.at("generation_kwargs").at("greedy").at("max_length");
  const auto V = pkg.vocab_size();
  int compared = 0;
  for (const auto& s : g.at("sentences")) {
    const auto e = pkg.encode(s.at("input_ids").get<std::vector<int64_t>>());
    auto st = pkg.new_state(1);
    std::vector<int64_t> out = {pad};
    while (static_cast<int64_t>(out.size()) < max_length) {
      std::vector<float> lg = pkg.decode(e, st, {out.back()}, 1);
      lg[static_cast<size_t>(pad)] = -INFINITY;
      if (static_cast<int64_t>(out.size()) == max_length - 1)
        for (int64_t v = 0; v < V; ++v)
          if (v != eos) lg[static_cast<size_t>(v)] = -INFINITY;
      out.push_back(std::max_element(lg.begin(), lg.end()) - lg.begin());
      if (out.back() == eos) break;
    }
    EXPECT_EQ(out, s.at("greedy").get<std::vector<int64_t>>()) << s.at("text");
    ++compared;
  }
  EXPECT_GE(compared, 6);
}

// kvrun verify checks a seq2seq package against the reference forward (encoder, first step,
// decode steps with two beams sharing the cross K/V, greedy).
TEST_P(MarianPackage, VerifyPasses) {
  const test::CliResult r = test::run_cli(
      {"verify", built_package(kFixture, GetParam(), "fp32").string(), "--greedy-tokens", "24", "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  EXPECT_TRUE(j.at("passed").get<bool>()) << r.out;
  std::vector<std::string> names;
  for (const auto& c : j.at("checks")) names.push_back(c.at("name"));
  EXPECT_EQ(names, (std::vector<std::string>{"encoder", "decoder-first", "decode-steps", "greedy"}));
}

INSTANTIATE_TEST_SUITE_P(Targets, MarianPackage, ::testing::Values("ort", "portable"));

// The translation runtime on every layout it reads: kvrun's own packages (both targets),
// optimum's merged and split exports, and a decoder that recomputes cross-attention from
// encoder_hidden_states (seeds.md part 5). All golden sentences in one batch, greedy with
// HF's processors: every row equals transformers' greedy output.
class Seq2SeqLayouts : public ::testing::TestWithParam<std::string> {};

TEST_P(Seq2SeqLayouts, BatchedGreedyMatchesTransformers) {
  const std::string p = GetParam();
  const std::filesystem::path dir = p == "kvrun-ort"        ? built_package(kFixture, "ort", "fp32")
                                    : p == "kvrun-portable" ? built_package(kFixture, "portable", "fp32")
                                                            : fixture(kFixture) / "onnx" / p;
  const auto m = runtime::Seq2SeqModel::open(dir);
  EXPECT_EQ(m->layout(), p.starts_with("kvrun") ? "kvrun"
                         : p == "merged"        ? "optimum-merged"
                         : p == "split"         ? "optimum-split"
                                                : "recompute");
  const nlohmann::json g = io::read_json_file(fixture(kFixture) / "golden.json");
  const TokenId pad = g.at("special_ids").at("pad"), eos = g.at("special_ids").at("eos");
  const int64_t max_length = g.at("generation_kwargs").at("greedy").at("max_length");
  std::vector<std::vector<int64_t>> sources;
  for (const auto& s : g.at("sentences")) sources.push_back(s.at("input_ids").get<std::vector<int64_t>>());
  const auto rows = static_cast<int64_t>(sources.size());
  auto batch = m->start(sources, 1);
  std::vector<std::vector<int64_t>> out(sources.size(), std::vector<int64_t>{pad});
  std::vector<TokenId> next(sources.size(), pad);
  std::vector<float> lg;
  for (int64_t len = 1; len < max_length; ++len) {
    m->step(*batch, next, lg);
    for (int64_t r = 0; r < rows; ++r) {
      auto& o = out[static_cast<size_t>(r)];
      if (o.back() == eos) {
        next[static_cast<size_t>(r)] = pad;  // finished rows are fed pad, as HF does
        continue;
      }
      float* row = lg.data() + r * m->vocab();
      row[pad] = -INFINITY;
      if (len == max_length - 1)
        for (int64_t v = 0; v < m->vocab(); ++v)
          if (v != eos) row[v] = -INFINITY;
      o.push_back(std::max_element(row, row + m->vocab()) - row);
      next[static_cast<size_t>(r)] = static_cast<TokenId>(o.back());
    }
  }
  for (size_t r = 0; r < sources.size(); ++r)
    EXPECT_EQ(out[r], g.at("sentences")[r].at("greedy").get<std::vector<int64_t>>()) << p << " row " << r;
}

// A decoder the runtime cannot feed (here optimum's first-step decoder on its own: no
// self-attention cache inputs) is refused with its signature listed, never run.
TEST(Seq2SeqLayoutsErrors, UnfeedableDecoderAndMissingFiles) {
  test::TempDir tmp;
  const auto split = fixture(kFixture) / "onnx" / "split";
  std::filesystem::copy(split / "encoder_model.onnx", tmp.path() / "encoder_model.onnx");
  expect_error([&] { runtime::Seq2SeqModel::open(tmp.path()); }, {"no decoder beside it"});
  std::filesystem::copy(split / "decoder_model.onnx", tmp.path() / "decoder_model.onnx");
  expect_error([&] { runtime::Seq2SeqModel::open(tmp.path()); },
               {"does not match a signature kvrun can feed", "recompute", "encoder_hidden_states  float32",
                "no past_key_values.{i}.decoder.key/value inputs"});
  expect_error([&] { runtime::Seq2SeqModel::open(tmp.path() / "nothing"); }, {"no translation model here"});
}

// kvrun::Translator (text in, text out) with the model's generation_config (beam 4, max_length
// 32, pad banned, forced EOS, renormalized): HF's beam output and sequences_scores for every
// golden sentence, one at a time and all in one batch (finished sentences leave it), and HF's
// 4-best lists.
TEST_P(Seq2SeqLayouts, BeamSearchMatchesTransformers) {
  const std::string p = GetParam();
  const std::filesystem::path dir = p == "kvrun-ort"        ? built_package(kFixture, "ort", "fp32")
                                    : p == "kvrun-portable" ? built_package(kFixture, "portable", "fp32")
                                                            : fixture(kFixture) / "onnx" / p;
  const auto t = Translator::load(dir);
  const nlohmann::json g = io::read_json_file(fixture(kFixture) / "golden.json");
  std::vector<std::string> texts;
  for (const auto& s : g.at("sentences")) texts.push_back(s.at("text"));
  auto without_start = [](const nlohmann::json& seq) {
    const auto v = seq.get<std::vector<int64_t>>();
    return std::vector<TokenId>(v.begin() + 1, v.end());
  };
  for (const int64_t batch : {int64_t{1}, int64_t{8}}) {
    TranslateOptions o;
    o.batch_size = batch;
    const auto r = t->translate(texts, o);
    ASSERT_EQ(r.size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
      const auto& s = g.at("sentences")[i];
      if (texts[i].empty()) {  // an empty line gives an empty translation (HF would translate "</s>")
        EXPECT_TRUE(r[i].hypotheses.empty());
        continue;
      }
      ASSERT_EQ(r[i].hypotheses.size(), 1u);
      EXPECT_EQ(r[i].source_tokens, static_cast<int64_t>(s.at("input_ids").size())) << i;
      EXPECT_EQ(r[i].hypotheses[0].tokens, without_start(s.at("beam"))) << p << " batch " << batch << " sentence " << i;
      EXPECT_NEAR(r[i].hypotheses[0].score, s.at("beam_score").get<double>(), 1e-4) << p << " sentence " << i;
      EXPECT_EQ(r[i].hypotheses[0].text, s.at("beam_text").get<std::string>()) << p << " sentence " << i;
    }
  }
  TranslateOptions nb;
  nb.n_best = 4;
  const auto r = t->translate(texts, nb);
  int lists = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto& s = g.at("sentences")[i];
    if (!s.contains("nbest")) continue;
    ASSERT_EQ(r[i].hypotheses.size(), 4u);
    for (size_t k = 0; k < 4; ++k) {
      EXPECT_EQ(r[i].hypotheses[k].tokens, without_start(s.at("nbest")[k])) << p << " sentence " << i << " #" << k;
      EXPECT_NEAR(r[i].hypotheses[k].score, s.at("nbest_scores")[k].get<double>(), 1e-4) << i << " #" << k;
    }
    ++lists;
  }
  EXPECT_GE(lists, 2);
}

// transformers.js keeps its graphs under onnx/ with suffixes such as _quantized: found there,
// and the model translates as optimum's merged export does.
TEST(Seq2SeqLayoutsErrors, TransformersJsFileNames) {
  test::TempDir tmp;
  const auto merged = fixture(kFixture) / "onnx" / "merged";
  std::filesystem::create_directories(tmp.path() / "onnx");
  for (const auto& e : std::filesystem::directory_iterator(merged)) {
    const std::string f = e.path().filename().string();
    if (f.ends_with(".onnx"))
      std::filesystem::copy(e.path(), tmp.path() / "onnx" / (f.substr(0, f.size() - 5) + "_quantized.onnx"));
    else
      std::filesystem::copy(e.path(), tmp.path() / f);
  }
  EXPECT_EQ(runtime::Seq2SeqModel::open(tmp.path())->layout(), "optimum-merged");
  const auto a = Translator::load(tmp.path())->translate({">>fr<< How are you today?"}, TranslateOptions{});
  const auto b = Translator::load(merged)->translate({">>fr<< How are you today?"}, TranslateOptions{});
  EXPECT_EQ(a.at(0).hypotheses.at(0).tokens, b.at(0).hypotheses.at(0).tokens);
}

INSTANTIATE_TEST_SUITE_P(Marian, Seq2SeqLayouts,
                         ::testing::Values("kvrun-ort", "kvrun-portable", "merged", "split", "recompute"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

}  // namespace
}  // namespace kvrun
