// The translation runtime's view of an encoder-decoder model, whatever produced it. The
// layout is read from the folder's files and the graphs' own signatures:
//   kvrun          kvrun.json of kind seq2seq: encoder.onnx also returns every layer's cross
//                  K/V (present.{i}.encoder.*), computed once per sentence and shared by its
//                  beams; decoder.onnx takes attention_mask and the cross K/V per sentence.
//   optimum-merged encoder_model.onnx + decoder_model_merged.onnx (an If on use_cache_branch:
//                  the first step computes the cross K/V from encoder_hidden_states; later
//                  steps return empty encoder presents and read the kept ones).
//   optimum-split  encoder_model.onnx + decoder_model.onnx (first step) +
//                  decoder_with_past_model.onnx (later steps).
//   recompute      encoder_model.onnx + decoder_model.onnx taking encoder_hidden_states and
//                  only self-attention past K/V (cross-attention recomputed every step; no
//                  use_cache_branch) — exports such as the 15-input decoder of seeds.md part 5.
// optimum's and the recompute layouts want batch-sized encoder inputs: the runtime repeats
// each sentence's rows for its beams. Every decoder input must be one the runtime can feed;
// otherwise the error shows the expected and the found signature side by side.
#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kvrun/types.h"
#include "runtime/ort_session.h"

namespace kvrun::runtime {

class Seq2SeqModel {
 public:
  // `dir`: a kvrun seq2seq package or a folder of ONNX exports (see above).
  static std::unique_ptr<Seq2SeqModel> open(const std::filesystem::path& dir, const SessionConfig& sc = {});
  virtual ~Seq2SeqModel();
  const std::string& layout() const { return layout_; }
  int64_t vocab() const { return vocab_; }
  int64_t max_positions() const { return max_positions_; }  // source and target positions (0: unknown)

  // A batch of sentences being decoded with `beams` rows each (sentence-major).
  struct Batch;
  // Encodes the sentences (padded together); the decoder starts with an empty cache.
  // max_steps > 0: no more decoder steps will be run (the self-attention buffers of shared mode
  // grow by doubling up to that, never past it).
  std::shared_ptr<Batch> start(const std::vector<std::vector<int64_t>>& sources, int64_t beams, int64_t max_steps = 0);
  // One decoder step: tokens[rows] -> float32 logits [rows, vocab].
  void step(Batch& b, const std::vector<TokenId>& tokens, std::vector<float>& logits);
  // Row i continues row src[i]; `sentences` (indices into the batch given to start) still run.
  void reorder(Batch& b, const std::vector<int64_t>& src, const std::vector<int64_t>& sentences);

 private:
  Seq2SeqModel() = default;
  struct Signature;
  void read_signature(const std::filesystem::path& dir);

  std::string layout_;
  std::unique_ptr<Session> encoder_, first_, step_;  // first_ only for optimum-split
  int64_t vocab_ = 0, layers_ = 0, max_positions_ = 0, pad_id_ = 0;
  bool cross_from_encoder_ = false;  // kvrun: encoder.onnx returns the cross K/V
  bool cross_per_sentence_ = false;  // kvrun: decoder takes cross K/V [sentences, ...]
  bool takes_hidden_ = false;        // the step decoder takes encoder_hidden_states
  bool takes_self_mask_ = false;     // kvrun: attention_mask over the target positions
  bool has_cache_branch_ = false;    // optimum-merged: use_cache_branch
  bool cross_inputs_ = false;        // the step decoder takes past_key_values.{i}.encoder.*
  // kvrun ort packages: one self-attention buffer per layer and K/V, [rows, heads, capacity,
  // head_dim], bound as past and present (GroupQueryAttention writes the new row in place);
  // reorder() copies only the rows' valid positions.
  bool shared_ = false;
};

}  // namespace kvrun::runtime
