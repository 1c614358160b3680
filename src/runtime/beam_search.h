// Beam search that reproduces Hugging Face transformers 5.23 `generate(num_beams=K, do_sample=False)`
// for encoder-decoder models (Marian) token for token: `GenerationMixin._beam_search` with its
// logits processors, computed in float32 as HF does. Independent of the model, which is reached
// through BeamModel. docs/beam-search.md describes the semantics and what matches HF.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "kvrun/types.h"

namespace kvrun::runtime {

struct BeamSearchOptions {
  int64_t num_beams = 4;
  // Finished hypotheses score sum_logprobs / generated_tokens^length_penalty (the EOS counted).
  double length_penalty = 1.0;
  // HF's early_stopping: False (the heuristic: stop a sentence once its best running beam,
  // scored at the current length, cannot beat its worst finished one), True (stop once
  // num_beams hypotheses are finished), "never" (with length_penalty > 0 the running beam is
  // scored at max_length, so the search rarely stops before it).
  enum class EarlyStopping { Heuristic, Yes, Never } early_stopping = EarlyStopping::Heuristic;
  // Total decoder length INCLUDING the decoder start token, as HF's max_length: at most
  // max_length - 1 generated tokens. Required (>= 2) unless max_new_tokens is set.
  int64_t max_length = 0;
  // > 0: wins over max_length, as in HF: max_length = max_new_tokens + 1 (the start token).
  int64_t max_new_tokens = 0;
  // Like max_length, counts the start token: EOS is banned while the length (start token
  // included) is < min_length. HF's min_new_tokens = n is min_length = n + 1.
  int64_t min_length = 0;
  // Token sequences that must not be generated (NoBadWordsLogitsProcessor): a sequence's last
  // token is banned when the tokens before it end the current prefix (start token included).
  // Single-token entries equal to an EOS id are ignored, as in HF.
  std::vector<std::vector<TokenId>> bad_words_ids;
  // ForcedEOSTokenLogitsProcessor: at length max_length - 1 only these ids stay possible
  // (log-prob 0, every other -inf). Empty: off. Marian sets its EOS here.
  std::vector<TokenId> forced_eos_token_ids;
  // LogitNormalization: log_softmax again after the processors (newer Marian configs).
  bool renormalize_logits = false;
  // A candidate ending in one of these finishes its hypothesis. Empty: only max_length stops.
  std::vector<TokenId> eos_token_ids;
  // Only used for output padding (output_fill_value); absent: eos_token_ids[0], as HF.
  std::optional<TokenId> pad_token_id;
  // Hypotheses returned per sentence, best first (<= num_beams).
  int64_t num_return_sequences = 1;

  // Throws kvrun::Error naming the field, what it must be and what it is.
  void validate() const;
  // The total length limit (start token included) after max_new_tokens.
  int64_t effective_max_length() const { return max_new_tokens > 0 ? max_new_tokens + 1 : max_length; }
  // HF's value for the padding of `sequences`: `pad_token_id or eos_token_id[0]` (so a pad id of
  // 0 pads with EOS), -1 without EOS ids.
  TokenId output_fill_value() const;
};

struct BeamHypothesis {
  std::vector<TokenId> tokens;  // generated ids, without the start token, with the final EOS if any
  double score = 0;             // HF's sequences_scores (a float32 value)
};

// The model side. Rows are live sentences x num_beams, sentence-major: rows
// [j * num_beams, (j + 1) * num_beams) belong to the j-th live sentence.
//
// The first step() gets batch * num_beams rows, every one holding the decoder start token, on
// an empty cache: the encoder output of each sentence serves all its beams (a seq2seq runtime
// keeps cross-attention K/V once per sentence). Between two steps reorder() says where each row
// comes from and which sentences are still running; sentences whose result is settled leave the
// batch (their rows are no longer stepped), which never changes the result.
class BeamModel {
 public:
  virtual ~BeamModel() = default;
  virtual int64_t vocab() const = 0;
  // One decoder step: `tokens` holds each row's newest token; fills `logits` with float32
  // [rows, vocab] logits for the next position (resizing it).
  virtual void step(const std::vector<TokenId>& tokens, std::vector<float>& logits) = 0;
  // Row i of the next step continues row src[i] of the last step (the self-attention cache rows
  // copied or reordered; a row may be the source of several). `sentences` (ascending) are the
  // indices, in the original batch, of the sentences still running, so src.size() ==
  // sentences.size() * num_beams; a sentence missing from it finished and its per-sentence
  // state (cross-attention K/V) can be dropped. Rows of the j-th entry of `sentences` come from
  // rows of the same sentence.
  virtual void reorder(const std::vector<int64_t>& src, const std::vector<int64_t>& sentences) = 0;
};

// Runs the search for `batch` sentences (the model already holds their encoder outputs).
// Returns num_return_sequences hypotheses per sentence in HF's order (best first). Throws
// kvrun::Error for invalid options, or ids outside the model's vocabulary.
std::vector<std::vector<BeamHypothesis>> beam_search(BeamModel& model, int64_t batch, TokenId decoder_start,
                                                     const BeamSearchOptions& options);

// HF's `sequences` tensor: per hypothesis (sentence-major), the start token, the tokens, then
// `fill` up to the longest returned hypothesis (+1 for the start token).
std::vector<std::vector<TokenId>> padded_sequences(const std::vector<std::vector<BeamHypothesis>>& result,
                                                   TokenId decoder_start, TokenId fill);

namespace beam_detail {
// Exposed for tests. torch.topk(values, k) (largest, sorted) on CPU: its indices, in its order.
// Equal values come out in the order libstdc++'s std::partial_sort (k * 64 <= n) or
// std::nth_element + std::sort (otherwise) leaves them, as ATen's topk_impl_loop does; not
// lowest index first.
void topk(const float* values, int64_t n, int64_t k, std::vector<int64_t>& indices);
// torch.log_softmax over n float32 values (see docs/beam-search.md on rounding).
void log_softmax(const float* x, float* out, int64_t n);
}  // namespace beam_detail

}  // namespace kvrun::runtime
