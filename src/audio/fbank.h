// Kaldi-compatible log-mel filter bank, as torchaudio.compliance.kaldi.fbank called by funasr's
// WavFrontend (funasr 1.4.16 frontends/wav_frontend.py):
//   samples x 32768 (upsacle_samples), frames of 25 ms every 10 ms (400 / 160 samples at 16 kHz),
//   snip_edges (T = 1 + (N - 400) / 160), per frame: remove DC offset, pre-emphasis 0.97,
//   Hamming window (symmetric, 0.54 / 0.46), zero-pad to a power of two (512), |rfft|^2,
//   80 triangular mel bins (mel = 1127 ln(1 + f / 700)) from 20 Hz to Nyquist,
//   log(max(energy, FLT_EPSILON)). No dither, no energy column.
// Audio shorter than one frame: the frame length becomes the audio's duration
// (WavFrontend: frame_length = min(25, N / fs * 1000)) and one frame is made.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kvrun::audio {

struct FrontendOptions {
  int sample_rate = 16000;
  int num_mel_bins = 80;
  double frame_length_ms = 25;
  double frame_shift_ms = 10;
  std::string window = "hamming";  // "hamming" | "hanning" | "povey" | "rectangular"
  double preemphasis = 0.97;
  bool remove_dc_offset = true;
  bool snip_edges = true;
  double low_freq = 20;
  double high_freq = 0;  // <= 0: offset from Nyquist (0 -> Nyquist)
  bool upscale_samples = true;
  // "double": an FFT in double precision (the default: adds no rounding of its own to the
  // reference's float32 FFT); "kissfft": kissfft in float32 (faster, ~2x the deviation).
  std::string fft = "double";  // x 32768 before the fbank (WavFrontend upsacle_samples)
  int lfr_m = 7;               // low frame rate: stack lfr_m frames ...
  int lfr_n = 6;               // ... every lfr_n frames
  // CMVN (funasr apply_cmvn: (x + means) * vars), empty when the model ships none.
  // Sized lfr_m * num_mel_bins (or at least the feature width).
  std::vector<float> cmvn_means, cmvn_vars;
};

// Log-mel features [frames, num_mel_bins] of mono samples in [-1, 1] at options.sample_rate.
// Throws kvrun::Error when there are fewer than 2 samples (the reference's minimum).
std::vector<float> fbank(const std::vector<float>& samples, const FrontendOptions& options, int64_t* frames);

}  // namespace kvrun::audio
