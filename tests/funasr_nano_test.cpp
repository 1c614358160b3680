// FunASR-nano end to end against the original code's outputs (tests/fixtures/funasr-nano-tiny,
// written by tools/make_funasr_goldens.py with pip funasr 1.4.16): the published folder
// layout builds (both targets), verifies, and transcribes every clip and prompt variant to
// the reference's exact token ids and text.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "io/fs.h"
#include "io/safetensors.h"
#include "kvrun/asr.h"
#include "kvrun/build.h"
#include "kvrun/verify.h"
#include "test_util.h"

namespace {
namespace fs = std::filesystem;
using kvrun::test::fixture;
using kvrun::test::source_dir;
using nlohmann::json;

const json& goldens() {
  static const json g = kvrun::io::read_json_file(fixture("funasr-nano-tiny") / "goldens.json");
  return g;
}

// The fixture folder with the real Qwen3 tokenizer copied into Qwen3-0.6B/ (not committed).
const fs::path& model_folder() {
  static kvrun::test::TempDir tmp;
  static const fs::path dir = [] {
    const fs::path d = tmp / "Fun-ASR-Nano-tiny";
    fs::copy(fixture("funasr-nano-tiny"), d, fs::copy_options::recursive);
    const fs::path tok = source_dir() / ".deps" / "tokenizers" / "qwen3";
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      if (!fs::exists(tok / f))
        throw std::runtime_error("missing " + (tok / f).string() + ": run scripts/install-deps.sh");
      fs::copy_file(tok / f, d / "Qwen3-0.6B" / f);
    }
    return d;
  }();
  return dir;
}

// One package per target (precision), built once per test binary run.
const fs::path& package(const std::string& target, const std::string& precision = "fp32") {
  static std::mutex mu;
  static std::map<std::string, fs::path> built;
  static kvrun::test::TempDir tmp;
  std::lock_guard<std::mutex> lock(mu);
  const std::string key = target + "-" + precision;
  auto it = built.find(key);
  if (it != built.end()) return it->second;
  kvrun::BuildOptions o;
  o.checkpoint = model_folder();
  o.out = tmp / ("nano-" + key);
  o.target = target;
  o.precision = precision;
  kvrun::build_package(o);
  return built.emplace(key, o.out).first->second;
}

kvrun::TranscribeOptions options_of(const json& run) {
  kvrun::TranscribeOptions o;
  o.max_new_tokens = goldens().at("max_new_tokens").get<int64_t>();
  const json& kw = run.at("kwargs");
  if (kw.contains("language")) o.language = kw["language"].get<std::string>();
  if (kw.contains("itn")) o.itn = kw["itn"].get<bool>();
  if (kw.contains("hotwords")) o.hotwords = kw["hotwords"].get<std::vector<std::string>>();
  return o;
}

// The reference's generated ids without the stop id (kvrun returns it separately).
std::vector<kvrun::TokenId> expected_ids(const json& run) {
  std::vector<kvrun::TokenId> ids = run.at("generated_ids").get<std::vector<kvrun::TokenId>>();
  if (run.at("stopped_on_eos").get<bool>() && !ids.empty()) ids.pop_back();
  return ids;
}

std::vector<float> golden_tensor(const std::string& name, std::vector<int64_t>* shape = nullptr) {
  static const kvrun::io::TensorStore g(fixture("funasr-nano-tiny") / "goldens.safetensors");
  const auto& t = g.get(name);
  if (shape) *shape = t.shape;
  return t.to_f32();
}

TEST(FunAsrNano, AudioTokenCountIsTheReferenceRule) {
  for (const auto& [name, clip] : goldens().at("clips").items())
    EXPECT_EQ(kvrun::funasr_audio_token_count(clip.at("lfr_rows").get<int64_t>()), clip.at("N").get<int64_t>()) << name;
  // The rule's small cases (1 + (T-1)//2 three times): no audio row is ever dropped to zero.
  EXPECT_EQ(kvrun::funasr_audio_token_count(1), 1);
  EXPECT_EQ(kvrun::funasr_audio_token_count(8), 1);
  EXPECT_EQ(kvrun::funasr_audio_token_count(9), 2);
}

TEST(FunAsrNano, PostprocessAsTheReference) {
  for (const auto& run : goldens().at("runs"))
    EXPECT_EQ(kvrun::funasr_postprocess(run.at("decoded_raw").get<std::string>()), run.at("text").get<std::string>());
  EXPECT_EQ(kvrun::funasr_postprocess("a/silb \t\n c"), "a b c");
}

TEST(FunAsrNano, PackageRecordsTheSpeechSection) {
  const json m = kvrun::io::read_json_file(package("ort") / "kvrun.json");
  ASSERT_TRUE(m.contains("asr"));
  const json& asr = m["asr"];
  EXPECT_EQ(asr.at("encoder").at("file"), "encoder_adaptor.onnx");
  EXPECT_EQ(asr.at("stop_token_ids"), goldens().at("stop_ids"));
  const json& run0 = goldens().at("runs").at(0);
  EXPECT_EQ(asr.at("prompt").at("prefix_ids").at("default"), run0.at("prefix_ids"));
  EXPECT_EQ(asr.at("prompt").at("suffix_ids"), run0.at("suffix_ids"));
  EXPECT_EQ(asr.at("frontend").at("lfr_m"), 7);
  EXPECT_EQ(asr.at("frontend").at("lfr_n"), 6);
  EXPECT_TRUE(fs::exists(package("ort") / "encoder_adaptor.onnx"));
}

TEST(FunAsrNano, PromptIdsEqualTheReferenceForEveryVariant) {
  auto model = kvrun::SpeechModel::load(package("ort"));
  for (const auto& run : goldens().at("runs")) {
    const auto want = run.at("prompt_ids").get<std::vector<kvrun::TokenId>>();
    EXPECT_EQ(model->prompt_ids(run.at("N").get<int64_t>(), options_of(run)), want)
        << run.at("clip") << " " << run.at("variant");
  }
}

class FunAsrNanoTarget : public ::testing::TestWithParam<std::string> {};

TEST_P(FunAsrNanoTarget, EncoderAdaptorMatchesTheReference) {
  auto model = kvrun::SpeechModel::load(package(GetParam()));
  for (const auto& [name, clip] : goldens().at("clips").items()) {
    std::vector<int64_t> fshape, ashape;
    const std::vector<float> feats = golden_tensor(name + ".features", &fshape);
    const std::vector<float> want = golden_tensor(name + ".adaptor_out", &ashape);
    const std::vector<float> got = model->encode(feats, fshape[0]);
    ASSERT_EQ(got.size(), want.size()) << name;
    double max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      max_ref = std::max(max_ref, static_cast<double>(std::fabs(want[i])));
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - want[i])));
    }
    EXPECT_LE(max_diff, 1e-4 * max_ref) << name << ": max|out| " << max_ref;
  }
}

TEST_P(FunAsrNanoTarget, FeaturesMatchTheReference) {
  auto model = kvrun::SpeechModel::load(package(GetParam()));
  const json& clip = goldens().at("clips").at("kvrun_16k");
  std::vector<int64_t> shape;
  const std::vector<float> want = golden_tensor("kvrun_16k.features", &shape);
  const std::vector<float> samples = kvrun::audio::decode_file(fixture("funasr-nano-tiny") / "kvrun_16k.wav").samples;
  int64_t rows = 0;
  const std::vector<float> got = model->features(samples, &rows);
  ASSERT_EQ(rows, shape.at(0));
  ASSERT_EQ(got.size(), want.size());
  double max_diff = 0;
  for (size_t i = 0; i < got.size(); ++i)
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - want[i])));
  EXPECT_LE(max_diff, 1e-3);
  // The whole pipeline from the file feeds N rows.
  const auto t = model->transcribe_file(fixture("funasr-nano-tiny") / "kvrun_16k.wav", [] {
    kvrun::TranscribeOptions o;
    o.max_new_tokens = 1;
    return o;
  }());
  EXPECT_EQ(t.segments.size(), 1u);
  EXPECT_EQ(t.segments.at(0).audio_tokens, clip.at("N").get<int64_t>());
  EXPECT_EQ(shape.at(0), clip.at("lfr_rows").get<int64_t>());
}

TEST_P(FunAsrNanoTarget, TranscribesToTheReferenceIdsAndText) {
  auto model = kvrun::SpeechModel::load(package(GetParam()));
  for (const auto& run : goldens().at("runs")) {
    const std::string clip = run.at("clip").get<std::string>();
    const fs::path wav = fixture("funasr-nano-tiny") / goldens().at("clips").at(clip).at("file").get<std::string>();
    const kvrun::Transcript t = model->transcribe_file(wav, options_of(run));
    ASSERT_EQ(t.segments.size(), 1u) << clip;
    const auto& s = t.segments[0];
    EXPECT_EQ(s.audio_tokens, run.at("N").get<int64_t>()) << clip;
    EXPECT_EQ(s.ids, expected_ids(run)) << clip << " " << run.at("variant");
    EXPECT_EQ(t.text, run.at("text").get<std::string>()) << clip << " " << run.at("variant");
    EXPECT_EQ(s.finish_reason, run.at("stopped_on_eos").get<bool>() ? "stop" : "length");
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, FunAsrNanoTarget, ::testing::Values("ort", "portable"));

// The exports other tools make of the same weights (tests/fixtures/funasr-export, made by
// tools/make_funasr_export_fixtures.py after the sherpa-onnx export scripts): the whole
// pipeline from the audio file gives the reference's ids on both layouts.
class FunAsrNanoExport : public ::testing::TestWithParam<std::string> {};

TEST_P(FunAsrNanoExport, TranscribesToTheReferenceIds) {
  kvrun::test::TempDir tmp;
  const fs::path d = tmp / GetParam();
  fs::copy(fixture("funasr-export") / GetParam(), d, fs::copy_options::recursive);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(model_folder() / "Qwen3-0.6B" / f, d / "Qwen3-0.6B" / f);
  auto model = kvrun::SpeechModel::load(d);
  EXPECT_EQ(model->info().layout, GetParam() == "sherpa" ? "sherpa-onnx" : "split");
  EXPECT_EQ(model->info().lfr_m, 7);
  EXPECT_EQ(model->info().lfr_n, 6);
  for (const auto& run : goldens().at("runs")) {
    const std::string clip = run.at("clip").get<std::string>();
    const fs::path wav = fixture("funasr-nano-tiny") / goldens().at("clips").at(clip).at("file").get<std::string>();
    const kvrun::Transcript t = model->transcribe_file(wav, options_of(run));
    ASSERT_EQ(t.segments.size(), 1u) << clip;
    EXPECT_EQ(t.segments[0].audio_tokens, run.at("N").get<int64_t>()) << clip;
    EXPECT_EQ(t.segments[0].ids, expected_ids(run)) << clip << " " << run.at("variant");
    EXPECT_EQ(t.text, run.at("text").get<std::string>()) << clip << " " << run.at("variant");
  }
  // The CLI on the export folder.
  const auto r =
      kvrun::test::run_cli({"transcribe", d.string(), (fixture("funasr-nano-tiny") / "hello_16k.wav").string(),
                            "--print-ids", "--max-new-tokens", "24"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find(json(expected_ids(goldens().at("runs").at(0))).dump()), std::string::npos) << r.out;
}

INSTANTIATE_TEST_SUITE_P(Layouts, FunAsrNanoExport, ::testing::Values("sherpa", "split"));

TEST(FunAsrNano, VerifyChecksTheEncoderAndTheLlm) {
  kvrun::VerifyOptions vo;
  vo.package = package("ort");
  const kvrun::VerifyReport r = kvrun::verify_package(vo);
  EXPECT_TRUE(r.passed) << r.to_text();
  bool encoder = false;
  for (const auto& c : r.checks)
    if (c.name == "encoder-adaptor") {
      encoder = true;
      EXPECT_TRUE(c.passed) << c.detail;
      EXPECT_GT(c.tolerance, 0.0);
    }
  EXPECT_TRUE(encoder) << r.to_text();
}

TEST(FunAsrNano, QuantizedPackagesTranscribe) {
  for (const std::string precision : {"int8", "int4"}) {
    const fs::path pkg = package("ort", precision);
    const json m = kvrun::io::read_json_file(pkg / "kvrun.json");
    EXPECT_EQ(m.at("asr").at("encoder").at("precision"), "int8");  // int4 packages keep an int8 encoder
    EXPECT_EQ(m.at("precision"), precision);
    auto model = kvrun::SpeechModel::load(pkg);
    kvrun::TranscribeOptions o;
    o.max_new_tokens = 8;
    const auto t = model->transcribe_file(fixture("funasr-nano-tiny") / "hello_16k.wav", o);
    ASSERT_EQ(t.segments.size(), 1u);
    EXPECT_EQ(t.segments[0].audio_tokens, 6);
    EXPECT_FALSE(t.segments[0].ids.empty());
  }
}

TEST(FunAsrNano, BatchOfFilesEqualsOneByOne) {
  auto model = kvrun::SpeechModel::load(package("ort"));
  std::vector<fs::path> files;
  std::vector<std::vector<kvrun::TokenId>> want;
  for (const auto& run : goldens().at("runs"))
    if (run.at("variant") == "default") {
      files.push_back(fixture("funasr-nano-tiny") /
                      goldens().at("clips").at(run.at("clip").get<std::string>()).at("file").get<std::string>());
      want.push_back(expected_ids(run));
    }
  kvrun::TranscribeOptions o;
  o.max_new_tokens = goldens().at("max_new_tokens").get<int64_t>();
  const auto ts = model->transcribe_files(files, o);
  ASSERT_EQ(ts.size(), files.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    ASSERT_EQ(ts[i].segments.size(), 1u);
    EXPECT_EQ(ts[i].segments[0].ids, want[i]) << files[i];
    EXPECT_GT(ts[i].stats.audio_seconds, 1.0);
  }
}

TEST(FunAsrNano, LongAudioIsCutIntoSegments) {
  auto model = kvrun::SpeechModel::load(package("ort"));
  // 70 s: the 7 s clip ten times with 0.3 s pauses -> at least three segments of at most 30 s.
  const std::vector<float> clip = kvrun::audio::decode_file(fixture("funasr-nano-tiny") / "fox_16k.wav").samples;
  std::vector<float> samples;
  for (int k = 0; k < 10; ++k) {
    samples.insert(samples.end(), clip.begin(), clip.end());
    samples.insert(samples.end(), 4800, 0.0f);
  }
  kvrun::TranscribeOptions o;
  o.max_new_tokens = 2;
  const auto t = model->transcribe_samples(samples, o);
  ASSERT_GE(t.segments.size(), 3u);
  double covered = 0;
  for (const auto& s : t.segments) {
    EXPECT_LE(s.end - s.start, 30.0 + 1e-9);
    covered += s.end - s.start;
  }
  EXPECT_NEAR(covered, static_cast<double>(samples.size()) / 16000.0, 1e-6);
}

TEST(FunAsrNano, CliTranscribesAndRefusesBadInput) {
  const std::string pkg = package("ort").string();
  const fs::path wav = fixture("funasr-nano-tiny") / "hello_16k.wav";
  auto r = kvrun::test::run_cli({"transcribe", pkg, wav.string(), "--print-ids", "--max-new-tokens", "24"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  const json& run0 = goldens().at("runs").at(0);
  EXPECT_NE(r.out.find(json(expected_ids(run0)).dump()), std::string::npos) << r.out;

  r = kvrun::test::run_cli({"transcribe", pkg, wav.string(), "--json", "--stats", "--max-new-tokens", "4"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  const json j = json::parse(r.out.substr(0, r.out.find('\n')));
  EXPECT_TRUE(j.at("stats").at("real_time_factor").get<double>() > 0);
  EXPECT_EQ(j.at("segments").size(), 1u);

  kvrun::test::TempDir tmp;
  std::ofstream(tmp / "bad.wav") << "RIFF\x10\0\0\0WAVEfmt garbage";
  r = kvrun::test::run_cli({"transcribe", pkg, (tmp / "bad.wav").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("bad.wav"), std::string::npos) << r.out;
  {  // 1 s of digital silence, 16-bit mono 16 kHz
    std::ofstream f(tmp / "silent.wav", std::ios::binary);
    auto u32 = [&](uint32_t v) { f.write(reinterpret_cast<const char*>(&v), 4); };
    auto u16 = [&](uint16_t v) { f.write(reinterpret_cast<const char*>(&v), 2); };
    f << "RIFF";
    u32(36 + 32000);
    f << "WAVEfmt ";
    u32(16), u16(1), u16(1), u32(16000), u32(32000), u16(2), u16(16);
    f << "data";
    u32(32000);
    const std::string zeros(32000, '\0');
    f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  }
  r = kvrun::test::run_cli({"transcribe", pkg, (tmp / "silent.wav").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("silence"), std::string::npos) << r.out;
  std::ofstream(tmp / "empty.wav").close();
  r = kvrun::test::run_cli({"transcribe", pkg, (tmp / "empty.wav").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;

  // A text package is not a speech model.
  r = kvrun::test::run_cli(
      {"transcribe", kvrun::test::built_package("qwen3-tiny", "ort", "fp32").string(), wav.string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("asr"), std::string::npos) << r.out;
  r = kvrun::test::run_cli({"transcribe", tmp.path().string(), wav.string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("encoder_adaptor.onnx"), std::string::npos) << r.out;
}

TEST(FunAsrNano, BuildRefusesIncompleteFolders) {
  kvrun::test::TempDir tmp;
  const fs::path d = tmp / "nano";
  fs::copy(model_folder(), d, fs::copy_options::recursive);
  fs::remove_all(d / "Qwen3-0.6B");
  kvrun::BuildOptions o;
  o.checkpoint = d;
  o.out = tmp / "pkg";
  kvrun::test::expect_error([&] { kvrun::build_package(o); }, {"Qwen3-0.6B", "config.json"});
  EXPECT_FALSE(fs::exists(tmp / "pkg"));
}

}  // namespace
