#include "io/progress.h"

#include <unistd.h>

#include <cstdio>

namespace kvrun::io {

Progress::Progress(std::string label, bool enabled)
    : label_(std::move(label)), enabled_(enabled), tty_(::isatty(2) != 0), start_(std::chrono::steady_clock::now()) {}

Progress::~Progress() {
  if (enabled_ && tty_ && !finished_ && last_decile_ >= 0) std::fputc('\n', stderr);
}

void Progress::update(int64_t done, int64_t total, const std::string& what) {
  if (!enabled_ || total <= 0) return;
  const double frac = static_cast<double>(done) / static_cast<double>(total);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) {
    constexpr int kWidth = 30;
    const int fill = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(fill), '#');
    bar.resize(kWidth, ' ');
    std::fprintf(stderr, "\r%s [%s] %3d%% %s (%.1fs)\033[K", label_.c_str(), bar.c_str(), static_cast<int>(frac * 100),
                 what.c_str(), secs);
    last_decile_ = 0;
  } else {
    const int decile = static_cast<int>(frac * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s %3d%% %s (%.1fs)\n", label_.c_str(), decile * 10, what.c_str(), secs);
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (enabled_ && tty_ && !finished_ && last_decile_ >= 0) std::fputc('\n', stderr);
  finished_ = true;
}

}  // namespace kvrun::io
