// Unit tests for the I/O layer: dtype conversions, safetensors, configs, file helpers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <numbers>
#include <string>
#include <vector>

#include "io/dtype.h"
#include "io/fs.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "kvrun/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace kvrun::io;

namespace {

const fs::path kFixtures = fs::path(KVRUN_SOURCE_DIR) / "tests" / "fixtures";

// A fresh, empty folder per test, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() / ("kvrun-io-" + std::to_string(::getpid()) + "-" + info->test_suite_name() + "-" +
                                        info->name() + "-" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
  size_t entries() const { return static_cast<size_t>(std::distance(fs::directory_iterator(path), {})); }
};

using kvrun::test::expect_error;

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// Writes a safetensors file with the raw `header` and `data_bytes` zero bytes of data;
// opening it must fail with an error naming the file and holding every fragment.
void expect_bad_header(const std::string& header, size_t data_bytes, const std::vector<std::string>& fragments) {
  SCOPED_TRACE(header);
  TempDir d;
  const fs::path p = d / "bad.safetensors";
  write_bytes(p, le64(header.size()) + header + std::string(data_bytes, '\0'));
  std::vector<std::string> all = fragments;
  all.push_back(p.string());
  expect_error([&] { SafetensorsFile f(p); }, all);
}

json fixture_config(const std::string& model) { return read_json_file(kFixtures / model / "config.json"); }

// Parses qwen3-tiny's config after `edit`; must fail naming the source and every fragment.
void expect_bad_config(const std::function<void(json&)>& edit, const std::vector<std::string>& fragments) {
  json j = fixture_config("qwen3-tiny");
  edit(j);
  SCOPED_TRACE(j.dump());
  std::vector<std::string> all = fragments;
  all.push_back("test-config.json");
  expect_error([&] { parse_model_config(j, "test-config.json"); }, all);
}

bool is_f16_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

void expect_rel_near(double expected, double actual, double rel, const std::string& what) {
  EXPECT_LE(std::abs(actual - expected), rel * std::abs(expected))
      << what << ": expected " << expected << ", found " << actual;
}

}  // namespace

// ---------------------------------------------------------------- dtype

TEST(IoDtype, F16AllBitPatternsRoundTrip) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const float f = f16_to_f32(bits);
    const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f && m != 0) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(is_f16_nan(f32_to_f16(f))) << std::hex << h;
      continue;
    }
    // Independent reference value: subnormal m * 2^-24, normal (1 + m/1024) * 2^(e-15).
    double ref = e == 0 ? std::ldexp(m, -24) : e == 0x1f ? INFINITY : std::ldexp(1.0 + m / 1024.0, int(e) - 15);
    if (h & 0x8000u) ref = -ref;
    ASSERT_EQ(static_cast<double>(f), ref) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << std::hex << h;
    ASSERT_EQ(f32_to_f16(f), bits) << std::hex << h;
  }
}

TEST(IoDtype, F16RoundsTiesToEven) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);             // tie, 0x3c00 is even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);         // tie, rounds up to even
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);  // just above the tie
  EXPECT_EQ(f32_to_f16(-(1.0f + 3 * 0x1p-11f)), 0xbc02);
  EXPECT_EQ(f32_to_f16(2047.0f), 0x67ff);  // exact
  EXPECT_EQ(f32_to_f16(2049.0f), 0x6800);  // tie between 2048 and 2050 -> 2048
  EXPECT_EQ(f32_to_f16(2051.0f), 0x6802);  // tie between 2050 and 2052 -> 2052
}

TEST(IoDtype, F16OverflowAndSpecials) {
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);  // largest finite half
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // halfway rounds to even = inf
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e30f), 0xfc00);
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_TRUE(is_f16_nan(f32_to_f16(NAN)));
  EXPECT_TRUE(is_f16_nan(f32_to_f16(std::bit_cast<float>(0x7f800001u))));  // payload only in low bits
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

TEST(IoDtype, F16Subnormals) {
  EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);
  EXPECT_EQ(f16_to_f32(0x03ff), 1023 * 0x1p-24f);
  EXPECT_EQ(f16_to_f32(0x8001), -0x1p-24f);
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);            // tie between 0 and 1 -> 0
  EXPECT_EQ(f32_to_f16(0x1p-25f * 1.0001f), 0x0001);  // just above the tie
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);        // tie between 1 and 2 -> 2
  EXPECT_EQ(f32_to_f16(1023.5f * 0x1p-24f), 0x0400);  // tie into the smallest normal
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);
  EXPECT_EQ(f32_to_f16(-3 * 0x1p-24f), 0x8003);
  EXPECT_EQ(f32_to_f16(1e-45f), 0x0000);  // float subnormal underflows to zero
}

TEST(IoDtype, Bf16RoundToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);             // tie, even stays
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);         // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above the tie
  EXPECT_EQ(f32_to_bf16(-(1.0f + 0x1p-8f + 0x1p-20f)), 0xbf81);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x7f7fffffu)), 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  const uint16_t nan = f32_to_bf16(std::bit_cast<float>(0x7f800001u));  // must not become inf
  EXPECT_TRUE(std::isnan(bf16_to_f32(nan))) << std::hex << nan;
  for (uint32_t b = 0; b < 0x10000u; ++b) {  // every non-NaN bf16 survives the round trip
    const float f = bf16_to_f32(static_cast<uint16_t>(b));
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_bf16(f), b) << std::hex << b;
    }
  }
}

// ---------------------------------------------------------------- safetensors

TEST(IoSafetensors, WriteReadRoundTrip) {
  TempDir d;
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
  const std::vector<uint16_t> h = {f32_to_f16(0.5f), f32_to_f16(-1.25f), f32_to_f16(65504.0f)};
  const std::vector<uint16_t> b = {f32_to_bf16(3.0f), f32_to_bf16(-0.015625f)};
  const std::vector<int64_t> ids = {-1, int64_t{1} << 40};
  const float scalar = 42.0f;
  const std::vector<TensorToWrite> tensors = {{"a", DType::F32, {2, 3}, a.data()}, {"h", DType::F16, {3}, h.data()},
                                              {"b", DType::BF16, {2}, b.data()},   {"ids", DType::I64, {2}, ids.data()},
                                              {"s", DType::F32, {}, &scalar},      {"z", DType::F32, {0, 4}, nullptr}};
  const fs::path p = d / "t.safetensors";
  const uint64_t data_start = write_safetensors(p, tensors, {{"format", "pt"}, {"note", "hello"}});
  EXPECT_EQ(d.entries(), 1u) << "temporary file left behind";

  const std::string raw = read_bytes(p);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ(8 + n, data_start);
  EXPECT_EQ(data_start % 8, 0u);

  SafetensorsFile f(p);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hello"}}));
  ASSERT_EQ(f.tensors().size(), 6u);
  auto get = [&](const std::string& name) -> const TensorView& {
    const TensorView* t = f.find(name);
    if (!t) throw std::runtime_error("tensor " + name + " not read back");
    return *t;
  };
  EXPECT_EQ(get("a").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(get("a").to_f32(), a);
  EXPECT_EQ(get("h").dtype, DType::F16);
  EXPECT_EQ(get("h").to_f32(), (std::vector<float>{0.5f, -1.25f, 65504.0f}));
  EXPECT_EQ(get("b").dtype, DType::BF16);
  EXPECT_EQ(get("b").to_f32(), (std::vector<float>{3.0f, -0.015625f}));
  const TensorView& ti = get("ids");
  EXPECT_EQ(ti.dtype, DType::I64);
  ASSERT_EQ(ti.nbytes, 16u);
  EXPECT_EQ(std::memcmp(ti.data, ids.data(), 16), 0);
  expect_error([&] { (void)ti.to_f32(); }, {"I64"});
  EXPECT_TRUE(get("s").shape.empty());  // scalar
  EXPECT_EQ(get("s").numel(), 1);
  EXPECT_EQ(get("s").to_f32(), std::vector<float>{42.0f});
  EXPECT_EQ(get("z").shape, (std::vector<int64_t>{0, 4}));  // zero-size
  EXPECT_EQ(get("z").nbytes, 0u);
  EXPECT_TRUE(get("z").to_f32().empty());
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(IoSafetensors, PageAlignedDataStart) {
  TempDir d;
  const float v = 1.0f;
  const uint64_t start = write_safetensors(d / "t.safetensors", {{"v", DType::F32, {1}, &v}}, {}, 4096);
  EXPECT_EQ(start % 4096, 0u);
  EXPECT_EQ(fs::file_size(d / "t.safetensors"), start + 4);
  EXPECT_EQ(SafetensorsFile(d / "t.safetensors").find("v")->to_f32(), std::vector<float>{1.0f});
  expect_error([&] { write_safetensors(d / "u.safetensors", {}, {}, 12); }, {"alignment"});
}

TEST(IoSafetensors, RejectsShortFile) {
  TempDir d;
  write_bytes(d / "short.safetensors", "abcde");
  expect_error([&] { SafetensorsFile f(d / "short.safetensors"); },
               {(d / "short.safetensors").string(), "at least 8 bytes", "found 5"});
}

TEST(IoSafetensors, RejectsHeaderLongerThanFile) {
  TempDir d;
  write_bytes(d / "x.safetensors", le64(1000) + "{}");
  expect_error([&] { SafetensorsFile f(d / "x.safetensors"); }, {(d / "x.safetensors").string(), "1000", "only 2"});
}

TEST(IoSafetensors, RejectsHugeHeaderLength) {
  TempDir d;
  write_bytes(d / "x.safetensors", le64(~uint64_t{0}) + "{}");
  expect_error([&] { SafetensorsFile f(d / "x.safetensors"); },
               {(d / "x.safetensors").string(), "exceeds the limit", std::to_string(SafetensorsFile::kMaxHeaderBytes)});
}

TEST(IoSafetensors, RejectsBadHeaders) {
  expect_bad_header("{not json", 0, {"not valid JSON"});
  expect_bad_header("[1, 2]", 0, {"JSON object"});
  expect_bad_header(R"({"t": {"dtype": "F32", "shape": [1]}})", 4, {"tensor 't'", "data_offsets"});
  expect_bad_header(R"({"t": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}})", 1, {"tensor 't'", "F8_E9"});
  expect_bad_header(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8,
                    {"tensor 't'", "[3] x F32 needs 12 bytes", "span 8"});
  expect_bad_header(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8,
                    {"tensor 't'", "begin 8 > end 4"});
  expect_bad_header(R"({"t": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}})", 8,
                    {"tensor 't'", "non-negative"});
  expect_bad_header(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, -4]}})", 8,
                    {"tensor 't'", "data_offsets"});
  expect_bad_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                    12, {"'a'", "'b'", "overlap"});
  // An empty tensor sorting between two overlapping ones must not hide the overlap.
  expect_bad_header(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                        "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
                        "c": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                    16, {"'a'", "'c'", "overlap"});
}

TEST(IoSafetensors, RejectsTruncatedData) {
  TempDir d;
  const std::vector<float> v(10, 1.0f);
  const fs::path p = d / "t.safetensors";
  write_safetensors(p, {{"weights", DType::F32, {10}, v.data()}});
  fs::resize_file(p, fs::file_size(p) - 3);
  expect_error([&] { SafetensorsFile f(p); }, {p.string(), "tensor 'weights'", "end 40", "37 bytes"});
}

TEST(IoSafetensors, ShardedFixtureHasEveryIndexedTensor) {
  const fs::path dir = kFixtures / "llama-tiny";
  const json index = read_json_file(dir / "model.safetensors.index.json");
  TensorStore store(dir);
  EXPECT_EQ(store.names().size(), index["weight_map"].size());
  for (const auto& [name, file] : index["weight_map"].items()) {
    ASSERT_TRUE(store.has(name)) << name;
    const TensorView& t = store.get(name);
    EXPECT_EQ(fs::path(t.file).filename(), file.get<std::string>()) << name;
    const std::vector<float> v = t.to_f32();
    ASSERT_EQ(static_cast<int64_t>(v.size()), t.numel());
    for (float x : v) ASSERT_TRUE(std::isfinite(x)) << name;
  }
  EXPECT_EQ(store.get("model.embed_tokens.weight").shape, (std::vector<int64_t>{512, 64}));
  expect_error([&] { store.get("no.such.tensor"); }, {dir.string(), "no.such.tensor"});
}

TEST(IoSafetensors, Bf16FixtureConvertsToF32) {
  const fs::path file = kFixtures / "qwen3-tiny-bf16" / "model.safetensors";
  TensorStore store(file.parent_path());
  const TensorView& t = store.get("model.embed_tokens.weight");
  ASSERT_EQ(t.dtype, DType::BF16);
  const std::vector<float> v = t.to_f32();
  ASSERT_EQ(v.size(), 512u * 64u);
  // Reference: decode the file by hand and shift each bf16 word into the high half of a float.
  const std::string raw = read_bytes(file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  const json header = json::parse(raw.substr(8, n));
  const size_t begin = 8 + n + header[t.name]["data_offsets"][0].get<size_t>();
  for (size_t i = 0; i < v.size(); i += 97) {
    const uint32_t w = static_cast<uint8_t>(raw[begin + 2 * i]) | static_cast<uint8_t>(raw[begin + 2 * i + 1]) << 8;
    ASSERT_EQ(std::bit_cast<uint32_t>(v[i]), w << 16) << i;
  }
  bool any_nonzero = false;
  for (float x : v) any_nonzero |= x != 0.0f;
  EXPECT_TRUE(any_nonzero);
}

TEST(IoSafetensors, BadIndexes) {
  TempDir d;
  const float v = 1.0f;
  write_safetensors(d / "shard.safetensors", {{"w", DType::F32, {1}, &v}});
  auto with_index = [&](const json& weight_map) {
    write_text_file_atomic(d / "model.safetensors.index.json", json{{"weight_map", weight_map}}.dump());
  };
  with_index({{"w", "shard.safetensors"}, {"x", "gone.safetensors"}});
  expect_error([&] { TensorStore s(d.path); }, {"gone.safetensors", "missing", "'x'"});
  with_index({{"w", "shard.safetensors"}, {"v", "shard.safetensors"}});
  expect_error([&] { TensorStore s(d.path); }, {(d / "shard.safetensors").string(), "'v'", "not in this shard"});
  with_index({{"w", "../x.safetensors"}});
  expect_error([&] { TensorStore s(d.path); }, {"model.safetensors.index.json", "../x.safetensors"});
  with_index({{"w", "shard.safetensors"}});
  EXPECT_EQ(TensorStore(d.path).get("w").to_f32(), std::vector<float>{1.0f});

  TempDir empty;
  expect_error([&] { TensorStore s(empty.path); }, {empty.path.string(), "no model.safetensors"});
  expect_error([&] { TensorStore s(empty / "nope"); }, {"nope", "no such file"});
}

// ---------------------------------------------------------------- config

TEST(IoConfig, FixturesParse) {
  const ModelConfig q3 = load_model_config(kFixtures / "qwen3-tiny");
  EXPECT_EQ(q3.family, Family::Qwen3);
  EXPECT_EQ(q3.head_dim, 32);  // explicit, although hidden / heads = 16
  EXPECT_EQ(q3.q_dim(), 128);
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_FALSE(q3.qkv_bias);
  EXPECT_TRUE(q3.tie_word_embeddings);
  EXPECT_EQ(q3.rope_theta, 1e6);  // legacy top-level rope_theta, rope_scaling null
  EXPECT_EQ(q3.rope_scaling.type, "default");

  const ModelConfig q2 = load_model_config(kFixtures / "qwen2-tiny" / "config.json");
  EXPECT_EQ(q2.family, Family::Qwen2);
  EXPECT_EQ(q2.head_dim, 16);
  EXPECT_TRUE(q2.qkv_bias);
  EXPECT_FALSE(q2.o_bias);
  EXPECT_FALSE(q2.qk_norm);
  EXPECT_FALSE(q2.tie_word_embeddings);
  EXPECT_EQ(q2.rope_theta, 10000.0);  // transformers-5 rope_parameters
  EXPECT_EQ(q2.num_kv_heads, 2);

  const ModelConfig bf = load_model_config(kFixtures / "qwen3-tiny-bf16");
  EXPECT_EQ(bf.family, Family::Qwen3);
  EXPECT_EQ(bf.rope_theta, 1e6);  // from rope_parameters
  EXPECT_EQ(bf.torch_dtype, "bfloat16");

  const ModelConfig ll = load_model_config(kFixtures / "llama-tiny");
  EXPECT_EQ(ll.family, Family::Llama);
  EXPECT_EQ(ll.num_kv_heads, 1);
  EXPECT_FALSE(ll.qkv_bias || ll.o_bias || ll.mlp_bias || ll.qk_norm);
  EXPECT_EQ(ll.rope_theta, 500000.0);
  EXPECT_EQ(ll.rope_scaling.type, "llama3");
  EXPECT_EQ(ll.rope_scaling.factor, 8.0);
  EXPECT_EQ(ll.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(ll.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(ll.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(ll.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(ll.bos_token_id, 1);
  EXPECT_FALSE(ll.pad_token_id.has_value());
}

TEST(IoConfig, RopeParametersWinOverTopLevel) {
  json j = fixture_config("qwen2-tiny");
  j["rope_theta"] = 5.0;
  j["rope_parameters"]["rope_theta"] = 12345.0;
  EXPECT_EQ(parse_model_config(j, "test-config.json").rope_theta, 12345.0);
  // llama3 scaling in the transformers-5 form reads the same as the legacy form.
  json l = fixture_config("llama-tiny");
  json rp = l["rope_scaling"];
  rp["rope_theta"] = l["rope_theta"];
  l.erase("rope_scaling");
  l.erase("rope_theta");
  l["rope_parameters"] = rp;
  const ModelConfig c = parse_model_config(l, "test-config.json");
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.inv_freq(), load_model_config(kFixtures / "llama-tiny").inv_freq());
}

TEST(IoConfig, RejectsBadConfigs) {
  expect_bad_config([](json& j) { j["architectures"] = {"GPT2LMHeadModel"}; },
                    {"unsupported architecture", "GPT2LMHeadModel"});
  expect_bad_config([](json& j) { j.erase("hidden_size"); }, {"'hidden_size'", "missing"});
  expect_bad_config([](json& j) { j["num_key_value_heads"] = 3; },
                    {"num_attention_heads (4)", "num_key_value_heads (3)"});
  expect_bad_config([](json& j) { j["hidden_act"] = "gelu"; }, {"hidden_act", "gelu"});
  expect_bad_config([](json& j) { j["hidden_act"] = 7; }, {"hidden_act", "must be a string"});
  expect_bad_config([](json& j) { j["hidden_size"] = "64"; }, {"'hidden_size'", "must be an integer", "\"64\""});
  expect_bad_config([](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; }, {"yarn"});
  expect_bad_config([](json& j) { j["head_dim"] = 0; }, {"head_dim", "found 0"});
  expect_error([] { load_model_config(kFixtures / "no-such-model"); }, {"no-such-model", "no such file"});
}

TEST(IoConfig, Llama3InvFreqMatchesTransformers) {
  const ModelConfig c = load_model_config(kFixtures / "llama-tiny");
  const std::vector<float> f = c.inv_freq();
  ASSERT_EQ(f.size(), 8u);
  const double theta = 500000, d = 16, factor = 8, lo = 1, hi = 4, old_ctx = 64;
  for (int i = 0; i < 8; ++i) {
    const double base = 1.0 / std::pow(theta, 2.0 * i / d);
    const double wavelen = 2 * std::numbers::pi / base;
    double want = base;
    if (wavelen > old_ctx / lo) {
      want = base / factor;
    } else if (wavelen >= old_ctx / hi) {
      const double smooth = (old_ctx / wavelen - lo) / (hi - lo);
      want = (1 - smooth) * base / factor + smooth * base;
    }
    expect_rel_near(want, f[i], 1e-6, "inv_freq[" + std::to_string(i) + "]");
  }
}

TEST(IoConfig, DefaultInvFreqAndRopeTables) {
  const ModelConfig c = load_model_config(kFixtures / "qwen3-tiny");
  const std::vector<float> f = c.inv_freq();
  ASSERT_EQ(f.size(), 16u);
  for (int i = 0; i < 16; ++i)
    expect_rel_near(1.0 / std::pow(1e6, 2.0 * i / 32), f[i], 1e-6, "inv_freq[" + std::to_string(i) + "]");

  std::vector<float> cos, sin;
  c.rope_tables(5, cos, sin);
  ASSERT_EQ(cos.size(), 5u * 16u);
  ASSERT_EQ(sin.size(), cos.size());
  for (int p = 0; p < 5; ++p)
    for (int i = 0; i < 16; ++i) {
      const double angle = static_cast<double>(static_cast<float>(p) * f[i]);
      EXPECT_NEAR(cos[p * 16 + i], std::cos(angle), 1e-7);
      EXPECT_NEAR(sin[p * 16 + i], std::sin(angle), 1e-7);
    }
  EXPECT_EQ(cos[0], 1.0f);
  EXPECT_EQ(sin[0], 0.0f);
}

TEST(IoConfig, GenerationConfig) {
  const ModelConfig c = load_model_config(kFixtures / "qwen2-tiny");
  const GenerationConfig g = load_generation_config(kFixtures / "qwen2-tiny", c);
  EXPECT_EQ(g.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(g.bos_token_id, 1);
  EXPECT_FALSE(g.do_sample);

  TempDir d;  // no generation_config.json: falls back to config.json's ids
  ModelConfig c2 = c;
  c2.eos_token_ids = {7, 8};
  EXPECT_EQ(load_generation_config(d.path, c2).eos_token_ids, (std::vector<int64_t>{7, 8}));
  write_text_file_atomic(d / "generation_config.json", R"({"eos_token_id": [3, 4], "top_k": 5, "do_sample": true})");
  const GenerationConfig g2 = load_generation_config(d.path, c2);
  EXPECT_EQ(g2.eos_token_ids, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(g2.top_k, 5);
  EXPECT_TRUE(g2.do_sample);
  write_text_file_atomic(d / "generation_config.json", R"({"top_k": "many"})");
  expect_error([&] { load_generation_config(d.path, c2); }, {"generation_config.json", "top_k"});
}

// ---------------------------------------------------------------- fs

TEST(IoFs, AtomicFile) {
  TempDir d;
  {
    AtomicFile f(d / "out.bin");
    f.write("abc", 3);
    EXPECT_EQ(f.offset(), 3u);
  }
  EXPECT_EQ(d.entries(), 0u) << "uncommitted AtomicFile left a file or temporary";
  {
    AtomicFile f(d / "out.bin");
    f.write("hello", 5);
    EXPECT_FALSE(fs::exists(d / "out.bin"));
    f.commit();
  }
  EXPECT_EQ(read_bytes(d / "out.bin"), "hello");
  EXPECT_EQ(d.entries(), 1u);
}

TEST(IoFs, StagedDir) {
  TempDir d;
  const fs::path out = d / "pkg";
  {
    StagedDir s(out, false);
    write_bytes(s.path() / "a.txt", "x");
    EXPECT_FALSE(fs::exists(out));
  }
  EXPECT_EQ(d.entries(), 0u) << "uncommitted StagedDir left something";
  {
    StagedDir s(out, false);
    write_bytes(s.path() / "a.txt", "first");
    s.commit();
  }
  EXPECT_EQ(read_bytes(out / "a.txt"), "first");
  EXPECT_EQ(d.entries(), 1u);
  expect_error([&] { StagedDir s(out, false); }, {out.string(), "not empty"});
  EXPECT_EQ(read_bytes(out / "a.txt"), "first");  // refused without touching it
  {
    StagedDir s(out, true);
    write_bytes(s.path() / "b.txt", "second");
    s.commit();
  }
  EXPECT_FALSE(fs::exists(out / "a.txt"));
  EXPECT_EQ(read_bytes(out / "b.txt"), "second");
  EXPECT_EQ(d.entries(), 1u);
}

TEST(IoFs, ReadJsonFile) {
  TempDir d;
  write_bytes(d / "ok.json", R"({"a": [1, 2]})");
  EXPECT_EQ(read_json_file(d / "ok.json")["a"][1], 2);
  write_bytes(d / "bad.json", "{\"a\": ");
  expect_error([&] { read_json_file(d / "bad.json"); }, {(d / "bad.json").string(), "invalid JSON"});
  expect_error([&] { read_json_file(d / "none.json"); }, {(d / "none.json").string(), "no such file"});
  expect_error([&] { read_text_file(d / "ok.json", 4); }, {(d / "ok.json").string(), "at most 4"});
}
