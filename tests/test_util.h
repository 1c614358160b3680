// Helpers shared by the test files: fixture paths, temp folders, package cache, CLI runs.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kvrun/build.h"

namespace kvrun::test {

inline std::filesystem::path source_dir() { return KVRUN_SOURCE_DIR; }
inline std::filesystem::path fixture(const std::string& name) { return source_dir() / "tests" / "fixtures" / name; }
// The real Gemma 3 270M Q4_K_M GGUF as scripts/fetch-gemma3.sh keeps it ($KVRUN_GEMMA3_GGUF,
// else $KVRUN_MODELS_DIR or ~/.cache/kvrun/models); tests skip when it is absent.
std::filesystem::path gemma3_270m_gguf();

// A fresh folder under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

// A fixture's Hugging Face goldens (tools/make_goldens.py): prompts, greedy
// continuations and the recorded logits.
struct Golden {
  std::vector<std::vector<int64_t>> prompts, greedy;
  std::unique_ptr<io::TensorStore> logits;
  std::vector<float> prompt_logits(size_t k) const;        // [len_k, vocab]
  std::vector<float> continuation_logits(size_t k) const;  // [len_k + 32, vocab]
};
Golden load_golden(const std::string& fixture_name);

// Teacher forcing: feeds each golden prompt plus its greedy continuation to the package
// one position at a time (a prefill of 1, then decode steps) and calls
// visit(hf_logits, package_logits, vocab) for every position.
void teacher_forced(const std::filesystem::path& package, const Golden& g,
                    const std::function<void(const float* hf, const float* got, int64_t vocab)>& visit);

// Builds (once per test binary run) the package for fixture x target x precision.
std::filesystem::path built_package(const std::string& fixture_name, const std::string& target,
                                    const std::string& precision, bool all_logits = false,
                                    const std::string& kv_dtype = "auto");

// max |a[i] - b[i]| over n values.
double max_abs_diff(const float* a, const float* b, size_t n);

// Runs f, which must throw kvrun::Error whose message contains every fragment.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& fragments);

struct CliResult {
  int exit_code = 0;
  std::string out;  // stdout + stderr
};
// Runs the kvrun CLI with the given arguments (shell-quoted here).
// `stdin_text`, when given, is what the command reads on stdin.
CliResult run_cli(const std::vector<std::string>& args, const std::string& stdin_text = "");

}  // namespace kvrun::test
