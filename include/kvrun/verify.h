// kvrun verify: run a package's graphs in ONNX Runtime and compare them with the
// plain C++ reference forward pass computed from the checkpoint weights.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "kvrun/error.h"
#include "kvrun/types.h"

namespace kvrun {

struct VerifyOptions {
  // A package folder, or a GGUF file: its package from the cache (built on first use,
  // kvrun::ensure_package), checked against the file itself.
  std::filesystem::path package;
  std::filesystem::path checkpoint;  // empty: the checkpoint recorded in kvrun.json (a GGUF file: that file)
  std::vector<int64_t> prompt;       // empty: 8 deterministic ids
  int greedy_tokens = 16;
  int threads = 0;            // ORT intra-op threads (0: default)
  ProgressFn build_progress;  // a GGUF file's first-use build
};

struct VerifyCheck {
  std::string name;             // "prefill", "decode-1", "decode-2", "fresh-prefill", "greedy"
  double max_abs_diff = 0;      // over the compared logits
  double tolerance = 0;         // allowed max_abs_diff for this check
  double argmax_agreement = 1;  // fraction of compared positions with the same top token
  double mean_kl = 0;           // mean KL(reference || package) of next-token distributions
  double reference_top1 = 0;    // mean probability of the reference's most likely token
  int64_t positions = 0;        // compared positions
  bool passed = false;
  std::string detail;
};

// fp32/fp16: every check within its logit tolerance. int8/int4 (quantized packages):
// next-token argmax agreement pooled over all checks >= 98% (int8) / 90% (int4); the
// pooled row ("all") reports the agreement and the mean KL divergence. A flat
// reference (mean top-1 probability < 0.05, as random-weight checkpoints give) makes
// argmax agreement meaningless; quantized packages then pass on mean KL <= 5e-3 (int8)
// or 5e-2 (int4) instead.
struct VerifyReport {
  std::string precision;
  double argmax_agreement = 1;  // pooled over every compared position
  double mean_kl = 0;           // pooled mean KL(reference || package), nats
  double reference_top1 = 1;    // pooled mean top-1 probability of the reference
  double min_agreement = 0;     // required pooled agreement (quantized precisions), else 0
  bool flat_reference = false;  // quantized verdict taken on mean KL (see above)
  double max_kl = 0;            // the KL bound used when flat_reference
  std::vector<VerifyCheck> checks;
  bool passed = false;
  std::string to_text() const;
  std::string to_json() const;
};

VerifyReport verify_package(const VerifyOptions& opt);

}  // namespace kvrun
