// The beam search against Hugging Face transformers' real generate(num_beams=K) on a synthetic
// encoder-decoder model (tools/make_beam_goldens.py, tests/fixtures/beam/): identical sequences
// for every recorded configuration, scores within 1e-5 relative; torch.topk's tie order and
// log_softmax; option validation; sentences leaving the batch; num_beams = 1 against greedy.
#include "runtime/beam_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors.h"
#include "kvrun/error.h"
#include "test_util.h"

namespace kvrun::runtime {
namespace {

using nlohmann::json;
using ES = BeamSearchOptions::EarlyStopping;

const json& goldens() {
  static const json g = [] {
    std::ifstream in(test::fixture("beam/goldens.json"));
    return json::parse(in);
  }();
  return g;
}

float num(const json& v) {
  if (v.is_string()) {
    const auto s = v.get<std::string>();
    if (s == "inf") return std::numeric_limits<float>::infinity();
    if (s == "-inf") return -std::numeric_limits<float>::infinity();
    return std::numeric_limits<float>::quiet_NaN();
  }
  return v.get<float>();  // every value is a float32 printed as the double it equals: exact
}

// The synthetic model's tables and constants (see tools/make_beam_goldens.py).
struct Tables {
  int64_t vocab = 0, positions = 0, hash_mod = 0;
  TokenId eos = 0, pad = 0, start = 0;
  std::vector<float> t1, t2, t3, s;  // [V,V], [positions,V], [hash_mod,V], [src_vocab,V]
};

const Tables& tables(const std::string& name) {
  static std::map<std::string, Tables> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  static const io::SafetensorsFile file(test::fixture("beam/tables.safetensors"));
  const json& m = goldens()["models"][name];
  Tables t;
  t.vocab = m["vocab"];
  t.positions = m["positions"];
  t.hash_mod = m["hash_mod"];
  t.eos = m["eos"];
  t.pad = m["pad"];
  t.start = m["start"];
  auto get = [&](const char* key) {
    std::string n = name;
    n += ".";
    n += key;
    const io::TensorView* v = file.find(n);
    EXPECT_NE(v, nullptr) << n;
    return v ? v->to_f32() : std::vector<float>{};
  };
  t.t1 = get("t1");
  t.t2 = get("t2");
  t.t3 = get("t3");
  t.s = get("s");
  return cache.emplace(name, std::move(t)).first->second;
}

// The C++ twin of the synthetic model: a per-row state (the whole prefix, which the hash needs)
// that reorder() moves, and a per-sentence "encoder output" dropped with its sentence.
class SynthModel : public BeamModel {
 public:
  SynthModel(const Tables& t, const std::vector<std::vector<int64_t>>& sources, int64_t num_beams)
      : t_(t), K_(num_beams) {
    const auto V = static_cast<size_t>(t.vocab);
    for (size_t i = 0; i < sources.size(); ++i) {
      std::vector<float> enc(t.s.begin() + static_cast<std::ptrdiff_t>(sources[i][0] * t.vocab),
                             t.s.begin() + static_cast<std::ptrdiff_t>((sources[i][0] + 1) * t.vocab));
      for (size_t j = 1; j < sources[i].size(); ++j)
        for (size_t v = 0; v < V; ++v) enc[v] = enc[v] + t.s[static_cast<size_t>(sources[i][j]) * V + v];
      enc_.push_back(std::move(enc));
      live_.push_back(static_cast<int64_t>(i));
    }
    prefix_.resize(sources.size() * static_cast<size_t>(K_));
  }
  int64_t vocab() const override { return t_.vocab; }
  void step(const std::vector<TokenId>& tokens, std::vector<float>& logits) override {
    EXPECT_EQ(tokens.size(), prefix_.size());
    rows_stepped.push_back(static_cast<int64_t>(tokens.size()));
    const auto V = static_cast<size_t>(t_.vocab);
    logits.resize(tokens.size() * V);
    for (size_t r = 0; r < tokens.size(); ++r) {
      auto& p = prefix_[r];
      p.push_back(tokens[r]);
      int64_t h = 0;
      for (TokenId x : p) h = (h * 131 + x + 7) % t_.hash_mod;
      const float* a = t_.t1.data() + static_cast<size_t>(p.back()) * V;
      const float* b = t_.t2.data() + (p.size() - 1) * V;
      const float* c = t_.t3.data() + static_cast<size_t>(h) * V;
      const float* e = enc_[r / static_cast<size_t>(K_)].data();
      for (size_t v = 0; v < V; ++v) logits[r * V + v] = ((a[v] + b[v]) + c[v]) + e[v];
    }
  }
  void reorder(const std::vector<int64_t>& src, const std::vector<int64_t>& sentences) override {
    ASSERT_EQ(src.size(), sentences.size() * static_cast<size_t>(K_));
    std::vector<std::vector<TokenId>> prefix(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      ASSERT_GE(src[i], 0);
      ASSERT_LT(static_cast<size_t>(src[i]), prefix_.size());
      // A row continues a row of its own sentence.
      EXPECT_EQ(live_[static_cast<size_t>(src[i] / K_)], sentences[i / static_cast<size_t>(K_)]);
      prefix[i] = prefix_[static_cast<size_t>(src[i])];
    }
    std::vector<std::vector<float>> enc;
    for (int64_t s : sentences) {
      const auto it = std::find(live_.begin(), live_.end(), s);
      ASSERT_NE(it, live_.end()) << "sentence " << s << " came back";
      enc.push_back(std::move(enc_[static_cast<size_t>(it - live_.begin())]));
    }
    prefix_ = std::move(prefix);
    enc_ = std::move(enc);
    live_ = sentences;
  }
  std::vector<int64_t> rows_stepped;

 private:
  const Tables& t_;
  int64_t K_;
  std::vector<std::vector<float>> enc_;  // per live sentence
  std::vector<int64_t> live_;            // original index of each live sentence
  std::vector<std::vector<TokenId>> prefix_;
};

std::vector<TokenId> ids(const json& v) {
  if (v.is_null()) return {};
  if (v.is_number()) return {v.get<TokenId>()};
  return v.get<std::vector<TokenId>>();
}

BeamSearchOptions options(const json& o) {
  BeamSearchOptions b;
  b.num_beams = o["num_beams"];
  b.max_length = o["max_length"];
  b.length_penalty = o["length_penalty"];
  const json& es = o["early_stopping"];
  b.early_stopping = es.is_string() ? ES::Never : (es.get<bool>() ? ES::Yes : ES::Heuristic);
  b.min_length = o["min_length"];
  if (!o["bad_words_ids"].is_null()) b.bad_words_ids = o["bad_words_ids"].get<std::vector<std::vector<TokenId>>>();
  b.forced_eos_token_ids = ids(o["forced_eos_token_id"]);
  b.renormalize_logits = o["renormalize_logits"];
  b.num_return_sequences = o["num_return_sequences"];
  b.eos_token_ids = ids(o["eos_token_id"]);
  b.pad_token_id = o["pad_token_id"].get<TokenId>();
  return b;
}

TEST(BeamSearch, MatchesHuggingFaceGenerate) {
  const json& cases = goldens()["cases"];
  ASSERT_GE(cases.size(), 30u);
  size_t exact_scores = 0, n_scores = 0;
  double worst_rel = 0;
  for (const json& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const Tables& t = tables(c["model"]);
    const auto sources = c["sources"].get<std::vector<std::vector<int64_t>>>();
    const BeamSearchOptions opt = options(c["options"]);
    SynthModel model(t, sources, opt.num_beams);
    const auto result = beam_search(model, static_cast<int64_t>(sources.size()), t.start, opt);
    ASSERT_EQ(result.size(), sources.size());
    const auto seqs = padded_sequences(result, t.start, opt.output_fill_value());
    const auto want = c["sequences"].get<std::vector<std::vector<TokenId>>>();
    EXPECT_EQ(seqs, want);
    const auto lengths = c["lengths"].get<std::vector<size_t>>();
    const json& scores = c["scores"];
    size_t k = 0;
    for (const auto& sent : result) {
      ASSERT_EQ(sent.size(), static_cast<size_t>(opt.num_return_sequences));
      for (const auto& h : sent) {
        EXPECT_EQ(h.tokens.size(), lengths[k]) << "hypothesis " << k;
        const double w = num(scores[k]);
        EXPECT_NEAR(h.score, w, 1e-5 * std::abs(w)) << "hypothesis " << k;
        exact_scores += static_cast<float>(h.score) == static_cast<float>(w);
        worst_rel = std::max(worst_rel, std::abs(h.score - w) / std::abs(w));
        ++n_scores;
        ++k;
      }
    }
  }
  std::cout << "[ beam     ] " << cases.size() << " configurations, " << exact_scores << "/" << n_scores
            << " scores bit-identical to HF's float32, largest relative difference " << worst_rel << "\n";
}

TEST(BeamSearch, TopkTieOrderMatchesTorch) {
  std::vector<int64_t> got;
  for (const json& c : goldens()["topk"]) {
    std::vector<float> v;
    for (const json& x : c["values"]) v.push_back(num(x));
    const int64_t k = c["k"];
    beam_detail::topk(v.data(), static_cast<int64_t>(v.size()), k, got);
    EXPECT_EQ(got, c["indices"].get<std::vector<int64_t>>()) << "n " << v.size() << " k " << k;
  }
}

TEST(BeamSearch, LogSoftmaxCloseToTorch) {
  for (const json& c : goldens()["log_softmax"]) {
    std::vector<float> x, want;
    for (const json& v : c["x"]) x.push_back(num(v));
    for (const json& v : c["y"]) want.push_back(num(v));
    std::vector<float> got(x.size());
    beam_detail::log_softmax(x.data(), got.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::isinf(want[i])) {
        EXPECT_EQ(got[i], want[i]) << i;
      } else {
        // A shift of a few ulp of log(sum) (torch sums float32 SIMD exps).
        EXPECT_NEAR(got[i], want[i], 4 * std::numeric_limits<float>::epsilon() * (1 + std::abs(want[i]))) << i;
      }
    }
  }
}

BeamSearchOptions small_options() {
  const Tables& t = tables("small");
  BeamSearchOptions o;
  o.num_beams = 4;
  o.max_length = 16;
  o.bad_words_ids = {{t.pad}};
  o.forced_eos_token_ids = {t.eos};
  o.eos_token_ids = {t.eos};
  o.pad_token_id = t.pad;
  return o;
}

const std::vector<std::vector<int64_t>> kSources = {{3, 1, 4}, {1, 5, 9},  {2, 6, 5},   {3, 5, 8},
                                                    {9, 7, 9}, {15, 0, 2}, {11, 11, 11}};

TEST(BeamSearch, ValidationErrors) {
  auto fails = [](const std::function<void(BeamSearchOptions&)>& edit, const std::vector<std::string>& frag) {
    BeamSearchOptions o = small_options();
    edit(o);
    test::expect_error([&] { o.validate(); }, frag);
  };
  fails([](auto& o) { o.num_return_sequences = 5; }, {"num_return_sequences", "[1, num_beams]", "5", "num_beams 4"});
  fails([](auto& o) { o.num_return_sequences = 0; }, {"num_return_sequences", "0"});
  fails([](auto& o) { o.num_beams = 0; }, {"num_beams must be >= 1", "0"});
  fails([](auto& o) { o.max_length = 1; }, {"max_length", ">= 2", "1"});
  fails([](auto& o) { o.max_length = 0; }, {"max_length", "max_new_tokens"});
  fails([](auto& o) { o.max_new_tokens = -3; }, {"max_new_tokens must be >= 0", "-3"});
  fails([](auto& o) { o.min_length = -1; }, {"min_length must be >= 0", "-1"});
  fails([](auto& o) { o.length_penalty = std::nan(""); }, {"length_penalty must be finite"});
  fails([](auto& o) { o.bad_words_ids = {{23}, {}}; }, {"bad_words_ids", "empty"});
  fails([](auto& o) { o.bad_words_ids = {{4, -2}}; }, {"bad_words_ids must be >= 0", "[4, -2]"});
  fails([](auto& o) { o.bad_words_ids = {{0}}; }, {"bad_words_ids", "single EOS ids"});
  fails([](auto& o) { o.eos_token_ids = {-1}; }, {"eos_token_ids must be >= 0"});
  fails([](auto& o) { o.forced_eos_token_ids = {-1}; }, {"forced_eos_token_ids must be >= 0"});
  fails([](auto& o) { o.pad_token_id = -1; }, {"pad_token_id must be >= 0"});
  BeamSearchOptions ok = small_options();
  ok.max_length = 0;
  ok.max_new_tokens = 1;
  EXPECT_NO_THROW(ok.validate());

  // Ids checked against the model's vocabulary (24).
  const Tables& t = tables("small");
  auto run_fails = [&](const std::function<void(BeamSearchOptions&)>& edit, TokenId start,
                       const std::vector<std::string>& frag) {
    BeamSearchOptions o = small_options();
    edit(o);
    SynthModel m(t, {kSources[0]}, o.num_beams);
    test::expect_error([&] { beam_search(m, 1, start, o); }, frag);
  };
  run_fails([](auto& o) { o.eos_token_ids = {0, 24}; }, t.start, {"eos_token_ids", "vocabulary size 24", "[0, 24]"});
  run_fails([](auto& o) { o.bad_words_ids = {{3, 99}}; }, t.start, {"bad_words_ids", "[3, 99]"});
  run_fails([](auto& o) { o.forced_eos_token_ids = {30}; }, t.start, {"forced_eos_token_ids", "[30]"});
  run_fails([](auto&) {}, 24, {"decoder_start", "24"});
}

TEST(BeamSearch, OutputFillValueFollowsHF) {
  BeamSearchOptions o;
  EXPECT_EQ(o.output_fill_value(), -1);  // no EOS ids
  o.eos_token_ids = {5, 6};
  EXPECT_EQ(o.output_fill_value(), 5);  // no pad: eos[0]
  o.pad_token_id = 9;
  EXPECT_EQ(o.output_fill_value(), 9);
  o.pad_token_id = 0;
  EXPECT_EQ(o.output_fill_value(), 5);  // HF's `pad_token_id or eos_token_id[0]`
}

// Sentences end at different steps and leave the batch; the results are those of searching each
// sentence alone, and the ones cut by max_length have max_length - 1 tokens.
TEST(BeamSearch, FinishedSentencesLeaveTheBatch) {
  const Tables& t = tables("small");
  BeamSearchOptions o = small_options();
  o.num_return_sequences = 2;
  SynthModel model(t, kSources, o.num_beams);
  const auto all = beam_search(model, static_cast<int64_t>(kSources.size()), t.start, o);
  // Fewer rows stepped as sentences settle, down from 7 x 4.
  ASSERT_GE(model.rows_stepped.size(), 2u);
  EXPECT_EQ(model.rows_stepped.front(), 28);
  EXPECT_LT(model.rows_stepped.back(), 28);
  std::set<int64_t> distinct(model.rows_stepped.begin(), model.rows_stepped.end());
  EXPECT_GE(distinct.size(), 3u) << "sentences should settle at different steps";
  for (size_t i = 0; i < kSources.size(); ++i) {
    SynthModel one(t, {kSources[i]}, o.num_beams);
    const auto alone = beam_search(one, 1, t.start, o);
    ASSERT_EQ(alone[0].size(), all[i].size());
    for (size_t r = 0; r < all[i].size(); ++r) {
      EXPECT_EQ(alone[0][r].tokens, all[i][r].tokens) << "sentence " << i;
      EXPECT_EQ(alone[0][r].score, all[i][r].score) << "sentence " << i;
    }
  }
  // max_length reached: every hypothesis has max_length - 1 tokens, the last one forced EOS.
  o.max_length = 5;
  SynthModel shortm(t, kSources, o.num_beams);
  for (const auto& sent : beam_search(shortm, static_cast<int64_t>(kSources.size()), t.start, o))
    for (const auto& h : sent) {
      ASSERT_EQ(h.tokens.size(), 4u);
      EXPECT_EQ(h.tokens.back(), t.eos);
    }
  EXPECT_EQ(shortm.rows_stepped.size(), 4u);
  // max_new_tokens = max_length - 1.
  BeamSearchOptions n = o;
  n.max_length = 0;
  n.max_new_tokens = 4;
  SynthModel a(t, kSources, o.num_beams), b(t, kSources, o.num_beams);
  const auto ra = beam_search(a, 7, t.start, o), rb = beam_search(b, 7, t.start, n);
  for (size_t i = 0; i < ra.size(); ++i) EXPECT_EQ(ra[i][0].tokens, rb[i][0].tokens);
}

// num_beams = 1 (early_stopping False or True) is greedy decoding under the same processors:
// when the best candidate is EOS the only running beam scores lower at the same length.
TEST(BeamSearch, OneBeamIsGreedy) {
  const Tables& t = tables("small");
  for (int variant = 0; variant < 4; ++variant) {
    BeamSearchOptions o = small_options();
    o.num_beams = 1;
    o.early_stopping = variant % 2 ? ES::Yes : ES::Heuristic;
    o.min_length = variant >= 2 ? 9 : 0;
    o.renormalize_logits = variant >= 2;
    o.length_penalty = variant == 3 ? 2.0 : 1.0;
    o.bad_words_ids = {{t.pad}, {5, 7}};
    SynthModel beam(t, kSources, 1);
    const auto got = beam_search(beam, static_cast<int64_t>(kSources.size()), t.start, o);
    for (size_t i = 0; i < kSources.size(); ++i) {
      SCOPED_TRACE("variant " + std::to_string(variant) + ", sentence " + std::to_string(i));
      SynthModel g(t, {kSources[i]}, 1);
      std::vector<TokenId> seq{t.start}, want;
      std::vector<float> logits, lp(static_cast<size_t>(t.vocab));
      for (int64_t len = 1; len < o.max_length; ++len) {
        g.step({seq.back()}, logits);
        beam_detail::log_softmax(logits.data(), lp.data(), t.vocab);
        lp[static_cast<size_t>(t.pad)] = -INFINITY;
        if (seq.back() == 5) lp[7] = -INFINITY;
        if (len < o.min_length) lp[static_cast<size_t>(t.eos)] = -INFINITY;
        if (len == o.max_length - 1)
          for (int64_t v = 0; v < t.vocab; ++v) lp[static_cast<size_t>(v)] = v == t.eos ? 0.f : -INFINITY;
        const auto best = static_cast<TokenId>(std::max_element(lp.begin(), lp.end()) - lp.begin());
        seq.push_back(best);
        want.push_back(best);
        if (best == t.eos) break;
        g.reorder({0}, {0});
      }
      EXPECT_EQ(got[i][0].tokens, want);
      if (o.min_length > 0) {
        EXPECT_GE(want.size() + 1, static_cast<size_t>(o.min_length));
      }
    }
  }
}

}  // namespace
}  // namespace kvrun::runtime
