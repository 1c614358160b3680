// kvrun's decode attention kernel (runtime/attention_kernel.h, runtime/ort_kernels.h)
// against ONNX Runtime's own com.microsoft GroupQueryAttention on one-node graphs:
// the same inputs through both, outputs and caches compared.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include "graph/builder.h"
#include "runtime/attention_kernel.h"
#include "runtime/ort_kernels.h"
#include "runtime/ort_session.h"
#include "test_util.h"

namespace kvrun {
namespace {
using graph::Dim;
using runtime::HostTensor;

constexpr int64_t kHeads = 4, kKvHeads = 2, kD = 16, kRows = 64;

// One GroupQueryAttention node: q/k/v (or packed qkv), past/present, rotary tables.
std::filesystem::path gqa_graph(const std::filesystem::path& dir, bool packed, io::DType T = io::DType::F32) {
  const auto path = dir / (std::string(packed ? "gqa_packed" : "gqa") + (T == io::DType::F16 ? "_f16" : "") + ".onnx");
  graph::GraphBuilder g(path, "gqa", {{"", 17}, {"com.microsoft", 1}});
  const std::vector<Dim> kv = {Dim{"b"}, Dim{kKvHeads}, Dim{"p"}, Dim{kD}};
  if (packed) {
    g.input("qkv", T, {Dim{"b"}, Dim{"s"}, Dim{(kHeads + 2 * kKvHeads) * kD}});
  } else {
    g.input("q", T, {Dim{"b"}, Dim{"s"}, Dim{kHeads * kD}});
    g.input("k", T, {Dim{"b"}, Dim{"s"}, Dim{kKvHeads * kD}});
    g.input("v", T, {Dim{"b"}, Dim{"s"}, Dim{kKvHeads * kD}});
  }
  g.input("past_key", T, kv);
  g.input("past_value", T, kv);
  g.input("seqlens_k", io::DType::I32, {Dim{"b"}});
  g.input("total_sequence_length", io::DType::I32, {});
  std::vector<float> cos(kRows * kD / 2), sin(cos.size());
  for (int64_t p = 0; p < kRows; ++p)
    for (int64_t i = 0; i < kD / 2; ++i) {
      const double a = p * std::pow(10000.0, -2.0 * i / kD);
      cos[p * kD / 2 + i] = static_cast<float>(std::cos(a)), sin[p * kD / 2 + i] = static_cast<float>(std::sin(a));
    }
  const std::string c = g.weight("cos", T, {kRows, kD / 2}, cos.data());
  const std::string s = g.weight("sin", T, {kRows, kD / 2}, sin.data());
  std::vector<std::string> in =
      packed ? std::vector<std::string>{"qkv", "", ""} : std::vector<std::string>{"q", "k", "v"};
  in.insert(in.end(), {"past_key", "past_value", "seqlens_k", "total_sequence_length", c, s});
  // the packed variant also sets a scale, which the fallback hands to ORT's kernel
  std::vector<graph::Attr> attrs = {
      {"num_heads", kHeads}, {"kv_num_heads", kKvHeads}, {"do_rotary", 1}, {"rotary_interleaved", 0}};
  if (packed) attrs.emplace_back("scale", 0.3f);
  g.node("GroupQueryAttention", "gqa", in, {"out", "present_key", "present_value"}, attrs, "com.microsoft");
  g.output("out", T, {Dim{"b"}, Dim{"s"}, Dim{kHeads * kD}});
  g.output("present_key", T, kv);
  g.output("present_value", T, kv);
  g.finish();
  return path;
}

HostTensor random_tensor(std::vector<int64_t> shape, std::mt19937& rng, io::DType T = io::DType::F32) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  std::normal_distribution<float> d(0.f, 1.f);
  for (auto& x : v) x = d(rng);
  return HostTensor::from_f32(v, std::move(shape), T);
}

struct Step {
  std::vector<HostTensor> qkv;  // q, k, v or packed
  HostTensor past_k, past_v;
  std::vector<int32_t> seqlens;
  int32_t total = 0;
};

// Runs one step; when `share`, present is written into the past buffers (the kvrun
// runtime's layout), else ORT allocates present.
std::vector<HostTensor> run(runtime::Session& s, Step st, bool share) {
  std::vector<Ort::Value> vals;
  std::vector<std::string> names =
      st.qkv.size() == 1 ? std::vector<std::string>{"qkv"} : std::vector<std::string>{"q", "k", "v"};
  for (auto& t : st.qkv) vals.push_back(t.view());
  names.insert(names.end(), {"past_key", "past_value", "seqlens_k", "total_sequence_length"});
  vals.push_back(st.past_k.view());
  vals.push_back(st.past_v.view());
  HostTensor sl = HostTensor::zeros(io::DType::I32, {static_cast<int64_t>(st.seqlens.size())});
  std::memcpy(sl.bytes.data(), st.seqlens.data(), sl.bytes.size());
  HostTensor tot = HostTensor::zeros(io::DType::I32, {});
  std::memcpy(tot.bytes.data(), &st.total, 4);
  vals.push_back(sl.view());
  vals.push_back(tot.view());
  std::vector<const char*> in;
  for (auto& n : names) in.push_back(n.c_str());
  const std::vector<const char*> out = {"out", "present_key", "present_value"};
  std::vector<Ort::Value> res;
  res.emplace_back(nullptr);
  if (share) {
    res.push_back(st.past_k.view());
    res.push_back(st.past_v.view());
  } else {
    res.emplace_back(nullptr);
    res.emplace_back(nullptr);
  }
  s.run_into(in, vals, out, res);
  std::vector<HostTensor> r;
  for (auto& v : res) r.push_back(runtime::to_host(v));
  if (share) r[1] = st.past_k, r[2] = st.past_v;
  return r;
}

// float16 rounds q after rotary in ORT's kernel and not in kvrun's: a few float16 ulps.
void expect_close(const HostTensor& a, const HostTensor& b, const char* what) {
  ASSERT_EQ(a.shape, b.shape) << what;
  ASSERT_EQ(a.dtype, b.dtype) << what;
  const std::vector<float> x = runtime::to_f32(const_cast<HostTensor&>(a).view()),
                           y = runtime::to_f32(const_cast<HostTensor&>(b).view());
  float worst = 0;
  for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  EXPECT_LE(worst, a.dtype == io::DType::F16 ? 1e-2f : 2e-5f) << what << " (" << a.shape.size() << "-d output)";
}

class Attention : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

// Prefill, a decode step with present allocated by ORT, and decode steps on a shared
// buffer (batch 2, rows of different lengths): kvrun's session equals ORT's.
TEST_P(Attention, KvrunKernelMatchesOrt) {
  const auto [packed, half] = GetParam();
  const io::DType T = half ? io::DType::F16 : io::DType::F32;
  test::TempDir dir;
  const auto path = gqa_graph(dir.path(), packed, T);
  ASSERT_TRUE(runtime::with_kvrun_attention(path).has_value());
  runtime::SessionConfig ort_cfg, kv_cfg;
  ort_cfg.kvrun_kernels = false;
  runtime::Session ort(path, ort_cfg), kv(path, kv_cfg);
  std::mt19937 rng(7);
  auto inputs = [&](int64_t B, int64_t S) {
    if (packed) return std::vector<HostTensor>{random_tensor({B, S, (kHeads + 2 * kKvHeads) * kD}, rng, T)};
    return std::vector<HostTensor>{random_tensor({B, S, kHeads * kD}, rng, T),
                                   random_tensor({B, S, kKvHeads * kD}, rng, T),
                                   random_tensor({B, S, kKvHeads * kD}, rng, T)};
  };
  // prefill of 5, then one step with past 5 (ORT allocates present)
  Step pre{
      inputs(1, 5), HostTensor::zeros(T, {1, kKvHeads, 0, kD}), HostTensor::zeros(T, {1, kKvHeads, 0, kD}), {4}, 5};
  auto a = run(ort, pre, false), b = run(kv, pre, false);
  for (int i = 0; i < 3; ++i) expect_close(a[i], b[i], "prefill");
  Step dec{inputs(1, 1), a[1], a[2], {5}, 6};
  a = run(ort, dec, false), b = run(kv, dec, false);
  for (int i = 0; i < 3; ++i) expect_close(a[i], b[i], "decode, present allocated");

  // shared buffers of 24 positions, batch 2 with 9 and 13 positions filled
  const int64_t cap = 24;
  HostTensor pk = random_tensor({2, kKvHeads, cap, kD}, rng, T), pv = random_tensor({2, kKvHeads, cap, kD}, rng, T);
  std::vector<int32_t> lens = {9, 13};
  for (int step = 0; step < 4; ++step) {
    Step s{inputs(2, 1), pk, pv, lens, lens[1] + 1};
    a = run(ort, s, true), b = run(kv, s, true);
    for (int i = 0; i < 3; ++i) expect_close(a[i], b[i], "decode, shared buffer");
    pk = a[1], pv = a[2];
    for (auto& l : lens) ++l;
  }
}

INSTANTIATE_TEST_SUITE_P(Qkv, Attention, ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "Packed" : "Separate") +
                                  (std::get<1>(info.param) ? "F16" : "F32");
                         });

// The AVX2 loops against the portable ones, on the kernel directly: group sizes 1-3,
// head sizes 64 and 40, float32 and float16 caches, rows of different lengths.
TEST(AttentionKernel, SimdMatchesPortable) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (const bool f16 : {false, true})
    for (const int64_t G : {1, 2, 3})
      for (const int64_t D : {64, 40}) {
        runtime::DecodeAttention a;
        a.batch = 2, a.kv_num_heads = 2, a.num_heads = 2 * G, a.head_size = D, a.capacity = 40;
        a.rotary_dim = D / 2, a.rotary_rows = 64, a.f16 = f16;
        const io::DType T = f16 ? io::DType::F16 : io::DType::F32;
        auto rnd = [&](int64_t n) {
          std::vector<float> v(static_cast<size_t>(n));
          for (auto& x : v) x = nd(rng);
          return HostTensor::from_f32(v, {n}, T);
        };
        HostTensor q = rnd(2 * a.num_heads * D), k = rnd(2 * 2 * D), v = rnd(2 * 2 * D);
        HostTensor cs = rnd(64 * D / 4), sn = rnd(64 * D / 4);
        const std::vector<int32_t> lens = {17, 33};
        a.q = q.bytes.data(), a.k = k.bytes.data(), a.v = v.bytes.data(), a.q_row = a.num_heads * D, a.kv_row = 2 * D;
        a.cos = cs.bytes.data(), a.sin = sn.bytes.data(), a.seqlens_k = lens.data();
        std::vector<float> results[2];
        for (const bool portable : {false, true}) {
          rng.seed(11), nd.reset();  // the same caches for both runs
          HostTensor kc = rnd(2 * 2 * 40 * D), vc = rnd(2 * 2 * 40 * D),
                     out = HostTensor::zeros(T, {2 * a.num_heads * D});
          a.key_cache = kc.bytes.data(), a.value_cache = vc.bytes.data(), a.out = out.bytes.data();
          a.portable = portable;
          a.check();
          for (int64_t u = 0; u < a.units(); ++u) a.run_unit(u);
          results[portable] = runtime::to_f32(out.view());
          const auto keys = runtime::to_f32(kc.view());
          results[portable].insert(results[portable].end(), keys.begin(), keys.end());
        }
        float worst = 0, largest = 0;
        for (size_t i = 0; i < results[0].size(); ++i) {
          worst = std::max(worst, std::abs(results[0][i] - results[1][i]));
          largest = std::max(largest, std::abs(results[0][i]));
        }
        EXPECT_GT(largest, 0.1f);  // something was computed
        EXPECT_LE(worst, f16 ? 2e-3f : 1e-5f) << "f16 " << f16 << ", group " << G << ", head size " << D;
      }
}

// A row whose position is outside the buffer, or a batch without a length per row, is
// refused with a message; nothing is written.
TEST(AttentionKernel, PositionOutsideBufferThrows) {
  test::TempDir dir;
  const auto path = gqa_graph(dir.path(), false);
  runtime::Session kv(path);
  std::mt19937 rng(1);
  Step s{{random_tensor({1, 1, kHeads * kD}, rng), random_tensor({1, 1, kKvHeads * kD}, rng),
          random_tensor({1, 1, kKvHeads * kD}, rng)},
         random_tensor({1, kKvHeads, 8, kD}, rng),
         random_tensor({1, kKvHeads, 8, kD}, rng),
         {8},
         8};
  test::expect_error([&] { run(kv, s, true); }, {"position 8"});
  // two rows, one length: refused before anything is read
  Step two{{random_tensor({2, 1, kHeads * kD}, rng), random_tensor({2, 1, kKvHeads * kD}, rng),
            random_tensor({2, 1, kKvHeads * kD}, rng)},
           random_tensor({2, kKvHeads, 8, kD}, rng),
           random_tensor({2, kKvHeads, 8, kD}, rng),
           {3},
           8};
  test::expect_error([&] { run(kv, two, true); }, {"seqlens_k has 1 values, expected 2"});
}

}  // namespace
}  // namespace kvrun
