// kvrun bench: generation speed of a model on this machine, next to the machine's own
// limit. Prefill and decode tokens/s and time to first token are taken over several
// runs after a warm-up (median, min, max); a memory-bandwidth probe turns the bytes a
// decode step must read (weights + KV cache) into a roofline, so each decode rate is
// also a fraction of what the memory system allows.
//
//   kvrun::BenchOptions o;
//   o.prompt_lens = {512};
//   auto report = kvrun::bench("out/qwen3-int4", o);
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "kvrun/types.h"

namespace kvrun {

struct BenchOptions {
  std::vector<int64_t> prompt_lens = {16, 512};
  int64_t gen_len = 128;
  int runs = 5;                           // measured runs per prompt length
  int warmup = 1;                         // runs before those, not counted
  int threads = 0;                        // ONNX Runtime intra-op threads and bandwidth-probe threads; 0: one per core
  uint64_t seed = 0;                      // prompt ids are drawn from [0, vocab) with this seed
  std::vector<int32_t> prompt_ids;        // when given: the prompt of length n is its first n ids
  bool probe_bandwidth = true;            // measure read bandwidth (about a second)
  int64_t bandwidth_bytes = 512LL << 20;  // buffer the probe reads (well above the last-level cache)
  ProgressFn build_progress;              // a GGUF file's first-use build (kvrun::ensure_package)

  void validate() const;  // throws kvrun::Error naming the bad field
};

struct Spread {
  double median = 0, min = 0, max = 0;
};

struct BenchCase {
  int64_t prompt_len = 0, gen_len = 0;
  Spread prefill_tokens_per_second, decode_tokens_per_second, time_to_first_token_s;
  // Bytes one decode step reads at the mean context (prompt + gen/2): weights + KV cache.
  int64_t decode_bytes_per_token = 0;
  double roofline_tokens_per_second = 0;  // bandwidth / decode_bytes_per_token (0 without a probe)
  double roofline_fraction = 0;           // median decode / roofline
};

struct BenchReport {
  std::string model, layout, precision;
  int threads = 0;  // as resolved (0 -> cores)
  int runs = 0, warmup = 0;
  int64_t weights_bytes = 0;       // initializers of the decode graph (what each decode step reads)
  int64_t kv_bytes_per_token = 0;  // all layers, K and V
  int64_t kv_cache_bytes = 0;      // capacity of the longest case
  int64_t peak_rss_bytes = 0;      // of this process
  double bandwidth_bytes_per_second = 0;
  std::vector<BenchCase> cases;

  std::string to_json() const;  // schema "kvrun-bench/1", one object per case (see docs/bench.md)
  std::string to_text() const;
};

// Called after each run: (prompt_len, runs done, total runs including warm-up).
using BenchProgressFn = std::function<void(int64_t prompt_len, int run, int total)>;

// Loads `model` (any layout Model::load reads) and measures it. Throws kvrun::Error.
BenchReport bench(const std::filesystem::path& model, const BenchOptions& opt, const BenchProgressFn& progress = {});

// Read bandwidth of main memory in bytes/s: `threads` threads sum a `bytes` buffer,
// best of several passes.
double measure_read_bandwidth(int64_t bytes, int threads);

}  // namespace kvrun
