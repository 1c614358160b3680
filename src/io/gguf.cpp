#include "io/gguf.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>

#include "io/dtype.h"
#include "io/mapped_file.h"
#include "kvrun/error.h"

// gguf-py computes in float32 with numpy (no fused multiply-add); so do we (CMakeLists.txt
// also builds this file with -ffp-contract=off). Every product below is exact in float32
// anyway (11-bit half x small integers), so only the one final add/subtract rounds.
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

namespace kvrun::io {
namespace {

// ---- ggml type table ------------------------------------------------------------------

struct TypeEntry {
  uint32_t id;
  GgmlTypeTraits traits;
};
// Sizes as in gguf-py's GGML_QUANT_SIZES (Q8_1 as in ggml-common.h: half d, half s, 32 x i8).
constexpr std::array<TypeEntry, 34> kTypes = {{
    {0, {"F32", 1, 4, true}},          {1, {"F16", 1, 2, true}},          {2, {"Q4_0", 32, 18, true}},
    {3, {"Q4_1", 32, 20, true}},       {6, {"Q5_0", 32, 22, true}},       {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},       {9, {"Q8_1", 32, 36, false}},      {10, {"Q2_K", 256, 84, true}},
    {11, {"Q3_K", 256, 110, true}},    {12, {"Q4_K", 256, 144, true}},    {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},    {15, {"Q8_K", 256, 292, false}},   {16, {"IQ2_XXS", 256, 66, false}},
    {17, {"IQ2_XS", 256, 74, false}},  {18, {"IQ3_XXS", 256, 98, false}}, {19, {"IQ1_S", 256, 50, false}},
    {20, {"IQ4_NL", 32, 18, false}},   {21, {"IQ3_S", 256, 110, false}},  {22, {"IQ2_S", 256, 82, false}},
    {23, {"IQ4_XS", 256, 136, false}}, {24, {"I8", 1, 1, false}},         {25, {"I16", 1, 2, false}},
    {26, {"I32", 1, 4, false}},        {27, {"I64", 1, 8, false}},        {28, {"F64", 1, 8, false}},
    {29, {"IQ1_M", 256, 56, false}},   {30, {"BF16", 1, 2, true}},        {34, {"TQ1_0", 256, 54, false}},
    {35, {"TQ2_0", 256, 66, false}},   {39, {"MXFP4", 32, 17, false}},    {40, {"NVFP4", 64, 36, false}},
    {41, {"Q1_0", 128, 18, false}},
}};

// ---- fp16 -----------------------------------------------------------------------------

// All 65536 halves as float (numpy's astype(np.float32): exact, NaN payloads kept).
const float* half_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) t[h] = f16_to_f32(static_cast<uint16_t>(h));
    return t;
  }();
  return table.data();
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- block dequantizers: one block in, block_elems floats out, gguf-py's op order -------

void deq_q4_0(const uint8_t* b, float* y, const float* H) {
  const float d = H[load_u16(b)];
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 15) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void deq_q4_1(const uint8_t* b, float* y, const float* H) {
  const float d = H[load_u16(b)], m = H[load_u16(b + 2)];
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 15) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

void deq_q5_0(const uint8_t* b, float* y, const float* H) {
  const float d = H[load_u16(b)];
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 15) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void deq_q5_1(const uint8_t* b, float* y, const float* H) {
  const float d = H[load_u16(b)], m = H[load_u16(b + 2)];
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 15) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

void deq_q8_0(const uint8_t* b, float* y, const float* H) {
  const float d = H[load_u16(b)];
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q2_K: scales[16], qs[64], half d, half dmin.
void deq_q2_k(const uint8_t* b, float* y, const float* H) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = H[load_u16(b + 80)], dmin = H[load_u16(b + 82)];
  for (int e0 = 0; e0 < 256; e0 += 16) {
    const int sub = e0 / 16;
    const float dl = d * static_cast<float>(scales[sub] & 15);
    const float ml = dmin * static_cast<float>(scales[sub] >> 4);
    const int half = e0 / 128, shift = 2 * ((e0 % 128) / 32);
    const uint8_t* q = qs + half * 32 + e0 % 32;
    for (int l = 0; l < 16; ++l) y[e0 + l] = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
  }
}

// Q3_K: hmask[32], qs[64], scales[12] (16 packed 6-bit scales), half d.
void deq_q3_k(const uint8_t* b, float* y, const float* H) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* s = b + 96;
  const float d = H[load_u16(b + 108)];
  for (int e0 = 0; e0 < 256; e0 += 16) {
    const int i = e0 / 16;
    const int lo = i < 8 ? (s[i] & 15) : (s[i - 8] >> 4);
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    const float dl = d * static_cast<float>((lo | (hi << 4)) - 32);
    const int half = e0 / 128, shift = 2 * ((e0 % 128) / 32), hbit = e0 / 32;
    const int l0 = e0 % 32;
    for (int l = 0; l < 16; ++l) {
      const int ql = (qs[half * 32 + l0 + l] >> shift) & 3;
      const int h = (hmask[l0 + l] >> hbit) & 1;
      y[e0 + l] = dl * static_cast<float>(ql - ((h ^ 1) << 2));
    }
  }
}

// The 8 six-bit scales and mins of Q4_K/Q5_K (gguf-py Q4_K.get_scale_min).
inline void scale_min_k4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 2) & 0x30);
    *m = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
  }
}

// Q4_K: half d, half dmin, scales[12], qs[128].
void deq_q4_k(const uint8_t* b, float* y, const float* H) {
  const float d = H[load_u16(b)], dmin = H[load_u16(b + 2)];
  const uint8_t* s = b + 4;
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(s, j, &sc, &m);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    float* out = y + 32 * j;
    for (int l = 0; l < 32; ++l) out[l] = d1 * static_cast<float>((q[l] >> shift) & 15) - m1;
  }
}

// Q5_K: half d, half dmin, scales[12], qh[32], qs[128].
void deq_q5_k(const uint8_t* b, float* y, const float* H) {
  const float d = H[load_u16(b)], dmin = H[load_u16(b + 2)];
  const uint8_t* s = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(s, j, &sc, &m);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    float* out = y + 32 * j;
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 15) | (((qh[l] >> j) & 1) << 4);
      out[l] = d1 * static_cast<float>(v) - m1;
    }
  }
}

// Q6_K: ql[128], qh[64], int8 scales[16], half d (last).
void deq_q6_k(const uint8_t* b, float* y, const float* H) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = H[load_u16(b + 208)];
  for (int e0 = 0; e0 < 256; e0 += 16) {
    const float ds = d * static_cast<float>(sc[e0 / 16]);
    const int half = e0 / 128, r0 = e0 % 128;
    const int lshift = 4 * (r0 / 64), hshift = 2 * (r0 / 32);
    const uint8_t* L = ql + half * 64 + r0 % 64;
    const uint8_t* Q = qh + half * 32 + r0 % 32;
    for (int l = 0; l < 16; ++l) {
      const int q = (((L[l] >> lshift) & 15) | (((Q[l] >> hshift) & 3) << 4)) - 32;
      y[e0 + l] = ds * static_cast<float>(q);
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*, const float*);

template <BlockFn F>
void deq_blocks(const uint8_t* src, int64_t nblocks, int64_t block_elems, int64_t block_bytes, float* out) {
  const float* H = half_table();
  for (int64_t i = 0; i < nblocks; ++i) F(src + i * block_bytes, out + i * block_elems, H);
}

// ---- metadata value types -------------------------------------------------------------

constexpr uint32_t kMaxValueType = 12;
constexpr int kMaxArrayDepth = 8;

const char* value_type_name(GgufValue::Type t) {
  switch (t) {
    case GgufValue::Type::U8:
      return "u8";
    case GgufValue::Type::I8:
      return "i8";
    case GgufValue::Type::U16:
      return "u16";
    case GgufValue::Type::I16:
      return "i16";
    case GgufValue::Type::U32:
      return "u32";
    case GgufValue::Type::I32:
      return "i32";
    case GgufValue::Type::F32:
      return "f32";
    case GgufValue::Type::BOOL:
      return "bool";
    case GgufValue::Type::STRING:
      return "string";
    case GgufValue::Type::ARRAY:
      return "array";
    case GgufValue::Type::U64:
      return "u64";
    case GgufValue::Type::I64:
      return "i64";
    case GgufValue::Type::F64:
      return "f64";
  }
  return "?";
}

// Bytes an element of type t takes at least (exactly, for the fixed-size ones).
uint64_t min_value_bytes(GgufValue::Type t) {
  switch (t) {
    case GgufValue::Type::U8:
    case GgufValue::Type::I8:
    case GgufValue::Type::BOOL:
      return 1;
    case GgufValue::Type::U16:
    case GgufValue::Type::I16:
      return 2;
    case GgufValue::Type::U32:
    case GgufValue::Type::I32:
    case GgufValue::Type::F32:
      return 4;
    case GgufValue::Type::U64:
    case GgufValue::Type::I64:
    case GgufValue::Type::F64:
    case GgufValue::Type::STRING:  // u64 length
      return 8;
    case GgufValue::Type::ARRAY:  // u32 type + u64 count
      return 12;
  }
  return 1;
}

// A bounds-checked little-endian cursor over the mapped file.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size, const std::string& file) : p_(data), size_(size), file_(file) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what) const { throw Error(file_ + ": " + what); }

  // `detail` is appended to `what` only when a message is built.
  void need(uint64_t n, const std::string& what, const char* detail = "") const {
    if (n > left())
      fail(what + detail + ": expected " + std::to_string(n) + " more bytes at offset " + std::to_string(pos_) +
           ", found " + std::to_string(left()) + " (truncated file)");
  }
  template <class T>
  T read(const std::string& what, const char* detail = "") {
    need(sizeof(T), what, detail);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const std::string& what) {
    const uint64_t n = read<uint64_t>(what, " length");
    if (n > GgufFile::kMaxStringBytes)
      fail(what + " length: expected at most " + std::to_string(GgufFile::kMaxStringBytes) + " bytes, found " +
           std::to_string(n));
    if (n > left())
      fail(what + " length: expected at most the " + std::to_string(left()) + " bytes left in the file, found " +
           std::to_string(n));
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }

  GgufValue value(uint32_t type, const std::string& what, int depth) {
    if (type > kMaxValueType)
      fail(what + ": value type: expected a GGUF value type 0..12, found " + std::to_string(type));
    GgufValue v;
    v.type = static_cast<GgufValue::Type>(type);
    switch (v.type) {
      case GgufValue::Type::U8:
        v.u = read<uint8_t>(what);
        break;
      case GgufValue::Type::I8:
        v.i = read<int8_t>(what);
        break;
      case GgufValue::Type::U16:
        v.u = read<uint16_t>(what);
        break;
      case GgufValue::Type::I16:
        v.i = read<int16_t>(what);
        break;
      case GgufValue::Type::U32:
        v.u = read<uint32_t>(what);
        break;
      case GgufValue::Type::I32:
        v.i = read<int32_t>(what);
        break;
      case GgufValue::Type::U64:
        v.u = read<uint64_t>(what);
        break;
      case GgufValue::Type::I64:
        v.i = read<int64_t>(what);
        break;
      case GgufValue::Type::F32:
        v.f = read<float>(what);
        break;
      case GgufValue::Type::F64:
        v.f = read<double>(what);
        break;
      case GgufValue::Type::BOOL: {
        const uint8_t b = read<uint8_t>(what);
        if (b > 1) fail(what + ": bool: expected 0 or 1, found " + std::to_string(b));
        v.u = b;
        break;
      }
      case GgufValue::Type::STRING:
        v.s = string(what);
        break;
      case GgufValue::Type::ARRAY: {
        if (depth >= kMaxArrayDepth)
          fail(what + ": array nesting: expected at most " + std::to_string(kMaxArrayDepth) + " levels, found more");
        const uint32_t et = read<uint32_t>(what, " array element type");
        if (et > kMaxValueType)
          fail(what + ": array element type: expected a GGUF value type 0..12, found " + std::to_string(et));
        v.elem_type = static_cast<GgufValue::Type>(et);
        const uint64_t count = read<uint64_t>(what, " array count");
        const uint64_t each = min_value_bytes(v.elem_type);
        if (count > left() / each)
          fail(what + ": array count: expected at most " + std::to_string(left() / each) + " (" +
               std::to_string(left()) + " bytes left, " + std::to_string(each) + " per " +
               value_type_name(v.elem_type) + "), found " + std::to_string(count));
        v.elems.reserve(static_cast<size_t>(count));
        for (uint64_t k = 0; k < count; ++k) v.elems.push_back(value(et, what, depth + 1));
        break;
      }
    }
    return v;
  }

 private:
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& file_;
};

std::string sq(const std::string& s) { return "'" + s + "'"; }

}  // namespace

// ---- public free functions ------------------------------------------------------------

const GgmlTypeTraits* ggml_type_traits(uint32_t type) {
  for (const auto& e : kTypes)
    if (e.id == type) return &e.traits;
  return nullptr;
}

std::string ggml_type_name(uint32_t type) {
  const auto* t = ggml_type_traits(type);
  return t ? std::string(t->name) : "type " + std::to_string(type);
}

void dequantize(GgmlType type, const uint8_t* src, int64_t n, float* out) {
  const uint32_t id = static_cast<uint32_t>(type);
  const auto* t = ggml_type_traits(id);
  if (!t || !t->dequantizable)
    throw Error(
        "dequantize: expected a ggml type kvrun dequantizes (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
        "Q2_K..Q6_K), found " +
        ggml_type_name(id));
  if (n < 0 || n % t->block_elems != 0)
    throw Error(std::string("dequantize ") + t->name + ": expected a multiple of " + std::to_string(t->block_elems) +
                " elements, found " + std::to_string(n));
  const int64_t nb = n / t->block_elems;
  switch (type) {
    case GgmlType::F32:
      if (n) std::memcpy(out, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16: {
      const float* H = half_table();
      for (int64_t i = 0; i < n; ++i) out[i] = H[load_u16(src + 2 * i)];
      return;
    }
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(static_cast<uint32_t>(load_u16(src + 2 * i)) << 16);
      return;
    case GgmlType::Q4_0:
      return deq_blocks<deq_q4_0>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q4_1:
      return deq_blocks<deq_q4_1>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q5_0:
      return deq_blocks<deq_q5_0>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q5_1:
      return deq_blocks<deq_q5_1>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q8_0:
      return deq_blocks<deq_q8_0>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q2_K:
      return deq_blocks<deq_q2_k>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q3_K:
      return deq_blocks<deq_q3_k>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q4_K:
      return deq_blocks<deq_q4_k>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q5_K:
      return deq_blocks<deq_q5_k>(src, nb, t->block_elems, t->block_bytes, out);
    case GgmlType::Q6_K:
      return deq_blocks<deq_q6_k>(src, nb, t->block_elems, t->block_bytes, out);
    default:
      break;
  }
  throw Error("dequantize: no dequantizer for " + ggml_type_name(id));
}

bool GgufValue::is_integer() const {
  switch (type) {
    case Type::U8:
    case Type::I8:
    case Type::U16:
    case Type::I16:
    case Type::U32:
    case Type::I32:
    case Type::U64:
    case Type::I64:
      return true;
    default:
      return false;
  }
}

bool GgufValue::is_float() const { return type == Type::F32 || type == Type::F64; }

namespace {
bool is_unsigned(GgufValue::Type t) {
  return t == GgufValue::Type::U8 || t == GgufValue::Type::U16 || t == GgufValue::Type::U32 ||
         t == GgufValue::Type::U64;
}
bool is_integer_type(GgufValue::Type t) {
  GgufValue v;
  v.type = t;
  return v.is_integer();
}
}  // namespace

std::string gguf_type_name(const GgufValue& v) {
  if (v.type != GgufValue::Type::ARRAY) return value_type_name(v.type);
  if (v.elem_type == GgufValue::Type::ARRAY)
    return v.elems.empty() ? "array[array]" : "array[" + gguf_type_name(v.elems.front()) + "]";
  return std::string("array[") + value_type_name(v.elem_type) + "]";
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (auto d : ne) n *= d;
  return n;
}

std::vector<int64_t> GgufTensor::shape() const { return {ne.rbegin(), ne.rend()}; }

int64_t GgufTensor::rows() const { return ne.empty() ? 1 : numel() / ne[0]; }

// ---- GgufFile -------------------------------------------------------------------------

GgufFile::GgufFile(const std::filesystem::path& path) : path_(path) {
  file_ = std::make_unique<MappedFile>(path);
  map_ = const_cast<uint8_t*>(file_->data());
  map_size_ = file_->size();
  parse();
}

GgufFile::~GgufFile() = default;

void GgufFile::fail(const std::string& what) const { throw Error(path_.string() + ": " + what); }

void GgufFile::parse() {
  const std::string file = path_.string();
  Cursor c(static_cast<const uint8_t*>(map_), map_size_, file);
  const uint64_t size = map_size_;
  if (size < 24)
    fail("GGUF header: expected at least 24 bytes (magic, version, tensor and kv counts), found " +
         std::to_string(size));
  const uint32_t magic = c.read<uint32_t>("magic");
  if (magic != 0x46554747u) {
    std::string found;
    const auto* p = static_cast<const uint8_t*>(map_);
    for (int i = 0; i < 4; ++i) {
      const char ch = static_cast<char>(p[i]);
      found += (p[i] >= 32 && p[i] < 127) ? std::string(1, ch) : "\\x" + std::to_string(p[i]);
    }
    fail("magic: expected \"GGUF\", found \"" + found + "\" (not a GGUF file)");
  }
  version_ = c.read<uint32_t>("version");
  if (version_ == 1)
    fail("GGUF version: expected 2 or 3, found 1 (GGUF v1 used 32-bit counts and lengths; re-convert the model)");
  if (version_ != 2 && version_ != 3)
    fail("GGUF version: expected 2 or 3, found " + std::to_string(version_) +
         (version_ > 0xffff ? " (a big-endian file?)" : ""));
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata kv count");
  // A kv takes at least 13 bytes (key length, value type, a 1-byte value); a tensor info 24
  // (name length, n_dims, type, offset).
  if (n_kv > c.left() / 13)
    fail("metadata kv count: expected at most " + std::to_string(c.left() / 13) + " (" + std::to_string(c.left()) +
         " bytes left, >= 13 per kv), found " + std::to_string(n_kv));
  if (n_tensors > c.left() / 24)
    fail("tensor count: expected at most " + std::to_string(c.left() / 24) + " (" + std::to_string(c.left()) +
         " bytes left, >= 24 per tensor info), found " + std::to_string(n_tensors));

  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string idx = "metadata kv #" + std::to_string(k);
    std::string key = c.string(idx + " key");
    const std::string what = "metadata key " + sq(key);
    const uint32_t type = c.read<uint32_t>(what + " value type");
    GgufValue v = c.value(type, what, 0);
    if (kv_.count(key)) fail(what + ": expected unique keys, found a duplicate");
    kv_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufValue::Type::U32)
      fail("metadata key 'general.alignment': expected u32, found " + gguf_type_name(*a));
    if (a->u == 0 || a->u % 8 != 0)
      fail("metadata key 'general.alignment': expected a non-zero multiple of 8, found " + std::to_string(a->u));
    alignment_ = a->u;
  }

  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = c.string("tensor info #" + std::to_string(k) + " name");
    const std::string what = "tensor " + sq(t.name);
    const uint32_t n_dims = c.read<uint32_t>(what + " n_dims");
    if (n_dims > kMaxDims)
      fail(what + ": n_dims: expected at most " + std::to_string(kMaxDims) + ", found " + std::to_string(n_dims));
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.read<uint64_t>(what + " ne[" + std::to_string(d) + "]");
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(what + ": ne[" + std::to_string(d) + "]: expected a positive dimension, found " + std::to_string(ne));
      t.ne.push_back(static_cast<int64_t>(ne));
      if (__builtin_mul_overflow(numel, static_cast<int64_t>(ne), &numel))
        fail(what + ": element count: expected at most 2^63-1, found an overflowing product of ne");
    }
    t.type = c.read<uint32_t>(what + " ggml type");
    const GgmlTypeTraits* tr = ggml_type_traits(t.type);
    if (!tr) fail(what + ": ggml type: expected a known ggml type id, found " + std::to_string(t.type));
    t.offset = c.read<uint64_t>(what + " offset");
    const int64_t ne0 = t.row_elems();
    if (ne0 % tr->block_elems != 0)
      fail(what + ": ne[0] of a " + tr->name + " tensor: expected a multiple of " + std::to_string(tr->block_elems) +
           ", found " + std::to_string(ne0));
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(ne0 / tr->block_elems), static_cast<uint64_t>(tr->block_bytes),
                               &nbytes) ||
        __builtin_mul_overflow(nbytes, static_cast<uint64_t>(numel / ne0), &nbytes))
      fail(what + ": byte size: expected at most 2^64-1, found an overflowing size");
    t.nbytes = nbytes;
    if (index_.count(t.name)) fail(what + ": expected unique tensor names, found a duplicate");
    index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  const uint64_t pos = c.pos();
  data_offset_ = pos + (alignment_ - pos % alignment_) % alignment_;

  // Data: every tensor aligned, inside the file, none overlapping.
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (auto& t : tensors_) {
    const std::string what = "tensor " + sq(t.name);
    if (t.offset % alignment_ != 0)
      fail(what + ": offset: expected a multiple of the alignment " + std::to_string(alignment_) + ", found " +
           std::to_string(t.offset));
    uint64_t begin = 0, end = 0;
    const bool overflow =
        __builtin_add_overflow(data_offset_, t.offset, &begin) || __builtin_add_overflow(begin, t.nbytes, &end);
    if (overflow || end > size)
      fail(what + " (" + ggml_type_name(t.type) + ", " + std::to_string(t.nbytes) + " bytes at data offset " +
           std::to_string(t.offset) + "): expected to end within the file's " + std::to_string(size) +
           " bytes, found it ending at " + (overflow ? std::string("more than 2^64") : std::to_string(end)));
    t.data = static_cast<const uint8_t*>(map_) + begin;
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const GgufTensor& a = tensors_[order[i - 1]];
    const GgufTensor& b = tensors_[order[i]];
    if (a.offset + a.nbytes > b.offset)
      fail("tensor " + sq(b.name) + ": offset: expected at least " + std::to_string(a.offset + a.nbytes) +
           " (the end of tensor " + sq(a.name) + "), found " + std::to_string(b.offset) + " (overlapping tensors)");
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  const auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("metadata key " + sq(key) + " missing");
  return *v;
}

namespace {
[[noreturn]] void wrong_type(const std::filesystem::path& p, const std::string& key, const std::string& expected,
                             const GgufValue& v) {
  throw Error(p.string() + ": metadata key " + sq(key) + ": expected " + expected + ", found " + gguf_type_name(v));
}

// An integer value (any width) as int64; false when it does not fit.
bool int_of(const GgufValue& v, int64_t* out) {
  if (is_unsigned(v.type)) {
    if (v.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(v.u);
  } else {
    *out = v.i;
  }
  return true;
}
}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufValue::Type::STRING) wrong_type(path_, key, "string", v);
  return v.s;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = get(key);
  if (!v.is_integer()) wrong_type(path_, key, "an integer", v);
  int64_t out = 0;
  if (!int_of(v, &out))
    fail("metadata key " + sq(key) + ": expected an integer that fits int64, found u64 " + std::to_string(v.u));
  return out;
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.is_float()) return v.f;
  if (v.is_integer()) return is_unsigned(v.type) ? static_cast<double>(v.u) : static_cast<double>(v.i);
  wrong_type(path_, key, "a number (f32, f64 or an integer)", v);
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufValue::Type::BOOL) wrong_type(path_, key, "bool", v);
  return v.u != 0;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufValue::Type::ARRAY || v.elem_type != GgufValue::Type::STRING)
    wrong_type(path_, key, "array[string]", v);
  std::vector<std::string> out;
  out.reserve(v.elems.size());
  for (const auto& e : v.elems) out.push_back(e.s);
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufValue::Type::ARRAY || !is_integer_type(v.elem_type))
    wrong_type(path_, key, "an array of integers", v);
  std::vector<int64_t> out(v.elems.size());
  for (size_t i = 0; i < out.size(); ++i)
    if (!int_of(v.elems[i], &out[i]))
      fail("metadata key " + sq(key) + "[" + std::to_string(i) + "]: expected an integer that fits int64, found u64 " +
           std::to_string(v.elems[i].u));
  return out;
}

std::vector<float> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue& v = get(key);
  const bool ok =
      v.type == GgufValue::Type::ARRAY &&
      (v.elem_type == GgufValue::Type::F32 || v.elem_type == GgufValue::Type::F64 || is_integer_type(v.elem_type));
  if (!ok) wrong_type(path_, key, "an array of numbers", v);
  std::vector<float> out(v.elems.size());
  for (size_t i = 0; i < out.size(); ++i) {
    const GgufValue& e = v.elems[i];
    out[i] = e.is_float()
                 ? static_cast<float>(e.f)
                 : static_cast<float>(is_unsigned(e.type) ? static_cast<double>(e.u) : static_cast<double>(e.i));
  }
  return out;
}

std::optional<std::string> GgufFile::opt_string(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_string(key);
}
std::optional<int64_t> GgufFile::opt_int(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_int(key);
}
std::optional<double> GgufFile::opt_float(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_float(key);
}
std::optional<bool> GgufFile::opt_bool(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_bool(key);
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::tensor(const std::string& name) const {
  const GgufTensor* t = find_tensor(name);
  if (!t) fail("tensor " + sq(name) + " not found");
  return *t;
}

std::vector<float> GgufFile::to_f32(const GgufTensor& t) const {
  const GgmlTypeTraits* tr = ggml_type_traits(t.type);
  if (!tr || !tr->dequantizable)
    fail("tensor " + sq(t.name) + ": ggml type: expected one kvrun dequantizes, found " + ggml_type_name(t.type));
  std::vector<float> out(static_cast<size_t>(t.numel()));
  dequantize(static_cast<GgmlType>(t.type), t.data, t.numel(), out.data());
  return out;
}

void GgufFile::row_f32(const GgufTensor& t, int64_t r, float* out) const {
  const GgmlTypeTraits* tr = ggml_type_traits(t.type);
  if (!tr || !tr->dequantizable)
    fail("tensor " + sq(t.name) + ": ggml type: expected one kvrun dequantizes, found " + ggml_type_name(t.type));
  if (r < 0 || r >= t.rows())
    fail("tensor " + sq(t.name) + ": row: expected 0 <= row < " + std::to_string(t.rows()) + ", found " +
         std::to_string(r));
  const int64_t ne0 = t.row_elems();
  const uint64_t row_bytes = static_cast<uint64_t>(ne0 / tr->block_elems * tr->block_bytes);
  dequantize(static_cast<GgmlType>(t.type), t.data + static_cast<uint64_t>(r) * row_bytes, ne0, out);
}

}  // namespace kvrun::io
