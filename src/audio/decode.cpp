// Audio decoding with libsndfile, down-mix, and the reference's resampler (see decode.h).
#include "audio/decode.h"

#include <fcntl.h>
#include <sndfile.h>
#include <soxr.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <memory>
#include <numeric>
#include <sstream>

#include "kvrun/error.h"

namespace kvrun::audio {
namespace {

constexpr const char* kExpected = "expected WAV, FLAC, OGG (Vorbis/Opus) or MP3 audio";

std::string fmt_seconds(double s) {
  std::ostringstream os;
  if (s >= 3600) {
    os << std::fixed << std::setprecision(1) << s / 3600 << " h";
  } else {
    os << std::fixed << std::setprecision(s < 10 ? 3 : 1) << s << " s";
  }
  return os.str();
}

// Points fd 2 at /dev/null for its lifetime (DecodeOptions::silence_codec_messages).
class StderrSilencer {
 public:
  explicit StderrSilencer(bool on) {
    if (!on) return;
    std::fflush(stderr);
    saved_ = ::dup(2);
    const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (saved_ < 0 || null < 0 || ::dup2(null, 2) < 0) {
      if (null >= 0) ::close(null);
      if (saved_ >= 0) ::close(saved_);
      saved_ = -1;
      return;
    }
    ::close(null);
  }
  ~StderrSilencer() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
  }
  StderrSilencer(const StderrSilencer&) = delete;
  StderrSilencer& operator=(const StderrSilencer&) = delete;

 private:
  int saved_ = -1;
};

bool is_mpeg(const unsigned char* b, size_t n) {
  return (n >= 3 && std::memcmp(b, "ID3", 3) == 0) || (n >= 2 && b[0] == 0xFF && (b[1] & 0xE0) == 0xE0);
}

// libsndfile virtual I/O over a memory buffer.
struct MemoryFile {
  const unsigned char* data = nullptr;
  sf_count_t size = 0;
  sf_count_t pos = 0;
};

sf_count_t mem_len(void* user) { return static_cast<MemoryFile*>(user)->size; }
sf_count_t mem_seek(sf_count_t offset, int whence, void* user) {
  auto* f = static_cast<MemoryFile*>(user);
  sf_count_t base = whence == SEEK_CUR ? f->pos : whence == SEEK_END ? f->size : 0;
  sf_count_t target = base + offset;
  if (target < 0) return -1;
  f->pos = std::min(target, f->size);
  return f->pos;
}
sf_count_t mem_read(void* ptr, sf_count_t count, void* user) {
  auto* f = static_cast<MemoryFile*>(user);
  if (count <= 0 || f->pos >= f->size) return 0;
  sf_count_t n = std::min(count, f->size - f->pos);
  std::memcpy(ptr, f->data + f->pos, static_cast<size_t>(n));
  f->pos += n;
  return n;
}
sf_count_t mem_write(const void*, sf_count_t, void*) { return 0; }
sf_count_t mem_tell(void* user) { return static_cast<MemoryFile*>(user)->pos; }

struct SndfileCloser {
  void operator()(SNDFILE* f) const { sf_close(f); }
};
using SndfilePtr = std::unique_ptr<SNDFILE, SndfileCloser>;

std::string format_name(int format) {
  auto name = [](int value) -> std::string {
    SF_FORMAT_INFO info{};
    info.format = value;
    if (sf_command(nullptr, SFC_GET_FORMAT_INFO, &info, sizeof(info)) != 0 || info.name == nullptr) return "";
    return info.name;
  };
  std::string major = name(format & SF_FORMAT_TYPEMASK);
  // Major names look like "WAV (Microsoft)"; keep the first word.
  major = major.substr(0, major.find(' '));
  std::string sub = name(format & SF_FORMAT_SUBMASK);
  if (major.empty()) major = "audio";
  return sub.empty() ? major : major + " " + sub;
}

std::string sndfile_log(SNDFILE* f) {
  std::string log(16384, '\0');
  int n = sf_command(f, SFC_GET_LOG_INFO, log.data(), static_cast<int>(log.size()));
  log.resize(static_cast<size_t>(std::clamp(n, 0, static_cast<int>(log.size()))));
  return log;
}

// libsndfile clamps a WAV/AIFF data chunk that promises more bytes than the file holds and logs
// "data : 32000 (should be 1000)". Streaming writers put 0 or 0xFFFFFFFF there: not truncation.
// Returns the promised and the present byte counts when truncated.
bool log_says_truncated(const std::string& log, unsigned long long* promised_out, unsigned long long* actual_out) {
  for (size_t at = log.find("data : "); at != std::string::npos; at = log.find("data : ", at + 1)) {
    const size_t eol = log.find('\n', at);
    const std::string line = log.substr(at + 7, eol == std::string::npos ? std::string::npos : eol - at - 7);
    const size_t should = line.find("(should be ");
    if (should == std::string::npos) continue;
    const unsigned long long promised = std::strtoull(line.c_str(), nullptr, 10);
    const unsigned long long actual = std::strtoull(line.c_str() + should + 11, nullptr, 10);
    if (promised > actual && promised != 0xFFFFFFFFull && promised != 0x7FFFFFFFull) {
      *promised_out = promised;
      *actual_out = actual;
      return true;
    }
  }
  return false;
}

Audio decode_open(SNDFILE* raw, const SF_INFO& info, const DecodeOptions& opt, const std::string& name,
                  sf_count_t byte_size) {
  SndfilePtr f(raw);
  if (info.channels <= 0 || info.samplerate <= 0) {
    throw Error(name + ": " + kExpected + "; found a header with " + std::to_string(info.channels) + " channels at " +
                std::to_string(info.samplerate) + " Hz");
  }
  if (info.channels > opt.max_channels) {
    throw Error(name + ": expected at most " + std::to_string(opt.max_channels) + " audio channels; found " +
                std::to_string(info.channels));
  }
  if (info.samplerate < 1000 || info.samplerate > 768000) {
    throw Error(name + ": expected a sample rate between 1000 and 768000 Hz; found " + std::to_string(info.samplerate) +
                " Hz");
  }
  const int ch = info.channels;
  const double rate = info.samplerate;
  const std::string format = format_name(info.format);
  const auto max_frames = static_cast<sf_count_t>(opt.max_seconds * rate);
  // libsndfile reports SF_COUNT_MAX when it cannot know the length (e.g. an Ogg stream without
  // a final granule position); the limit is then enforced while decoding.
  const bool length_known = info.frames >= 0 && info.frames < SF_COUNT_MAX;
  if (length_known && info.frames > max_frames) {
    throw Error(name + ": audio is " + fmt_seconds(static_cast<double>(info.frames) / rate) + " long (" +
                std::to_string(info.frames) + " frames at " + std::to_string(info.samplerate) +
                " Hz); expected at most " + fmt_seconds(opt.max_seconds) + " per input (cut it into shorter files)");
  }
  const int major = info.format & SF_FORMAT_TYPEMASK;
  const bool exact_length = major != SF_FORMAT_MPEG;  // MP3 lengths are estimates
  unsigned long long promised = 0, present = 0;
  if (log_says_truncated(sndfile_log(f.get()), &promised, &present)) {
    throw Error(name + ": truncated " + format + " file (" + std::to_string(byte_size) +
                " bytes): its data chunk promises " + std::to_string(promised) + " bytes, the file holds " +
                std::to_string(present) + "; expected a complete file");
  }

  std::vector<float> mono;
  mono.reserve(static_cast<size_t>(length_known ? std::clamp<sf_count_t>(info.frames, 0, sf_count_t{1} << 24) : 0));
  constexpr sf_count_t kChunk = 16384;
  std::vector<float> buf(static_cast<size_t>(kChunk * ch));
  sf_count_t total = 0;
  for (;;) {
    sf_count_t got = sf_readf_float(f.get(), buf.data(), kChunk);
    if (got <= 0) break;
    for (sf_count_t i = 0; i < got; ++i) {
      const float* frame = buf.data() + i * ch;
      float sum = 0;
      for (int c = 0; c < ch; ++c) {
        if (!std::isfinite(frame[c])) {
          std::ostringstream os;
          os << name << ": sample " << total + i << " (" << fmt_seconds(static_cast<double>(total + i) / rate)
             << ") of channel " << c << " is " << (std::isnan(frame[c]) ? "NaN" : "infinite")
             << "; expected finite samples";
          throw Error(os.str());
        }
        sum += frame[c];
      }
      mono.push_back(ch == 1 ? sum : sum / static_cast<float>(ch));
    }
    total += got;
    if (total > max_frames) {
      throw Error(name + ": audio is longer than " + fmt_seconds(opt.max_seconds) + " (more than " +
                  std::to_string(max_frames) + " frames at " + std::to_string(info.samplerate) +
                  " Hz); expected at most " + fmt_seconds(opt.max_seconds) + " per input (cut it into shorter files)");
    }
  }
  int err = sf_error(f.get());
  if (err != SF_ERR_NO_ERROR) {
    throw Error(name + ": corrupt " + format + " data after " + std::to_string(total) +
                " frames (libsndfile: " + sf_error_number(err) + "); " + kExpected);
  }
  if (exact_length && length_known && info.frames > 0 && total < info.frames) {
    throw Error(name + ": truncated " + format + " file: the header promises " + std::to_string(info.frames) +
                " frames, only " + std::to_string(total) + " could be decoded; expected a complete file");
  }
  if (mono.empty() && !length_known) {
    throw Error(name + ": truncated or corrupt " + format +
                " stream: no audio could be decoded from it; expected a complete file");
  }
  if (mono.empty()) {
    throw Error(name + ": " + format + " file holds no audio samples (0 frames); expected at least one sample");
  }

  Audio a;
  a.sample_rate_in = info.samplerate;
  a.channels_in = ch;
  a.format = format;
  a.samples = resample(mono, info.samplerate, opt.target_rate, opt.resampler);
  a.sample_rate = opt.target_rate;
  a.seconds = static_cast<double>(a.samples.size()) / a.sample_rate;
  return a;
}

void check_options(const DecodeOptions& opt, const std::string& name) {
  if (opt.target_rate < 1000 || opt.target_rate > 768000) {
    throw Error(name + ": expected a target sample rate between 1000 and 768000 Hz; found " +
                std::to_string(opt.target_rate));
  }
  if (opt.resampler != "sinc" && opt.resampler != "soxr_hq") {
    throw Error("audio resampler: expected \"sinc\" or \"soxr_hq\"; found \"" + opt.resampler + "\"");
  }
}

// Only the four container families the front end promises reach libsndfile's parsers
// (it reads a dozen more, e.g. AIFF, AU, CAF, PAF, whose parsers need not face untrusted bytes).
void check_magic(const unsigned char* b, size_t n, const std::string& name) {
  auto is = [&](const char* m) { return n >= 4 && std::memcmp(b, m, 4) == 0; };
  if (is("RIFF") || is("RIFX") || is("RF64") || is("fLaC") || is("OggS")) return;
  if (n >= 3 && std::memcmp(b, "ID3", 3) == 0) return;
  if (n >= 2 && b[0] == 0xFF && (b[1] & 0xE0) == 0xE0) return;  // MPEG audio frame sync
  std::ostringstream os;
  os << name << ": cannot decode: " << kExpected << "; found " << n << " bytes starting with";
  for (size_t i = 0; i < std::min<size_t>(n, 4); ++i) {
    os << ' ' << std::hex << std::setw(2) << std::setfill('0') << static_cast<int>(b[i]);
  }
  os << " (no RIFF/RF64, fLaC, OggS, ID3 or MPEG frame header)";
  throw Error(os.str());
}

std::string open_error(const std::string& name) {
  std::string why = sf_strerror(nullptr);
  std::replace(why.begin(), why.end(), '\n', ' ');  // one line
  while (!why.empty() && why.back() == ' ') why.pop_back();
  // A container libsndfile knows holding a codec it does not: its log names the format tag.
  const std::string log = sndfile_log(nullptr);
  const size_t unknown = log.find("=> Unknown format");
  if (unknown != std::string::npos) {
    const size_t colon = log.rfind(':', unknown);
    std::string tag = log.substr(colon + 1, unknown - colon - 1);
    tag.erase(0, tag.find_first_not_of(' '));
    tag.erase(tag.find_last_not_of(' ') + 1);
    return name + ": unknown codec (format tag " + tag + "); " + kExpected + " (PCM, float, FLAC, Vorbis, Opus, MP3)";
  }
  return name + ": cannot decode: " + kExpected + "; found data libsndfile cannot read (" + why + ")";
}

// torchaudio.functional._get_sinc_resample_kernel + _apply_sinc_resample_kernel, with each
// polyphase row stored only where the (clamped) sinc argument is inside the window:
// outside it the kernel is sin(+-6 pi)/(+-6 pi) * cos(pi/2)^2 ~ 1e-49, i.e. zero.
std::vector<float> resample_sinc(const std::vector<float>& x, int from_rate, int to_rate) {
  constexpr int kWidth = 6;          // lowpass_filter_width
  constexpr double kRolloff = 0.99;  // rolloff
  const int g = std::gcd(from_rate, to_rate);
  const int64_t orig = from_rate / g;
  const int64_t nnew = to_rate / g;
  const double base = static_cast<double>(std::min(orig, nnew)) * kRolloff;
  const auto width = static_cast<int64_t>(std::ceil(kWidth * static_cast<double>(orig) / base));
  const double scale = base / static_cast<double>(orig);
  const int64_t kernel_len = 2 * width + orig;

  struct Row {
    int64_t first = 0;  // kernel index of taps[0]
    std::vector<float> taps;
  };
  const auto n = static_cast<int64_t>(x.size());
  // ceil(new * length / orig) in float64, as torch.
  const auto out_len = static_cast<int64_t>(std::ceil(static_cast<double>(nnew * n) / static_cast<double>(orig)));
  // Only the phases the output uses (all of them once it is longer than nnew samples).
  const int64_t phases = std::min(nnew, std::max<int64_t>(out_len, 1));
  std::vector<Row> rows(static_cast<size_t>(phases));
  for (int64_t j = 0; j < phases; ++j) {
    // torch: arange(0, -new, -1) / new is computed in float32, then added to float64 idx.
    const double tj = static_cast<double>(static_cast<float>(-j) / static_cast<float>(nnew));
    // |t| < kWidth  <=>  (m - width) / orig in (-kWidth / base - tj, kWidth / base - tj)
    const double lo_d = (-kWidth / base - tj) * static_cast<double>(orig) + static_cast<double>(width);
    const double hi_d = (kWidth / base - tj) * static_cast<double>(orig) + static_cast<double>(width);
    int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor(lo_d)) - 1);
    int64_t hi = std::min<int64_t>(kernel_len - 1, static_cast<int64_t>(std::ceil(hi_d)) + 1);
    Row& row = rows[static_cast<size_t>(j)];
    row.first = -1;
    for (int64_t m = lo; m <= hi; ++m) {
      double idx = static_cast<double>(m - width) / static_cast<double>(orig);
      double t = (tj + idx) * base;
      if (!(t > -kWidth && t < kWidth)) {
        if (row.first >= 0) row.taps.push_back(0.0f);  // keep the row contiguous
        continue;
      }
      double window = std::cos(t * M_PI / kWidth / 2);
      window *= window;
      double tp = t * M_PI;
      double k = tp == 0 ? 1.0 : std::sin(tp) / tp;
      k *= window * scale;
      if (row.first < 0) row.first = m;
      row.taps.push_back(static_cast<float>(k));
    }
    while (!row.taps.empty() && row.taps.back() == 0.0f) row.taps.pop_back();
    if (row.first < 0) row.first = 0;
  }

  // torch's conv1d sums the taps in kernel order in float32. Which kernel runs depends on the
  // padded input's size (aten use_mkldnn: more than 20480 elements -> oneDNN): oneDNN rounds
  // once per tap (fused multiply-add), the native im2col path rounds product and sum apart.
  // Reproducing that rounding bit for bit matters for 8 kHz input: above 4 kHz the resampled
  // signal holds little but float32 rounding noise, which the quietest mel bins then measure.
  // The native path's gemm fuses too once the kernel has more than two rows (measured on
  // torch 2.11: bit-exact for every rate on the oneDNN path and for 8/12/32/48 kHz on the
  // native one; 11.025/22.05/44.1 kHz inputs under ~0.5 s differ from it by 1 ulp at times).
  const bool fused = n + 2 * width + orig > 20480 || nnew > 2;
  std::vector<float> y(static_cast<size_t>(out_len));
  for (int64_t o = 0; o < out_len; ++o) {
    const int64_t k = o / nnew;
    const Row& row = rows[static_cast<size_t>(o % nnew)];
    // input index of kernel index m: k * orig + m - width (zero outside [0, n))
    const int64_t start = k * orig + row.first - width;
    const auto taps = static_cast<int64_t>(row.taps.size());
    const int64_t a = std::max<int64_t>(0, -start);
    const int64_t b = std::min<int64_t>(taps, n - start);
    float acc = 0;
    if (fused) {
      for (int64_t i = a; i < b; ++i)
        acc = std::fma(row.taps[static_cast<size_t>(i)], x[static_cast<size_t>(start + i)], acc);
    } else {
      for (int64_t i = a; i < b; ++i) {
        const float p = row.taps[static_cast<size_t>(i)] * x[static_cast<size_t>(start + i)];
        acc += p;
      }
    }
    y[static_cast<size_t>(o)] = acc;
  }
  return y;
}

std::vector<float> resample_soxr(const std::vector<float>& x, int from_rate, int to_rate) {
  const auto out_len = static_cast<size_t>(
      std::ceil(static_cast<double>(x.size()) * static_cast<double>(to_rate) / static_cast<double>(from_rate)));
  std::vector<float> y(out_len);
  size_t done = 0;
  soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
  soxr_quality_spec_t q = soxr_quality_spec(SOXR_HQ, 0);
  soxr_error_t err =
      soxr_oneshot(from_rate, to_rate, 1, x.data(), x.size(), nullptr, y.data(), y.size(), &done, &io, &q, nullptr);
  if (err != nullptr) {
    throw Error(std::string("soxr resampling ") + std::to_string(from_rate) + " -> " + std::to_string(to_rate) +
                " Hz failed: " + err);
  }
  y.resize(done);
  return y;
}

}  // namespace

std::vector<float> resample(const std::vector<float>& samples, int from_rate, int to_rate, const std::string& method) {
  if (from_rate <= 0 || to_rate <= 0) {
    throw Error("resample: expected positive sample rates; found " + std::to_string(from_rate) + " -> " +
                std::to_string(to_rate) + " Hz");
  }
  if (from_rate == to_rate || samples.empty()) return samples;
  if (method == "sinc") return resample_sinc(samples, from_rate, to_rate);
  if (method == "soxr_hq") return resample_soxr(samples, from_rate, to_rate);
  throw Error("resample: expected method \"sinc\" or \"soxr_hq\"; found \"" + method + "\"");
}

Audio decode_file(const std::filesystem::path& path, int target_rate) {
  DecodeOptions opt;
  opt.target_rate = target_rate;
  return decode_file(path, opt);
}

Audio decode_file(const std::filesystem::path& path, const DecodeOptions& options) {
  const std::string name = path.string();
  check_options(options, name);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw Error(name + ": no such audio file");
  if (std::filesystem::is_directory(path, ec)) throw Error(name + ": is a folder; expected an audio file");
  auto size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(name + ": cannot read the file size (" + ec.message() + ")");
  if (size == 0) throw Error(name + ": empty file (0 bytes); " + kExpected);
  bool mpeg = false;
  {
    unsigned char head[4] = {0, 0, 0, 0};
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(name + ": cannot open the file for reading");
    in.read(reinterpret_cast<char*>(head), 4);
    check_magic(head, static_cast<size_t>(in.gcount()), name);
    mpeg = is_mpeg(head, static_cast<size_t>(in.gcount()));
  }
  StderrSilencer quiet(options.silence_codec_messages && mpeg);
  SF_INFO info{};
  SNDFILE* f = sf_open(name.c_str(), SFM_READ, &info);
  if (f == nullptr) throw Error(open_error(name));
  return decode_open(f, info, options, name, static_cast<sf_count_t>(size));
}

Audio decode_memory(const void* data, size_t size, const DecodeOptions& options, const std::string& name) {
  check_options(options, name);
  if (size == 0 || data == nullptr) throw Error(name + ": empty input (0 bytes); " + kExpected);
  check_magic(static_cast<const unsigned char*>(data), size, name);
  StderrSilencer quiet(options.silence_codec_messages && is_mpeg(static_cast<const unsigned char*>(data), size));
  MemoryFile mem;
  mem.data = static_cast<const unsigned char*>(data);
  mem.size = static_cast<sf_count_t>(size);
  SF_VIRTUAL_IO vio{mem_len, mem_seek, mem_read, mem_write, mem_tell};
  SF_INFO info{};
  SNDFILE* f = sf_open_virtual(&vio, SFM_READ, &info, &mem);
  if (f == nullptr) throw Error(open_error(name));
  return decode_open(f, info, options, name, mem.size);
}

}  // namespace kvrun::audio
