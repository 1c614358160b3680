// Segmentation at the quietest points (see segment.h).
#include "audio/segment.h"

#include <algorithm>
#include <cmath>

#include "kvrun/error.h"

namespace kvrun::audio {

std::vector<Segment> split_at_quiet(const std::vector<float>& samples, int sample_rate, double max_seconds) {
  SegmentOptions opt;
  opt.max_seconds = max_seconds;
  return split_at_quiet(samples, sample_rate, opt);
}

std::vector<Segment> split_at_quiet(const std::vector<float>& samples, int sample_rate, const SegmentOptions& opt) {
  if (sample_rate <= 0 || !(opt.max_seconds > 0) || !(opt.frame_ms > 0) || opt.smooth_ms < 0) {
    throw Error("segmentation: expected a positive sample rate, max_seconds and frame_ms; found rate " +
                std::to_string(sample_rate) + ", max_seconds " + std::to_string(opt.max_seconds) + ", frame_ms " +
                std::to_string(opt.frame_ms));
  }
  const auto n = static_cast<int64_t>(samples.size());
  const double rate = sample_rate;
  auto make = [&](int64_t b, int64_t e) {
    return Segment{b, e, static_cast<double>(b) / rate, static_cast<double>(e) / rate};
  };
  std::vector<Segment> out;
  if (n == 0) return out;
  const auto max_len = static_cast<int64_t>(std::floor(opt.max_seconds * rate));
  const int64_t flen = std::max<int64_t>(1, static_cast<int64_t>(std::llround(opt.frame_ms * 0.001 * rate)));
  if (max_len < 2 * flen) {
    throw Error("segmentation: expected max_seconds of at least two frames (" + std::to_string(2 * flen) +
                " samples); found " + std::to_string(max_len) + " samples");
  }
  if (n <= max_len) {
    out.push_back(make(0, n));
    return out;
  }
  // Frame energies, then a moving average over `half` frames on each side.
  const int64_t frames = (n + flen - 1) / flen;
  std::vector<double> energy(static_cast<size_t>(frames));
  for (int64_t f = 0; f < frames; ++f) {
    double e = 0;
    const int64_t end = std::min(n, (f + 1) * flen);
    for (int64_t i = f * flen; i < end; ++i) e += static_cast<double>(samples[i]) * samples[i];
    energy[static_cast<size_t>(f)] = e / static_cast<double>(end - f * flen);
  }
  const auto half = static_cast<int64_t>(std::llround(opt.smooth_ms / opt.frame_ms / 2));
  std::vector<double> prefix(static_cast<size_t>(frames + 1), 0.0);
  for (int64_t f = 0; f < frames; ++f) prefix[f + 1] = prefix[f] + energy[f];
  auto smooth = [&](int64_t f) {
    const int64_t a = std::max<int64_t>(0, f - half), b = std::min(frames, f + half + 1);
    return (prefix[b] - prefix[a]) / static_cast<double>(b - a);
  };
  const double search = std::min(opt.search_seconds, opt.max_seconds / 2);
  const auto search_len = std::max<int64_t>(flen, static_cast<int64_t>(std::floor(search * rate)));

  int64_t pos = 0;
  while (n - pos > max_len) {
    const int64_t limit = pos + max_len;  // a cut at or before this sample
    // frames f whose end (f + 1) * flen lies in [limit - search_len, limit]
    const int64_t f_last = limit / flen - 1;
    const int64_t f_first = std::max<int64_t>(pos / flen + 1, (limit - search_len + flen - 1) / flen - 1);
    int64_t best = f_last;
    double best_e = smooth(f_last);
    for (int64_t f = f_last - 1; f >= f_first; --f) {
      const double e = smooth(f);
      if (e < best_e) {
        best_e = e;
        best = f;
      }
    }
    int64_t cut = std::min(limit, best * flen + flen / 2);
    if (cut <= pos) cut = limit;  // cannot happen with max_len >= 2 frames; keeps progress certain
    out.push_back(make(pos, cut));
    pos = cut;
  }
  out.push_back(make(pos, n));
  return out;
}

}  // namespace kvrun::audio
