// Next-token choice from logits: penalties, then greedy or temperature sampling
// with top-k, top-p and min-p. One Sampler per sequence; its generator is seeded
// from SamplingOptions::seed, so the same seed gives the same tokens.
#pragma once
#include <random>
#include <unordered_map>
#include <vector>

#include "kvrun/runtime.h"

namespace kvrun::runtime {

class Sampler {
 public:
  Sampler(const SamplingOptions& opt, uint64_t stream = 0);
  // Context tokens (prompt) seen by the repetition penalty.
  void add_context(const std::vector<TokenId>& ids);
  // Chooses from `logits` (modified in place); records the choice as generated.
  TokenId sample(std::vector<float>& logits);

 private:
  void penalize(std::vector<float>& logits) const;

  SamplingOptions o_;
  std::mt19937_64 rng_;
  std::unordered_map<TokenId, int> context_, generated_;  // token -> count
  std::vector<std::pair<float, TokenId>> cand_;
};

}  // namespace kvrun::runtime
