// HF transformers 5.23 `_beam_search`, step by step (generation/utils.py), per sentence:
//   a. lp = log_softmax(logits) per row, then the processors (NoBadWords, MinLength, ForcedEOS,
//      LogitNormalization), then + the row's running score: K * V accumulated scores.
//   b. topk(beams_to_keep = max(2, 1 + n_eos) * K) over them: candidates (beam = idx / V,
//      token = idx % V); a candidate "hits" when its token is an EOS id or its length reaches
//      max_length.
//   c. Running beams: topk(K) of the candidates' scores with hits pushed down by -1e9.
//   d. Finished pool (K slots): candidates scored score / generated_len^lp, pushed down by -1e9
//      when the pool is full and early_stopping is True, by -1e9 once the sentence cannot improve
//      and by -1e9 unless it hit within the top K; merged with the old pool, topk(K).
//   e. cur_len += 1; the early-stop heuristic; the loop ends when no sentence can improve, or
//      (early_stopping True) every pool is full, or every candidate hit (max_length).
// Every value is float32 and every operation is the one HF does (the -1e9 pushes included), so
// that ties and roundings come out the same.
#include "runtime/beam_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <utility>

#include "kvrun/error.h"
#include "runtime/attention_kernel.h"

namespace kvrun::runtime {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kBig = -1.0e9f;  // HF's -1.0e9 pushes, as float32 (exactly representable)
// A sentence leaves the running batch only when its finished pool scores all lie above this, so
// that every later candidate (pushed down by at least one -1e9) stays below them: see
// docs/beam-search.md.
constexpr float kDropFloor = -5.0e8f;

std::string ids_str(const std::vector<TokenId>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ids[i]);
  }
  s += "]";
  return s;
}

[[noreturn]] void bad(const std::string& what, const std::string& found) {
  std::string m = "beam search: ";
  m += what;
  m += ", found ";
  m += found;
  throw Error(m);
}

struct Hyp {
  std::vector<TokenId> seq;  // start token + generated tokens
  float score = 0;
  bool finished = false;  // pool entries only
};

struct Sentence {
  std::vector<Hyp> running, pool;
  bool heuristic_unsatisfied = true;  // HF's is_early_stop_heuristic_unsatisfied
  bool live = true;
  bool full() const {
    return std::all_of(pool.begin(), pool.end(), [](const Hyp& h) { return h.finished; });
  }
};

}  // namespace

void BeamSearchOptions::validate() const {
  if (num_beams < 1) bad("num_beams must be >= 1", std::to_string(num_beams));
  if (num_return_sequences < 1 || num_return_sequences > num_beams) {
    std::string f = std::to_string(num_return_sequences);
    f += " with num_beams ";
    f += std::to_string(num_beams);
    bad("num_return_sequences must be in [1, num_beams]", f);
  }
  if (!std::isfinite(length_penalty)) bad("length_penalty must be finite", std::to_string(length_penalty));
  if (max_new_tokens < 0) bad("max_new_tokens must be >= 0", std::to_string(max_new_tokens));
  if (effective_max_length() < 2) {
    bad("max_length (the start token included) must be >= 2, or max_new_tokens >= 1", std::to_string(max_length));
  }
  if (min_length < 0) bad("min_length must be >= 0", std::to_string(min_length));
  for (TokenId t : eos_token_ids)
    if (t < 0) bad("eos_token_ids must be >= 0", ids_str(eos_token_ids));
  for (TokenId t : forced_eos_token_ids)
    if (t < 0) bad("forced_eos_token_ids must be >= 0", ids_str(forced_eos_token_ids));
  if (pad_token_id && *pad_token_id < 0) bad("pad_token_id must be >= 0", std::to_string(*pad_token_id));
  size_t kept = 0;
  for (const auto& w : bad_words_ids) {
    if (w.empty()) bad("every bad_words_ids entry must hold at least one id", "an empty one");
    for (TokenId t : w)
      if (t < 0) bad("bad_words_ids must be >= 0", ids_str(w));
    if (!(w.size() == 1 && std::count(eos_token_ids.begin(), eos_token_ids.end(), w[0]))) ++kept;
  }
  // HF drops single-EOS entries, then refuses an empty list.
  if (!bad_words_ids.empty() && kept == 0)
    bad("bad_words_ids must hold more than single EOS ids (HF ignores those)", "only EOS ids");
}

TokenId BeamSearchOptions::output_fill_value() const {
  if (eos_token_ids.empty()) return -1;
  const TokenId pad = pad_token_id.value_or(eos_token_ids[0]);
  return pad != 0 ? pad : eos_token_ids[0];
}

namespace beam_detail {

void topk(const float* values, int64_t n, int64_t k, std::vector<int64_t>& indices) {
  using elem_t = std::pair<float, int64_t>;
  thread_local std::vector<elem_t> queue;  // reused: a fresh 232k-pair buffer per call page-faults
  queue.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) queue[static_cast<size_t>(j)] = {values[j], j};
  // ATen: NaN sorts first for largest=True.
  auto comp = [](const elem_t& x, const elem_t& y) {
    return (std::isnan(x.first) && !std::isnan(y.first)) || x.first > y.first;
  };
  if (k * 64 <= n) {
    std::partial_sort(queue.begin(), queue.begin() + k, queue.end(), comp);
  } else {
    std::nth_element(queue.begin(), queue.begin() + (k - 1), queue.end(), comp);
    std::sort(queue.begin(), queue.begin() + (k - 1), comp);
  }
  indices.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) indices[static_cast<size_t>(i)] = queue[static_cast<size_t>(i)].second;
}

void log_softmax(const float* x, float* out, int64_t n) {
  // ATen (vectorized, last dim): max, sum of exp(x - max), then (x - max) - log(sum), with
  // (x - max) and the final subtraction in float32. Its exp/log are float32 SIMD (Sleef) and its
  // sum runs in vector lanes; here exp is float32 (runtime/attention_kernel.h: AVX2 Cephes
  // polynomial, within 2 ulp), the sum double, and log(sum) is rounded once to
  // float32, which lands within an ulp or two of torch's log(sum): the same shift for every
  // token of a row.
  float mx = kNegInf;
  for (int64_t i = 0; i < n; ++i) mx = std::isnan(x[i]) || x[i] > mx ? x[i] : mx;
  const double sum = sum_exp_shifted(x, n, mx);
  const float lse = static_cast<float>(std::log(sum));
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - mx) - lse;
}

}  // namespace beam_detail

std::vector<std::vector<TokenId>> padded_sequences(const std::vector<std::vector<BeamHypothesis>>& result,
                                                   TokenId decoder_start, TokenId fill) {
  size_t longest = 0;
  for (const auto& s : result)
    for (const auto& h : s) longest = std::max(longest, h.tokens.size());
  std::vector<std::vector<TokenId>> rows;
  for (const auto& s : result)
    for (const auto& h : s) {
      std::vector<TokenId> r{decoder_start};
      r.insert(r.end(), h.tokens.begin(), h.tokens.end());
      r.resize(longest + 1, fill);
      rows.push_back(std::move(r));
    }
  return rows;
}

std::vector<std::vector<BeamHypothesis>> beam_search(BeamModel& model, int64_t batch, TokenId decoder_start,
                                                     const BeamSearchOptions& o) {
  o.validate();
  if (batch < 1) bad("batch must be >= 1", std::to_string(batch));
  const int64_t V = model.vocab();
  if (V < 1) bad("the model's vocabulary must not be empty", std::to_string(V));
  auto check_ids = [&](const std::string& what, const std::vector<TokenId>& ids) {
    for (TokenId t : ids)
      if (t >= V) {
        std::string w = what;
        w += " must be < the vocabulary size ";
        w += std::to_string(V);
        bad(w, ids_str(ids));
      }
  };
  check_ids("decoder_start", {decoder_start});
  if (decoder_start < 0) bad("decoder_start must be >= 0", std::to_string(decoder_start));
  check_ids("eos_token_ids", o.eos_token_ids);
  check_ids("forced_eos_token_ids", o.forced_eos_token_ids);
  for (const auto& w : o.bad_words_ids) check_ids("bad_words_ids", w);

  const int64_t K = o.num_beams;
  const int64_t max_length = o.effective_max_length();
  const auto n_eos = static_cast<int64_t>(o.eos_token_ids.size());
  const int64_t keep = std::max<int64_t>(2, 1 + n_eos) * K;  // HF's beams_to_keep
  using ES = BeamSearchOptions::EarlyStopping;

  // NoBadWords after HF's filtering: single tokens banned always, longer ones by prefix.
  std::vector<TokenId> banned;
  std::vector<std::vector<TokenId>> banned_seqs;
  for (const auto& w : o.bad_words_ids) {
    if (w.size() == 1) {
      if (!std::count(o.eos_token_ids.begin(), o.eos_token_ids.end(), w[0])) banned.push_back(w[0]);
    } else {
      banned_seqs.push_back(w);
    }
  }
  auto is_eos = [&](TokenId t) { return std::count(o.eos_token_ids.begin(), o.eos_token_ids.end(), t) > 0; };

  std::vector<Sentence> sents(static_cast<size_t>(batch));
  for (auto& s : sents) {
    s.running.assign(static_cast<size_t>(K), Hyp{{decoder_start}, 0.f, false});
    for (int64_t b = 1; b < K; ++b) s.running[static_cast<size_t>(b)].score = kBig;
    s.pool.assign(static_cast<size_t>(K), Hyp{{decoder_start}, kBig, false});
  }
  std::vector<int64_t> live(static_cast<size_t>(batch));  // original indices, ascending
  for (int64_t i = 0; i < batch; ++i) live[static_cast<size_t>(i)] = i;

  std::vector<TokenId> tokens(static_cast<size_t>(batch * K), decoder_start);
  std::vector<float> logits, acc(static_cast<size_t>(K * V)), run_scores, merged;
  std::vector<int64_t> next_run, next_pool, src;
  std::vector<std::vector<int64_t>> cands;  // per live sentence: its top `keep` candidates
  std::vector<std::vector<float>> cand_vals;
  const unsigned workers = std::clamp(std::thread::hardware_concurrency(), 1u, 2u);
  std::vector<std::vector<float>> worker_acc(workers);
  std::vector<char> hits;
  int64_t cur_len = 1;
  bool had_dead = false;
  while (true) {
    const auto rows = static_cast<int64_t>(live.size()) * K;
    model.step(tokens, logits);
    if (static_cast<int64_t>(logits.size()) != rows * V) {
      std::string f = std::to_string(logits.size());
      f += " values for ";
      f += std::to_string(rows);
      f += " rows";
      bad("BeamModel::step must return rows x vocab logits", f);
    }
    // Powers of Python's int ** float, then float32 as torch casts the scalar divisor.
    const auto pool_div = static_cast<float>(std::pow(static_cast<double>(cur_len), o.length_penalty));
    bool all_hit = true;
    src.clear();
    // a, b for every sentence (independent of each other: two threads when there are several):
    // log-probs, processors, + running scores into a K x V buffer, then its top `keep`
    // candidates and their values.
    cands.resize(live.size());
    cand_vals.resize(live.size());
    auto score_sentence = [&](size_t j, std::vector<float>& acc) {
      const Sentence& s = sents[static_cast<size_t>(live[j])];
      // a. log-probs, processors, + running scores.
      for (int64_t b = 0; b < K; ++b) {
        const float* x = logits.data() + (static_cast<int64_t>(j) * K + b) * V;
        float* lp = acc.data() + b * V;
        beam_detail::log_softmax(x, lp, V);
        const auto& seq = s.running[static_cast<size_t>(b)].seq;
        for (TokenId t : banned) lp[t] = lp[t] + kNegInf;
        for (const auto& w : banned_seqs) {
          const size_t pre = w.size() - 1;
          if (pre > seq.size()) continue;
          if (std::equal(w.begin(), w.end() - 1, seq.end() - static_cast<std::ptrdiff_t>(pre)))
            lp[w.back()] = lp[w.back()] + kNegInf;
        }
        if (cur_len < o.min_length)
          for (TokenId t : o.eos_token_ids) lp[t] = kNegInf;
        if (!o.forced_eos_token_ids.empty() && cur_len == max_length - 1) {
          std::fill(lp, lp + V, kNegInf);
          for (TokenId t : o.forced_eos_token_ids) lp[t] = 0.f;
        }
        if (o.renormalize_logits) beam_detail::log_softmax(lp, lp, V);
        const float sc = s.running[static_cast<size_t>(b)].score;
        for (int64_t v = 0; v < V; ++v) lp[v] = lp[v] + sc;
      }
      // b. candidates.
      beam_detail::topk(acc.data(), K * V, keep, cands[j]);
      cand_vals[j].resize(static_cast<size_t>(keep));
      for (int64_t c = 0; c < keep; ++c)
        cand_vals[j][static_cast<size_t>(c)] = acc[static_cast<size_t>(cands[j][static_cast<size_t>(c)])];
    };
    if (live.size() > 1 && workers > 1) {
      std::vector<std::thread> pool_threads;
      for (unsigned w = 1; w < workers; ++w)
        pool_threads.emplace_back([&, w] {
          std::vector<float>& acc_w = worker_acc[w];
          acc_w.resize(static_cast<size_t>(K * V));
          for (size_t j = w; j < live.size(); j += workers) score_sentence(j, acc_w);
        });
      for (size_t j = 0; j < live.size(); j += workers) score_sentence(j, acc);
      for (auto& t : pool_threads) t.join();
    } else {
      for (size_t j = 0; j < live.size(); ++j) score_sentence(j, acc);
    }
    for (size_t j = 0; j < live.size(); ++j) {
      Sentence& s = sents[static_cast<size_t>(live[j])];
      const std::vector<int64_t>& cand = cands[j];
      hits.assign(static_cast<size_t>(keep), 0);
      run_scores.resize(static_cast<size_t>(keep));
      for (int64_t c = 0; c < keep; ++c) {
        const auto tok = static_cast<TokenId>(cand[static_cast<size_t>(c)] % V);
        const bool h = is_eos(tok) || cur_len + 1 >= max_length;
        hits[static_cast<size_t>(c)] = h;
        all_hit = all_hit && h;
        run_scores[static_cast<size_t>(c)] = cand_vals[j][static_cast<size_t>(c)] + (h ? kBig : -0.f);
      }
      auto candidate_seq = [&](int64_t c) {
        const int64_t idx = cand[static_cast<size_t>(c)];
        std::vector<TokenId> seq = s.running[static_cast<size_t>(idx / V)].seq;
        seq.push_back(static_cast<TokenId>(idx % V));
        return seq;
      };
      // c. next running beams (their rows' sources, in the current step's row numbering).
      beam_detail::topk(run_scores.data(), keep, K, next_run);
      std::vector<Hyp> running(static_cast<size_t>(K));
      for (int64_t b = 0; b < K; ++b) {
        const int64_t c = next_run[static_cast<size_t>(b)];
        running[static_cast<size_t>(b)] = Hyp{candidate_seq(c), run_scores[static_cast<size_t>(c)], false};
        src.push_back(static_cast<int64_t>(j) * K + cand[static_cast<size_t>(c)] / V);
      }
      // d. finished pool.
      const bool full_push = o.early_stopping == ES::Yes && s.full();
      merged.resize(static_cast<size_t>(K + keep));
      for (int64_t i = 0; i < K; ++i) merged[static_cast<size_t>(i)] = s.pool[static_cast<size_t>(i)].score;
      for (int64_t c = 0; c < keep; ++c) {
        float v = cand_vals[j][static_cast<size_t>(c)] / pool_div;
        v = v + (full_push ? kBig : -0.f);
        v = v + (s.heuristic_unsatisfied ? -0.f : kBig);
        const bool just_finished = hits[static_cast<size_t>(c)] && c < K;
        v = v + (just_finished ? -0.f : kBig);
        merged[static_cast<size_t>(K + c)] = v;
      }
      beam_detail::topk(merged.data(), K + keep, K, next_pool);
      std::vector<Hyp> pool(static_cast<size_t>(K));
      for (int64_t i = 0; i < K; ++i) {
        const int64_t m = next_pool[static_cast<size_t>(i)];
        if (m < K) {
          pool[static_cast<size_t>(i)] = s.pool[static_cast<size_t>(m)];
        } else {
          const int64_t c = m - K;
          pool[static_cast<size_t>(i)] =
              Hyp{candidate_seq(c), merged[static_cast<size_t>(m)], hits[static_cast<size_t>(c)] && c < K};
        }
      }
      s.running = std::move(running);
      s.pool = std::move(pool);
    }
    // e. heuristic and stopping.
    cur_len += 1;
    const int64_t hyp_len = o.early_stopping == ES::Never && o.length_penalty > 0.0 ? max_length - 1 : cur_len - 1;
    const auto run_div = static_cast<float>(std::pow(static_cast<double>(hyp_len), o.length_penalty));
    for (int64_t i : live) {
      Sentence& s = sents[static_cast<size_t>(i)];
      const float best = s.running[0].score / run_div;
      float worst = s.pool[0].score;
      for (const Hyp& h : s.pool) worst = std::min(worst, h.score);  // torch.min: NaN aside
      bool improvable = false;
      for (const Hyp& h : s.pool) improvable = improvable || best > (h.finished ? worst : kBig);
      s.heuristic_unsatisfied = s.heuristic_unsatisfied && improvable;
    }
    // Sentences not stepped any more still have candidates that do not hit, unless at max_length.
    if (had_dead && cur_len < max_length) all_hit = false;
    bool any_unsatisfied = false, all_full = true;
    for (const Sentence& s : sents) {
      any_unsatisfied = any_unsatisfied || s.heuristic_unsatisfied;
      all_full = all_full && s.full();
    }
    const bool more = any_unsatisfied && !(all_full && o.early_stopping == ES::Yes) && !all_hit;
    if (!more) break;
    // Settled sentences leave the batch.
    std::vector<int64_t> still;
    std::vector<int64_t> next_src;
    tokens.clear();
    for (size_t j = 0; j < live.size(); ++j) {
      Sentence& s = sents[static_cast<size_t>(live[j])];
      const bool settled = !s.heuristic_unsatisfied || (o.early_stopping == ES::Yes && s.full());
      const bool safe =
          s.full() && std::all_of(s.pool.begin(), s.pool.end(), [](const Hyp& h) { return h.score > kDropFloor; });
      if (settled && safe) {
        s.live = false;
        had_dead = true;
        continue;
      }
      still.push_back(live[j]);
      for (int64_t b = 0; b < K; ++b) {
        next_src.push_back(src[j * static_cast<size_t>(K) + static_cast<size_t>(b)]);
        tokens.push_back(s.running[static_cast<size_t>(b)].seq.back());
      }
    }
    live = std::move(still);
    if (live.empty()) break;  // every sentence settled: HF's remaining steps change nothing
    model.reorder(next_src, live);
  }

  std::vector<std::vector<BeamHypothesis>> out(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    const Sentence& s = sents[static_cast<size_t>(i)];
    for (int64_t r = 0; r < o.num_return_sequences; ++r) {
      const Hyp& h = s.pool[static_cast<size_t>(r)];
      out[static_cast<size_t>(i)].push_back(
          BeamHypothesis{std::vector<TokenId>(h.seq.begin() + 1, h.seq.end()), static_cast<double>(h.score)});
    }
  }
  return out;
}

}  // namespace kvrun::runtime
