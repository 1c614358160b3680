// Translation with encoder-decoder packages (Marian / OPUS-MT built by `kvrun build`):
//
//   auto t = kvrun::Translator::load("opus-mt-en-de-pkg");
//   kvrun::TranslateOptions opt;            // beams etc. from the package's generation_config
//   auto r = t->translate({"Hello world"}, opt);
//   std::puts(r[0].hypotheses[0].text.c_str());
//
// Search: Hugging Face generate's beam search (runtime/beam_search.h) with the model's
// generation_config.json (num_beams, length_penalty, early_stopping, max_length,
// bad_words_ids, forced_eos_token_id, renormalize_logits); num_beams 1 is greedy; a
// temperature > 0 samples. Sentences go
// in batches sorted by length; the beams of a sentence share its cross-attention K/V and
// finished sentences leave the running batch.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kvrun/runtime.h"
#include "kvrun/types.h"

namespace kvrun {

struct TranslateOptions {
  int64_t num_beams = 0;    // 0: the package's generation_config (num_beams)
  int64_t max_length = 0;   // target length including the start token; 0: generation_config
  int64_t n_best = 1;       // hypotheses returned per sentence (<= beams)
  int64_t batch_size = 16;  // sentences run together
  // temperature > 0: random sampling (one hypothesis, beams ignored) with top-k / top-p /
  // min-p and the seed; the model's processors (bad_words_ids, min_length, forced EOS) apply.
  SamplingOptions sampling;
  void validate() const;  // throws kvrun::Error
};

struct TranslationHypothesis {
  std::string text;
  std::vector<TokenId> tokens;  // generated ids, the final EOS included when reached
  double score = 0;             // HF's sequences_scores (length-penalised log-probability)
};

struct Translation {
  std::vector<TranslationHypothesis> hypotheses;  // best first
  int64_t source_tokens = 0;
};

struct TranslateStats {
  int64_t sentences = 0, source_tokens = 0, target_tokens = 0;
  double seconds = 0;
};

class Translator {
 public:
  // A kvrun package of kind "seq2seq". threads: ONNX Runtime intra-op threads (0: one per core).
  static std::unique_ptr<Translator> load(const std::filesystem::path& package, int threads = 0);
  virtual ~Translator();
  // One translation per source, in the order given. Empty sources give empty translations.
  virtual std::vector<Translation> translate(const std::vector<std::string>& sources, const TranslateOptions& opt,
                                             TranslateStats* stats = nullptr) = 0;
};

}  // namespace kvrun
