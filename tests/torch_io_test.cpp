// torch.save checkpoints without torch: zip archive, restricted unpickler, tensors
// against the values real torch recorded (tools/make_torch_fixtures.py), the writer,
// TensorStore over pytorch_model.bin folders and sub-views, and config.yaml reading.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "io/dtype.h"
#include "io/fs.h"
#include "io/model_config.h"
#include "io/pickle.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"
#include "io/torch_writer.h"
#include "io/yaml_config.h"
#include "io/zip_archive.h"
#include "kvrun/build.h"
#include "kvrun/error.h"
#include "runtime/package_model.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::string_literals;
using namespace kvrun::io;

fs::path torch_fixture(const std::string& name) { return fixture("torch") / name; }

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const fs::path& p, const std::string& b) {
  std::ofstream(p, std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size()));
}

// Element i of a tensor as double (any dtype).
double element(const TensorView& t, size_t i) {
  const uint8_t* p = t.data + i * dtype_size(t.dtype);
  auto rd = [&](auto v) {
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  switch (t.dtype) {
    case DType::F32:
      return rd(float{});
    case DType::F16:
      return f16_to_f32(rd(uint16_t{}));
    case DType::BF16:
      return bf16_to_f32(rd(uint16_t{}));
    case DType::F64:
      return rd(double{});
    case DType::I64:
      return static_cast<double>(rd(int64_t{}));
    case DType::I32:
      return rd(int32_t{});
    case DType::I16:
      return rd(int16_t{});
    case DType::I8:
      return rd(int8_t{});
    case DType::U8:
      return rd(uint8_t{});
    case DType::BOOL:
      return rd(uint8_t{});
  }
  return NAN;
}

// Every tensor torch recorded for `file` is in `store` with its dtype, shape and values.
void expect_matches_torch(const TensorStore& store, const std::string& file) {
  const json all = read_json_file(torch_fixture("expected.json"));
  const json& want = all.at(file);
  ASSERT_EQ(store.names().size(), want.size()) << file;
  for (auto it = want.begin(); it != want.end(); ++it) {
    SCOPED_TRACE(file + ": " + it.key());
    const TensorView& t = store.get(it.key());
    EXPECT_EQ(dtype_to_safetensors(t.dtype), it->at("dtype").get<std::string>());
    EXPECT_EQ(t.shape, it->at("shape").get<std::vector<int64_t>>());
    const auto values = it->at("values").get<std::vector<double>>();
    ASSERT_EQ(static_cast<size_t>(t.numel()), values.size());
    ASSERT_EQ(t.nbytes, values.size() * dtype_size(t.dtype));
    for (size_t i = 0; i < values.size(); ++i) {
      if (t.dtype == DType::I64)  // beyond 2^53 doubles lose bits: compare as int64
        EXPECT_EQ(static_cast<int64_t>(element(t, i)), static_cast<int64_t>(values[i])) << i;
      else if (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16)
        EXPECT_EQ(static_cast<float>(element(t, i)), static_cast<float>(values[i])) << i;
      else
        EXPECT_EQ(element(t, i), values[i]) << i;
    }
  }
}

// ---- fixtures written by real torch

TEST(TorchCheckpoint, DtypesMatchTorch) { expect_matches_torch(TensorStore(torch_fixture("dtypes.pt")), "dtypes.pt"); }

TEST(TorchCheckpoint, ViewsMatchTorch) { expect_matches_torch(TensorStore(torch_fixture("layouts.pt")), "layouts.pt"); }

TEST(TorchCheckpoint, NestedStateDictWithMetadataMatchesTorch) {
  TorchCheckpoint ck(torch_fixture("nested.pt"));
  EXPECT_EQ(ck.unwrapped_key(), "state_dict");
  EXPECT_EQ(ck.archive_prefix(), "nested");
  expect_matches_torch(TensorStore(torch_fixture("nested.pt")), "nested.pt");
}

TEST(TorchCheckpoint, Protocol4AndModulePrefixMatchTorch) {
  TorchCheckpoint ck(torch_fixture("protocol4.pt"));
  EXPECT_EQ(ck.unwrapped_key(), "model");
  expect_matches_torch(TensorStore(torch_fixture("protocol4.pt")), "protocol4.pt");
}

TEST(TorchCheckpoint, ContiguousTensorsPointIntoTheMapSharedStorageIsShared) {
  const ZipArchive zip(torch_fixture("layouts.pt"));
  TorchCheckpoint ck(torch_fixture("layouts.pt"));
  const TensorView& m = *ck.find("matrix");
  const uint8_t* base = zip.stored_data(zip.get("layouts/data/0"));
  (void)base;
  // matrix, row_slice and the strided views share one storage: row_slice starts 4 floats in.
  EXPECT_EQ(ck.find("row_slice")->data, m.data + 4 * sizeof(float));
  // storages are 64-byte aligned in the file, so the mapped matrix is too
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data) % 64, 0u);
  // transposed and strided tensors are materialized (not inside the matrix's storage)
  for (const char* n : {"transposed", "column", "every_other"}) {
    const TensorView& t = *ck.find(n);
    EXPECT_TRUE(t.data < m.data || t.data >= m.data + m.nbytes) << n;
  }
}

TEST(TorchCheckpoint, MaliciousPickleIsRefusedByNameAndNothingRuns) {
  const fs::path marker = "/tmp/kvrun-torch-fixture-pwned";
  std::error_code ec;
  fs::remove(marker, ec);
  expect_error([&] { TorchCheckpoint ck(torch_fixture("evil.pt")); },
               {"evil.pt", "refused global 'posix.system'", "nothing was executed"});
  expect_error([&] { TensorStore s(torch_fixture("evil.pt")); }, {"refused global 'posix.system'"});
  EXPECT_FALSE(fs::exists(marker));
}

TEST(TorchCheckpoint, LegacyFormatIsRefusedClearly) {
  expect_error([&] { TensorStore s(torch_fixture("legacy.pt")); },
               {"legacy.pt", "legacy torch.save format", "not supported"});
}

TEST(TorchCheckpoint, EveryTruncationIsAnError) {
  TempDir d;
  const std::string full = read_bytes(torch_fixture("dtypes.pt"));
  const fs::path p = d / "cut.pt";
  int errors = 0;
  for (size_t len = 0; len < full.size(); len += (len < 64 ? 1 : 37)) {
    write_bytes(p, full.substr(0, len));
    try {
      TorchCheckpoint ck(p);
      ADD_FAILURE() << "truncated to " << len << " bytes was accepted";
    } catch (const Error& e) {
      ++errors;
      EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(errors, 100);
  write_bytes(p, "");
  expect_error([&] { TorchCheckpoint ck(p); }, {p.string(), "empty file"});
}

TEST(TorchCheckpoint, CorruptPickleBytesAreCaughtByTheCrc) {
  TempDir d;
  std::string b = read_bytes(torch_fixture("dtypes.pt"));
  const ZipArchive zip(torch_fixture("dtypes.pt"));
  const ZipEntry& pkl = zip.get("dtypes/data.pkl");
  b[pkl.data_offset + 10] ^= 0x40;
  write_bytes(d / "c.pt", b);
  expect_error([&] { TorchCheckpoint ck(d / "c.pt"); }, {"c.pt", "data.pkl"});
}

// ---- hand-made archives: storage bounds

// Protocol-2 pickle {name: _rebuild_tensor_v2(storage('0', cls, numel), offset, size, stride)}.
std::string tensor_pickle(const std::string& cls, int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                          const std::vector<int64_t>& stride, const std::string& name = "w") {
  std::string p = "\x80\x02}";
  auto str = [&](const std::string& s) {
    p += 'X';
    for (int i = 0; i < 4; ++i) p += static_cast<char>(s.size() >> (8 * i));
    p += s;
  };
  auto num = [&](int64_t v) {
    p += 'J';
    for (int i = 0; i < 4; ++i) p += static_cast<char>(static_cast<uint32_t>(v) >> (8 * i));
  };
  str(name);
  p += "ctorch._utils\n_rebuild_tensor_v2\n((";
  str("storage");
  p += "ctorch\n" + cls + "\n";
  str("0");
  str("cpu");
  num(numel);
  p += "tQ";
  num(offset);
  p += '(';
  for (auto s : size) num(s);
  p += "t(";
  for (auto s : stride) num(s);
  p += "t\x89}tRs.";
  return p;
}

void write_archive(const fs::path& p, const std::string& pkl, const std::string& storage) {
  write_stored_zip(p, {{"archive/data.pkl", pkl}, {"archive/data/0", storage}, {"archive/version", "3\n"}});
}

TEST(TorchCheckpoint, HandMadeArchiveLoads) {
  TempDir d;
  std::vector<float> v = {1, 2, 3, 4, 5, 6};
  write_archive(d / "ok.pt", tensor_pickle("FloatStorage", 6, 1, {2, 2}, {1, 2}),
                std::string(reinterpret_cast<const char*>(v.data()), 24));
  TensorStore s(d / "ok.pt");
  EXPECT_EQ(s.get("w").shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(s.get("w").to_f32(), (std::vector<float>{2, 4, 3, 5}));  // transposed view at offset 1
}

TEST(TorchCheckpoint, StorageBoundsAreChecked) {
  TempDir d;
  const std::string bytes24(24, '\0');
  struct Case {
    std::string pkl, storage;
    std::vector<std::string> fragments;
  };
  const std::vector<Case> cases = {
      {tensor_pickle("FloatStorage", 6, 0, {2, 4}, {4, 1}), bytes24, {"reaches element 7", "holds 6 elements"}},
      {tensor_pickle("FloatStorage", 6, 5, {2}, {1}), bytes24, {"storage offset 5", "reaches element 6"}},
      {tensor_pickle("FloatStorage", 6, 0, {3, 3}, {0, 3}), bytes24, {"reaches element 6"}},
      {tensor_pickle("FloatStorage", 7, 0, {2}, {1}), bytes24, {"holds 24 bytes", "expected 7 x float32 = 28"}},
      {tensor_pickle("FloatStorage", 6, -1, {2}, {1}), bytes24, {"negative storage offset"}},
      {tensor_pickle("FloatStorage", 6, 0, {2}, {-1}), bytes24, {"negative size or stride"}},
      {tensor_pickle("FloatStorage", 6, 0, {2, 3}, {3}), bytes24, {"size has 2 dimensions but stride 1"}},
      {tensor_pickle("FloatStorage", 0x7fffffff, 0, {2}, {1}), bytes24, {"expected 2147483647 x float32"}},
      {tensor_pickle("FloatStorage", 6, 0, {5000, 5000}, {0, 0}), bytes24, {"overlapping view", "25000000"}},
      {tensor_pickle("EvilStorage", 6, 0, {2}, {1}), bytes24, {"refused global 'torch.EvilStorage'"}},
      {tensor_pickle("FloatStorage", 6, 0, {1 << 30, 1 << 30, 1 << 30}, {1, 1, 1}), bytes24, {"is too large"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.fragments[0]);
    write_archive(d / "bad.pt", c.pkl, c.storage);
    std::vector<std::string> f = c.fragments;
    f.push_back((d / "bad.pt").string());
    expect_error([&] { TensorStore s(d / "bad.pt"); }, f);
  }
  // the storage entry is missing
  write_stored_zip(d / "nostorage.pt", {{"archive/data.pkl", tensor_pickle("FloatStorage", 6, 0, {2}, {1})}});
  expect_error([&] { TensorStore s(d / "nostorage.pt"); }, {"'archive/data/0' is missing"});
  // no data.pkl at all
  write_stored_zip(d / "nopkl.pt", {{"archive/other", "x"}});
  expect_error([&] { TensorStore s(d / "nopkl.pt"); }, {"no '<archive>/data.pkl'", "'archive/other'"});
  // a pickle with no tensors
  write_stored_zip(d / "none.pt", {{"archive/data.pkl",
                                    "\x80\x02}X\x01\x00\x00\x00"
                                    "aK\x01s."s}});
  expect_error([&] { TensorStore s(d / "none.pt"); }, {"no tensors found", "'a'"});
}

// ---- the unpickler on its own

std::string u32le(uint32_t v) {
  std::string s;
  for (int i = 0; i < 4; ++i) s += static_cast<char>(v >> (8 * i));
  return s;
}

pickle::Document unpickle_str(const std::string& s, const pickle::Limits& lim = {}) {
  return pickle::unpickle(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "test.pkl", lim);
}

TEST(Pickle, ScalarsAndContainers) {
  // {'a': [1, -2, 300, 70000, -(2**40), 1.5, True, False, None, 'x', b'y'], 'b': (1, 2)}
  std::string p = "\x80\x02}(X" + u32le(1) + "a](K\x01J" + u32le(static_cast<uint32_t>(-2)) + "M\x2c\x01J" +
                  u32le(70000) + std::string("\x8a\x06\x00\x00\x00\x00\x00\xff", 8) + "G" +
                  std::string("\x3f\xf8\x00\x00\x00\x00\x00\x00", 8) + "\x88\x89N\x8c\x01xC\x01yeX" + u32le(1) +
                  "bK\x01K\x02\x86u.";
  const pickle::Document doc = unpickle_str(p);
  const pickle::Value* r = doc.root();
  ASSERT_EQ(r->kind, pickle::Kind::Dict);
  const pickle::Value* a = r->get("a");
  ASSERT_TRUE(a && a->kind == pickle::Kind::List);
  ASSERT_EQ(a->items.size(), 11u);
  EXPECT_EQ(a->items[0]->i, 1);
  EXPECT_EQ(a->items[1]->i, -2);
  EXPECT_EQ(a->items[2]->i, 300);
  EXPECT_EQ(a->items[3]->i, 70000);
  EXPECT_EQ(a->items[4]->i, -(int64_t{1} << 40));
  EXPECT_EQ(a->items[5]->f, 1.5);
  EXPECT_TRUE(a->items[6]->b);
  EXPECT_FALSE(a->items[7]->b);
  EXPECT_EQ(a->items[8]->kind, pickle::Kind::None);
  EXPECT_EQ(a->items[9]->s, "x");
  EXPECT_EQ(a->items[10]->kind, pickle::Kind::Bytes);
  ASSERT_EQ(r->get("b")->kind, pickle::Kind::Tuple);
  EXPECT_EQ(r->get("b")->items[1]->i, 2);
}

TEST(Pickle, HostileInputsAreErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"\x80\x02X\xff\xff\xff\xff", "an argument of 4294967295 bytes but only 0 remain"},
      {std::string("\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\x7f", 11), "truncated pickle"},
      {"\x80\x02h\x05.", "memo entry 5 read before it was written"},
      {"\x80\x02.", "STOP with 0 values"},
      {"\x80\x02s.", "stack underflow"},
      {"\x80\x02(K\x01s.", "stack underflow"},  // SETITEM may not pop below the MARK
      {"\x80\x02}K\x01.", "STOP with 2 values"},
      {"\x80\x02]K\x01", "no STOP opcode"},
      {"\x80\x02t.", "no MARK"},
      {"\x80\x07}.", "pickle protocol 7"},
      {"\x80\x02I1\n.", "unsupported opcode 0x49 ('I')"},
      {"\x80\x02"
       "cposix\nsystem\n.",
       "refused global 'posix.system'"},
      {"\x80\x02\x8c\x08"
       "builtins\x8c\x04"
       "eval\x93.",
       "refused global 'builtins.eval'"},
      {"\x80\x02"
       "cbuiltins\n",
       "GLOBAL argument without a newline"},
      {"\x80\x02]\x88\x88\x86s.", "stack underflow"},
      {"\x80\x02}]K\x01s.", "dict key of type list"},
      {"\x80\x02)K\x01"
       "a.",
       "APPEND to a tuple"},
      {"\x80\x02"
       "ccollections\nOrderedDict\nK\x01\x85R.",
       "collections.OrderedDict: expected no arguments"},
      {"\x80\x02"
       "ctorch\nFloatStorage\n)R.",
       "REDUCE on a 'torch.FloatStorage'"},
      {"\x80\x02K\x01Q.", "persistent id: expected ('storage'"},
      {std::string("\x80\x02\x8a\x09") + std::string(9, '\1') + ".", "integer of 9 bytes"},
      {"\x80\x02)K\x01"
       "b.",
       "BUILD on a tuple"},
  };
  for (const auto& [bytes, fragment] : cases) {
    SCOPED_TRACE(fragment);
    expect_error([&] { unpickle_str(bytes); }, {"test.pkl: pickle: ", fragment, "at byte"});
  }
}

TEST(Pickle, LimitsBoundTheWork) {
  pickle::Limits lim;
  lim.max_marks = 8;
  expect_error([&] { unpickle_str("\x80\x02" + std::string(100, '('), lim); }, {"more than 8 nested MARKs"});
  lim = {};
  lim.max_stack = 16;
  expect_error([&] { unpickle_str("\x80\x02" + std::string(100, 'N'), lim); }, {"stack deeper than 16"});
  lim = {};
  lim.max_values = 10;
  expect_error([&] { unpickle_str("\x80\x02]" + std::string(100, ']') + ".", lim); }, {"more than 10 values"});
  lim = {};
  lim.max_memo = 2;
  expect_error([&] { unpickle_str("\x80\x02N\x94\x94\x94.", lim); }, {"memo larger than 2"});
  // A list that contains itself parses (and is freed) without trouble.
  const pickle::Document doc = unpickle_str(
      "\x80\x02]q\x00h\x00"
      "a."s);
  EXPECT_EQ(doc.root()->items.at(0), doc.root());
}

// ---- ZipArchive

TEST(ZipArchive, ListsReadsAndLocatesStoredEntries) {
  TempDir d;
  write_stored_zip(d / "z.zip", {{"a/one", "hello"}, {"a/two", std::string(1000, 'x')}, {"a/empty", ""}});
  const ZipArchive z(d / "z.zip");
  ASSERT_EQ(z.entries().size(), 3u);
  EXPECT_EQ(z.entries()[0].name, "a/one");
  const ZipEntry& two = z.get("a/two");
  EXPECT_TRUE(two.stored);
  EXPECT_EQ(two.size, 1000u);
  EXPECT_EQ(two.data_offset % 64, 0u);
  const std::vector<uint8_t> r = z.read(z.get("a/one"));
  EXPECT_EQ(std::string(r.begin(), r.end()), "hello");
  EXPECT_EQ(std::memcmp(z.stored_data(two), std::string(1000, 'x').data(), 1000), 0);
  EXPECT_TRUE(z.read(z.get("a/empty")).empty());
  expect_error([&] { z.get("nope"); }, {(d / "z.zip").string(), "entry 'nope' not found"});
  expect_error([&] { z.read(two, 10); }, {"'a/two' is 1000 bytes, more than the limit of 10"});
}

TEST(ZipArchive, CorruptArchivesAreErrors) {
  TempDir d;
  write_stored_zip(d / "z.zip", {{"a/one", "hello"}, {"a/two", std::string(1000, 'x')}});
  const std::string good = read_bytes(d / "z.zip");
  const fs::path p = d / "bad.zip";
  write_bytes(p, "PK");
  expect_error([&] { ZipArchive z(p); }, {p.string(), "at least 22 bytes", "found 2"});
  write_bytes(p, std::string(100, 'a'));
  expect_error([&] { ZipArchive z(p); }, {p.string(), "not a zip archive"});
  write_bytes(p, good.substr(0, good.size() - 1));
  expect_error([&] { ZipArchive z(p); }, {p.string(), "end-of-central-directory"});
  // central directory offset pointing past the end
  std::string b = good;
  const size_t eocd = b.size() - 22;
  b[eocd + 16] = '\xff';
  b[eocd + 17] = '\xff';
  b[eocd + 18] = '\xff';
  b[eocd + 19] = '\x7f';
  write_bytes(p, b);
  expect_error([&] { ZipArchive z(p); }, {p.string(), "central directory", "runs past the end"});
  // an entry's size grown past the end of the file (central + local records edited)
  b = good;
  const size_t cd = static_cast<uint8_t>(b[eocd + 16]) | (static_cast<uint8_t>(b[eocd + 17]) << 8);
  const size_t rec2 = cd + 46 + 5;  // second central record (first has a 5-byte name, no extra)
  ASSERT_EQ(b.substr(rec2, 4), "PK\x01\x02");
  for (size_t off : {rec2 + 20, rec2 + 24}) b[off + 2] = '\x01';  // sizes += 65536
  write_bytes(p, b);
  expect_error([&] { ZipArchive z(p); }, {p.string()});
}

// ---- the writer

std::vector<TensorToWrite> sample_tensors(std::vector<std::vector<uint8_t>>& keep) {
  std::vector<TensorToWrite> t;
  auto add = [&](const std::string& name, DType dt, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    std::vector<uint8_t> b(static_cast<size_t>(n) * dtype_size(dt));
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 7 + name.size());
    if (dt == DType::BOOL)
      for (auto& x : b) x &= 1;
    if (dt == DType::F32 || dt == DType::F64)  // finite values (no NaN bit patterns)
      for (size_t i = 0; i < b.size(); i += dtype_size(dt)) b[i + dtype_size(dt) - 1] = 0x3f;
    if (dt == DType::F16 || dt == DType::BF16)
      for (size_t i = 0; i < b.size(); i += 2) b[i + 1] = 0x3c;
    keep.push_back(std::move(b));
    t.push_back({name, dt, shape, keep.back().data()});
  };
  add("model.embed.weight", DType::BF16, {5, 3});
  add("f32", DType::F32, {2, 3, 2});
  add("f16", DType::F16, {7});
  add("f64", DType::F64, {2});
  add("i64", DType::I64, {3});
  add("i32", DType::I32, {1, 1});
  add("u8", DType::U8, {300});
  add("bool", DType::BOOL, {4});
  add("i8", DType::I8, {2});
  add("scalar", DType::F32, {});
  add("empty", DType::F32, {0, 3});
  return t;
}

void expect_roundtrip(const fs::path& p, const std::vector<TensorToWrite>& tensors) {
  const TensorStore s(p);
  ASSERT_EQ(s.names().size(), tensors.size());
  for (const auto& t : tensors) {
    const TensorView& v = s.get(t.name);
    EXPECT_EQ(v.dtype, t.dtype) << t.name;
    EXPECT_EQ(v.shape, t.shape) << t.name;
    ASSERT_EQ(v.nbytes, static_cast<size_t>(v.numel()) * dtype_size(t.dtype));
    if (v.nbytes) {
      EXPECT_EQ(std::memcmp(v.data, t.data, v.nbytes), 0) << t.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % 64, 0u) << t.name;
    }
  }
}

TEST(TorchWriter, RoundTripsEveryDtypeWrappedAndFlat) {
  TempDir d;
  std::vector<std::vector<uint8_t>> keep;
  const auto tensors = sample_tensors(keep);
  write_torch_checkpoint(d / "wrapped.pt", tensors);
  expect_roundtrip(d / "wrapped.pt", tensors);
  EXPECT_EQ(TorchCheckpoint(d / "wrapped.pt").unwrapped_key(), "state_dict");
  write_torch_checkpoint(d / "flat.bin", tensors, "");
  expect_roundtrip(d / "flat.bin", tensors);
  EXPECT_EQ(TorchCheckpoint(d / "flat.bin").unwrapped_key(), "");
  // torch's own layout: <stem>/data.pkl first, version and byteorder present, data 64-aligned
  const ZipArchive z(d / "wrapped.pt");
  EXPECT_EQ(z.entries().front().name, "wrapped/data.pkl");
  for (const char* n : {"wrapped/version", "wrapped/byteorder", "wrapped/.data/serialization_id"})
    EXPECT_NE(z.find(n), nullptr) << n;
  for (const ZipEntry& e : z.entries()) EXPECT_EQ(e.data_offset % 64, 0u) << e.name;

  // For the offline check with real torch (tools/make_torch_fixtures.py --verify):
  // KVRUN_TORCH_SAMPLE_DIR=dir writes dir/sample.pt and dir/sample.json.
  if (const char* out = std::getenv("KVRUN_TORCH_SAMPLE_DIR")) {
    fs::copy_file(d / "wrapped.pt", fs::path(out) / "sample.pt", fs::copy_options::overwrite_existing);
    json want = json::object();
    const TensorStore written(d / "wrapped.pt");
    for (const auto& t : tensors) {
      const TensorView& v = written.get(t.name);
      json vals = json::array();
      for (size_t i = 0; i < static_cast<size_t>(v.numel()); ++i) {
        const double x = element(v, i);
        if (t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16 || t.dtype == DType::F64)
          vals.push_back(x);
        else if (t.dtype == DType::I64)
          vals.push_back(reinterpret_cast<const int64_t*>(v.data)[i]);  // exact beyond 2^53
        else
          vals.push_back(static_cast<int64_t>(x));
      }
      want[t.name] = {{"dtype", std::string(dtype_to_safetensors(t.dtype))}, {"shape", t.shape}, {"values", vals}};
    }
    write_text_file_atomic(fs::path(out) / "sample.json", want.dump());
  }
}

TEST(TorchWriter, StreamsAndLeavesNothingOnFailure) {
  TempDir d;
  std::vector<TensorToWrite> t = {{"a", DType::F32, {4}, nullptr}, {"b", DType::BF16, {2, 2}, nullptr}};
  std::vector<size_t> order;
  write_torch_checkpoint_streaming(d / "s.pt", t, "state_dict", [&](size_t i, std::vector<uint8_t>& buf) {
    order.push_back(i);
    ASSERT_EQ(buf.size(), i == 0 ? 16u : 8u);
    for (auto& x : buf) x = static_cast<uint8_t>(i + 1);
  });
  EXPECT_EQ(order, (std::vector<size_t>{0, 1}));
  EXPECT_EQ(TensorStore(d / "s.pt").get("b").data[3], 2);
  EXPECT_THROW(write_torch_checkpoint_streaming(d / "f.pt", t, "",
                                                [&](size_t i, std::vector<uint8_t>&) {
                                                  if (i == 1) throw Error("fill failed");
                                                }),
               Error);
  EXPECT_FALSE(fs::exists(d / "f.pt"));
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(d.path())) files += e.path().filename() != "s.pt";
  EXPECT_EQ(files, 0u);
  expect_error(
      [&] {
        write_torch_checkpoint(d / "x.pt", {{"a", DType::F32, {1}, nullptr}, {"a", DType::F32, {1}, nullptr}});
      },
      {"'a' written twice"});
}

// ---- TensorStore over torch files

TEST(TensorStoreTorch, ShardedPytorchModelBinAndSubViews) {
  TempDir d;
  std::vector<std::vector<uint8_t>> keep;
  const auto tensors = sample_tensors(keep);
  const std::vector<TensorToWrite> first(tensors.begin(), tensors.begin() + 4),
      rest(tensors.begin() + 4, tensors.end());
  write_torch_checkpoint(d / "pytorch_model-00001-of-00002.bin", first, "");
  write_torch_checkpoint(d / "pytorch_model-00002-of-00002.bin", rest, "");
  json index = {{"metadata", json::object()}, {"weight_map", json::object()}};
  for (const auto& t : first) index["weight_map"][t.name] = "pytorch_model-00001-of-00002.bin";
  for (const auto& t : rest) index["weight_map"][t.name] = "pytorch_model-00002-of-00002.bin";
  write_text_file_atomic(d / "pytorch_model.bin.index.json", index.dump());
  expect_roundtrip(d.path(), tensors);

  const TensorStore all(d.path());
  const TensorStore model = all.sub("model.");
  EXPECT_EQ(model.names(), (std::vector<std::string>{"embed.weight"}));
  EXPECT_EQ(&model.get("embed.weight"), &all.get("model.embed.weight"));
  EXPECT_TRUE(model.has("embed.weight"));
  EXPECT_FALSE(model.has("f32"));
  EXPECT_EQ(model.prefix(), "model.");
  const TensorStore embed = model.sub("embed.");
  EXPECT_EQ(embed.names(), (std::vector<std::string>{"weight"}));
  EXPECT_EQ(embed.get("weight").data, all.get("model.embed.weight").data);
  expect_error([&] { model.get("f32"); }, {"tensor 'model.f32' not found"});
  EXPECT_TRUE(all.sub("nothing.").names().empty());

  index["weight_map"]["ghost"] = "pytorch_model-00001-of-00002.bin";
  write_text_file_atomic(d / "pytorch_model.bin.index.json", index.dump());
  expect_error([&] { TensorStore s(d.path()); },
               {"pytorch_model-00001-of-00002.bin", "'ghost' listed in pytorch_model.bin.index.json"});
}

TEST(TensorStoreTorch, FolderWithPytorchModelBinAndModulePrefix) {
  TempDir d;
  std::vector<float> w = {1, 2, 3};
  write_torch_checkpoint(d / "pytorch_model.bin", {{"module.w", DType::F32, {3}, w.data()}}, "model_state_dict");
  const TensorStore s(d.path());
  EXPECT_EQ(s.names(), (std::vector<std::string>{"w"}));
  EXPECT_EQ(s.get("w").to_f32(), w);
  // a folder prefers safetensors when both are present
  write_safetensors(d / "model.safetensors", {{"st", DType::F32, {3}, w.data()}});
  EXPECT_EQ(TensorStore(d.path()).names(), (std::vector<std::string>{"st"}));
}

// kvrun build of a Hugging Face folder whose weights are pytorch_model.bin (written here
// from the qwen3-tiny fixture) reproduces that fixture's transformers logits.
TEST(TensorStoreTorch, BuildFromPytorchModelBinMatchesHfGoldens) {
  TempDir d;
  const fs::path src = fixture("qwen3-tiny");
  const fs::path ckpt = d / "hf";
  fs::create_directories(ckpt);
  for (const char* f : {"config.json", "generation_config.json"}) fs::copy_file(src / f, ckpt / f);
  const TensorStore st(src);
  std::vector<TensorToWrite> tensors;
  for (const auto& n : st.names()) {
    const TensorView& v = st.get(n);
    tensors.push_back({n, v.dtype, v.shape, v.data});
  }
  write_torch_checkpoint(ckpt / "pytorch_model.bin", tensors, "");
  const TensorStore bin(ckpt);
  ASSERT_EQ(bin.names(), st.names());

  BuildOptions o;
  o.checkpoint = ckpt;
  o.out = d / "pkg";
  build_package(o);
  const Golden g = load_golden("qwen3-tiny");
  runtime::PackageModel model(o.out);
  const int64_t V = model.vocab_size();
  for (size_t k = 0; k < g.prompts.size(); ++k) {
    const std::vector<float> hf = g.prompt_logits(k);
    auto s = model.new_state();
    std::vector<float> lg = model.forward_ids(s, g.prompts[k]);
    ASSERT_EQ(static_cast<int64_t>(lg.size()), V);
    double worst = 0;
    for (int64_t i = 0; i < V; ++i)
      worst = std::max(worst, static_cast<double>(std::fabs(lg[i] - hf[hf.size() - V + i])));
    EXPECT_LE(worst, 1e-4) << "prompt " << k;
    std::vector<int64_t> out;
    for (int i = 0; i < 32; ++i) {
      out.push_back(std::max_element(lg.begin(), lg.end()) - lg.begin());
      if (i + 1 < 32) lg = model.forward_ids(s, {out.back()});
    }
    EXPECT_EQ(out, g.greedy[k]) << "prompt " << k;
  }
}

// ---- config.yaml

TEST(Yaml, ScalarsAreTypedLikeOmegaConf) {
  const json j = parse_yaml(R"(
ints: [42, -7, +3, 1_000, 0x1f, 017, 0b101, 0]
floats: [1.5, 1e-5, 1E5, -2.5e+3, .5, 1., -.inf, 3.0e-12]
bools: [true, False, yes, NO, on, Off]
nulls: [~, null, NULL, {a: }]
strings: [hello, "42", '1e-5', 09, 1e, "true", 1.2.3, 0x]
nested:
  a: {b: [1, {c: d}]}
empty:
)",
                            "config.yaml");
  EXPECT_EQ(j["ints"], json::parse("[42, -7, 3, 1000, 31, 15, 5, 0]"));
  for (const auto& x : j["ints"]) EXPECT_TRUE(x.is_number_integer());
  const std::vector<double> floats = {1.5, 1e-5, 1e5, -2500, 0.5, 1.0, -INFINITY, 3e-12};
  ASSERT_EQ(j["floats"].size(), floats.size());
  for (size_t i = 0; i < floats.size(); ++i) {
    EXPECT_TRUE(j["floats"][i].is_number_float()) << i;
    EXPECT_EQ(j["floats"][i].get<double>(), floats[i]) << i;
  }
  EXPECT_EQ(j["bools"], json::parse("[true, false, true, false, true, false]"));
  EXPECT_EQ(j["nulls"], json::parse(R"([null, null, null, {"a": null}])"));
  EXPECT_EQ(j["strings"], json::parse(R"(["hello", "42", "1e-5", "09", "1e", "true", "1.2.3", "0x"])"));
  EXPECT_EQ(j["nested"]["a"]["b"][1]["c"], "d");
  EXPECT_TRUE(j["empty"].is_null());
}

TEST(Yaml, FunAsrStyleConfigAndRequiredKeys) {
  TempDir d;
  write_bytes(d / "config.yaml", R"(model: FunASRNano
model_conf:
  lsm_weight: 0.1
audio_encoder: SenseVoiceEncoderSmall
audio_encoder_conf:
  output_size: 512
  attention_heads: 4
  normalize_before: true
  dropout_rate: 0.1
base: &base {ffn_dim: 2048, n_layer: 2}
audio_adaptor_conf:
  <<: *base
  n_layer: 3
llm_conf:
  init_param_path: Qwen3-0.6B
  llm_dtype: bf16
)");
  const json j = read_yaml_file(d / "config.yaml");
  EXPECT_EQ(yaml_require_int(j, "audio_encoder_conf.output_size", "config.yaml"), 512);
  EXPECT_EQ(yaml_require_number(j, "model_conf.lsm_weight", "config.yaml"), 0.1);
  EXPECT_TRUE(yaml_require_bool(j, "audio_encoder_conf.normalize_before", "config.yaml"));
  EXPECT_EQ(yaml_require_string(j, "llm_conf.init_param_path", "config.yaml"), "Qwen3-0.6B");
  EXPECT_EQ(yaml_require_int(j, "audio_adaptor_conf.ffn_dim", "config.yaml"), 2048);  // merged
  EXPECT_EQ(yaml_require_int(j, "audio_adaptor_conf.n_layer", "config.yaml"), 3);     // own key wins
  expect_error([&] { yaml_require(j, "audio_encoder_conf.tp_blocks", "config.yaml"); },
               {"config.yaml: missing key 'audio_encoder_conf.tp_blocks'"});
  expect_error([&] { yaml_require_int(j, "model", "config.yaml"); },
               {"config.yaml: key 'model' is string \"FunASRNano\", expected an integer"});
  EXPECT_EQ(yaml_find(j, "nope.deeper"), nullptr);
  const json l = parse_yaml("a: [x, {b: 5}]", "l.yaml");
  EXPECT_EQ(yaml_require_int(l, "a.1.b", "l.yaml"), 5);
}

TEST(Yaml, ErrorsNameFileAndLine) {
  TempDir d;
  write_bytes(d / "bad.yaml", "a: 1\nb: [1, 2\nc: 3\n");
  expect_error([&] { read_yaml_file(d / "bad.yaml"); }, {(d / "bad.yaml").string() + ":", "invalid YAML"});
  expect_error([&] { parse_yaml("a: 1\nb:\n  c: 1\n  c: 2\n", "dup.yaml"); }, {"dup.yaml:4:3: duplicate key 'c'"});
  expect_error([&] { parse_yaml("a: !!python/object/apply:os.system [ls]\n", "evil.yaml"); },
               {"evil.yaml:1:4", "unsupported tag 'tag:yaml.org,2002:python/object/apply:os.system'"});
  expect_error([&] { parse_yaml("a: !!int abc\n", "t.yaml"); }, {"t.yaml:1:4", "!!int value 'abc'"});
  expect_error([&] { read_yaml_file(d / "missing.yaml"); }, {"missing.yaml", "no such file"});
  // alias bombs stop at the value limit
  std::string bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b'; c <= 'j'; ++c)
    bomb += std::string(1, c) + ": &" + c + " [*" + static_cast<char>(c - 1) + ", *" + static_cast<char>(c - 1) +
            ", *" + static_cast<char>(c - 1) + ", *" + static_cast<char>(c - 1) + ", *" + static_cast<char>(c - 1) +
            ", *" + static_cast<char>(c - 1) + ", *" + static_cast<char>(c - 1) + ", *" + static_cast<char>(c - 1) +
            "]\n";
  expect_error([&] { parse_yaml(bomb, "bomb.yaml"); }, {"bomb.yaml", "values (alias expansion?)"});
  EXPECT_TRUE(parse_yaml("", "empty.yaml").is_null());
}

}  // namespace
}  // namespace kvrun::test
