// GGUF files (llama.cpp's model format), versions 2 and 3: metadata, tensor infos and
// memory-mapped tensor data, with every count, length, offset and size checked against
// the file before use; and dequantization of the ggml block types, bit-identical to
// gguf-py's `gguf.quants.dequantize`.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count;
// kv_count x (string key, u32 type, value); tensor_count x (string name, u32 n_dims,
// u64 ne[n_dims], u32 ggml_type, u64 offset); padding to general.alignment (default
// 32); the data section. ne[0] is the contiguous (row) dimension, so shape() is ne
// reversed (row-major, as numpy and safetensors write it).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kvrun::io {

class MappedFile;

// ggml tensor types (ids as in ggml.h).
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

struct GgmlTypeTraits {
  const char* name;     // "Q4_K"
  int64_t block_elems;  // elements per block (1 for F32/F16/BF16)
  int64_t block_bytes;  // bytes per block
  bool dequantizable;   // dequantize() supports it
};
// nullptr for a type id kvrun does not know.
const GgmlTypeTraits* ggml_type_traits(uint32_t type);
// "Q4_K", or "type 99" for an unknown id.
std::string ggml_type_name(uint32_t type);

// Dequantizes `n` elements (a multiple of the type's block_elems) from `src` (n /
// block_elems blocks) into `out`, bit-identical to gguf-py. Throws kvrun::Error for an
// unsupported type or an n that is not a whole number of blocks.
void dequantize(GgmlType type, const uint8_t* src, int64_t n, float* out);

// One metadata value. Arrays hold their elements as GgufValues (nested arrays allowed).
struct GgufValue {
  enum class Type : uint32_t {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
  };
  Type type = Type::U8;
  uint64_t u = 0;                // unsigned integers and bool
  int64_t i = 0;                 // signed integers
  double f = 0;                  // F32/F64
  std::string s;                 // STRING
  Type elem_type = Type::U8;     // ARRAY
  std::vector<GgufValue> elems;  // ARRAY
  bool is_integer() const;
  bool is_float() const;
};
// "u32", "string", "array[string]", ... for messages.
std::string gguf_type_name(const GgufValue& v);

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;        // ggml order: ne[0] contiguous
  uint32_t type = 0;              // GgmlType id
  uint64_t offset = 0;            // relative to the data section
  const uint8_t* data = nullptr;  // inside the memory map
  uint64_t nbytes = 0;
  int64_t numel() const;
  std::vector<int64_t> shape() const;  // ne reversed
  int64_t row_elems() const { return ne.empty() ? 1 : ne[0]; }
  int64_t rows() const;  // numel / ne[0]
};

class GgufFile {
 public:
  // Limits on what a header may claim before anything is allocated.
  static constexpr uint64_t kMaxStringBytes = 1ull << 24;
  static constexpr uint64_t kMaxDims = 4;

  // Maps and parses the file. Throws kvrun::Error naming the file, the field or key or
  // tensor, what was expected and what was found.
  explicit GgufFile(const std::filesystem::path& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the data section

  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const GgufValue* find(const std::string& key) const;
  // Typed getters: throw kvrun::Error "<file>: metadata key '<key>': expected <type>,
  // found <type>" (or "... missing"). Integers of any width convert when the value fits.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // f32, f64 (or an integer)
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;
  // The same with a default when the key is absent (a present key of the wrong type still throws).
  std::optional<std::string> opt_string(const std::string& key) const;
  std::optional<int64_t> opt_int(const std::string& key) const;
  std::optional<double> opt_float(const std::string& key) const;
  std::optional<bool> opt_bool(const std::string& key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(const std::string& name) const;
  // Throws "<file>: tensor '<name>' not found".
  const GgufTensor& tensor(const std::string& name) const;
  // Whole tensor as float32 (dequantized).
  std::vector<float> to_f32(const GgufTensor& t) const;
  // Row r (ne[0] values) of a tensor, dequantized into out. Throws when r is out of range.
  void row_f32(const GgufTensor& t, int64_t r, float* out) const;

 private:
  void parse();
  [[noreturn]] void fail(const std::string& what) const;  // throws "<file>: <what>"
  const GgufValue& get(const std::string& key) const;     // throws "... missing"

  std::filesystem::path path_;
  std::unique_ptr<MappedFile> file_;  // owns the map; map_/map_size_ view it
  void* map_ = nullptr;
  size_t map_size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace kvrun::io
