// Runs a kvrun package (either target) step by step with a host-side KV cache.
// This is the simple, obviously-correct path used by `kvrun verify` and the golden
// tests: presents are copied back as the next past. The generation runtime builds
// its zero-copy cache on top of the same manifest.
#pragma once
#include <filesystem>
#include <memory>
#include <vector>

#include "io/safetensors.h"
#include "package/manifest.h"
#include "runtime/embedding_table.h"
#include "runtime/ort_session.h"

namespace kvrun::runtime {

class PackageModel {
 public:
  explicit PackageModel(const std::filesystem::path& dir, const SessionConfig& sc = {});

  const build::Manifest& manifest() const { return m_; }
  int64_t vocab_size() const { return m_.vocab_size; }

  struct State {
    std::vector<HostTensor> keys, values;  // per layer [1, kv_heads, length, head_dim]
    int64_t length = 0;
  };
  State new_state() const;

  // Embedding rows (float32 [n, hidden]) looked up from embedding.safetensors, times the
  // manifest's embedding scale.
  std::vector<float> embed(const std::vector<int64_t>& ids) const;
  // Appends n positions; returns logits [rows, vocab] (rows = 1, or n when the
  // package keeps all positions). Batch size 1.
  std::vector<float> forward(State& st, const std::vector<float>& embeds, int64_t n);
  std::vector<float> forward_ids(State& st, const std::vector<int64_t>& ids) {
    return forward(st, embed(ids), static_cast<int64_t>(ids.size()));
  }

 private:
  build::Manifest m_;
  std::unique_ptr<EmbeddingTable> embedding_;
  std::unique_ptr<Session> decoder_, prefill_, decode_;
};

}  // namespace kvrun::runtime
