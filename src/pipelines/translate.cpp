// kvrun::Translator: MarianTokenizer, then per batch of sentences (sorted by length) the
// encoder once and beam search (runtime/beam_search.h) over runtime::Seq2SeqModel (any layout
// it reads: kvrun packages share each sentence's cross K/V among its beams); reorder() gathers
// the cache rows the surviving beams continue and drops finished sentences.
#include "kvrun/translate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include "io/fs.h"
#include "io/seq2seq_config.h"
#include "kvrun/error.h"
#include "runtime/beam_search.h"
#include "runtime/sampler.h"
#include "runtime/seq2seq_model.h"
#include "text/marian_tokenizer.h"

namespace kvrun {
namespace fs = std::filesystem;

void TranslateOptions::validate() const {
  if (num_beams < 0 || num_beams > 256)
    throw Error("num_beams must be in [0, 256], found " + std::to_string(num_beams));
  if (max_length < 0) throw Error("max_length must be >= 0, found " + std::to_string(max_length));
  if (n_best < 1) throw Error("n_best must be >= 1, found " + std::to_string(n_best));
  if (num_beams > 0 && n_best > num_beams)
    throw Error("n_best (" + std::to_string(n_best) + ") exceeds the beams (" + std::to_string(num_beams) + ")");
  if (batch_size < 1) throw Error("batch_size must be >= 1, found " + std::to_string(batch_size));
  sampling.validate();
  if (sampling.temperature > 0 && n_best > 1) throw Error("n_best > 1 needs beam search (temperature 0)");
}

Translator::~Translator() = default;

namespace {

// The decoder of a batch of sentences for beam_search.
class BatchBeamModel final : public runtime::BeamModel {
 public:
  BatchBeamModel(runtime::Seq2SeqModel& m, std::shared_ptr<runtime::Seq2SeqModel::Batch> b) : m_(m), b_(std::move(b)) {}
  int64_t vocab() const override { return m_.vocab(); }
  void step(const std::vector<TokenId>& tokens, std::vector<float>& logits) override { m_.step(*b_, tokens, logits); }
  void reorder(const std::vector<int64_t>& src, const std::vector<int64_t>& sentences) override {
    m_.reorder(*b_, src, sentences);
  }

 private:
  runtime::Seq2SeqModel& m_;
  std::shared_ptr<runtime::Seq2SeqModel::Batch> b_;
};

class PackageTranslator final : public Translator {
 public:
  PackageTranslator(const fs::path& dir, int threads) {
    runtime::SessionConfig sc;
    sc.intra_op_threads = threads;
    sc.allow_spinning = false;  // the beam search runs on these cores between decoder runs
    model_ = runtime::Seq2SeqModel::open(dir, sc);
    tok_ = text::MarianTokenizer::load(dir);
    if (fs::exists(dir / "kvrun.json")) {
      const nlohmann::json m = io::read_json_file(dir / "kvrun.json");
      cfg_ = io::parse_seq2seq_config(m.at("model"), (dir / "kvrun.json").string() + " model");
      gen_ = m.at("generation");
    } else {
      cfg_ = io::load_seq2seq_config(dir);
      gen_ = io::load_seq2seq_generation_config(dir, cfg_).to_json();
    }
    max_positions_ = model_->max_positions() > 0 ? model_->max_positions() : cfg_.max_position_embeddings;
    if (tok_->target_vocab_size() != model_->vocab())
      throw Error((dir / "vocab.json").string() + ": the target vocabulary has " +
                  std::to_string(tok_->target_vocab_size()) + " entries but the model's logits have " +
                  std::to_string(model_->vocab()));
  }

  std::vector<Translation> translate(const std::vector<std::string>& sources, const TranslateOptions& opt,
                                     TranslateStats* stats) override {
    opt.validate();
    const auto t0 = std::chrono::steady_clock::now();
    runtime::BeamSearchOptions bo = search_options(opt);
    std::vector<Translation> out(sources.size());
    std::vector<std::vector<int64_t>> ids(sources.size());
    std::vector<size_t> order;
    for (size_t i = 0; i < sources.size(); ++i) {
      if (sources[i].find_first_not_of(" \t\r\n") == std::string::npos) continue;  // empty line: empty output
      const auto v = tok_->encode_source(sources[i]);
      ids[i].assign(v.begin(), v.end());
      if (static_cast<int64_t>(ids[i].size()) > max_positions_)
        throw Error("source " + std::to_string(i + 1) + " has " + std::to_string(ids[i].size()) +
                    " tokens; the model takes at most " + std::to_string(max_positions_) +
                    " (max_position_embeddings): split the sentence");
      out[i].source_tokens = static_cast<int64_t>(ids[i].size());
      order.push_back(i);
    }
    // batches of similar lengths
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a].size() > ids[b].size(); });
    TranslateStats st;
    for (size_t a = 0; a < order.size(); a += static_cast<size_t>(opt.batch_size)) {
      const size_t b = std::min(order.size(), a + static_cast<size_t>(opt.batch_size));
      std::vector<std::vector<int64_t>> batch;
      for (size_t k = a; k < b; ++k) batch.push_back(ids[order[k]]);
      const auto hyps = opt.sampling.temperature > 0 ? sample(batch, bo, opt.sampling, a) : beam(batch, bo);
      for (size_t k = a; k < b; ++k) {
        Translation& t = out[order[k]];
        for (const auto& h : hyps[k - a]) {
          TranslationHypothesis th;
          th.tokens = h.tokens;
          th.score = h.score;
          th.text = tok_->decode(h.tokens, /*skip_special_tokens=*/true);
          t.hypotheses.push_back(std::move(th));
        }
        st.target_tokens += t.hypotheses.empty() ? 0 : static_cast<int64_t>(t.hypotheses[0].tokens.size());
        st.source_tokens += t.source_tokens;
        ++st.sentences;
      }
    }
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (stats) *stats = st;
    return out;
  }

 private:
  std::vector<std::vector<runtime::BeamHypothesis>> beam(const std::vector<std::vector<int64_t>>& batch,
                                                         const runtime::BeamSearchOptions& bo) {
    BatchBeamModel model(*model_, model_->start(batch, bo.num_beams, bo.effective_max_length()));
    return runtime::beam_search(model, static_cast<int64_t>(batch.size()),
                                static_cast<TokenId>(cfg_.decoder_start_token_id), bo);
  }

  // Random sampling with the search's processors (bad words of one token, min_length,
  // forced EOS); score = the sum of the chosen tokens' log-probabilities.
  std::vector<std::vector<runtime::BeamHypothesis>> sample(const std::vector<std::vector<int64_t>>& batch,
                                                           const runtime::BeamSearchOptions& bo,
                                                           const SamplingOptions& so, size_t first_index) {
    const auto n = static_cast<int64_t>(batch.size());
    auto state = model_->start(batch, 1, bo.effective_max_length());
    const int64_t V = model_->vocab(), max_len = bo.effective_max_length();
    std::vector<runtime::Sampler> samplers;
    for (int64_t i = 0; i < n; ++i) samplers.emplace_back(so, first_index + static_cast<uint64_t>(i));
    std::vector<std::vector<runtime::BeamHypothesis>> out(static_cast<size_t>(n),
                                                          std::vector<runtime::BeamHypothesis>(1));
    std::vector<TokenId> next(static_cast<size_t>(n), static_cast<TokenId>(cfg_.decoder_start_token_id));
    std::vector<bool> done(static_cast<size_t>(n), false);
    std::vector<float> logits, row(static_cast<size_t>(V)), lp(static_cast<size_t>(V));
    auto is_eos = [&](TokenId t) {
      return std::find(bo.eos_token_ids.begin(), bo.eos_token_ids.end(), t) != bo.eos_token_ids.end();
    };
    for (int64_t len = 1; len < max_len; ++len) {
      model_->step(*state, next, logits);
      bool any = false;
      for (int64_t i = 0; i < n; ++i) {
        const auto u = static_cast<size_t>(i);
        if (done[u]) {
          next[u] = static_cast<TokenId>(cfg_.pad_token_id);
          continue;
        }
        std::copy_n(logits.begin() + i * V, V, row.begin());
        for (const auto& w : bo.bad_words_ids)
          if (w.size() == 1 && !is_eos(w[0])) row[static_cast<size_t>(w[0])] = -INFINITY;
        if (len < bo.min_length)
          for (TokenId e : bo.eos_token_ids) row[static_cast<size_t>(e)] = -INFINITY;
        if (len == max_len - 1 && !bo.forced_eos_token_ids.empty())
          for (int64_t v = 0; v < V; ++v)
            if (std::find(bo.forced_eos_token_ids.begin(), bo.forced_eos_token_ids.end(), v) ==
                bo.forced_eos_token_ids.end())
              row[static_cast<size_t>(v)] = -INFINITY;
        runtime::beam_detail::log_softmax(row.data(), lp.data(), V);
        std::vector<float> pick = row;
        const TokenId t = samplers[u].sample(pick);
        auto& h = out[u][0];
        h.tokens.push_back(t);
        h.score += lp[static_cast<size_t>(t)];
        next[u] = t;
        done[u] = is_eos(t);
        any = any || !done[u];
      }
      if (!any) break;
    }
    return out;
  }

  runtime::BeamSearchOptions search_options(const TranslateOptions& opt) const {
    runtime::BeamSearchOptions b;
    b.num_beams = opt.num_beams > 0 ? opt.num_beams : gen_.value("num_beams", int64_t{1});
    b.max_length = opt.max_length > 0 ? opt.max_length : gen_.value("max_length", int64_t{20});
    b.max_length = std::min(b.max_length, max_positions_);
    b.min_length = gen_.value("min_length", int64_t{0});
    b.length_penalty = gen_.value("length_penalty", 1.0);
    const std::string es = gen_.value("early_stopping", std::string("false"));
    b.early_stopping = es == "true"    ? runtime::BeamSearchOptions::EarlyStopping::Yes
                       : es == "never" ? runtime::BeamSearchOptions::EarlyStopping::Never
                                       : runtime::BeamSearchOptions::EarlyStopping::Heuristic;
    for (const auto& w : gen_.value("bad_words_ids", nlohmann::json::array())) {
      std::vector<TokenId> seq;
      for (const auto& v : w) seq.push_back(v.get<TokenId>());
      b.bad_words_ids.push_back(std::move(seq));
    }
    if (gen_.contains("forced_eos_token_id") && gen_["forced_eos_token_id"].is_number_integer())
      b.forced_eos_token_ids = {gen_["forced_eos_token_id"].get<TokenId>()};
    b.renormalize_logits = gen_.value("renormalize_logits", false);
    for (const auto& e : gen_.value("eos_token_id", nlohmann::json::array()))
      b.eos_token_ids.push_back(e.get<TokenId>());
    b.pad_token_id = gen_.value("pad_token_id", static_cast<TokenId>(cfg_.pad_token_id));
    b.num_return_sequences = opt.n_best;
    b.validate();
    return b;
  }

  std::unique_ptr<runtime::Seq2SeqModel> model_;
  std::unique_ptr<text::MarianTokenizer> tok_;
  io::Seq2SeqConfig cfg_;
  nlohmann::json gen_;
  int64_t max_positions_ = 0;
};

}  // namespace

std::unique_ptr<Translator> Translator::load(const fs::path& package, int threads) {
  return std::make_unique<PackageTranslator>(package, threads);
}

}  // namespace kvrun
