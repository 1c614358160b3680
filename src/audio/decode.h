// kvrun audio decoding: WAV / FLAC / OGG (Vorbis, Opus) / MP3 -> mono float samples at the
// target rate, the way the reference (funasr 1.4.16 load_audio_text_image_video) loads audio:
//   - decoded with libsndfile as float32 (integer PCM scaled to [-1, 1): int16 / 32768, ...),
//   - several channels averaged into one (torch `mean(-1)` over channels),
//   - resampled with torchaudio.transforms.Resample's algorithm (windowed sinc, Hann window,
//     lowpass_filter_width 6, rolloff 0.99, kernel computed in float64 and cached as float32,
//     polyphase after gcd reduction of the two rates). libsoxr ("soxr_hq") is available instead.
// Bad input (empty, truncated, corrupt, unknown codec, no samples, NaN/Inf samples, absurd
// lengths, too many channels) is refused with one kvrun::Error line: what was expected and
// what was found. Memory is bounded by the audio's duration (max_seconds). A WAV/AIFF data
// chunk or a FLAC stream shorter than its header says is refused as truncated; MP3 has no exact
// length, so a cut MP3 decodes up to the cut (libmpg123 may print notes on stderr meanwhile,
// see DecodeOptions::silence_codec_messages).
// Only RIFF/RF64 (WAV), FLAC, Ogg and MPEG audio bytes reach libsndfile's parsers.
// Not thread-safe for error messages: libsndfile keeps its last open error globally.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kvrun::audio {

struct Audio {
  std::vector<float> samples;  // mono, at sample_rate
  int sample_rate = 0;         // after resampling (the target rate)
  int sample_rate_in = 0;      // the file's rate
  int channels_in = 0;         // the file's channel count (averaged into one)
  double seconds = 0;          // samples.size() / sample_rate
  std::string format;          // e.g. "WAV PCM 16-bit", "MP3", "OGG Vorbis"
};

struct DecodeOptions {
  int target_rate = 16000;
  // "sinc": torchaudio.transforms.Resample (the reference, the default);
  // "soxr_hq": libsoxr high quality (not bit-compatible with the reference's features).
  std::string resampler = "sinc";
  // Longer audio is refused before it is decoded (2 hours; memory is about
  // seconds x (input rate + target rate) x 4 bytes).
  double max_seconds = 7200;
  int max_channels = 64;
  // libmpg123 prints notes about damaged MP3 frames straight to stderr. When true, the process's
  // stderr (fd 2) points to /dev/null while MPEG audio is opened and decoded, so that a command
  // line tool shows only its own one-line error. Affects every thread: leave it off in servers.
  bool silence_codec_messages = false;
};

// Decodes a file. `path` is named in every error message.
Audio decode_file(const std::filesystem::path& path, const DecodeOptions& options = {});
Audio decode_file(const std::filesystem::path& path, int target_rate);

// Decodes audio held in memory (libsndfile virtual I/O); `name` is used in error messages.
Audio decode_memory(const void* data, size_t size, const DecodeOptions& options = {},
                    const std::string& name = "<memory>");

// Resamples mono float samples from `from_rate` to `to_rate` (method as DecodeOptions::resampler).
// Output length ceil(n * to / from), as torchaudio's Resample. Equal rates return the input.
std::vector<float> resample(const std::vector<float>& samples, int from_rate, int to_rate,
                            const std::string& method = "sinc");

}  // namespace kvrun::audio
