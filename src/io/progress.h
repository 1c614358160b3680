// A progress bar on stderr for long work (build, quantize, synth-checkpoint).
// On a terminal it redraws one line; otherwise it prints a line every 10%.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace kvrun::io {

class Progress {
 public:
  explicit Progress(std::string label, bool enabled = true);
  ~Progress();
  void update(int64_t done, int64_t total, const std::string& what = "");
  void finish();

 private:
  std::string label_;
  bool enabled_, tty_, finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace kvrun::io
