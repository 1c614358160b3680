// libFuzzer target: audio bytes from memory -> decode (libsndfile, down-mix, resample) ->
// front end (fbank, LFR) -> segmentation. Bad input must end in kvrun::Error, never a crash,
// a sanitizer report, a hang or unbounded memory.
#include <cstddef>
#include <cstdint>

#include "audio/decode.h"
#include "audio/lfr.h"
#include "audio/segment.h"
#include "kvrun/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvrun::audio;
  DecodeOptions opt;
  opt.max_seconds = 20;  // keeps each input's work small; the limit itself is exercised
  try {
    Audio a = decode_memory(data, size, opt, "fuzz");
    int64_t rows = 0;
    FrontendOptions fo;
    std::vector<float> f = features(a, fo, &rows);
    if (f.size() != static_cast<size_t>(rows) * 560) __builtin_trap();
    std::vector<Segment> segs = split_at_quiet(a.samples, a.sample_rate, 5.0);
    for (const Segment& s : segs) {
      if (s.end - s.begin > 5 * a.sample_rate) __builtin_trap();
    }
  } catch (const kvrun::Error&) {
  }
  return 0;
}

// Leaks inside the Debian codec libraries on their own error paths (e.g. libsndfile 1.2.0's
// Ogg/Vorbis reader leaves vorbis_info_init's allocation behind when the stream is corrupt) are
// not this code's; LeakSanitizer reads these suppressions from the binary.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:libvorbis.so\nleak:libvorbisenc.so\nleak:libogg.so\nleak:libFLAC.so\nleak:libmpg123.so\nleak:libopus."
         "so\n";
}
