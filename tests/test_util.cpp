#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "kvrun/error.h"
#include "runtime/package_model.h"

namespace kvrun::test {
namespace fs = std::filesystem;

TempDir::TempDir() {
  static int counter = 0;
  path_ = fs::temp_directory_path() / ("kvrun-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(path_);
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

fs::path built_package(const std::string& fixture_name, const std::string& target, const std::string& precision,
                       bool all_logits, const std::string& kv_dtype) {
  static TempDir root;
  static std::map<std::string, fs::path> cache;
  const std::string key =
      fixture_name + "-" + target + "-" + precision + (all_logits ? "-all" : "") + "-kv-" + kv_dtype;
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  BuildOptions o;
  o.checkpoint = fixture(fixture_name);
  o.out = root / key;
  o.target = target;
  o.precision = precision;
  o.all_logits = all_logits;
  o.kv_dtype = kv_dtype;
  build_package(o);
  cache[key] = o.out;
  return o.out;
}

double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  return m;
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& fragments) {
  try {
    f();
    ADD_FAILURE() << "expected kvrun::Error, nothing was thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& s : fragments) EXPECT_NE(msg.find(s), std::string::npos) << "'" << s << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected kvrun::Error, got another exception: " << e.what();
  }
}

CliResult run_cli(const std::vector<std::string>& args, const std::string& stdin_text) {
  std::string cmd = std::string("'") + KVRUN_CLI + "'";
  for (const auto& a : args) {
    std::string q = "'";
    for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    cmd += " " + q + "'";
  }
  cmd += " 2>&1";
  std::unique_ptr<TempDir> in_dir;
  if (!stdin_text.empty()) {
    in_dir = std::make_unique<TempDir>();
    std::ofstream((*in_dir / "stdin.txt"), std::ios::binary) << stdin_text;
    cmd += " < '" + (*in_dir / "stdin.txt").string() + "'";
  }
  CliResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::vector<float> Golden::prompt_logits(size_t k) const {
  return logits->get("prompt" + std::to_string(k) + ".logits").to_f32();
}

std::vector<float> Golden::continuation_logits(size_t k) const {
  return logits->get("prompt" + std::to_string(k) + ".continuation_logits").to_f32();
}

void teacher_forced(const std::filesystem::path& package, const Golden& g,
                    const std::function<void(const float*, const float*, int64_t)>& visit) {
  runtime::PackageModel model(package);
  const int64_t V = model.vocab_size();
  for (size_t k = 0; k < g.prompts.size(); ++k) {
    const std::vector<float> hf = g.continuation_logits(k);
    std::vector<int64_t> seq = g.prompts[k];
    seq.insert(seq.end(), g.greedy[k].begin(), g.greedy[k].end() - 1);
    auto st = model.new_state();
    for (size_t i = 0; i < seq.size(); ++i) {
      const std::vector<float> lg = model.forward_ids(st, {seq[i]});
      visit(hf.data() + static_cast<int64_t>(i) * V, lg.data(), V);
    }
  }
}

Golden load_golden(const std::string& name) {
  const nlohmann::json j = io::read_json_file(fixture(name) / "golden.json");
  Golden g;
  g.prompts = j.at("prompts").get<std::vector<std::vector<int64_t>>>();
  g.greedy = j.at("greedy").get<std::vector<std::vector<int64_t>>>();
  g.logits = std::make_unique<io::TensorStore>(fixture(name) / j.at("logits_file").get<std::string>());
  return g;
}

std::filesystem::path gemma3_270m_gguf() {
  if (const char* e = std::getenv("KVRUN_GEMMA3_GGUF"); e && *e) return e;
  std::filesystem::path dir;
  if (const char* m = std::getenv("KVRUN_MODELS_DIR"); m && *m)
    dir = m;
  else if (const char* h = std::getenv("HOME"); h && *h)
    dir = std::filesystem::path(h) / ".cache" / "kvrun" / "models";
  return dir / "gemma-3-270m-q4_k_m.gguf";
}

}  // namespace kvrun::test
