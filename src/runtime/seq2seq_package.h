// Runs a kvrun seq2seq package (encoder.onnx + decoder.onnx, arch/marian.h) step by step
// with host-side caches: the simple, obviously-correct path `kvrun verify` and the golden
// tests use. One sentence at a time; the decoder runs `rows` hypotheses of it together
// (beams), all reading the sentence's cross-attention K/V.
#pragma once
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "runtime/ort_session.h"

namespace kvrun::runtime {

class Seq2SeqPackage {
 public:
  explicit Seq2SeqPackage(const std::filesystem::path& dir, const SessionConfig& sc = {});
  const nlohmann::json& manifest() const { return manifest_; }
  int64_t vocab_size() const { return vocab_; }

  struct Encoded {
    int64_t length = 0;
    std::vector<float> hidden;                 // [length, d_model]
    std::vector<HostTensor> cross_k, cross_v;  // per decoder layer [1, heads, length, head_dim]
  };
  // One sentence's source ids (with its </s>).
  Encoded encode(const std::vector<int64_t>& ids);

  struct State {
    int64_t rows = 1, length = 0;
    std::vector<HostTensor> k, v;  // per decoder layer [rows, heads, length, head_dim]
  };
  State new_state(int64_t rows) const;
  // Appends `tokens` ([rows, n], row-major) to every row; returns float32 logits [rows, n, vocab].
  std::vector<float> decode(const Encoded& e, State& st, const std::vector<int64_t>& tokens, int64_t n);

 private:
  nlohmann::json manifest_;
  std::unique_ptr<Session> encoder_, decoder_;
  int64_t layers_ = 0, heads_ = 0, head_dim_ = 0, vocab_ = 0;
};

}  // namespace kvrun::runtime
