#include "runtime/ort_kernels.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <vector>

#include "kvrun/error.h"
#include "runtime/attention_kernel.h"

namespace kvrun::runtime {
namespace fs = std::filesystem;

namespace {

constexpr const char* kGqa = "GroupQueryAttention";
constexpr size_t kGqaInputs = 9;  // query key value past_key past_value seqlens_k total_len cos sin

// Reads an optional attribute; ORT's C++ wrapper throws when it is absent.
template <typename T>
T attr_or(const Ort::ConstKernelInfo& info, const char* name, T fallback) {
  try {
    return info.GetAttribute<T>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

struct GqaKernel {
  bool f16;  // T = float16 (else float32)
  int64_t num_heads, kv_num_heads, do_rotary;
  float scale;
  Ort::Op ort_gqa{nullptr};  // ORT's com.microsoft kernel, for every call that is not a decode step
  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);

  GqaKernel(const OrtKernelInfo* raw, bool is_f16) : f16(is_f16) {
    Ort::ConstKernelInfo info(raw);
    num_heads = info.GetAttribute<int64_t>("num_heads");
    kv_num_heads = info.GetAttribute<int64_t>("kv_num_heads");
    do_rotary = attr_or<int64_t>(info, "do_rotary", 0);
    scale = attr_or<float>(info, "scale", 0.f);
    if (num_heads <= 0 || kv_num_heads <= 0 || num_heads % kv_num_heads)
      throw Error("ai.kvrun GroupQueryAttention: num_heads " + std::to_string(num_heads) +
                  " is not a multiple of kv_num_heads " + std::to_string(kv_num_heads));
    // Integer attributes as int64: ORT's CreateOpAttr has read them as int and as
    // int64 across versions; little-endian int64 storage serves both.
    const int64_t nh = num_heads, kvh = kv_num_heads, rot = do_rotary, inter = 0;
    std::vector<Ort::OpAttr> attrs;
    attrs.emplace_back("num_heads", &nh, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("kv_num_heads", &kvh, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("do_rotary", &rot, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    attrs.emplace_back("rotary_interleaved", &inter, 1, OrtOpAttrType::ORT_OP_ATTR_INT);
    if (scale != 0.f) attrs.emplace_back("scale", &scale, 1, OrtOpAttrType::ORT_OP_ATTR_FLOAT);
    const char* names[] = {"T", "M"};
    const ONNXTensorElementDataType types[] = {
        f16 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32};
    ort_gqa =
        Ort::Op::Create(raw, kGqa, "com.microsoft", 1, names, types, 2, attrs.data(), attrs.size(), kGqaInputs, 3);
  }

  ONNXTensorElementDataType elem() const {
    return f16 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }

  static void run_unit(void* p, size_t unit) {
    static_cast<const DecodeAttention*>(p)->run_unit(static_cast<int64_t>(unit));
  }

  void compute(OrtKernelContext* raw) {
    Ort::KernelContext ctx(raw);
    Ort::ConstValue in[kGqaInputs];
    for (size_t i = 0; i < kGqaInputs; ++i) in[i] = ctx.GetInput(i);
    if (!in[0] || !in[3] || !in[4] || !in[5] || !in[6])
      throw Error(
          "ai.kvrun GroupQueryAttention: query, past_key, past_value, seqlens_k and total_sequence_length are "
          "required");
    const bool packed = !in[1];
    const auto qs = in[0].GetTensorTypeAndShapeInfo().GetShape();
    const auto ps = in[3].GetTensorTypeAndShapeInfo().GetShape();
    const int64_t per_row = packed ? num_heads + 2 * kv_num_heads : num_heads;
    if (qs.size() != 3 || ps.size() != 4 || qs[2] % per_row || ps[0] != qs[0] || ps[1] != kv_num_heads ||
        ps[3] != qs[2] / per_row)
      throw Error("ai.kvrun GroupQueryAttention: query [B, S, " + std::to_string(per_row) +
                  " x head_size] and past_key [B, kv_heads, P, head_size] do not agree");
    if (const size_t lens = in[5].GetTensorTypeAndShapeInfo().GetElementCount(); static_cast<int64_t>(lens) != qs[0])
      throw Error("ai.kvrun GroupQueryAttention: seqlens_k has " + std::to_string(lens) + " values, expected " +
                  std::to_string(qs[0]) + " (one per row)");
    const int64_t B = qs[0], S = qs[1], D = qs[2] / per_row, P = ps[2];
    const int64_t es = f16 ? 2 : 4;
    const int64_t total = *in[6].GetTensorData<int32_t>();
    const int64_t present = std::max(P, total);  // as ORT's kernel sizes present
    auto out = ctx.GetOutput(0, {B, S, num_heads * D});
    auto pk = ctx.GetOutput(1, {B, kv_num_heads, present, D});
    auto pv = ctx.GetOutput(2, {B, kv_num_heads, present, D});
    const bool shared =
        pk.GetTensorRawData() == in[3].GetTensorRawData() && pv.GetTensorRawData() == in[4].GetTensorRawData();

    if (S == 1 && shared) {
      DecodeAttention a;
      a.batch = B, a.num_heads = num_heads, a.kv_num_heads = kv_num_heads, a.head_size = D, a.capacity = present;
      a.scale = scale, a.f16 = f16;
      const auto* q = static_cast<const char*>(in[0].GetTensorRawData());
      a.q = q, a.q_row = qs[2];
      if (packed) {
        a.k = q + num_heads * D * es, a.v = q + (num_heads + kv_num_heads) * D * es, a.kv_row = qs[2];
      } else {
        a.k = in[1].GetTensorRawData(), a.v = in[2].GetTensorRawData(), a.kv_row = kv_num_heads * D;
      }
      if (do_rotary) {
        if (!in[7] || !in[8]) throw Error("ai.kvrun GroupQueryAttention: do_rotary needs cos_cache and sin_cache");
        const auto cs = in[7].GetTensorTypeAndShapeInfo().GetShape();
        if (cs.size() != 2) throw Error("ai.kvrun GroupQueryAttention: cos_cache must be [positions, rotary_dim / 2]");
        a.rotary_dim = 2 * cs[1], a.rotary_rows = cs[0];
        a.cos = in[7].GetTensorRawData(), a.sin = in[8].GetTensorRawData();
      }
      a.seqlens_k = in[5].GetTensorData<int32_t>();
      a.key_cache = pk.GetTensorMutableRawData(), a.value_cache = pv.GetTensorMutableRawData();
      a.out = out.GetTensorMutableRawData();
      a.check();
      ctx.ParallelFor(&GqaKernel::run_unit, static_cast<size_t>(a.units()), 0, &a);
      return;
    }

    // ORT's kernel. A packed QKV is handed over split, so every input it gets is present.
    std::vector<char> split;
    Ort::Value parts[3]{Ort::Value{nullptr}, Ort::Value{nullptr}, Ort::Value{nullptr}};
    const OrtValue* args[kGqaInputs];
    for (size_t i = 0; i < kGqaInputs; ++i) args[i] = in[i];
    if (packed) {
      const int64_t rows = B * S, widths[3] = {num_heads * D, kv_num_heads * D, kv_num_heads * D};
      split.resize(static_cast<size_t>(rows * qs[2]) * es);
      const auto* src = static_cast<const char*>(in[0].GetTensorRawData());
      for (int64_t part = 0, off = 0, base = 0; part < 3; off += widths[part], base += rows * widths[part], ++part) {
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(split.data() + (base + r * widths[part]) * es, src + (r * qs[2] + off) * es,
                      static_cast<size_t>(widths[part]) * es);
        const int64_t shape[3] = {B, S, widths[part]};
        parts[part] = Ort::Value::CreateTensor(cpu, split.data() + base * es,
                                               static_cast<size_t>(rows * widths[part]) * es, shape, 3, elem());
        args[part] = parts[part];
      }
    }
    if (do_rotary)
      for (size_t i = 7; i < kGqaInputs; ++i)
        if (!args[i]) throw Error("ai.kvrun GroupQueryAttention: do_rotary needs cos_cache and sin_cache");
    OrtValue* results[3] = {out, pk, pv};
    ort_gqa.Invoke(raw, args, kGqaInputs, results, 3);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    try {
      compute(raw);
      return nullptr;
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
    }
  }
};

// One registration per T (float32, float16); ORT picks by the node's input types.
template <bool F16>
struct GqaOp : Ort::CustomOpBase<GqaOp<F16>, GqaKernel, /*WithStatus=*/true> {
  static constexpr ONNXTensorElementDataType kT =
      F16 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new GqaKernel(info, F16);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_FAIL, e.what());
    }
  }
  const char* GetName() const { return kGqa; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return kGqaInputs; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 5 || i == 6 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : kT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 1 || i == 2 || i == 7 || i == 8 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                                : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return kT; }
};

// Whether kvrun's kernel covers this node: float32 or float16 (judged from the past_key
// graph input), every input of the nine present but a packed key/value and, without
// do_rotary, the cos/sin caches; no attribute beyond the ones it implements.
bool covered(const onnx::NodeProto& n, const std::set<std::string>& float_inputs) {
  if (n.op_type() != kGqa || n.domain() != "com.microsoft" || n.input_size() < 7 ||
      n.input_size() > static_cast<int>(kGqaInputs))
    return false;
  auto input = [&](int i) { return i < n.input_size() ? n.input(i) : std::string(); };
  int64_t rotary = 0;
  for (const auto& a : n.attribute())
    if (a.name() == "do_rotary") rotary = a.i();
  for (int i : {0, 3, 4, 5, 6})
    if (input(i).empty()) return false;
  if (input(7).empty() != input(8).empty() || (rotary && input(7).empty())) return false;
  if (input(1).empty() != input(2).empty() || !float_inputs.count(input(3))) return false;
  for (const auto& a : n.attribute()) {
    const std::string& k = a.name();
    if (k == "num_heads" || k == "kv_num_heads" || k == "scale" || k == "do_rotary") continue;
    if ((k == "rotary_interleaved" || k == "smooth_softmax") && a.i() == 0) continue;
    if (k == "local_window_size" && a.i() == -1) continue;
    if (k == "softcap" && a.f() == 0.f) continue;
    return false;
  }
  return true;
}

}  // namespace

Ort::CustomOpDomain& kvrun_op_domain() {
  static GqaOp<false> gqa32;
  static GqaOp<true> gqa16;
  static Ort::CustomOpDomain domain = [] {
    Ort::CustomOpDomain d(kKvrunDomain);
    d.Add(&gqa32);
    d.Add(&gqa16);
    return d;
  }();
  return domain;
}

bool kvrun_kernels_enabled() {
  const char* e = std::getenv("KVRUN_ATTENTION");
  return !(e && std::string(e) == "ort");
}

std::optional<std::string> with_kvrun_attention(const fs::path& model) {
  // Graphs with inline weights are not parsed twice; they keep ORT's kernel.
  constexpr uintmax_t kMaxGraphBytes = 64u << 20;
  std::error_code ec;
  const uintmax_t size = fs::file_size(model, ec);
  if (ec || size > kMaxGraphBytes) return std::nullopt;
  std::ifstream f(model, std::ios::binary);
  onnx::ModelProto m;
  if (!f || !m.ParseFromIstream(&f)) return std::nullopt;  // ORT reports what is wrong with it
  std::set<std::string> float_inputs;
  for (const auto& i : m.graph().input())
    if (const int t = i.type().tensor_type().elem_type();
        t == onnx::TensorProto::FLOAT || t == onnx::TensorProto::FLOAT16)
      float_inputs.insert(i.name());
  int moved = 0;
  for (auto& n : *m.mutable_graph()->mutable_node())
    if (covered(n, float_inputs)) {
      while (n.input_size() < static_cast<int>(kGqaInputs)) n.add_input("");  // absent cos/sin caches
      n.set_domain(kKvrunDomain), ++moved;
    }
  if (!moved) return std::nullopt;
  auto* op = m.add_opset_import();
  op->set_domain(kKvrunDomain);
  op->set_version(1);
  return m.SerializeAsString();
}

}  // namespace kvrun::runtime
