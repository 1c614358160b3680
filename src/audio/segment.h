// Cutting long audio into segments of at most max_seconds at the quietest points.
//
// Energy is measured on non-overlapping frames (frame_ms), smoothed over smooth_ms. While
// more than max_seconds remain after the current start, the next cut is placed at the centre
// of the frame with the lowest smoothed energy among the frames that end within
// [start + max_seconds - search_seconds, start + max_seconds]; ties go to the later frame.
// Every segment is therefore at most max_seconds long and the segments tile the audio.
#pragma once
#include <cstdint>
#include <vector>

namespace kvrun::audio {

struct Segment {
  int64_t begin = 0;  // first sample
  int64_t end = 0;    // one past the last sample
  double start_seconds = 0;
  double end_seconds = 0;
};

struct SegmentOptions {
  double max_seconds = 30;
  double search_seconds = 10;  // how far before the limit a cut may go (clamped to max_seconds / 2)
  double frame_ms = 10;
  double smooth_ms = 100;
};

// Audio of at most max_seconds (or empty) gives one segment (none when empty).
std::vector<Segment> split_at_quiet(const std::vector<float>& samples, int sample_rate,
                                    const SegmentOptions& options = {});
std::vector<Segment> split_at_quiet(const std::vector<float>& samples, int sample_rate, double max_seconds);

}  // namespace kvrun::audio
