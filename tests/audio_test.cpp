// Audio front end (src/audio): features against funasr 1.4.16 goldens
// (tools/make_audio_goldens.py), bad input, LFR shape rules, segmentation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>

#include "audio/decode.h"
#include "audio/fbank.h"
#include "audio/lfr.h"
#include "audio/segment.h"
#include "kvrun/error.h"
#include "test_util.h"

namespace kvrun {
namespace {

using test::expect_error;
using test::fixture;
using test::TempDir;

std::filesystem::path clip(const std::string& name) { return fixture("audio") / name; }

const io::TensorStore& goldens() {
  static io::TensorStore store(clip("goldens.safetensors"));
  return store;
}

std::vector<float> golden(const std::string& key, std::vector<int64_t>* shape) {
  const io::TensorView& t = goldens().get(key);
  *shape = t.shape;
  std::vector<float> v(t.nbytes / sizeof(float));
  std::memcpy(v.data(), t.data, t.nbytes);
  return v;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A canonical RIFF/WAVE file: format 1 (PCM) or 3 (IEEE float).
std::string wav_bytes(int format, int channels, int rate, int bits, const std::string& data,
                      uint32_t data_size_override = 0) {
  auto u32 = [](uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); };
  auto u16 = [](uint16_t v) { return std::string(reinterpret_cast<const char*>(&v), 2); };
  const uint32_t data_size = data_size_override ? data_size_override : static_cast<uint32_t>(data.size());
  std::string h = "RIFF" + u32(36 + data_size) + "WAVEfmt " + u32(16) + u16(static_cast<uint16_t>(format)) +
                  u16(static_cast<uint16_t>(channels)) + u32(static_cast<uint32_t>(rate)) +
                  u32(static_cast<uint32_t>(rate * channels * bits / 8)) +
                  u16(static_cast<uint16_t>(channels * bits / 8)) + u16(static_cast<uint16_t>(bits)) + "data" +
                  u32(data_size);
  return h + data;
}

std::string float_data(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::string pcm16_data(const std::vector<int16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int16_t));
}

std::vector<float> sine(int n, int rate, double hz, double amp) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<float>(amp * std::sin(2 * M_PI * hz * i / rate));
  return v;
}

const char* kClips[] = {"noise_16k_s16.wav",  "short_300.wav",      "silence_16k_s16.wav", "six_8k_s16.wav",
                        "speech_16k.flac",    "speech_16k_f32.wav", "speech_16k_s16.wav",  "speech_16k_u8.wav",
                        "speech_22k_s24.wav", "speech_44k.mp3",     "speech_48k.ogg",      "speech_8k_s16.wav",
                        "speech_8k_s32.wav",  "stereo_16k_s16.wav"};

// ---------------------------------------------------------------- goldens

TEST(AudioFeatures, MatchFunasrOnEveryClip) {
  audio::FrontendOptions opt;
  for (const char* name : kClips) {
    SCOPED_TRACE(name);
    audio::Audio a = audio::decode_file(clip(name));
    EXPECT_EQ(a.sample_rate, 16000);
    int64_t rows = 0;
    std::vector<float> got = audio::features(a, opt, &rows);
    std::vector<int64_t> shape;
    std::vector<float> want = golden(name, &shape);
    ASSERT_EQ(shape.size(), 2u);
    ASSERT_EQ(rows, shape[0]);
    ASSERT_EQ(shape[1], 560);
    const float d = max_abs_diff(got, want);
    std::printf("[ audio    ] %-20s %2d ch %5d Hz %-22s rows %3lld  max |diff| %.3g\n", name, a.channels_in,
                a.sample_rate_in, a.format.c_str(), static_cast<long long>(rows), d);
    EXPECT_LE(d, 1e-3f);
  }
}

// The model-level goldens (tests/fixtures/funasr-nano-tiny, tools/make_funasr_goldens.py) hold
// the features funasr built inside AutoModel.generate for five longer clips (2.7-6.9 s).
TEST(AudioFeatures, MatchFunasrNanoGoldens) {
  const std::filesystem::path dir = fixture("funasr-nano-tiny");
  if (!std::filesystem::exists(dir / "goldens.safetensors")) GTEST_SKIP() << "no funasr-nano-tiny fixture";
  io::TensorStore store(dir / "goldens.safetensors");
  for (const char* name : {"hello_16k", "kvrun_16k", "fox_16k", "stereo_16k", "call_8k"}) {
    SCOPED_TRACE(name);
    int64_t rows = 0;
    std::vector<float> got =
        audio::features(audio::decode_file(dir / (std::string(name) + ".wav")), audio::FrontendOptions{}, &rows);
    const io::TensorView& t = store.get(std::string(name) + ".features");
    ASSERT_EQ(t.shape, (std::vector<int64_t>{rows, 560}));
    std::vector<float> want(t.nbytes / sizeof(float));
    std::memcpy(want.data(), t.data, t.nbytes);
    const float d = max_abs_diff(got, want);
    std::printf("[ audio    ] funasr-nano-tiny/%-12s rows %3lld  max |diff| %.3g\n", name, static_cast<long long>(rows),
                d);
    EXPECT_LE(d, 1e-3f);
  }
}

TEST(AudioFeatures, RawFbankMatchesTorchaudio) {
  audio::Audio a = audio::decode_file(clip("speech_16k_s16.wav"));
  audio::FrontendOptions opt;
  int64_t frames = 0;
  std::vector<float> got = audio::fbank(a.samples, opt, &frames);
  std::vector<int64_t> shape;
  std::vector<float> want = golden("speech_16k_s16.wav.fbank", &shape);
  ASSERT_EQ(frames, shape[0]);
  ASSERT_EQ(frames, 1 + (static_cast<int64_t>(a.samples.size()) - 400) / 160);
  EXPECT_LE(max_abs_diff(got, want), 1e-3f);
  // kissfft (float32) stays within the bound too.
  opt.fft = "kissfft";
  EXPECT_LE(max_abs_diff(audio::fbank(a.samples, opt, &frames), want), 1e-3f);
}

TEST(AudioFeatures, ResamplerMatchesTorchaudio) {
  audio::Audio a = audio::decode_file(clip("speech_22k_s24.wav"));
  EXPECT_EQ(a.sample_rate_in, 22050);
  EXPECT_EQ(a.samples.size(), 12800u);  // ceil(17640 * 320 / 441)
  std::vector<int64_t> shape;
  std::vector<float> want = golden("speech_22k_s24.wav.resampled", &shape);
  std::vector<float> head(a.samples.begin(), a.samples.begin() + static_cast<int64_t>(want.size()));
  EXPECT_LE(max_abs_diff(head, want), 1e-6f);
}

TEST(AudioFeatures, CmvnFromAmMvn) {
  audio::FrontendOptions opt;
  audio::load_cmvn(clip("am.mvn"), &opt.cmvn_means, &opt.cmvn_vars);
  ASSERT_EQ(opt.cmvn_means.size(), 560u);
  int64_t rows = 0;
  std::vector<float> got = audio::features(audio::decode_file(clip("short_300.wav")), opt, &rows);
  std::vector<int64_t> shape;
  std::vector<float> want = golden("short_300.wav.cmvn", &shape);
  EXPECT_EQ(rows, shape[0]);
  EXPECT_LE(max_abs_diff(got, want), 1e-3f);
}

TEST(AudioDecode, MemoryEqualsFile) {
  for (const char* name : {"speech_44k.mp3", "speech_48k.ogg", "speech_16k.flac", "speech_22k_s24.wav"}) {
    SCOPED_TRACE(name);
    std::string bytes = read_bytes(clip(name));
    audio::Audio m = audio::decode_memory(bytes.data(), bytes.size());
    audio::Audio f = audio::decode_file(clip(name));
    EXPECT_EQ(m.samples, f.samples);
    EXPECT_EQ(m.sample_rate_in, f.sample_rate_in);
  }
}

TEST(AudioDecode, FormatsRatesAndChannels) {
  audio::Audio six = audio::decode_file(clip("six_8k_s16.wav"));
  EXPECT_EQ(six.channels_in, 6);
  EXPECT_EQ(six.sample_rate_in, 8000);
  EXPECT_EQ(six.samples.size(), 9600u);
  EXPECT_NEAR(six.seconds, 0.6, 1e-9);
  audio::Audio mp3 = audio::decode_file(clip("speech_44k.mp3"));
  EXPECT_NE(mp3.format.find("MP"), std::string::npos) << mp3.format;
  // Native rate kept when asked; soxr as the alternative resampler.
  audio::DecodeOptions keep;
  keep.target_rate = 8000;
  EXPECT_EQ(audio::decode_file(clip("speech_8k_s16.wav"), keep).samples.size(), 9600u);
  audio::DecodeOptions soxr;
  soxr.resampler = "soxr_hq";
  audio::Audio s = audio::decode_file(clip("speech_8k_s16.wav"), soxr);
  audio::Audio t = audio::decode_file(clip("speech_8k_s16.wav"));
  ASSERT_NEAR(static_cast<double>(s.samples.size()), static_cast<double>(t.samples.size()), 2);
  double err = 0, ref = 0;
  for (size_t i = 0; i < std::min(s.samples.size(), t.samples.size()); ++i) {
    err += std::pow(s.samples[i] - t.samples[i], 2);
    ref += std::pow(t.samples[i], 2);
  }
  EXPECT_LT(err, 1e-2 * ref);  // same signal, another filter (about 1e-3 here)
}

// ---------------------------------------------------------------- bad input

TEST(AudioDecode, BadInputIsOneClearError) {
  TempDir dir;
  write_bytes(dir / "empty.wav", "");
  expect_error([&] { audio::decode_file(dir / "empty.wav"); }, {"empty.wav", "empty file (0 bytes)", "expected WAV"});
  expect_error([&] { audio::decode_memory("", 0); }, {"empty input", "expected WAV"});
  expect_error([&] { audio::decode_file(dir / "missing.wav"); }, {"missing.wav", "no such audio file"});
  expect_error([&] { audio::decode_file(dir.path()); }, {"is a folder"});

  std::mt19937 rng(7);
  std::string garbage(4096, '\0');
  for (auto& c : garbage) c = static_cast<char>(rng() & 0x7f);
  write_bytes(dir / "garbage.wav", garbage);
  expect_error([&] { audio::decode_file(dir / "garbage.wav"); }, {"garbage.wav", "cannot decode", "expected WAV"});
  expect_error([&] { audio::decode_memory(garbage.data(), garbage.size()); }, {"cannot decode"});

  // Truncated: the data chunk promises 32000 bytes, the file holds 1000.
  std::vector<int16_t> pcm(500, 1000);
  write_bytes(dir / "trunc.wav", wav_bytes(1, 1, 16000, 16, pcm16_data(pcm), 32000));
  expect_error([&] { audio::decode_file(dir / "trunc.wav"); },
               {"trunc.wav", "truncated", "promises 32000 bytes", "holds 1000", "expected a complete file"});
  // Truncated FLAC: half of a real one.
  std::string flac = read_bytes(clip("speech_16k.flac"));
  write_bytes(dir / "half.flac", flac.substr(0, flac.size() / 2));
  expect_error([&] { audio::decode_file(dir / "half.flac"); }, {"half.flac", "truncated"});
  // Half an Ogg/Vorbis stream (its length is unknown to libsndfile).
  std::string ogg = read_bytes(clip("speech_48k.ogg"));
  write_bytes(dir / "half.ogg", ogg.substr(0, ogg.size() / 2));
  expect_error([&] { audio::decode_file(dir / "half.ogg"); }, {"half.ogg", "truncated or corrupt"});
  // Only a header.
  write_bytes(dir / "header.wav", wav_bytes(1, 1, 16000, 16, "", 0).substr(0, 20));
  expect_error([&] { audio::decode_file(dir / "header.wav"); }, {"header.wav"});

  // Zero-length audio: a valid header with no frames.
  write_bytes(dir / "zero.wav", wav_bytes(1, 1, 16000, 16, ""));
  expect_error([&] { audio::decode_file(dir / "zero.wav"); }, {"zero.wav", "no audio samples"});

  // Unknown codec in a WAV container (format tag 0x1234).
  write_bytes(dir / "codec.wav", wav_bytes(0x1234, 1, 16000, 16, pcm16_data(pcm)));
  expect_error([&] { audio::decode_file(dir / "codec.wav"); }, {"codec.wav", "unknown codec", "0x1234"});

  // NaN and Inf samples in a float WAV.
  std::vector<float> f = sine(1600, 16000, 440, 0.5);
  f[1234] = std::numeric_limits<float>::quiet_NaN();
  write_bytes(dir / "nan.wav", wav_bytes(3, 1, 16000, 32, float_data(f)));
  expect_error([&] { audio::decode_file(dir / "nan.wav"); }, {"nan.wav", "sample 1234", "NaN", "expected finite"});
  f[1234] = std::numeric_limits<float>::infinity();
  write_bytes(dir / "inf.wav", wav_bytes(3, 1, 16000, 32, float_data(f)));
  expect_error([&] { audio::decode_file(dir / "inf.wav"); }, {"inf.wav", "infinite"});

  // Too long for the limit (refused before decoding).
  std::vector<int16_t> two_s(32000, 100);
  write_bytes(dir / "long.wav", wav_bytes(1, 1, 16000, 16, pcm16_data(two_s)));
  audio::DecodeOptions shortmax;
  shortmax.max_seconds = 1;
  expect_error([&] { audio::decode_file(dir / "long.wav", shortmax); }, {"long.wav", "2.000 s long", "at most 1"});
  // Three hours of 16 kHz PCM (a sparse file): refused from the header, before any decoding.
  {
    const uint32_t bytes = 3u * 3600u * 16000u * 2u;
    write_bytes(dir / "3h.wav", wav_bytes(1, 1, 16000, 16, "", bytes));
    std::filesystem::resize_file(dir / "3h.wav", 44 + static_cast<uintmax_t>(bytes));
    expect_error([&] { audio::decode_file(dir / "3h.wav"); }, {"3h.wav", "3.0 h long", "at most 2.0 h"});
    std::filesystem::remove(dir / "3h.wav");
  }
  // Too many channels; an absurd rate; a bad resampler name.
  audio::DecodeOptions two_ch;
  two_ch.max_channels = 2;
  expect_error([&] { audio::decode_file(clip("six_8k_s16.wav"), two_ch); }, {"at most 2 audio channels", "found 6"});
  write_bytes(dir / "rate.wav", wav_bytes(1, 1, 100, 16, pcm16_data(pcm)));
  expect_error([&] { audio::decode_file(dir / "rate.wav"); }, {"rate.wav", "sample rate", "found 100 Hz"});
  audio::DecodeOptions bad;
  bad.resampler = "fast";
  expect_error([&] { audio::decode_file(clip("speech_8k_s16.wav"), bad); }, {"\"sinc\" or \"soxr_hq\"", "fast"});
}

TEST(AudioDecode, CutMp3DecodesQuietlyWhenAsked) {
  std::string mp3 = read_bytes(clip("speech_44k.mp3"));
  const std::string half = mp3.substr(0, mp3.size() / 2);
  audio::DecodeOptions opt;
  opt.silence_codec_messages = true;
  testing::internal::CaptureStderr();
  audio::Audio a = audio::decode_memory(half.data(), half.size(), opt, "half.mp3");
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "");
  EXPECT_GT(a.samples.size(), 4000u);  // up to the cut (MP3 has no exact length)
  std::fprintf(stderr, "%s", "");      // stderr still usable afterwards
}

TEST(AudioDecode, SixChannelFloatIsAveraged) {
  TempDir dir;
  std::vector<float> inter(6 * 800);
  for (int i = 0; i < 800; ++i) {
    for (int c = 0; c < 6; ++c) inter[static_cast<size_t>(i * 6 + c)] = 0.1f * static_cast<float>(c);
  }
  write_bytes(dir / "six.wav", wav_bytes(3, 6, 16000, 32, float_data(inter)));
  audio::Audio a = audio::decode_file(dir / "six.wav");
  EXPECT_EQ(a.channels_in, 6);
  ASSERT_EQ(a.samples.size(), 800u);
  for (float v : a.samples) EXPECT_NEAR(v, 0.25f, 1e-6f);  // mean of 0, .1, ..., .5
}

// ---------------------------------------------------------------- fbank / LFR shape rules

TEST(AudioFbank, FrameCountsAndShortAudio) {
  audio::FrontendOptions opt;
  auto frames = [&](int n) {
    int64_t f = -1;
    audio::fbank(sine(n, 16000, 300, 0.3), opt, &f);
    return f;
  };
  EXPECT_EQ(frames(400), 1);
  EXPECT_EQ(frames(559), 1);
  EXPECT_EQ(frames(560), 2);
  EXPECT_EQ(frames(16000), 98);  // 1 + (16000 - 400) / 160
  EXPECT_EQ(frames(300), 1);     // shorter than a frame: one frame of the whole audio (WavFrontend)
  EXPECT_EQ(frames(2), 1);
  expect_error([&] { frames(1); }, {"at least 2 audio samples", "found 1"});
  opt.snip_edges = false;
  EXPECT_EQ(frames(16000), 100);  // (N + 80) / 160
  // Silence is log(FLT_EPSILON) everywhere.
  int64_t f = 0;
  std::vector<float> z = audio::fbank(std::vector<float>(1600, 0.0f), audio::FrontendOptions{}, &f);
  for (float v : z) EXPECT_FLOAT_EQ(v, std::log(std::numeric_limits<float>::epsilon()));
}

TEST(AudioLfr, ShapeAndPaddingRules) {
  for (int64_t t = 1; t <= 40; ++t) {
    std::vector<float> fb(static_cast<size_t>(t * 2));
    for (int64_t i = 0; i < t; ++i)
      fb[static_cast<size_t>(2 * i)] = fb[static_cast<size_t>(2 * i + 1)] = static_cast<float>(i);
    int64_t rows = 0;
    std::vector<float> out = audio::apply_lfr(fb, t, 7, 6, &rows);
    ASSERT_EQ(rows, (t + 5) / 6) << t;  // ceil(T / 6)
    ASSERT_EQ(out.size(), static_cast<size_t>(rows * 14));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < 7; ++j) {
        const float want = static_cast<float>(std::clamp<int64_t>(6 * r + j - 3, 0, t - 1));
        ASSERT_EQ(out[static_cast<size_t>(r * 14 + j * 2)], want) << "T=" << t << " row " << r << " j " << j;
      }
    }
  }
  int64_t rows = 0;
  std::vector<float> one = {1, 2, 3};
  EXPECT_EQ(audio::apply_lfr(one, 1, 1, 1, &rows), one);
  EXPECT_EQ(rows, 1);
  expect_error([&] { audio::apply_lfr(one, 0, 7, 6, &rows); }, {"at least one fbank frame"});
  expect_error([&] { audio::apply_lfr(one, 1, 0, 6, &rows); }, {"lfr_m >= 1"});
  // The front end's width and a CMVN vector of the wrong size.
  audio::FrontendOptions opt;
  std::vector<float> feats = audio::features(sine(16000, 16000, 440, 0.3), opt, &rows);
  EXPECT_EQ(rows, 17);  // ceil(98 / 6)
  EXPECT_EQ(feats.size(), static_cast<size_t>(17 * 560));
  opt.cmvn_means.assign(80, 0.0f);
  opt.cmvn_vars.assign(80, 1.0f);
  expect_error([&] { audio::features(sine(16000, 16000, 440, 0.3), opt, &rows); }, {"CMVN", "560", "80 means"});
}

// ---------------------------------------------------------------- segmentation

TEST(AudioSegment, CutsLongAudioAtQuietPoints) {
  const int rate = 16000;
  const double total = 75;
  std::mt19937 rng(3);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(total * rate));
  // "speech" everywhere except quiet gaps [start, start + 0.3 s) with their own level.
  struct Gap {
    double start, level;
  };
  const std::vector<Gap> gaps = {{12.4, 1e-3}, {24.7, 2e-3}, {27.1, 5e-4}, {41.3, 1e-3}, {55.2, 5e-4}, {63.0, 1e-3}};
  for (size_t i = 0; i < x.size(); ++i) {
    const double t = static_cast<double>(i) / rate;
    float level = 0.3f;
    for (const Gap& g : gaps) {
      if (t >= g.start && t < g.start + 0.3) level = static_cast<float>(g.level);
    }
    x[i] = level * noise(rng);
  }
  std::vector<audio::Segment> segs = audio::split_at_quiet(x, rate, 30.0);
  ASSERT_EQ(segs.size(), 3u);
  EXPECT_EQ(segs.front().begin, 0);
  EXPECT_EQ(segs.back().end, static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < segs.size(); ++i) {
    EXPECT_LE(segs[i].end - segs[i].begin, 30 * rate);
    EXPECT_NEAR(segs[i].end_seconds - segs[i].start_seconds, static_cast<double>(segs[i].end - segs[i].begin) / rate,
                1e-9);
    if (i > 0) {
      EXPECT_EQ(segs[i].begin, segs[i - 1].end);
    }
  }
  // The quietest gap before 30 s is at 27.1 s; before 27.1 + 30 s, the one at 55.2 s.
  EXPECT_GT(segs[0].end_seconds, 27.1);
  EXPECT_LT(segs[0].end_seconds, 27.4);
  EXPECT_GT(segs[1].end_seconds, 55.2);
  EXPECT_LT(segs[1].end_seconds, 55.5);

  // Short audio: one segment; empty: none; no quiet point: cut at the limit.
  EXPECT_EQ(audio::split_at_quiet(std::vector<float>(rate * 10, 0.1f), rate).size(), 1u);
  EXPECT_TRUE(audio::split_at_quiet({}, rate).empty());
  std::vector<audio::Segment> flat = audio::split_at_quiet(std::vector<float>(rate * 70, 0.1f), rate, 30.0);
  ASSERT_EQ(flat.size(), 3u);
  for (const auto& s : flat) EXPECT_LE(s.end - s.begin, 30 * rate);
  expect_error([&] { audio::split_at_quiet(x, 0, 30.0); }, {"segmentation", "positive sample rate"});
}

}  // namespace
}  // namespace kvrun
