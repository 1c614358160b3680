// kvrun fix: rewrites an ONNX file so that older or stricter runtimes load it --
// opset conversion between 13 and 21 for the ops decoder/speech/translation exports
// use, Reduce* axes input <-> attribute, Split.num_outputs -> explicit sizes, IR
// clamp, opset-import clean-up, dead node/initializer removal, fp32 <-> fp16 storage.
// Every pass recurses into If/Loop/Scan bodies. Passes and their rules: docs/fix.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace onnx {
class ModelProto;
}

namespace kvrun::graph {

class OnnxModel;

// Canonical order in which chosen passes run.
const std::vector<std::string>& fix_pass_names();
// Passes run when none are named (fp16/fp32 only run when named).
const std::vector<std::string>& fix_default_passes();

struct FixOptions {
  int64_t opset = 0;                    // target default-domain opset; 0: keep the model's
  int64_t ir = 0;                       // IR version cap; 0: the target opset's IR when the opset changes
  std::vector<std::string> passes;      // empty: fix_default_passes()
  bool check = false;                   // run old and new model on random inputs and compare
  std::map<std::string, int64_t> dims;  // --check: sizes of symbolic dims (others: see docs/fix.md)
};

struct PassReport {
  std::string name;
  int64_t changes = 0;
  std::vector<std::string> notes;
};

struct OutputDiff {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  double max_abs_diff = 0;
};

struct FixReport {
  std::string input, output;
  int64_t opset_from = 0, opset_to = 0, ir_from = 0, ir_to = 0;
  std::vector<PassReport> passes;
  bool onnx_checked = false;  // the ONNX checker ran (IR/opset within libonnx's range)
  bool ort_loaded = false;
  bool checked = false;       // --check ran both models
  std::string check_skipped;  // why --check could not compare
  std::map<std::string, int64_t> check_dims;
  std::vector<OutputDiff> diffs;
  nlohmann::json to_json() const;
  std::string to_text() const;
};

// Applies the passes to the model in memory. Throws kvrun::Error (naming every node
// it cannot convert) before anything is written.
std::vector<PassReport> apply_fixes(OnnxModel& model, const FixOptions& opt);

// Loads `in`, applies the passes, writes `out` (+ `<out>.data`) atomically, checks it
// with the ONNX checker (when in libonnx's range) and ONNX Runtime; nothing is left
// at `out` on error.
FixReport fix_model(const std::filesystem::path& in, const std::filesystem::path& out, const FixOptions& opt);

}  // namespace kvrun::graph
