#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kvrun/error.h"

namespace kvrun {

void SamplingOptions::validate() const {
  auto bad = [](const std::string& what, const std::string& got) {
    throw Error("sampling: " + what + ", found " + got);
  };
  if (!(temperature >= 0.f) || !std::isfinite(temperature))
    bad("temperature must be >= 0", std::to_string(temperature));
  if (top_k < 0) bad("top_k must be >= 0", std::to_string(top_k));
  if (!(top_p > 0.f && top_p <= 1.f)) bad("top_p must be in (0, 1]", std::to_string(top_p));
  if (!(min_p >= 0.f && min_p <= 1.f)) bad("min_p must be in [0, 1]", std::to_string(min_p));
  if (!(repetition_penalty > 0.f) || !std::isfinite(repetition_penalty))
    bad("repetition_penalty must be > 0", std::to_string(repetition_penalty));
  if (!std::isfinite(presence_penalty)) bad("presence_penalty must be finite", std::to_string(presence_penalty));
  if (!std::isfinite(frequency_penalty)) bad("frequency_penalty must be finite", std::to_string(frequency_penalty));
}

namespace runtime {

Sampler::Sampler(const SamplingOptions& opt, uint64_t stream) : o_(opt) {
  o_.validate();
  std::seed_seq seq{static_cast<uint32_t>(opt.seed), static_cast<uint32_t>(opt.seed >> 32),
                    static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)};
  rng_.seed(seq);
}

void Sampler::add_context(const std::vector<TokenId>& ids) {
  if (o_.repetition_penalty == 1.f) return;
  for (TokenId t : ids)
    if (t >= 0) ++context_[t];
}

void Sampler::penalize(std::vector<float>& logits) const {
  const auto V = static_cast<TokenId>(logits.size());
  if (o_.repetition_penalty != 1.f) {
    auto apply = [&](TokenId t) {
      if (t < 0 || t >= V) return;
      float& l = logits[static_cast<size_t>(t)];
      l = l > 0 ? l / o_.repetition_penalty : l * o_.repetition_penalty;
    };
    for (const auto& [t, n] : context_) apply(t);
    for (const auto& [t, n] : generated_)
      if (!context_.count(t)) apply(t);
  }
  if (o_.presence_penalty != 0.f || o_.frequency_penalty != 0.f)
    for (const auto& [t, n] : generated_)
      if (t >= 0 && t < V) logits[static_cast<size_t>(t)] -= o_.presence_penalty + o_.frequency_penalty * n;
}

TokenId Sampler::sample(std::vector<float>& logits) {
  if (logits.empty()) throw Error("sample: empty logits");
  penalize(logits);
  TokenId choice = 0;
  if (o_.temperature == 0.f) {
    choice = static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  } else {
    // Candidates: top-k first (partial selection), else every finite logit.
    cand_.clear();
    const float inv_t = 1.f / o_.temperature;
    for (size_t i = 0; i < logits.size(); ++i)
      if (std::isfinite(logits[i])) cand_.emplace_back(logits[i] * inv_t, static_cast<TokenId>(i));
    if (cand_.empty()) throw Error("sample: every logit is -inf or NaN");
    auto desc = [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    if (o_.top_k > 0 && static_cast<size_t>(o_.top_k) < cand_.size()) {
      std::nth_element(cand_.begin(), cand_.begin() + o_.top_k, cand_.end(), desc);
      cand_.resize(static_cast<size_t>(o_.top_k));
    }
    std::sort(cand_.begin(), cand_.end(), desc);
    // Softmax over candidates.
    const float mx = cand_.front().first;
    double sum = 0;
    for (auto& c : cand_) sum += (c.first = std::exp(c.first - mx));
    for (auto& c : cand_) c.first = static_cast<float>(c.first / sum);
    if (o_.min_p > 0.f) {
      const float cut = o_.min_p * cand_.front().first;
      size_t keep = 1;
      while (keep < cand_.size() && cand_[keep].first >= cut) ++keep;
      cand_.resize(keep);
    }
    if (o_.top_p < 1.f) {
      double cum = 0;
      size_t keep = 0;
      while (keep < cand_.size()) {
        cum += cand_[keep++].first;
        if (cum >= o_.top_p) break;
      }
      cand_.resize(std::max<size_t>(keep, 1));
    }
    double total = 0;
    for (const auto& c : cand_) total += c.first;
    double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
    choice = cand_.back().second;
    for (const auto& c : cand_) {
      if (r < c.first) {
        choice = c.second;
        break;
      }
      r -= c.first;
    }
  }
  ++generated_[choice];
  return choice;
}

}  // namespace runtime
}  // namespace kvrun
