#include "io/torch_writer.h"

#include <array>
#include <cctype>
#include <cstring>
#include <map>

#include "io/fs.h"
#include "kvrun/error.h"

namespace kvrun::io {
namespace fs = std::filesystem;

std::string torch_storage_class(DType t) {
  switch (t) {
    case DType::F32:
      return "FloatStorage";
    case DType::F16:
      return "HalfStorage";
    case DType::BF16:
      return "BFloat16Storage";
    case DType::F64:
      return "DoubleStorage";
    case DType::I64:
      return "LongStorage";
    case DType::I32:
      return "IntStorage";
    case DType::I16:
      return "ShortStorage";
    case DType::I8:
      return "CharStorage";
    case DType::U8:
      return "ByteStorage";
    case DType::BOOL:
      return "BoolStorage";
  }
  throw Error("no torch storage class for dtype " + dtype_name(t));
}

namespace {

constexpr uint64_t kAlign = 64;
constexpr uint32_t k32 = 0xffffffffu;

uint32_t crc32_update(uint32_t crc, const uint8_t* p, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

void put16(std::string& s, uint64_t v) {
  s += static_cast<char>(v & 0xff);
  s += static_cast<char>((v >> 8) & 0xff);
}
void put32(std::string& s, uint64_t v) {
  put16(s, v & 0xffff);
  put16(s, (v >> 16) & 0xffff);
}
void put64(std::string& s, uint64_t v) {
  put32(s, v & 0xffffffffu);
  put32(s, v >> 32);
}

// Protocol-2 pickle of {wrap_key: OrderedDict(name -> _rebuild_tensor_v2(...))}.
class PickleWriter {
 public:
  std::string out;

  void op(char c) { out += c; }
  void str(const std::string& s) {
    op('X');
    put32(out, s.size());
    out += s;
  }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      out += static_cast<char>(v);
    } else if (v >= 0 && v < 65536) {
      op('M');
      put16(out, static_cast<uint64_t>(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      put32(out, static_cast<uint32_t>(static_cast<int32_t>(v)));
    } else {  // LONG1, 8 bytes two's complement
      op('\x8a');
      out += '\x08';
      put64(out, static_cast<uint64_t>(v));
    }
  }
  void put_memo() {
    const size_t idx = memo_++;
    if (idx < 256) {
      op('q');
      out += static_cast<char>(idx);
    } else {
      op('r');
      put32(out, idx);
    }
  }
  void get_memo(size_t idx) {
    if (idx < 256) {
      op('h');
      out += static_cast<char>(idx);
    } else {
      op('j');
      put32(out, idx);
    }
  }
  // Pushes a global, memoized by name after its first use.
  void global(const std::string& module, const std::string& name) {
    cached(module + "\n" + name, [&] {
      op('c');
      out += module + "\n" + name + "\n";
    });
  }
  void cached_str(const std::string& s) {
    cached("\x01str:" + s, [&] { str(s); });
  }
  void ints_tuple(const std::vector<int64_t>& v) {
    if (v.empty()) {
      op(')');
      return;
    }
    if (v.size() <= 3) {
      for (int64_t x : v) integer(x);
      op(static_cast<char>(0x84 + v.size()));
      return;
    }
    op('(');
    for (int64_t x : v) integer(x);
    op('t');
  }

 private:
  template <class F>
  void cached(const std::string& key, F&& emit) {
    auto it = memo_of_.find(key);
    if (it != memo_of_.end()) {
      get_memo(it->second);
      return;
    }
    emit();
    memo_of_[key] = memo_;
    put_memo();
  }
  size_t memo_ = 0;
  std::map<std::string, size_t> memo_of_;
};

std::string make_pickle(const std::vector<TensorToWrite>& tensors, const std::vector<int64_t>& numels,
                        const std::string& wrap_key) {
  PickleWriter w;
  w.op('\x80');
  w.op('\x02');
  if (!wrap_key.empty()) {
    w.op('}');
    w.str(wrap_key);
  }
  w.global("collections", "OrderedDict");
  w.op(')');
  w.op('R');
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i % 1000 == 0) w.op('(');
    const TensorToWrite& t = tensors[i];
    w.str(t.name);
    w.global("torch._utils", "_rebuild_tensor_v2");
    w.op('(');
    w.op('(');  // persistent id
    w.cached_str("storage");
    w.global("torch", torch_storage_class(t.dtype));
    w.str(std::to_string(i));
    w.cached_str("cpu");
    w.integer(numels[i]);
    w.op('t');
    w.op('Q');
    w.integer(0);
    w.ints_tuple(t.shape);
    std::vector<int64_t> stride(t.shape.size());
    int64_t s = 1;
    for (size_t d = t.shape.size(); d-- > 0;) {
      stride[d] = s;
      s *= t.shape[d];
    }
    w.ints_tuple(stride);
    w.op('\x89');  // requires_grad False
    w.global("collections", "OrderedDict");
    w.op(')');
    w.op('R');  // backward_hooks
    w.op('t');
    w.op('R');
    if (i % 1000 == 999 || i + 1 == tensors.size()) w.op('u');
  }
  if (!wrap_key.empty()) w.op('s');
  w.op('.');
  return std::move(w.out);
}

struct Central {
  std::string name;
  uint32_t crc = 0;
  uint64_t size = 0, offset = 0;
};

class ZipWriter {
 public:
  explicit ZipWriter(const fs::path& path) : f_(path) {}

  // One stored entry; its bytes start at a multiple of kAlign.
  void add(const std::string& name, const uint8_t* data, uint64_t n) {
    Central c{name, crc32_update(0, data, n), n, f_.offset()};
    const bool z64 = n >= k32;
    std::string h;
    put32(h, 0x04034b50);
    put16(h, z64 ? 45 : 20);  // version needed
    put16(h, 0x0800);         // UTF-8 names
    put16(h, 0);              // stored
    put16(h, 0);              // time
    put16(h, (1 << 5) | 1);   // date 1980-01-01
    put32(h, c.crc);
    put32(h, z64 ? k32 : n);
    put32(h, z64 ? k32 : n);
    put16(h, name.size());
    std::string extra;
    if (z64) {
      put16(extra, 0x0001);
      put16(extra, 16);
      put64(extra, n);
      put64(extra, n);
    }
    // "FB" padding field (as torch writes) so the data lands on kAlign.
    const uint64_t base = c.offset + 30 + name.size() + extra.size() + 4;
    const uint64_t pad = (kAlign - base % kAlign) % kAlign;
    put16(extra, 0x4246);
    put16(extra, pad);
    extra.append(pad, 'Z');
    put16(h, extra.size());
    h += name;
    h += extra;
    f_.write(h.data(), h.size());
    if (n) f_.write(data, n);
    entries_.push_back(std::move(c));
  }

  void finish() {
    const uint64_t cd_offset = f_.offset();
    std::string cd;
    for (const Central& c : entries_) {
      const bool z64 = c.size >= k32 || c.offset >= k32;
      std::string extra;
      if (z64) {
        put16(extra, 0x0001);
        put16(extra, c.size >= k32 ? (c.offset >= k32 ? 24 : 16) : 8);
        if (c.size >= k32) {
          put64(extra, c.size);
          put64(extra, c.size);
        }
        if (c.offset >= k32) put64(extra, c.offset);
      }
      put32(cd, 0x02014b50);
      put16(cd, z64 ? 45 : 20);  // made by
      put16(cd, z64 ? 45 : 20);  // needed
      put16(cd, 0x0800);
      put16(cd, 0);
      put16(cd, 0);
      put16(cd, (1 << 5) | 1);
      put32(cd, c.crc);
      put32(cd, c.size >= k32 ? k32 : c.size);
      put32(cd, c.size >= k32 ? k32 : c.size);
      put16(cd, c.name.size());
      put16(cd, extra.size());
      put16(cd, 0);  // comment
      put16(cd, 0);  // disk
      put16(cd, 0);  // internal attributes
      put32(cd, 0);  // external attributes
      put32(cd, c.offset >= k32 ? k32 : c.offset);
      cd += c.name;
      cd += extra;
    }
    const uint64_t cd_size = cd.size();
    const uint64_t end64 = cd_offset + cd_size;
    const bool z64 = entries_.size() >= 0xffff || cd_offset >= k32 || cd_size >= k32;
    if (z64) {
      put32(cd, 0x06064b50);
      put64(cd, 44);
      put16(cd, 45);
      put16(cd, 45);
      put32(cd, 0);
      put32(cd, 0);
      put64(cd, entries_.size());
      put64(cd, entries_.size());
      put64(cd, cd_size);
      put64(cd, cd_offset);
      put32(cd, 0x07064b50);
      put32(cd, 0);
      put64(cd, end64);
      put32(cd, 1);
    }
    put32(cd, 0x06054b50);
    put16(cd, 0);
    put16(cd, 0);
    put16(cd, z64 ? 0xffff : entries_.size());
    put16(cd, z64 ? 0xffff : entries_.size());
    put32(cd, z64 ? k32 : cd_size);
    put32(cd, z64 ? k32 : cd_offset);
    put16(cd, 0);
    f_.write(cd.data(), cd.size());
    f_.commit();
  }

 private:
  AtomicFile f_;
  std::vector<Central> entries_;
};

std::string archive_stem(const fs::path& path) {
  std::string s = path.stem().string();
  std::string out;
  for (char c : s) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.') ? c : '_';
  return out.empty() ? "archive" : out;
}

}  // namespace

void write_torch_checkpoint_streaming(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                                      const std::string& wrap_key,
                                      const std::function<void(size_t, std::vector<uint8_t>&)>& fill) {
  std::vector<int64_t> numels;
  std::vector<uint64_t> sizes;
  std::map<std::string, int> seen;
  for (const auto& t : tensors) {
    uint64_t n = 1;
    for (auto d : t.shape) {
      if (d < 0) throw Error(path.string() + ": tensor '" + t.name + "' has a negative dimension");
      if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n) || n > (1ull << 48))
        throw Error(path.string() + ": tensor '" + t.name + "' is too large");
    }
    if (seen[t.name]++) throw Error(path.string() + ": tensor '" + t.name + "' written twice");
    torch_storage_class(t.dtype);  // throws for types torch cannot hold
    numels.push_back(static_cast<int64_t>(n));
    sizes.push_back(n * dtype_size(t.dtype));
  }
  const std::string stem = archive_stem(path);
  ZipWriter zip(path);
  auto add_text = [&](const std::string& name, const std::string& text) {
    zip.add(stem + "/" + name, reinterpret_cast<const uint8_t*>(text.data()), text.size());
  };
  add_text("data.pkl", make_pickle(tensors, numels, wrap_key));
  add_text(".format_version", "1");
  add_text(".storage_alignment", std::to_string(kAlign));
  add_text("byteorder", "little");
  std::vector<uint8_t> buf;
  uint64_t id = 1469598103934665603ull;  // FNV-1a over names and sizes, for the serialization id
  for (size_t i = 0; i < tensors.size(); ++i) {
    buf.assign(sizes[i], 0);
    fill(i, buf);
    if (buf.size() != sizes[i])
      throw Error(path.string() + ": tensor '" + tensors[i].name + "' filled with " + std::to_string(buf.size()) +
                  " bytes, expected " + std::to_string(sizes[i]));
    zip.add(stem + "/data/" + std::to_string(i), buf.data(), buf.size());
    for (char c : tensors[i].name + std::to_string(sizes[i])) id = (id ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  }
  add_text("version", "3\n");
  std::string sid = std::to_string(id);
  sid = std::string(40 - sid.size() % 40, '0') + sid;
  add_text(".data/serialization_id", sid.substr(sid.size() - 40));
  zip.finish();
}

void write_stored_zip(const fs::path& path, const std::vector<std::pair<std::string, std::string>>& entries) {
  ZipWriter zip(path);
  for (const auto& [name, bytes] : entries) zip.add(name, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  zip.finish();
}

void write_torch_checkpoint(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                            const std::string& wrap_key) {
  write_torch_checkpoint_streaming(path, tensors, wrap_key, [&](size_t i, std::vector<uint8_t>& buf) {
    if (!buf.empty()) std::memcpy(buf.data(), tensors[i].data, buf.size());
  });
}

}  // namespace kvrun::io
