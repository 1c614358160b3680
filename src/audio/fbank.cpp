// Kaldi-compatible fbank (torchaudio.compliance.kaldi.fbank), see fbank.h.
#include "audio/fbank.h"

#include <kiss_fftr.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <memory>

#include "kvrun/error.h"

namespace kvrun::audio {
namespace {

struct FftrFree {
  void operator()(kiss_fftr_cfg c) const { kiss_fftr_free(c); }
};

double mel_scale(double f) { return 1127.0 * std::log(1.0 + f / 700.0); }

// torch.hamming_window / hann_window (periodic=False) as torch computes them in float32:
// arange(n) * float(2 pi / (n - 1)), cos, * -beta, + alpha (each step rounded to float;
// cos evaluated in double and rounded, which is what torch's vectorized cosf gives for all
// but a few entries). Matching the reference's window to the bit matters: a 1-ulp pattern
// in the window leaks energy into the quiet mel bins at the 1e-4 level of the log features.
std::vector<float> window_function(const std::string& type, int n) {
  std::vector<float> w(static_cast<size_t>(n), 1.0f);
  if (type == "rectangular") return w;
  float alpha = 0.54f, beta = 0.46f;
  if (type == "hanning" || type == "povey") {
    alpha = 0.5f;
    beta = 0.5f;
  } else if (type != "hamming") {
    throw Error("fbank window: expected hamming, hanning, povey or rectangular; found \"" + type + "\"");
  }
  if (n == 1) return w;
  const auto step = static_cast<float>(M_PI * 2.0 / static_cast<double>(n - 1));
  for (int i = 0; i < n; ++i) {
    const float a = static_cast<float>(i) * step;
    const auto c = static_cast<float>(std::cos(static_cast<double>(a)));
    const float v = c * -beta;
    float x = v + alpha;
    if (type == "povey") x = std::pow(x, 0.85f);
    w[static_cast<size_t>(i)] = x;
  }
  return w;
}

// In-place iterative radix-2 complex FFT in double (n a power of two). The reference's
// float32 FFT is accurate to ~1e-7 of a frame's peak; a second float32 FFT with other
// rounding would double that error in the quiet mel bins, a double one does not add to it.
class FftDouble {
 public:
  explicit FftDouble(int n)
      : n_(n), rev_(static_cast<size_t>(n)), cos_(static_cast<size_t>(n / 2)), sin_(static_cast<size_t>(n / 2)) {
    int bits = 0;
    while ((1 << bits) < n) ++bits;
    for (int i = 0; i < n; ++i) {
      int r = 0;
      for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
      rev_[static_cast<size_t>(i)] = r;
    }
    for (int k = 0; k < n / 2; ++k) {
      cos_[static_cast<size_t>(k)] = std::cos(2.0 * M_PI * k / n);
      sin_[static_cast<size_t>(k)] = -std::sin(2.0 * M_PI * k / n);
    }
    re_.resize(static_cast<size_t>(n));
    im_.resize(static_cast<size_t>(n));
  }
  // power[k] = |X[k]|^2 for k = 0..n/2 of the real input x[0..n).
  void power(const float* x, std::vector<double>* power) {
    double* re = re_.data();
    double* im = im_.data();
    for (int i = 0; i < n_; ++i) {
      re[rev_[static_cast<size_t>(i)]] = x[i];
      im[i] = 0;
    }
    for (int len = 2; len <= n_; len <<= 1) {
      const int half = len / 2, stride = n_ / len;
      for (int s = 0; s < n_; s += len) {
        for (int k = 0; k < half; ++k) {
          const double wr = cos_[static_cast<size_t>(k * stride)], wi = sin_[static_cast<size_t>(k * stride)];
          const int a = s + k, b = s + k + half;
          const double tr = wr * re[b] - wi * im[b];
          const double ti = wr * im[b] + wi * re[b];
          re[b] = re[a] - tr;
          im[b] = im[a] - ti;
          re[a] += tr;
          im[a] += ti;
        }
      }
    }
    power->resize(static_cast<size_t>(n_ / 2 + 1));
    for (int k = 0; k <= n_ / 2; ++k) (*power)[static_cast<size_t>(k)] = re[k] * re[k] + im[k] * im[k];
  }

 private:
  int n_;
  std::vector<int> rev_;
  std::vector<double> cos_, sin_, re_, im_;
};

// torchaudio get_mel_banks (no VTLN): triangles in mel space over fft bins 0..padded/2-1
// (the Nyquist bin gets weight 0). Each bank keeps its nonzero range.
struct MelBank {
  int first = 0;
  std::vector<float> weights;
};

std::vector<MelBank> mel_banks(int num_bins, int padded, double sample_freq, double low_freq, double high_freq) {
  const double nyquist = 0.5 * sample_freq;
  if (high_freq <= 0.0) high_freq += nyquist;
  if (num_bins <= 3) throw Error("fbank: expected more than 3 mel bins; found " + std::to_string(num_bins));
  if (!(0.0 <= low_freq && low_freq < nyquist && 0.0 < high_freq && high_freq <= nyquist && low_freq < high_freq)) {
    throw Error("fbank: expected 0 <= low_freq < high_freq <= Nyquist (" + std::to_string(nyquist) +
                " Hz); found low_freq " + std::to_string(low_freq) + ", high_freq " + std::to_string(high_freq));
  }
  const int num_fft_bins = padded / 2;
  const double fft_bin_width = sample_freq / padded;
  const double mel_low = mel_scale(low_freq);
  const double mel_high = mel_scale(high_freq);
  const double delta = (mel_high - mel_low) / (num_bins + 1);
  std::vector<MelBank> banks(static_cast<size_t>(num_bins));
  for (int b = 0; b < num_bins; ++b) {
    const double left = mel_low + b * delta;
    const double center = mel_low + (b + 1.0) * delta;
    const double right = mel_low + (b + 2.0) * delta;
    MelBank& bank = banks[static_cast<size_t>(b)];
    bank.first = -1;
    for (int k = 0; k < num_fft_bins; ++k) {
      const double mel = mel_scale(fft_bin_width * k);
      const double up = (mel - left) / (center - left);
      const double down = (right - mel) / (right - center);
      const double w = std::max(0.0, std::min(up, down));
      if (w <= 0) {
        if (bank.first >= 0) break;  // past the triangle
        continue;
      }
      if (bank.first < 0) bank.first = k;
      bank.weights.push_back(static_cast<float>(w));
    }
    if (bank.first < 0) bank.first = 0;
  }
  return banks;
}

}  // namespace

std::vector<float> fbank(const std::vector<float>& samples, const FrontendOptions& opt, int64_t* frames_out) {
  const auto n = static_cast<int64_t>(samples.size());
  if (opt.sample_rate <= 0 || opt.frame_shift_ms <= 0 || opt.frame_length_ms <= 0) {
    throw Error("fbank: expected a positive sample rate, frame length and frame shift");
  }
  if (n < 2) {
    throw Error("fbank: expected at least 2 audio samples; found " + std::to_string(n));
  }
  // WavFrontend: frame_length = min(frame_length, waveform_length / fs * 1000).
  const double duration_ms = static_cast<double>(n) / opt.sample_rate * 1000;
  const double frame_length = duration_ms < opt.frame_length_ms ? duration_ms : opt.frame_length_ms;
  const double fs = opt.sample_rate;
  const auto shift = static_cast<int64_t>(fs * opt.frame_shift_ms * 0.001);
  const auto size = static_cast<int64_t>(fs * frame_length * 0.001);
  if (size < 2 || shift < 1) {
    throw Error("fbank: expected a window of at least 2 samples and a shift of at least 1; found " +
                std::to_string(size) + " and " + std::to_string(shift) + " (" + std::to_string(n) + " samples)");
  }
  int64_t padded = 1;
  while (padded < size) padded *= 2;
  if (padded % 2 != 0) padded = 2;

  int64_t m;
  std::vector<float> ext;  // snip_edges=false: the reflected signal
  const float* src = samples.data();
  if (opt.snip_edges) {
    m = n < size ? 0 : 1 + (n - size) / shift;
  } else {
    m = (n + shift / 2) / shift;
    const int64_t pad = size / 2 - shift / 2;
    if (pad > 0) {
      ext.reserve(static_cast<size_t>(pad + 2 * n));
      for (int64_t i = pad - 1; i >= 0; --i) ext.push_back(samples[static_cast<size_t>(std::min(i, n - 1))]);
      ext.insert(ext.end(), samples.begin(), samples.end());
    } else {
      ext.assign(samples.begin() + std::min(-pad, n), samples.end());
    }
    ext.insert(ext.end(), samples.rbegin(), samples.rend());
    src = ext.data();
  }

  const int bins = opt.num_mel_bins;
  if (frames_out) *frames_out = m;
  std::vector<float> out(static_cast<size_t>(m * bins));
  if (m == 0) return out;

  const std::vector<float> window = window_function(opt.window, static_cast<int>(size));
  const std::vector<MelBank> banks = mel_banks(bins, static_cast<int>(padded), fs, opt.low_freq, opt.high_freq);
  const bool use_kiss = opt.fft == "kissfft";
  if (!use_kiss && opt.fft != "double") {
    throw Error("fbank fft: expected \"double\" or \"kissfft\"; found \"" + opt.fft + "\"");
  }
  std::unique_ptr<kiss_fftr_state, FftrFree> cfg;
  std::unique_ptr<FftDouble> fft;
  if (use_kiss) {
    cfg.reset(kiss_fftr_alloc(static_cast<int>(padded), 0, nullptr, nullptr));
    if (!cfg) throw Error("fbank: cannot set up a " + std::to_string(padded) + "-point FFT");
  } else {
    fft = std::make_unique<FftDouble>(static_cast<int>(padded));
  }

  const float scale = opt.upscale_samples ? 32768.0f : 1.0f;
  const auto pre = static_cast<float>(opt.preemphasis);
  std::vector<float> frame(static_cast<size_t>(padded), 0.0f);
  std::vector<kiss_fft_cpx> spec(use_kiss ? static_cast<size_t>(padded / 2 + 1) : 0);
  std::vector<double> power(static_cast<size_t>(padded / 2 + 1));
  for (int64_t f = 0; f < m; ++f) {
    const float* x = src + f * shift;
    for (int64_t i = 0; i < size; ++i) frame[static_cast<size_t>(i)] = x[i] * scale;
    if (opt.remove_dc_offset) {
      double sum = 0;
      for (int64_t i = 0; i < size; ++i) sum += frame[static_cast<size_t>(i)];
      const auto mean = static_cast<float>(sum / static_cast<double>(size));
      for (int64_t i = 0; i < size; ++i) frame[static_cast<size_t>(i)] -= mean;
    }
    if (pre != 0.0f) {
      // torch: x - float(coef) * x_prev, two roundings (no fused multiply-add).
      for (int64_t i = size - 1; i > 0; --i) frame[static_cast<size_t>(i)] -= pre * frame[static_cast<size_t>(i - 1)];
      frame[0] -= pre * frame[0];
    }
    for (int64_t i = 0; i < size; ++i) frame[static_cast<size_t>(i)] *= window[static_cast<size_t>(i)];
    // frame[size..padded) stays 0
    if (use_kiss) {
      kiss_fftr(cfg.get(), frame.data(), spec.data());
      for (size_t k = 0; k < spec.size(); ++k) {
        power[k] = static_cast<double>(spec[k].r) * spec[k].r + static_cast<double>(spec[k].i) * spec[k].i;
      }
    } else {
      fft->power(frame.data(), &power);
    }
    float* row = out.data() + f * bins;
    for (int b = 0; b < bins; ++b) {
      const MelBank& bank = banks[static_cast<size_t>(b)];
      double e = 0;
      for (size_t k = 0; k < bank.weights.size(); ++k) {
        e += power[static_cast<size_t>(bank.first) + k] * bank.weights[k];
      }
      row[b] = std::log(std::max(static_cast<float>(e), FLT_EPSILON));
    }
  }
  return out;
}

}  // namespace kvrun::audio
