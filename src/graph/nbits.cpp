#include "graph/nbits.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "io/dtype.h"
#include "kvrun/error.h"

namespace kvrun::graph {
namespace {

float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return io::f16_to_f32(h);
}

// The 6-bit scale and min of K-quant sub-block j (ggml get_scale_min_k4).
void scale_min_k4(int j, const uint8_t* s, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Output writer for one row: sub-block b gets codes q[0..block) (already offset so that
// (B - zp) is the signed value), its scale and, optionally, its min.
struct RowOut {
  NBitsWeight& w;
  int64_t n;
  void put(int64_t b, const int* q, float scale, float min = 0.f) {
    uint8_t* blob = w.B.data() + (n * w.kb() + b) * w.blob();
    if (w.bits == 8) {
      for (int64_t j = 0; j < w.block; ++j) blob[j] = static_cast<uint8_t>(q[j]);
    } else {
      for (int64_t j = 0; j < w.block; j += 2) blob[j / 2] = static_cast<uint8_t>(q[j] | (q[j + 1] << 4));
    }
    w.scales[static_cast<size_t>(n * w.kb() + b)] = scale;
    if (!w.mins.empty()) w.mins[static_cast<size_t>(n * w.kb() + b)] = min;
  }
};

NBitsWeight layout_for(io::GgmlType t, int64_t N, int64_t K) {
  NBitsWeight w;
  w.N = N, w.K = K;
  bool zero_zp = false;
  switch (t) {
    case io::GgmlType::Q8_0:
    case io::GgmlType::Q5_0:
      w.bits = 8, w.block = 32;
      break;
    case io::GgmlType::Q4_0:
      w.bits = 4, w.block = 32;
      break;
    case io::GgmlType::Q6_K:
      w.bits = 8, w.block = 16;
      break;
    case io::GgmlType::Q4_1:
    case io::GgmlType::Q4_K:
      w.bits = 4, w.block = 32, zero_zp = true;
      break;
    case io::GgmlType::Q5_1:
    case io::GgmlType::Q5_K:
      w.bits = 8, w.block = 32, zero_zp = true;
      break;
    default:
      throw Error("GGUF type " + io::ggml_type_name(static_cast<uint32_t>(t)) + " has no MatMulNBits form in kvrun");
  }
  w.B.assign(static_cast<size_t>(N * w.kb() * w.blob()), 0);
  w.scales.assign(static_cast<size_t>(N * w.kb()), 0.f);
  if (zero_zp) {
    w.zp.assign(static_cast<size_t>(N * w.zp_row()), 0);
    w.mins.assign(static_cast<size_t>(N * w.kb()), 0.f);
  }
  return w;
}

// One GGUF row (K elements of `t`) -> row n of `w`.
void convert_row(io::GgmlType t, const uint8_t* src, int64_t K, RowOut out) {
  int q[256];
  switch (t) {
    case io::GgmlType::Q8_0:
      for (int64_t b = 0; b < K / 32; ++b, src += 34) {
        for (int j = 0; j < 32; ++j) q[j] = static_cast<int8_t>(src[2 + j]) + 128;
        out.put(b, q, half(src));
      }
      break;
    case io::GgmlType::Q5_0:
      for (int64_t b = 0; b < K / 32; ++b, src += 22) {
        uint32_t qh;
        std::memcpy(&qh, src + 2, 4);
        const uint8_t* qs = src + 6;
        for (int j = 0; j < 16; ++j) {
          q[j] = ((qs[j] & 15) | (((qh >> j) & 1) << 4)) + 112;
          q[j + 16] = ((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) + 112;
        }
        out.put(b, q, half(src));
      }
      break;
    case io::GgmlType::Q4_0:
      for (int64_t b = 0; b < K / 32; ++b, src += 18) {
        for (int j = 0; j < 16; ++j) q[j] = src[2 + j] & 15, q[j + 16] = src[2 + j] >> 4;
        out.put(b, q, half(src));
      }
      break;
    case io::GgmlType::Q4_1:
      for (int64_t b = 0; b < K / 32; ++b, src += 20) {
        for (int j = 0; j < 16; ++j) q[j] = src[4 + j] & 15, q[j + 16] = src[4 + j] >> 4;
        out.put(b, q, half(src), -half(src + 2));
      }
      break;
    case io::GgmlType::Q5_1:
      for (int64_t b = 0; b < K / 32; ++b, src += 24) {
        uint32_t qh;
        std::memcpy(&qh, src + 4, 4);
        const uint8_t* qs = src + 8;
        for (int j = 0; j < 16; ++j) {
          q[j] = (qs[j] & 15) | (((qh >> j) & 1) << 4);
          q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        }
        out.put(b, q, half(src), -half(src + 2));
      }
      break;
    case io::GgmlType::Q4_K:
    case io::GgmlType::Q5_K: {
      const bool five = t == io::GgmlType::Q5_K;
      const int64_t bytes = five ? 176 : 144;
      for (int64_t sb = 0; sb < K / 256; ++sb, src += bytes) {
        const float d = half(src), dmin = half(src + 2);
        const uint8_t* sc6 = src + 4;
        const uint8_t* qh = five ? src + 16 : nullptr;
        const uint8_t* qs = src + (five ? 48 : 16);
        for (int j = 0; j < 8; ++j) {
          int sc, m;
          scale_min_k4(j, sc6, sc, m);
          const uint8_t* ql = qs + 32 * (j / 2);
          const int shift = 4 * (j % 2);
          for (int e = 0; e < 32; ++e) {
            q[e] = (ql[e] >> shift) & 15;
            if (five) q[e] |= ((qh[e] >> j) & 1) << 4;
          }
          out.put(sb * 8 + j, q, d * static_cast<float>(sc), dmin * static_cast<float>(m));
        }
      }
      break;
    }
    case io::GgmlType::Q6_K:
      for (int64_t sb = 0; sb < K / 256; ++sb, src += 210) {
        const uint8_t* ql = src;
        const uint8_t* qh = src + 128;
        const auto* sc = reinterpret_cast<const int8_t*>(src + 192);
        const float d = half(src + 208);
        for (int G = 0; G < 8; ++G) {  // groups of 32 as gguf-py orders them
          const int h = G / 4, s = (G % 4) / 2, c = G % 2, s2 = G % 4;
          for (int e = 0; e < 32; ++e) {
            const int lo = (ql[64 * h + 32 * c + e] >> (4 * s)) & 15;
            const int hi = (qh[32 * h + e] >> (2 * s2)) & 3;
            q[G * 32 + e] = (lo | (hi << 4)) + 96;
          }
        }
        for (int j = 0; j < 16; ++j) out.put(sb * 16 + j, q + 16 * j, d * static_cast<float>(sc[j]));
      }
      break;
    default:
      throw Error("GGUF type " + io::ggml_type_name(static_cast<uint32_t>(t)) + " has no MatMulNBits form in kvrun");
  }
}

}  // namespace

bool NBitsWeight::compatible(const NBitsWeight& o) const {
  return bits == o.bits && block == o.block && K == o.K && zp.empty() == o.zp.empty() && mins.empty() == o.mins.empty();
}

void NBitsWeight::append_rows(const NBitsWeight& o) {
  if (!compatible(o)) throw Error("MatMulNBits rows of " + o.describe() + " cannot join rows of " + describe());
  B.insert(B.end(), o.B.begin(), o.B.end());
  scales.insert(scales.end(), o.scales.begin(), o.scales.end());
  zp.insert(zp.end(), o.zp.begin(), o.zp.end());
  mins.insert(mins.end(), o.mins.begin(), o.mins.end());
  N += o.N;
}

void NBitsRef::row_f32(int64_t n, float* out) const {
  const int64_t nb = kb(), bl = blob();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = B + (n * nb + b) * bl;
    const float s = scales[static_cast<size_t>(n * nb + b)];
    int z = 1 << (bits - 1);
    if (zp) {
      const uint8_t zb = zp[static_cast<size_t>(n * zp_row() + (bits == 4 ? b / 2 : b))];
      z = bits == 4 ? (b % 2 ? zb >> 4 : zb & 15) : zb;
    }
    const float m = mins ? mins[static_cast<size_t>(n * nb + b)] : 0.f;
    const int64_t k0 = b * block, k1 = std::min(K, k0 + block);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t j = k - k0;
      const int q = bits == 8 ? p[j] : (j % 2 ? p[j / 2] >> 4 : p[j / 2] & 15);
      out[k] = static_cast<float>(q - z) * s - m;
    }
  }
}

std::vector<float> NBitsWeight::to_f32() const {
  std::vector<float> out(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) row_f32(n, out.data() + n * K);
  return out;
}

std::string NBitsWeight::describe() const {
  std::string s = std::to_string(bits) + "-bit block " + std::to_string(block);
  if (!zp.empty()) s += ", zero points";
  if (!mins.empty()) s += ", mins";
  return s;
}

bool ggml_has_nbits(uint32_t type) {
  switch (static_cast<io::GgmlType>(type)) {
    case io::GgmlType::Q8_0:
    case io::GgmlType::Q5_0:
    case io::GgmlType::Q4_0:
    case io::GgmlType::Q4_1:
    case io::GgmlType::Q5_1:
    case io::GgmlType::Q4_K:
    case io::GgmlType::Q5_K:
    case io::GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

NBitsWeight nbits_from_ggml(io::GgmlType type, const uint8_t* data, int64_t rows, int64_t K) {
  const io::GgmlTypeTraits* tr = io::ggml_type_traits(static_cast<uint32_t>(type));
  if (!tr) throw Error("unknown GGUF type " + io::ggml_type_name(static_cast<uint32_t>(type)));
  if (K % tr->block_elems != 0)
    throw Error(std::string("a ") + tr->name + " row of " + std::to_string(K) + " elements is not a whole number of " +
                std::to_string(tr->block_elems) + "-element blocks");
  NBitsWeight w = layout_for(type, rows, K);
  const int64_t row_bytes = K / tr->block_elems * tr->block_bytes;
  for (int64_t n = 0; n < rows; ++n) {
    convert_row(type, data + n * row_bytes, K, RowOut{w, n});
  }
  return w;
}

NBitsWeight nbits_quantize(const float* w, int64_t N, int64_t K, int64_t sn, int64_t sk, int bits, int64_t bs,
                           bool sym) {
  NBitsWeight r;
  r.bits = bits, r.block = bs, r.N = N, r.K = K;
  const int64_t kb = r.kb(), blob = r.blob(), zp_row = r.zp_row();
  r.B.assign(static_cast<size_t>(N * kb * blob), 0);
  r.scales.assign(static_cast<size_t>(N * kb), 0.f);
  if (!sym) r.zp.assign(static_cast<size_t>(N * zp_row), 0);
  const int qmax = (1 << bits) - 1;
  auto at = [&](int64_t n, int64_t k) { return w[n * sn + k * sk]; };
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t k0 = b * bs, k1 = std::min(K, k0 + bs);
      float mn = 0, mx = 0, amax = 0, signed_max = 0;
      for (int64_t k = k0; k < k1; ++k) {
        const float x = at(n, k);
        mn = std::min(mn, x), mx = std::max(mx, x);
        if (std::fabs(x) > amax) amax = std::fabs(x), signed_max = x;
      }
      float scale;
      int zp;
      if (sym) {
        // As ONNX Runtime's blockwise quantizer (MLAS) and llama.cpp's Q4_0: the element of largest
        // magnitude maps to code 0 (-2^(bits-1)), so all 2^bits codes are used and the step is
        // max|w| / 2^(bits-1), not max|w| / (2^(bits-1) - 1). The scale carries that element's sign
        // (negative when it is positive); elements of the other sign clamp at +2^(bits-1) - 1.
        scale = signed_max / -static_cast<float>(1 << (bits - 1));
        zp = 1 << (bits - 1);
      } else {
        scale = (mx - mn) / static_cast<float>(qmax);
        zp = scale > 0 ? std::clamp(static_cast<int>(std::lround(-mn / scale)), 0, qmax) : 0;
      }
      const float inv = scale != 0 ? 1.f / scale : 0.f;
      r.scales[static_cast<size_t>(n * kb + b)] = scale;
      uint8_t* p = r.B.data() + (n * kb + b) * blob;
      for (int64_t j = 0; j < bs; ++j) {
        const int64_t k = k0 + j;
        const int q = k < k1 ? std::clamp(static_cast<int>(std::lround(at(n, k) * inv)) + zp, 0, qmax) : zp;
        if (bits == 8)
          p[j] = static_cast<uint8_t>(q);
        else
          p[j / 2] |= static_cast<uint8_t>(j % 2 ? q << 4 : q);
      }
      if (!sym) {
        if (bits == 8)
          r.zp[static_cast<size_t>(n * zp_row + b)] = static_cast<uint8_t>(zp);
        else
          r.zp[static_cast<size_t>(n * zp_row + b / 2)] |= static_cast<uint8_t>(b % 2 ? zp << 4 : zp);
      }
    }
  return r;
}

NBitsNames nbits_initializers(GraphBuilder& g, const std::string& name, const NBitsWeight& w) {
  auto declare = [&](const std::string& n, io::DType t, const std::vector<int64_t>& shape, const void* data,
                     size_t count) -> std::string {
    if (g.has_external(n)) return g.external(n, t, shape);
    if (count == 0) throw Error("MatMulNBits weight '" + n + "' has no data and is not in the graph's external data");
    return g.tensor(n, t, shape, data);
  };
  NBitsNames r;
  r.B = declare(name + ".qweight", io::DType::U8, {w.N, w.kb(), w.blob()}, w.B.data(), w.B.size());
  r.scales = declare(name + ".scales", io::DType::F32, {w.N, w.kb()}, w.scales.data(), w.scales.size());
  if (!w.zp.empty() || g.has_external(name + ".zero_points"))
    r.zp = declare(name + ".zero_points", io::DType::U8, {w.N, w.zp_row()}, w.zp.data(), w.zp.size());
  if (!w.mins.empty() || g.has_external(name + ".mins"))
    r.mins = declare(name + ".mins", io::DType::F32, {w.N, w.kb()}, w.mins.data(), w.mins.size());
  return r;
}

std::string nbits_matmul(GraphBuilder& g, const std::string& scope, const std::string& x, const NBitsWeight& w,
                         const NBitsNames& names, int accuracy_level) {
  std::vector<std::string> in = {x, names.B, names.scales};
  if (!names.zp.empty()) in.push_back(names.zp);
  std::vector<Attr> attrs = {{"K", w.K}, {"N", w.N}, {"bits", w.bits}, {"block_size", w.block}};
  if (accuracy_level > 0) attrs.emplace_back("accuracy_level", accuracy_level);
  std::string y = g.op("MatMulNBits", scope + "/MatMulNBits", in, attrs, "com.microsoft");
  if (names.mins.empty()) return y;
  // y -= BlockSum(x) . mins^T: x [..., K] -> [M, kb, block] -> sums [M, kb] -> Gemm(transB) [M, N].
  const std::string s = scope + "/BlockMins";
  if (w.K % w.block != 0) throw Error("block-sum correction needs K a multiple of the block size");
  const std::string xb = g.op("Reshape", s + "/Blocks", {x, g.const_i64(s + "/blocks_shape", {-1, w.kb(), w.block})});
  const std::string sums = g.op("ReduceSum", s + "/ReduceSum", {xb, g.const_i64(s + "/axes", {-1})}, {{"keepdims", 0}});
  const std::string corr = g.op("Gemm", s + "/Gemm", {sums, names.mins}, {{"transB", 1}});
  const std::string shaped = g.op("Reshape", s + "/Reshape", {corr, g.op("Shape", s + "/Shape", {y})});
  return g.op("Sub", s + "/Sub", {y, shaped});
}

}  // namespace kvrun::graph
