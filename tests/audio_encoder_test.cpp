// FunASR-nano audio encoder + adaptor: config from shapes, the encoder_adaptor graph
// (targets ort and portable, fp32 / int8 / int4) against the C++ reference on tiny random
// checkpoints written at test time.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "arch/sensevoice_encoder.h"
#include "graph/onnx_model.h"
#include "io/safetensors.h"
#include "io/yaml_config.h"
#include "kvrun/error.h"
#include "reference/audio_encoder_ref.h"
#include "runtime/ort_session.h"
#include "test_util.h"

namespace kvrun {
namespace {

using arch::AudioEncoderConfig;
using arch::Target;
using nlohmann::json;
using test::expect_error;

struct TinyDims {
  int64_t input = 64, d = 32, heads = 4, ffn = 48, blocks = 3, tp = 2, kernel = 5;
  int64_t k = 1, adaptor_ffn = 40, llm = 16, adaptor_heads = 2, layers = 2;
  float out_gain = 1.0f;  // scales linear2, to reach the real adaptor's large outputs
};

// A random checkpoint with FunASR-nano's tensor names (funasr's module layout).
class TinyCheckpoint {
 public:
  TinyCheckpoint(const std::filesystem::path& file, const TinyDims& dm, uint32_t seed) : rng_(seed) {
    const int64_t d = dm.d;
    for (int64_t i = 0; i < dm.blocks + dm.tp; ++i) {
      const std::string M = "audio_encoder." + (i == 0          ? std::string("encoders0.0")
                                                : i < dm.blocks ? "encoders." + std::to_string(i - 1)
                                                                : "tp_encoders." + std::to_string(i - dm.blocks));
      const int64_t in = i == 0 ? dm.input : d;
      linear(M + ".self_attn.linear_q_k_v", in, 3 * d);
      linear(M + ".self_attn.linear_out", d, d);
      add(M + ".self_attn.fsmn_block.weight", {d, 1, dm.kernel}, 0.3f);
      linear(M + ".feed_forward.w_1", d, dm.ffn);
      linear(M + ".feed_forward.w_2", dm.ffn, d);
      norm(M + ".norm1", in);
      norm(M + ".norm2", d);
    }
    norm("audio_encoder.after_norm", d);
    norm("audio_encoder.tp_norm", d);
    linear("audio_adaptor.linear1", d * dm.k, dm.adaptor_ffn);
    linear("audio_adaptor.linear2", dm.adaptor_ffn, dm.llm, dm.out_gain);
    for (int64_t b = 0; b < dm.layers; ++b) {
      const std::string M = "audio_adaptor.blocks." + std::to_string(b);
      for (const char* l : {"q", "k", "v", "out"}) linear(M + ".self_attn.linear_" + l, dm.llm, dm.llm);
      linear(M + ".feed_forward.w_1", dm.llm, dm.llm / 4);
      linear(M + ".feed_forward.w_2", dm.llm / 4, dm.llm);
      norm(M + ".norm1", dm.llm);
      norm(M + ".norm2", dm.llm);
    }
    std::vector<io::TensorToWrite> w;
    for (const auto& t : tensors_) w.push_back({t.name, io::DType::F32, t.shape, t.data.data()});
    io::write_safetensors(file, w);
  }

 private:
  struct T {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> data;
  };
  void add(const std::string& name, std::vector<int64_t> shape, float scale, float offset = 0.0f) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = offset + scale * nd(rng_);
    tensors_.push_back({name, std::move(shape), std::move(v)});
  }
  void linear(const std::string& m, int64_t in, int64_t out, float gain = 1.0f) {
    add(m + ".weight", {out, in}, gain / std::sqrt(static_cast<float>(in)));
    add(m + ".bias", {out}, 0.1f * gain);
  }
  void norm(const std::string& m, int64_t dim) {
    add(m + ".weight", {dim}, 0.1f, 1.0f);
    add(m + ".bias", {dim}, 0.1f);
  }
  std::mt19937 rng_;
  std::vector<T> tensors_;
};

json tiny_yaml(const TinyDims& dm, int64_t shift = 0) {
  return json{{"input_size", dm.input},
              {"audio_encoder_conf",
               {{"output_size", dm.d},
                {"attention_heads", dm.heads},
                {"linear_units", dm.ffn},
                {"num_blocks", dm.blocks},
                {"tp_blocks", dm.tp},
                {"kernel_size", dm.kernel},
                {"sanm_shfit", shift},
                {"normalize_before", true}}},
              {"audio_adaptor_conf",
               {{"downsample_rate", dm.k},
                {"ffn_dim", dm.adaptor_ffn},
                {"n_layer", dm.layers},
                {"attention_heads", dm.adaptor_heads}}}};
}

std::vector<float> random_feats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = nd(rng);
  return v;
}

// Runs encoder_adaptor.onnx on a batch of utterances of the same length.
// With `lengths` (graphs built with speech_lengths), `out_lengths` receives encoder_out_lengths.
std::vector<float> run_graph(runtime::Session& s, const std::vector<float>& feats, int64_t batch, int64_t T,
                             int64_t input, std::vector<int64_t>* shape = nullptr,
                             const std::vector<int64_t>& lengths = {}, std::vector<int64_t>* out_lengths = nullptr) {
  auto x = runtime::HostTensor::from_f32(feats, {batch, T, input});
  auto l = runtime::HostTensor::from_i64(lengths, {static_cast<int64_t>(lengths.size())});
  std::vector<Ort::Value> in;
  in.push_back(x.view());
  std::vector<std::string> names = {"speech"}, outs = {"encoder_out"};
  if (!lengths.empty()) {
    in.push_back(l.view());
    names.push_back("speech_lengths");
    outs.push_back("encoder_out_lengths");
  }
  auto out = s.run(names, in, outs);
  if (shape) *shape = runtime::shape_of(out[0]);
  if (out_lengths) {
    const int64_t* p = out[1].GetTensorData<int64_t>();
    out_lengths->assign(p, p + runtime::shape_of(out[1])[0]);
  }
  return runtime::to_f32(out[0]);
}

struct Diff {
  double max_abs = 0, max_ref = 0, rms_rel = 0;
};
Diff compare(const std::vector<float>& got, const std::vector<float>& ref) {
  Diff d;
  double se = 0, sr = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = static_cast<double>(got[i]) - ref[i];
    d.max_abs = std::max(d.max_abs, std::fabs(e));
    d.max_ref = std::max(d.max_ref, std::fabs(static_cast<double>(ref[i])));
    se += e * e;
    sr += static_cast<double>(ref[i]) * ref[i];
  }
  d.rms_rel = std::sqrt(se / std::max(sr, 1e-30));
  return d;
}

// Each row of a padded batch (graph with speech_lengths) against the reference run on that
// row's valid frames alone.
void expect_padded_batch(runtime::Session& s, const reference::AudioEncoderRef& ref,
                         const std::vector<int64_t>& lengths, uint32_t seed, const std::string& what) {
  const auto& c = ref.config();
  const int64_t batch = static_cast<int64_t>(lengths.size());
  const int64_t T = *std::max_element(lengths.begin(), lengths.end());
  const auto feats = random_feats(batch * T * c.input_size, seed);  // padding holds random values too
  std::vector<int64_t> shape, out_lengths;
  const auto got = run_graph(s, feats, batch, T, c.input_size, &shape, lengths, &out_lengths);
  const int64_t N = c.output_frames(T);
  ASSERT_EQ(shape, (std::vector<int64_t>{batch, N, c.llm_dim})) << what;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n = c.output_frames(lengths[static_cast<size_t>(b)]);
    EXPECT_EQ(out_lengths[static_cast<size_t>(b)], n) << what;
    const auto want = ref.forward(feats.data() + b * T * c.input_size, lengths[static_cast<size_t>(b)]);
    const std::vector<float> row(got.begin() + b * N * c.llm_dim, got.begin() + (b * N + n) * c.llm_dim);
    const Diff d = compare(row, want);
    EXPECT_LE(d.max_abs, 1e-4 * d.max_ref) << what << " row " << b << " length " << lengths[static_cast<size_t>(b)];
  }
}

// Reference output for each row of a batch.
std::vector<float> ref_batch(const reference::AudioEncoderRef& ref, const std::vector<float>& feats, int64_t batch,
                             int64_t T) {
  std::vector<float> out;
  const int64_t in = ref.config().input_size;
  for (int64_t b = 0; b < batch; ++b) {
    auto r = ref.forward(feats.data() + b * T * in, T);
    out.insert(out.end(), r.begin(), r.end());
  }
  return out;
}

TEST(AudioEncoderConfig, DimensionsFromShapesAndYaml) {
  test::TempDir dir;
  TinyDims dm;
  TinyCheckpoint(dir / "model.safetensors", dm, 1);
  io::TensorStore store(dir / "model.safetensors");
  // no yaml: heads and shift at their defaults (encoder 4, adaptor 8 -> does not divide 16? it does)
  AudioEncoderConfig c = AudioEncoderConfig::from(store, json());
  EXPECT_EQ(c.input_size, 64);
  EXPECT_EQ(c.d_model, 32);
  EXPECT_EQ(c.heads, 4);
  EXPECT_EQ(c.ffn, 48);
  EXPECT_EQ(c.blocks, 3);
  EXPECT_EQ(c.tp_blocks, 2);
  EXPECT_EQ(c.kernel, 5);
  EXPECT_EQ(c.sanm_shift, 0);
  EXPECT_EQ(c.downsample, 1);
  EXPECT_EQ(c.adaptor_ffn, 40);
  EXPECT_EQ(c.llm_dim, 16);
  EXPECT_EQ(c.adaptor_heads, 8);
  EXPECT_EQ(c.adaptor_layers, 2);
  EXPECT_EQ(c.adaptor_block_ffn, 4);
  EXPECT_DOUBLE_EQ(c.enc_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.adaptor_eps, 1e-12);
  c = AudioEncoderConfig::from(store, tiny_yaml(dm, 1));
  EXPECT_EQ(c.adaptor_heads, 2);
  EXPECT_EQ(c.sanm_shift, 1);
  // to_json / from_json round trip
  const AudioEncoderConfig back = AudioEncoderConfig::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());

  json bad = tiny_yaml(dm);
  bad["audio_encoder_conf"]["num_blocks"] = 50;
  expect_error([&] { AudioEncoderConfig::from(store, bad); }, {"num_blocks", "50", "3"});
  bad = tiny_yaml(dm);
  bad["audio_encoder_conf"]["attention_heads"] = 5;
  expect_error([&] { AudioEncoderConfig::from(store, bad); }, {"attention_heads", "32", "5"});
  bad = tiny_yaml(dm);
  bad["audio_encoder_conf"]["concat_after"] = true;
  expect_error([&] { AudioEncoderConfig::from(store, bad); }, {"concat_after", "false", "true"});
  bad = tiny_yaml(dm);
  bad["audio_adaptor_conf"]["n_layer"] = "two";
  expect_error([&] { AudioEncoderConfig::from(store, bad); }, {"n_layer", "integer", "two"});
}

TEST(AudioEncoderConfig, RefusesMissingOrMisshapenTensors) {
  test::TempDir dir;
  TinyDims dm;
  TinyCheckpoint(dir / "model.safetensors", dm, 2);
  io::TensorStore store(dir / "model.safetensors");
  expect_error([&] { AudioEncoderConfig::from(store, json(), "encoder."); },
               {"encoder.encoders0.0.self_attn.linear_q_k_v.weight", "no such tensor"});
  // a checkpoint whose tp_norm has the wrong width
  {
    io::TensorStore full(dir / "model.safetensors");
    std::vector<io::TensorToWrite> w;
    std::vector<std::vector<float>> keep;
    for (const auto& n : full.names()) {
      const auto& v = full.get(n);
      keep.push_back(v.to_f32());
      std::vector<int64_t> shape = v.shape;
      if (n == "audio_encoder.tp_norm.weight") {
        shape = {31};
        keep.back().resize(31);
      }
      w.push_back({n, io::DType::F32, shape, keep.back().data()});
    }
    io::write_safetensors(dir / "bad.safetensors", w);
  }
  io::TensorStore bad(dir / "bad.safetensors");
  expect_error([&] { AudioEncoderConfig::from(bad, json()); }, {"audio_encoder.tp_norm.weight", "[32]", "[31]"});
}

class AudioEncoderGraph : public ::testing::TestWithParam<std::string> {};

TEST_P(AudioEncoderGraph, MatchesReferenceAtAnyLength) {
  const Target target = GetParam() == "ort" ? Target::Ort : Target::Portable;
  test::TempDir dir;
  TinyDims dm;
  dm.out_gain = 60.0f;  // adaptor outputs of a few hundred, as the real model's
  TinyCheckpoint(dir / "model.safetensors", dm, 3);
  io::TensorStore store(dir / "model.safetensors");
  const AudioEncoderConfig cfg = AudioEncoderConfig::from(store, tiny_yaml(dm));
  int64_t ticks = 0, last_total = 0;
  const arch::GraphSignature sig = arch::build_audio_encoder(
      cfg, store, dir / "encoder_adaptor.onnx", target,
      [&](const std::string& stage, int64_t, int64_t total) {
        EXPECT_EQ(stage, "audio encoder");
        ++ticks;
        last_total = total;
      },
      /*lengths_input=*/false);
  EXPECT_EQ(sig.inputs, std::vector<std::string>{"speech"});
  EXPECT_EQ(sig.outputs, std::vector<std::string>{"encoder_out"});
  EXPECT_EQ(ticks, last_total);
  EXPECT_TRUE(std::filesystem::exists(dir / "encoder_adaptor.onnx.data"));
  // node names tell where they came from; the portable graph uses the default domain only
  auto m = graph::OnnxModel::load(dir / "encoder_adaptor.onnx");
  std::set<std::string> names, domains;
  for (const auto& n : m->proto().graph().node()) {
    names.insert(n.name());
    domains.insert(n.domain());
  }
  EXPECT_TRUE(names.count("/audio_encoder/encoders.1/self_attn/fsmn/Conv"));
  EXPECT_TRUE(names.count("/audio_encoder/tp_encoders.1/feed_forward/w_2/MatMul"));
  EXPECT_TRUE(names.count("/audio_adaptor/blocks.1/self_attn/linear_qkv/MatMul"));
  if (target == Target::Portable) {
    EXPECT_EQ(domains, std::set<std::string>{""});
  } else {
    EXPECT_TRUE(names.count("/audio_encoder/encoders.0/self_attn/MultiHeadAttention"));
    EXPECT_TRUE(names.count("/audio_encoder/encoders.1/norm1/SkipLayerNormalization"));
  }

  reference::AudioEncoderRef ref(cfg, store);
  runtime::Session s(dir / "encoder_adaptor.onnx");
  for (int64_t T : {1, 7, 50}) {
    const int64_t batch = T == 7 ? 3 : 1;
    const auto feats = random_feats(batch * T * dm.input, static_cast<uint32_t>(T));
    std::vector<int64_t> shape;
    const auto got = run_graph(s, feats, batch, T, dm.input, &shape);
    EXPECT_EQ(shape, (std::vector<int64_t>{batch, T, dm.llm}));
    const auto want = ref_batch(ref, feats, batch, T);
    ASSERT_EQ(got.size(), want.size());
    const Diff d = compare(got, want);
    EXPECT_LE(d.max_abs, 1e-4 * d.max_ref) << GetParam() << " T=" << T << " max|ref| " << d.max_ref;
    if (T == 50) {
      EXPECT_GT(d.max_ref, 100.0);
    }
    std::printf("[ encoder  ] %s fp32 T=%lld batch=%lld: max|diff| %.3g, max|out| %.4g (ratio %.2g)\n",
                GetParam().c_str(), static_cast<long long>(T), static_cast<long long>(batch), d.max_abs, d.max_ref,
                d.max_abs / d.max_ref);
  }

  // weight-only quantization: runs and stays close to the fp32 reference
  std::vector<std::string> precisions = {"int8", "int8-weight-only"};
  if (target == Target::Ort) precisions.push_back("int4");
  const int64_t T = 50;
  const auto feats = random_feats(T * dm.input, 99);
  const auto want = ref.forward(feats.data(), T);
  for (const auto& p : precisions) {
    const auto q = dir / ("encoder_adaptor." + p + ".onnx");
    graph::QuantizeOptions used;
    const auto rep = arch::quantize_audio_encoder(dir / "encoder_adaptor.onnx", q, p, target, {}, &used);
    EXPECT_EQ(rep.quantized, 4 * (dm.blocks + dm.tp) + 2 + 4 * dm.layers) << p;  // every linear
    for (const auto& sk : rep.skipped)  // only the portable attention's activation x activation MatMuls
      EXPECT_TRUE(sk.node.ends_with("/QK/MatMul") || sk.node.ends_with("/PV/MatMul")) << sk.node;
    runtime::Session qs(q);
    const Diff d = compare(run_graph(qs, feats, 1, T, dm.input), want);
    std::printf("[ encoder  ] %s %s (%s) T=%lld: RMS relative error %.4f, max|diff| %.3g of max|out| %.4g\n",
                GetParam().c_str(), p.c_str(), used.mode.c_str(), static_cast<long long>(T), d.rms_rel, d.max_abs,
                d.max_ref);
    EXPECT_LT(d.rms_rel, p == "int4" ? 0.3 : 0.08) << p;
  }
  if (target == Target::Portable)
    expect_error([&] { arch::quantize_audio_encoder(dir / "encoder_adaptor.onnx", dir / "x.onnx", "int4", target); },
                 {"int4", "MatMulNBits"});
  expect_error([&] { arch::quantize_audio_encoder(dir / "encoder_adaptor.onnx", dir / "x.onnx", "fp8", target); },
               {"int8, int8-weight-only or int4", "fp8"});
}

TEST_P(AudioEncoderGraph, PaddedBatchMatchesEachRowAlone) {
  const Target target = GetParam() == "ort" ? Target::Ort : Target::Portable;
  test::TempDir dir;
  TinyDims dm;
  dm.out_gain = 60.0f;
  TinyCheckpoint(dir / "model.safetensors", dm, 6);
  io::TensorStore store(dir / "model.safetensors");
  const AudioEncoderConfig cfg = AudioEncoderConfig::from(store, tiny_yaml(dm));
  const auto sig = arch::build_audio_encoder(cfg, store, dir / "e.onnx", target, {}, /*lengths_input=*/true);
  EXPECT_EQ(sig.inputs, (std::vector<std::string>{"speech", "speech_lengths"}));
  EXPECT_EQ(sig.outputs, (std::vector<std::string>{"encoder_out", "encoder_out_lengths"}));
  reference::AudioEncoderRef ref(cfg, store);
  runtime::Session s(dir / "e.onnx");
  expect_padded_batch(s, ref, {40, 17, 1, 40, 3}, 11, GetParam());
  expect_padded_batch(s, ref, {6}, 12, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Targets, AudioEncoderGraph, ::testing::Values("ort", "portable"));

// Frame stacking in the adaptor (downsample_rate 2, odd length padded) and a shifted FSMN window.
TEST(AudioEncoderGraphVariants, DownsampleAndShift) {
  test::TempDir dir;
  TinyDims dm;
  dm.k = 2;
  dm.tp = 0;
  dm.layers = 1;
  TinyCheckpoint(dir / "model.safetensors", dm, 4);
  io::TensorStore store(dir / "model.safetensors");
  const AudioEncoderConfig cfg = AudioEncoderConfig::from(store, tiny_yaml(dm, 2));
  EXPECT_EQ(cfg.downsample, 2);
  EXPECT_EQ(cfg.sanm_shift, 2);
  reference::AudioEncoderRef ref(cfg, store);
  for (const Target target : {Target::Ort, Target::Portable}) {
    arch::build_audio_encoder(cfg, store, dir / "e.onnx", target);
    arch::build_audio_encoder(cfg, store, dir / "padded.onnx", target, {}, /*lengths_input=*/true);
    runtime::Session padded(dir / "padded.onnx");
    expect_padded_batch(padded, ref, {9, 2, 1, 8, 5}, 13, "downsample 2");
    runtime::Session s(dir / "e.onnx");
    for (int64_t T : {1, 2, 9}) {
      const auto feats = random_feats(T * dm.input, static_cast<uint32_t>(100 + T));
      std::vector<int64_t> shape;
      const auto got = run_graph(s, feats, 1, T, dm.input, &shape);
      EXPECT_EQ(shape, (std::vector<int64_t>{1, (T + 1) / 2, dm.llm}));
      const auto want = ref.forward(feats.data(), T);
      ASSERT_EQ(got.size(), want.size());
      const Diff d = compare(got, want);
      EXPECT_LE(d.max_abs, 1e-4 * d.max_ref) << "T=" << T;
    }
  }
  // no adaptor blocks at all
  TinyDims none;
  none.layers = 0;
  TinyCheckpoint(dir / "none.safetensors", none, 5);
  io::TensorStore st(dir / "none.safetensors");
  const AudioEncoderConfig c0 = AudioEncoderConfig::from(st, json());
  EXPECT_EQ(c0.adaptor_layers, 0);
  arch::build_audio_encoder(c0, st, dir / "n.onnx", Target::Ort);
  runtime::Session s(dir / "n.onnx");
  const auto feats = random_feats(5 * none.input, 7);
  const Diff d =
      compare(run_graph(s, feats, 1, 5, none.input), reference::AudioEncoderRef(c0, st).forward(feats.data(), 5));
  EXPECT_LE(d.max_abs, 1e-4 * d.max_ref);
  // quantized in place (src == dst), as the package builder does
  arch::quantize_audio_encoder(dir / "n.onnx", dir / "n.onnx", "int8", Target::Ort);
  runtime::Session q(dir / "n.onnx");
  const Diff dq = compare(run_graph(q, feats, 1, 5, none.input), run_graph(s, feats, 1, 5, none.input));
  EXPECT_LT(dq.rms_rel, 0.08);
  EXPECT_GT(dq.max_abs, 0.0);  // really quantized
}

// funasr's own outputs (tests/fixtures/funasr-nano-tiny, tools/make_funasr_goldens.py): the
// LFR features of each clip through SenseVoiceEncoderSmall + the adaptor, bf16 weights from
// model.pt, against what funasr 1.4.16 computed: the reference and both graphs, fp32,
// within 1e-4 x max|output|; a padded batch of all clips too.
void expect_funasr_goldens(const io::TensorStore& store, const json& yaml, const std::filesystem::path& goldens,
                           const std::string& enc_prefix = "audio_encoder.",
                           const std::string& adp_prefix = "audio_adaptor.") {
  const AudioEncoderConfig cfg = AudioEncoderConfig::from(store, yaml, enc_prefix, adp_prefix);
  EXPECT_EQ(cfg.heads, 4);
  EXPECT_EQ(cfg.adaptor_heads, 2);
  EXPECT_EQ(cfg.blocks, 3);
  EXPECT_EQ(cfg.tp_blocks, 2);
  EXPECT_EQ(cfg.kernel, 11);
  EXPECT_EQ(cfg.adaptor_block_ffn, cfg.llm_dim / 4);
  io::TensorStore g(goldens);
  reference::AudioEncoderRef ref(cfg, store);
  test::TempDir dir;
  std::vector<std::unique_ptr<runtime::Session>> sessions;
  for (const Target t : {Target::Ort, Target::Portable}) {
    const auto path = dir / (t == Target::Ort ? "ort.onnx" : "portable.onnx");
    arch::build_audio_encoder(cfg, store, path, t, {}, /*lengths_input=*/true);
    sessions.push_back(std::make_unique<runtime::Session>(path));
  }
  const std::vector<std::string> clips = {"hello_16k", "kvrun_16k", "fox_16k", "stereo_16k", "call_8k"};
  std::vector<std::vector<float>> feats;
  std::vector<int64_t> lengths;
  for (const auto& clip : clips) {
    const io::TensorView& f = g.get(clip + ".features");
    const int64_t T = f.shape[0];
    ASSERT_EQ(f.shape, (std::vector<int64_t>{T, cfg.input_size})) << clip;
    feats.push_back(f.to_f32());
    lengths.push_back(T);
    const auto enc_want = g.get(clip + ".encoder_out").to_f32();
    const auto want = g.get(clip + ".adaptor_out").to_f32();
    const Diff de = compare(ref.encode(feats.back().data(), T), enc_want);
    EXPECT_LE(de.max_abs, 1e-4 * de.max_ref) << clip << " encoder";
    const Diff d = compare(ref.forward(feats.back().data(), T), want);
    EXPECT_LE(d.max_abs, 1e-4 * d.max_ref) << clip << " reference";
    std::printf("[ encoder  ] %s T=%lld: reference vs funasr max|diff| %.3g (encoder %.3g), max|out| %.4g\n",
                clip.c_str(), static_cast<long long>(T), d.max_abs, de.max_abs, d.max_ref);
    for (size_t i = 0; i < sessions.size(); ++i) {
      const Diff dg = compare(run_graph(*sessions[i], feats.back(), 1, T, cfg.input_size, nullptr, {T}), want);
      EXPECT_LE(dg.max_abs, 1e-4 * dg.max_ref) << clip << (i == 0 ? " ort" : " portable");
    }
  }
  // all clips in one padded batch
  const int64_t Tmax = *std::max_element(lengths.begin(), lengths.end());
  std::vector<float> batch(clips.size() * static_cast<size_t>(Tmax * cfg.input_size), 0.0f);
  for (size_t b = 0; b < clips.size(); ++b)
    std::copy(feats[b].begin(), feats[b].end(), batch.begin() + b * Tmax * cfg.input_size);
  for (size_t i = 0; i < sessions.size(); ++i) {
    std::vector<int64_t> shape, out_lengths;
    const auto got = run_graph(*sessions[i], batch, static_cast<int64_t>(clips.size()), Tmax, cfg.input_size, &shape,
                               lengths, &out_lengths);
    EXPECT_EQ(out_lengths, lengths);
    for (size_t b = 0; b < clips.size(); ++b) {
      const auto want = g.get(clips[b] + ".adaptor_out").to_f32();
      const std::vector<float> row(
          got.begin() + static_cast<int64_t>(b) * Tmax * cfg.llm_dim,
          got.begin() + static_cast<int64_t>(b) * Tmax * cfg.llm_dim + static_cast<int64_t>(want.size()));
      const Diff d = compare(row, want);
      EXPECT_LE(d.max_abs, 1e-4 * d.max_ref) << clips[b] << (i == 0 ? " ort" : " portable") << " in a padded batch";
    }
  }
}

TEST(AudioEncoderFunasr, MatchesFunasrOutputs) {
  const auto dir = test::fixture("funasr-nano-tiny");
  io::TensorStore store(dir / "model.pt");
  expect_funasr_goldens(store, io::read_yaml_file(dir / "config.yaml"), dir / "goldens.safetensors");
  // the same through a prefix view (as the package builder may pass it)
  expect_funasr_goldens(store.sub("audio_"), io::read_yaml_file(dir / "config.yaml"), dir / "goldens.safetensors",
                        "encoder.", "adaptor.");
}

}  // namespace
}  // namespace kvrun
