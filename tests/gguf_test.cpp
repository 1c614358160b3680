// GGUF reader (io/gguf.h): dequantization bit-exact against gguf-py
// (tests/fixtures/gguf/*.expected.f32, written by tools/make_gguf_fixtures.py), metadata of
// every value type, tensor infos, and malformed files, each rejected with a kvrun::Error
// naming the key or tensor.
#include "io/gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "kvrun/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace kvrun::io;
using kvrun::test::expect_error;

namespace {

fs::path gguf_fixture(const std::string& name) { return kvrun::test::fixture("gguf/" + name); }

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<float> read_f32(const fs::path& p) {
  const std::string b = read_bytes(p);
  std::vector<float> out(b.size() / 4);
  std::memcpy(out.data(), b.data(), out.size() * 4);
  return out;
}

// Little-endian GGUF writer for hand-made (and deliberately broken) files.
struct Builder {
  std::string magic = "GGUF";
  uint32_t version = 3;
  uint64_t alignment = 32;
  uint64_t n_kv = 0, n_tensors = 0;
  std::string kvs, infos, data;

  template <class T>
  static void put(std::string& o, T v) {
    o.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  static void put_str(std::string& o, const std::string& s) {
    put<uint64_t>(o, s.size());
    o += s;
  }
  // A kv whose value bytes (after the type) are given raw.
  Builder& kv_raw(const std::string& key, uint32_t type, const std::string& value) {
    put_str(kvs, key);
    put<uint32_t>(kvs, type);
    kvs += value;
    ++n_kv;
    return *this;
  }
  Builder& kv_u32(const std::string& key, uint32_t v) {
    std::string b;
    put<uint32_t>(b, v);
    return kv_raw(key, 4, b);
  }
  Builder& kv_str(const std::string& key, const std::string& v) {
    std::string b;
    put_str(b, v);
    return kv_raw(key, 8, b);
  }
  Builder& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    put_str(infos, name);
    put<uint32_t>(infos, static_cast<uint32_t>(ne.size()));
    for (auto d : ne) put<uint64_t>(infos, d);
    put<uint32_t>(infos, type);
    put<uint64_t>(infos, offset);
    ++n_tensors;
    return *this;
  }
  std::string bytes() const {
    std::string o = magic;
    put<uint32_t>(o, version);
    put<uint64_t>(o, n_tensors);
    put<uint64_t>(o, n_kv);
    o += kvs;
    o += infos;
    o.resize(o.size() + (alignment - o.size() % alignment) % alignment, '\0');
    return o + data;
  }
};

class Gguf : public ::testing::Test {
 protected:
  kvrun::test::TempDir tmp;
  fs::path write(const std::string& bytes, const std::string& name = "t.gguf") {
    const fs::path p = tmp / name;
    write_bytes(p, bytes);
    return p;
  }
  // Expects opening `bytes` to throw a kvrun::Error with every fragment (and the file name).
  void expect_bad(const std::string& bytes, std::vector<std::string> fragments) {
    const fs::path p = write(bytes, "bad.gguf");
    fragments.push_back(p.string());
    expect_error([&] { GgufFile g(p); }, fragments);
  }
};

const std::vector<std::string> kTypeNames = {"F32",  "F16",  "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                             "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"};

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// ---- dequantization ---------------------------------------------------------------------

TEST_F(Gguf, EveryTypeDequantizesBitExactlyLikeGgufPy) {
  for (const char* name : {"types", "align64"}) {
    SCOPED_TRACE(name);
    const GgufFile g(gguf_fixture(std::string(name) + ".gguf"));
    const std::vector<float> expected = read_f32(gguf_fixture(std::string(name) + ".expected.f32"));
    size_t at = 0;
    std::set<std::string> seen;
    for (const auto& t : g.tensors()) {
      SCOPED_TRACE(t.name);
      const std::vector<float> got = g.to_f32(t);
      ASSERT_LE(at + got.size(), expected.size());
      EXPECT_TRUE(same_bits(got.data(), expected.data() + at, got.size()));
      for (size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &expected[at + i], 4) != 0) {
          ADD_FAILURE() << "element " << i << ": got " << got[i] << ", gguf-py " << expected[at + i];
          break;
        }
      at += got.size();
      seen.insert(ggml_type_name(t.type));
    }
    EXPECT_EQ(at, expected.size());
    if (std::string(name) == "types") {
      for (const auto& n : kTypeNames) EXPECT_TRUE(seen.count(n)) << n << " missing from types.gguf";
    }
  }
}

TEST_F(Gguf, RowF32EqualsTheRowsOfToF32) {
  const GgufFile g(gguf_fixture("types.gguf"));
  for (const auto& t : g.tensors()) {
    SCOPED_TRACE(t.name);
    const std::vector<float> all = g.to_f32(t);
    ASSERT_EQ(static_cast<int64_t>(all.size()), t.rows() * t.row_elems());
    std::vector<float> row(static_cast<size_t>(t.row_elems()));
    for (int64_t r = 0; r < t.rows(); ++r) {
      g.row_f32(t, r, row.data());
      EXPECT_TRUE(same_bits(row.data(), all.data() + r * t.row_elems(), row.size())) << "row " << r;
    }
    expect_error([&] { g.row_f32(t, t.rows(), row.data()); }, {t.name, "row"});
    expect_error([&] { g.row_f32(t, -1, row.data()); }, {t.name, "row"});
  }
}

TEST_F(Gguf, DequantizeChecksTypeAndBlockCount) {
  std::vector<uint8_t> src(292 * 2, 0);
  std::vector<float> out(512);
  expect_error([&] { dequantize(GgmlType::Q4_0, src.data(), 33, out.data()); }, {"Q4_0", "multiple of 32", "33"});
  expect_error([&] { dequantize(GgmlType::Q6_K, src.data(), 128, out.data()); }, {"Q6_K", "256", "128"});
  expect_error([&] { dequantize(GgmlType::Q8_K, src.data(), 256, out.data()); }, {"Q8_K"});
  expect_error([&] { dequantize(static_cast<GgmlType>(99), src.data(), 1, out.data()); }, {"type 99"});
  dequantize(GgmlType::Q8_0, src.data(), 0, out.data());  // zero blocks: nothing to do
}

TEST_F(Gguf, TypeTraits) {
  const auto* q4k = ggml_type_traits(12);
  ASSERT_NE(q4k, nullptr);
  EXPECT_STREQ(q4k->name, "Q4_K");
  EXPECT_EQ(q4k->block_elems, 256);
  EXPECT_EQ(q4k->block_bytes, 144);
  EXPECT_TRUE(q4k->dequantizable);
  EXPECT_EQ(ggml_type_traits(6)->block_bytes, 22);
  EXPECT_EQ(ggml_type_traits(14)->block_bytes, 210);
  EXPECT_FALSE(ggml_type_traits(16)->dequantizable);  // IQ2_XXS: readable, not dequantized
  EXPECT_EQ(ggml_type_traits(4), nullptr);            // the removed Q4_2
  EXPECT_EQ(ggml_type_name(30), "BF16");
  EXPECT_EQ(ggml_type_name(99), "type 99");
}

// ---- tensor infos and layout -----------------------------------------------------------------

TEST_F(Gguf, TensorInfos) {
  const GgufFile g(gguf_fixture("types.gguf"));
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.data_offset() % 32, 0u);
  const auto& q = g.tensor("rand.Q4_K");
  EXPECT_EQ(q.ne, (std::vector<int64_t>{256, 2}));
  EXPECT_EQ(q.shape(), (std::vector<int64_t>{2, 256}));
  EXPECT_EQ(q.type, 12u);
  EXPECT_EQ(q.nbytes, 2u * 144u);
  EXPECT_EQ(q.rows(), 2);
  const std::string file = read_bytes(gguf_fixture("types.gguf"));
  ASSERT_LE(g.data_offset() + q.offset + q.nbytes, file.size());
  EXPECT_EQ(std::memcmp(q.data, file.data() + g.data_offset() + q.offset, q.nbytes), 0);
  const auto& t3 = g.tensor("shape3d.Q8_0");
  EXPECT_EQ(t3.ne, (std::vector<int64_t>{64, 2, 3}));
  EXPECT_EQ(t3.shape(), (std::vector<int64_t>{3, 2, 64}));
  EXPECT_EQ(t3.rows(), 6);
  EXPECT_EQ(t3.numel(), 384);
  EXPECT_EQ(t3.nbytes, 6u * 2u * 34u);
  const auto& s = g.tensor("scalar1d.F32");
  EXPECT_EQ(s.rows(), 1);
  EXPECT_EQ(g.to_f32(s), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  for (const auto& t : g.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  EXPECT_EQ(g.find_tensor("nope"), nullptr);
  expect_error([&] { (void)g.tensor("nope"); }, {"types.gguf", "tensor 'nope' not found"});
}

TEST_F(Gguf, CustomAlignmentAndVersion2) {
  for (const char* name : {"align64.gguf", "v2.gguf"}) {
    SCOPED_TRACE(name);
    const GgufFile g(gguf_fixture(name));
    EXPECT_EQ(g.version(), std::string(name) == "v2.gguf" ? 2u : 3u);
    EXPECT_EQ(g.alignment(), 64u);
    EXPECT_EQ(g.get_int("general.alignment"), 64);
    EXPECT_EQ(g.get_string("general.name"), "align64");
    EXPECT_EQ(g.data_offset() % 64, 0u);
    ASSERT_EQ(g.tensors().size(), 3u);
    for (const auto& t : g.tensors()) EXPECT_EQ(t.offset % 64, 0u) << t.name;
    EXPECT_EQ(g.to_f32(g.tensor("a.F32")), (std::vector<float>{0, 1, 2, 3, 4}));
    EXPECT_EQ(g.to_f32(g.tensor("c.F16")), (std::vector<float>{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(g.tensor("c.F16").shape(), (std::vector<int64_t>{2, 3}));
  }
}

// ---- metadata ------------------------------------------------------------------------------

TEST_F(Gguf, MetadataOfEveryValueType) {
  const GgufFile g(gguf_fixture("types.gguf"));
  EXPECT_EQ(g.get_string("general.architecture"), "kvrun-test");
  EXPECT_EQ(g.get_int("test.u8"), 200);
  EXPECT_EQ(g.get_int("test.i8"), -100);
  EXPECT_EQ(g.get_int("test.u16"), 60000);
  EXPECT_EQ(g.get_int("test.i16"), -30000);
  EXPECT_EQ(g.get_int("test.u32"), 4000000000);
  EXPECT_EQ(g.get_int("test.i32"), -2000000000);
  EXPECT_EQ(g.get_int("test.u64_small"), 7);
  EXPECT_EQ(g.get_int("test.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(g.find("test.u64")->u, std::numeric_limits<uint64_t>::max());
  expect_error([&] { (void)g.get_int("test.u64"); }, {"'test.u64'", "fits int64", "18446744073709551615"});
  EXPECT_EQ(g.get_float("test.f32"), static_cast<double>(0.1f));
  EXPECT_EQ(g.get_float("test.f64"), 3.141592653589793);
  EXPECT_EQ(g.get_float("test.u8"), 200.0);  // integers convert
  EXPECT_TRUE(g.get_bool("test.bool_true"));
  EXPECT_FALSE(g.get_bool("test.bool_false"));
  EXPECT_EQ(g.get_string("test.string"),
            "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82");

  EXPECT_EQ(g.find("test.u8")->type, GgufValue::Type::U8);
  EXPECT_EQ(g.find("test.i8")->type, GgufValue::Type::I8);
  EXPECT_EQ(g.find("test.u16")->type, GgufValue::Type::U16);
  EXPECT_EQ(g.find("test.i16")->type, GgufValue::Type::I16);
  EXPECT_EQ(g.find("test.u32")->type, GgufValue::Type::U32);
  EXPECT_EQ(g.find("test.i32")->type, GgufValue::Type::I32);
  EXPECT_EQ(g.find("test.u64")->type, GgufValue::Type::U64);
  EXPECT_EQ(g.find("test.i64")->type, GgufValue::Type::I64);
  EXPECT_EQ(g.find("test.f32")->type, GgufValue::Type::F32);
  EXPECT_EQ(g.find("test.f64")->type, GgufValue::Type::F64);
  EXPECT_EQ(g.find("test.bool_true")->type, GgufValue::Type::BOOL);
  EXPECT_EQ(g.find("test.string")->type, GgufValue::Type::STRING);
  EXPECT_TRUE(g.find("test.u64")->is_integer());
  EXPECT_FALSE(g.find("test.bool_true")->is_integer());
  EXPECT_TRUE(g.find("test.f64")->is_float());

  EXPECT_EQ(g.get_int_array("test.arr_u8"), (std::vector<int64_t>{1, 2, 255}));
  EXPECT_EQ(g.get_int_array("test.arr_i8"), (std::vector<int64_t>{-1, 2, -128}));
  EXPECT_EQ(g.get_int_array("test.arr_u16"), (std::vector<int64_t>{1, 65535}));
  EXPECT_EQ(g.get_int_array("test.arr_i16"), (std::vector<int64_t>{-32768, 5}));
  EXPECT_EQ(g.get_int_array("test.arr_u32"), (std::vector<int64_t>{0, 4294967295}));
  EXPECT_EQ(g.get_int_array("test.arr_i32"), (std::vector<int64_t>{-5, 6, 7}));
  EXPECT_EQ(g.get_int_array("test.arr_u64"), (std::vector<int64_t>{1, int64_t{1} << 40}));
  EXPECT_EQ(g.get_int_array("test.arr_i64"), (std::vector<int64_t>{-(int64_t{1} << 40), 3}));
  EXPECT_EQ(g.get_float_array("test.arr_f32"), (std::vector<float>{0.5f, -1.25f, 0.1f}));
  EXPECT_EQ(g.get_float_array("test.arr_f64"), (std::vector<float>{0.1f, -2.5f}));
  EXPECT_EQ(g.find("test.arr_f64")->elems[0].f, 0.1);
  EXPECT_EQ(g.get_string_array("test.arr_string"), (std::vector<std::string>{"a", "", "\xc3\xbc\xe2\x9c\x93"}));
  const GgufValue* b = g.find("test.arr_bool");
  ASSERT_EQ(b->elems.size(), 3u);
  EXPECT_EQ(b->elem_type, GgufValue::Type::BOOL);
  EXPECT_EQ(b->elems[0].u, 1u);
  EXPECT_EQ(b->elems[1].u, 0u);
  EXPECT_EQ(gguf_type_name(*b), "array[bool]");

  const GgufValue* n = g.find("test.nested_i32");
  EXPECT_EQ(gguf_type_name(*n), "array[array[i32]]");
  ASSERT_EQ(n->elems.size(), 2u);
  ASSERT_EQ(n->elems[0].elems.size(), 3u);
  EXPECT_EQ(n->elems[0].elems[2].i, 3);
  EXPECT_EQ(n->elems[1].elems[0].i, 4);
  const GgufValue* ns = g.find("test.nested_string");
  EXPECT_EQ(gguf_type_name(*ns), "array[array[string]]");
  EXPECT_EQ(ns->elems[1].elems[0].s, "z");
  const GgufValue* n3 = g.find("test.nested3");
  EXPECT_EQ(gguf_type_name(*n3), "array[array[array[i32]]]");
  EXPECT_EQ(n3->elems[0].elems[1].elems[1].i, 3);

  EXPECT_FALSE(g.has("absent"));
  EXPECT_FALSE(g.opt_int("absent").has_value());
  EXPECT_FALSE(g.opt_string("absent").has_value());
  EXPECT_FALSE(g.opt_float("absent").has_value());
  EXPECT_FALSE(g.opt_bool("absent").has_value());
  EXPECT_EQ(g.opt_int("test.u8"), 200);
  EXPECT_EQ(g.opt_bool("test.bool_true"), true);
}

TEST_F(Gguf, WrongTypeGetterNamesTheKeyAndBothTypes) {
  const GgufFile g(gguf_fixture("types.gguf"));
  expect_error([&] { (void)g.get_string("test.u32"); }, {"types.gguf", "'test.u32'", "expected string", "found u32"});
  expect_error([&] { (void)g.get_int("test.string"); }, {"'test.string'", "expected an integer", "found string"});
  expect_error([&] { (void)g.get_int("test.f32"); }, {"'test.f32'", "found f32"});
  expect_error([&] { (void)g.get_float("test.bool_true"); }, {"'test.bool_true'", "found bool"});
  expect_error([&] { (void)g.get_bool("test.u8"); }, {"'test.u8'", "expected bool", "found u8"});
  expect_error([&] { (void)g.get_string_array("test.arr_i32"); },
               {"'test.arr_i32'", "expected array[string]", "found array[i32]"});
  expect_error([&] { (void)g.get_int_array("test.nested_i32"); }, {"'test.nested_i32'", "found array[array[i32]]"});
  expect_error([&] { (void)g.get_float_array("test.arr_string"); }, {"'test.arr_string'", "found array[string]"});
  expect_error([&] { (void)g.get_int_array("test.u8"); }, {"'test.u8'", "found u8"});
  expect_error([&] { (void)g.get_string("no.such.key"); }, {"'no.such.key'", "missing"});
  expect_error([&] { (void)g.opt_int("test.string"); }, {"'test.string'", "found string"});
}

TEST_F(Gguf, HandMadeFileWithEmptyValuesAndNoTensors) {
  Builder b;
  b.kv_str("s.empty", "");
  std::string arr;
  Builder::put<uint32_t>(arr, 4);
  Builder::put<uint64_t>(arr, 0);
  b.kv_raw("a.empty", 9, arr);
  const GgufFile g(write(b.bytes()));
  EXPECT_EQ(g.get_string("s.empty"), "");
  EXPECT_TRUE(g.get_int_array("a.empty").empty());
  EXPECT_TRUE(g.tensors().empty());
}

// ---- malformed files -----------------------------------------------------------------------

TEST_F(Gguf, TruncatedAtEveryOffsetThrows) {
  const std::string full = read_bytes(gguf_fixture("types.gguf"));
  uint64_t data_offset = 0, last_end = 0;
  {
    const GgufFile g(gguf_fixture("types.gguf"));
    data_offset = g.data_offset();
    last_end = data_offset + g.tensors().back().offset + g.tensors().back().nbytes;
  }
  ASSERT_LT(data_offset, full.size());
  std::vector<uint64_t> cuts;
  for (uint64_t n = 0; n <= data_offset; ++n) cuts.push_back(n);
  for (uint64_t n : {data_offset + 1, data_offset + 1000, last_end - 1}) cuts.push_back(n);
  const fs::path p = tmp / "cut.gguf";
  for (uint64_t n : cuts) {
    write_bytes(p, full.substr(0, n));
    try {
      GgufFile g(p);
      ADD_FAILURE() << "a prefix of " << n << " bytes was accepted";
    } catch (const kvrun::Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(p.string() + ": ", 0), 0u) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  // The whole file (with the padding after the last tensor) and a prefix ending at it are fine.
  write_bytes(p, full.substr(0, last_end));
  EXPECT_NO_THROW(GgufFile g(p));
}

TEST_F(Gguf, BadMagicAndVersions) {
  Builder b;
  b.magic = "GGML";
  expect_bad(b.bytes(), {"magic", "expected \"GGUF\"", "found \"GGML\""});
  Builder v1;
  v1.version = 1;
  expect_bad(v1.bytes(), {"version", "expected 2 or 3, found 1", "v1"});
  Builder v4;
  v4.version = 4;
  expect_bad(v4.bytes(), {"version", "found 4"});
  Builder be;
  be.version = 0x03000000;
  expect_bad(be.bytes(), {"version", "big-endian"});
  expect_bad("", {"expected at least 24 bytes", "found 0"});
}

TEST_F(Gguf, LyingLengthsAndCounts) {
  {  // a string value claiming more bytes than the file holds
    Builder b;
    std::string v;
    Builder::put<uint64_t>(v, 1000);
    v += "short";
    b.kv_raw("test.s", 8, v);
    expect_bad(b.bytes(), {"metadata key 'test.s'", "length", "found 1000"});
  }
  {  // beyond kMaxStringBytes
    Builder b;
    std::string v;
    Builder::put<uint64_t>(v, uint64_t{1} << 40);
    b.kv_raw("test.s", 8, v);
    expect_bad(b.bytes(), {"metadata key 'test.s'", "length", "1099511627776"});
  }
  {  // a key length
    Builder b;
    b.n_kv = 1;
    Builder::put<uint64_t>(b.kvs, 0xffffffffffffull);
    b.kvs += std::string(16, 'k');
    expect_bad(b.bytes(), {"metadata kv #0 key length"});
  }
  {  // a huge array count
    Builder b;
    std::string v;
    Builder::put<uint32_t>(v, 4);
    Builder::put<uint64_t>(v, uint64_t{1} << 60);
    v += std::string(64, '\0');
    b.kv_raw("test.arr", 9, v);
    expect_bad(b.bytes(), {"metadata key 'test.arr'", "array count", "1152921504606846976"});
  }
  {  // kv and tensor counts
    Builder b;
    b.n_kv = uint64_t{1} << 62;
    expect_bad(b.bytes(), {"metadata kv count", "4611686018427387904"});
    Builder t;
    t.n_tensors = 1000;
    expect_bad(t.bytes(), {"tensor count", "found 1000"});
  }
}

TEST_F(Gguf, BadMetadataValues) {
  {
    Builder b;
    b.kv_raw("test.t", 13, "\0\0\0\0");
    expect_bad(b.bytes(), {"metadata key 'test.t'", "value type", "found 13"});
  }
  {
    Builder b;
    std::string v;
    Builder::put<uint32_t>(v, 77);
    Builder::put<uint64_t>(v, 1);
    v += std::string(8, '\0');
    b.kv_raw("test.arr", 9, v);
    expect_bad(b.bytes(), {"metadata key 'test.arr'", "array element type", "found 77"});
  }
  {  // nesting deeper than 8 levels
    std::string v;
    for (int i = 0; i < 12; ++i) {
      Builder::put<uint32_t>(v, 9);
      Builder::put<uint64_t>(v, 1);
    }
    Builder::put<uint32_t>(v, 4);
    Builder::put<uint64_t>(v, 0);
    Builder b;
    b.kv_raw("test.deep", 9, v);  // 13 nested arrays
    expect_bad(b.bytes(), {"metadata key 'test.deep'", "nesting", "at most 8"});
  }
  {
    Builder b;
    b.kv_raw("test.b", 7, std::string(1, '\x02'));
    expect_bad(b.bytes(), {"metadata key 'test.b'", "bool", "found 2"});
  }
  {
    Builder b;
    b.kv_u32("test.k", 1).kv_u32("test.k", 2);
    expect_bad(b.bytes(), {"metadata key 'test.k'", "duplicate"});
  }
  {
    Builder b;
    b.kv_u32("general.alignment", 12);
    expect_bad(b.bytes(), {"'general.alignment'", "multiple of 8", "found 12"});
    Builder z;
    z.kv_u32("general.alignment", 0);
    expect_bad(z.bytes(), {"'general.alignment'", "found 0"});
    Builder s;
    s.kv_str("general.alignment", "32");
    expect_bad(s.bytes(), {"'general.alignment'", "expected u32, found string"});
  }
}

TEST_F(Gguf, BadTensorInfos) {
  auto with_data = [](Builder b, size_t n) {
    b.data.assign(n, '\0');
    return b.bytes();
  };
  {
    Builder b;
    b.tensor("w", {8}, 0, 1 << 20);
    expect_bad(with_data(b, 32), {"tensor 'w'", "expected to end within the file", "1048576"});
  }
  {
    Builder b;
    b.tensor("w", {8}, 0, 0xffffffffffffffe0ull);
    expect_bad(with_data(b, 32), {"tensor 'w'", "more than 2^64"});
  }
  {
    Builder b;
    b.tensor("w", {8}, 0, 4);
    expect_bad(with_data(b, 64), {"tensor 'w'", "offset", "multiple of the alignment 32", "found 4"});
  }
  {
    Builder b;
    b.tensor("w", {8}, 99, 0);
    expect_bad(with_data(b, 64), {"tensor 'w'", "ggml type", "found 99"});
  }
  {  // 'a' claims 64 floats (256 bytes) but 'b' starts 32 bytes in
    Builder b;
    b.tensor("a", {64}, 0, 0).tensor("b", {8}, 0, 32);
    expect_bad(with_data(b, 512), {"tensor 'b'", "tensor 'a'", "overlapping"});
  }
  {  // the last tensor's size (4096 bytes) disagrees with the data that follows (64)
    Builder b;
    b.tensor("w", {8}, 0, 0).tensor("big", {1024}, 0, 32);
    expect_bad(with_data(b, 64), {"tensor 'big'", "4096 bytes", "expected to end within the file"});
  }
  {  // a Q4_K row must be whole blocks
    Builder b;
    b.tensor("q", {100, 2}, 12, 0);
    expect_bad(with_data(b, 512), {"tensor 'q'", "Q4_K", "multiple of 256", "found 100"});
  }
  {
    Builder b;
    b.tensor("w", {1, 1, 1, 1, 1}, 0, 0);
    expect_bad(with_data(b, 32), {"tensor 'w'", "n_dims", "at most 4", "found 5"});
  }
  {
    Builder b;
    b.tensor("w", {4, 0}, 0, 0);
    expect_bad(with_data(b, 32), {"tensor 'w'", "ne[1]", "found 0"});
  }
  {
    Builder b;
    b.tensor("w", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0);
    expect_bad(with_data(b, 32), {"tensor 'w'", "overflow"});
  }
  {
    Builder b;
    b.tensor("w", {8}, 0, 0).tensor("w", {8}, 0, 32);
    expect_bad(with_data(b, 64), {"tensor 'w'", "duplicate"});
  }
  {  // a tensor info cut inside its dims
    Builder b;
    b.tensor("w", {8, 8}, 0, 0);
    b.n_tensors = 1;
    b.infos.resize(b.infos.size() - 12);  // no type, no offset
    b.alignment = 1;
    expect_bad(b.bytes(), {"tensor 'w'", "truncated"});
  }
  {  // and a well-formed one for contrast
    Builder b;
    b.tensor("w", {8}, 0, 0).tensor("v", {8}, 1, 32);
    const GgufFile g(write(with_data(b, 64)));
    EXPECT_EQ(g.tensors().size(), 2u);
    EXPECT_EQ(g.to_f32(g.tensor("w")), std::vector<float>(8, 0.0f));
  }
  {  // a known type kvrun cannot dequantize reads fine but does not convert
    Builder b;
    b.tensor("iq", {256}, 16, 0);
    const GgufFile g(write(with_data(b, 96)));
    expect_error([&] { (void)g.to_f32(g.tensor("iq")); }, {"tensor 'iq'", "IQ2_XXS"});
  }
}

}  // namespace
