#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/fs.h"
#include "io/gguf_checkpoint.h"
#include "io/torch_checkpoint.h"
#include "kvrun/error.h"

namespace kvrun::io {
namespace fs = std::filesystem;
using nlohmann::json;

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

void TensorView::row_f32(int64_t r, float* out) const {
  if (shape.size() != 2) throw Error(name + ": expected a rank-2 table, found shape " + shape_str(shape));
  if (r < 0 || r >= shape[0])
    throw Error("token id " + std::to_string(r) + " is outside the vocabulary [0, " + std::to_string(shape[0]) + ")");
  const auto width = static_cast<size_t>(shape[1]);
  if (quantized()) {
    const size_t row_bytes = nbytes / static_cast<size_t>(shape[0]);
    io::dequantize(static_cast<GgmlType>(ggml_type), data + static_cast<size_t>(r) * row_bytes,
                   static_cast<int64_t>(width), out);
    return;
  }
  io::to_f32(dtype, data + static_cast<size_t>(r) * width * dtype_size(dtype), out, width);
}

std::vector<float> TensorView::to_f32() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  if (quantized())
    io::dequantize(static_cast<GgmlType>(ggml_type), data, numel(), out.data());
  else
    io::to_f32(dtype, data, out.data(), out.size());
  return out;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {

[[noreturn]] void bad(const fs::path& p, const std::string& msg) { throw Error(p.string() + ": " + msg); }

// Multiplies with overflow detection; false on overflow.
bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) bad(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    bad(path, std::string("cannot stat: ") + std::strerror(errno));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    bad(path,
        "truncated safetensors file: expected at least 8 bytes (header length), found " + std::to_string(file_size));
  }
  map_size_ = static_cast<size_t>(file_size);
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    bad(path, std::string("mmap failed: ") + std::strerror(errno));
  }
  try {
    const auto* base = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
    if (header_len > kMaxHeaderBytes)
      bad(path, "safetensors header length " + std::to_string(header_len) + " exceeds the limit of " +
                    std::to_string(kMaxHeaderBytes) + " bytes (corrupt file?)");
    if (header_len > file_size - 8)
      bad(path, "truncated safetensors file: header length field says " + std::to_string(header_len) +
                    " bytes but only " + std::to_string(file_size - 8) + " follow");
    const char* hb = reinterpret_cast<const char*>(base + 8);
    json header;
    try {
      header = json::parse(hb, hb + header_len);
    } catch (const json::exception& e) {
      bad(path, std::string("safetensors header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) bad(path, "safetensors header must be a JSON object");
    const uint64_t data_start = 8 + header_len;
    const uint64_t data_size = file_size - data_start;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    std::vector<std::string> range_names;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      if (name == "__metadata__") {
        if (!it->is_object()) bad(path, "__metadata__ must be an object of strings");
        for (auto m = it->begin(); m != it->end(); ++m) {
          if (!m->is_string()) bad(path, "__metadata__ value '" + m.key() + "' must be a string");
          metadata_[m.key()] = m->get<std::string>();
        }
        continue;
      }
      const json& e = *it;
      const std::string where = "tensor '" + name + "': ";
      if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
        bad(path, where + "expected an object with dtype, shape and data_offsets");
      if (!e["dtype"].is_string()) bad(path, where + "dtype must be a string");
      TensorView v;
      v.name = name;
      v.file = path.string();
      try {
        v.dtype = dtype_from_safetensors(e["dtype"].get<std::string>());
      } catch (const Error& err) {
        bad(path, where + err.what());
      }
      if (!e["shape"].is_array()) bad(path, where + "shape must be an array");
      uint64_t numel = 1;
      for (const auto& d : e["shape"]) {
        if (!d.is_number_unsigned()) bad(path, where + "shape entries must be non-negative integers");
        const uint64_t dim = d.get<uint64_t>();
        if (dim > (1ull << 48) || !mul_ok(numel, dim, &numel))
          bad(path, where + "shape " + e["shape"].dump() + " is too large");
        v.shape.push_back(static_cast<int64_t>(dim));
      }
      const auto& off = e["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        bad(path, where + "data_offsets must be [begin, end] non-negative integers");
      const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
      if (begin > end)
        bad(path, where + "data_offsets begin " + std::to_string(begin) + " > end " + std::to_string(end));
      if (end > data_size)
        bad(path, where + "data_offsets end " + std::to_string(end) + " is past the data buffer of " +
                      std::to_string(data_size) + " bytes (truncated file?)");
      uint64_t expected = 0;
      if (!mul_ok(numel, dtype_size(v.dtype), &expected) || expected != end - begin)
        bad(path, where + "shape " + shape_str(v.shape) + " x " + std::string(dtype_to_safetensors(v.dtype)) +
                      " needs " + std::to_string(expected) + " bytes but data_offsets span " +
                      std::to_string(end - begin));
      v.data = base + data_start + begin;
      v.nbytes = static_cast<size_t>(end - begin);
      if (begin != end) {  // empty tensors overlap nothing; listing them would hide neighbours' overlaps
        ranges.emplace_back(begin, end);
        range_names.push_back(name);
      }
      tensors_.emplace(name, std::move(v));
    }
    std::vector<size_t> order(ranges.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
    for (size_t i = 1; i < order.size(); ++i) {
      const auto& prev = ranges[order[i - 1]];
      const auto& cur = ranges[order[i]];
      if (cur.first < prev.second && cur.first != cur.second && prev.first != prev.second)
        bad(path, "tensors '" + range_names[order[i - 1]] + "' and '" + range_names[order[i]] +
                      "' overlap in the data buffer");
    }
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

void SafetensorsFile::advise_random() const {
  if (map_) ::madvise(map_, map_size_, MADV_RANDOM);  // advice only: failure changes nothing
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

struct TensorStore::Impl {
  fs::path path;
  std::vector<std::unique_ptr<SafetensorsFile>> st_files;
  std::vector<std::unique_ptr<TorchCheckpoint>> torch_files;
  std::vector<std::unique_ptr<GgufCheckpoint>> gguf_files;
  std::map<std::string, const TensorView*> index;

  // Opens one file by its kind; returns its tensors.
  const std::map<std::string, TensorView>& open(const fs::path& file) {
    const std::string ext = file.extension().string();
    if (ext == ".gguf" || is_gguf_file(file)) {
      gguf_files.push_back(std::make_unique<GgufCheckpoint>(file));
      return gguf_files.back()->tensors();
    }
    if (ext != ".safetensors" &&
        (ext == ".pt" || ext == ".pth" || ext == ".bin" || ext == ".ckpt" || looks_like_zip(file))) {
      torch_files.push_back(std::make_unique<TorchCheckpoint>(file));
      return torch_files.back()->tensors();
    }
    st_files.push_back(std::make_unique<SafetensorsFile>(file));
    return st_files.back()->tensors();
  }

  void add_all(const std::map<std::string, TensorView>& tensors) {
    for (const auto& [name, v] : tensors) index[name] = &v;
  }

  // A sharded checkpoint: {"weight_map": {tensor: shard file}}.
  void open_sharded(const fs::path& dir, const fs::path& index_file) {
    const std::string index_name = index_file.filename().string();
    const json j = read_json_file(index_file);
    if (!j.contains("weight_map") || !j["weight_map"].is_object() || j["weight_map"].empty())
      throw Error(index_file.string() + ": expected a non-empty object 'weight_map' {tensor: file}");
    std::map<std::string, const std::map<std::string, TensorView>*> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) throw Error(index_file.string() + ": weight_map['" + it.key() + "'] must be a file name");
      const std::string file = it->get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file.find("..") != std::string::npos)
        throw Error(index_file.string() + ": weight_map['" + it.key() + "'] names '" + file +
                    "', expected a file name inside the checkpoint folder");
      if (!shards.count(file)) {
        if (!fs::exists(dir / file))
          throw Error(index_file.string() + ": shard '" + file + "' (holding '" + it.key() + "') is missing");
        shards[file] = &open(dir / file);
      }
      const auto& tensors = *shards[file];
      auto t = tensors.find(it.key());
      if (t == tensors.end())
        throw Error((dir / file).string() + ": tensor '" + it.key() + "' listed in " + index_name +
                    " is not in this shard");
      index[it.key()] = &t->second;
    }
  }
};

TensorStore::TensorStore(std::shared_ptr<const Impl> impl, std::string prefix)
    : impl_(std::move(impl)), prefix_(std::move(prefix)) {}

TensorStore::TensorStore(const fs::path& path) {
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  if (fs::is_regular_file(path)) {
    impl->add_all(impl->open(path));
  } else if (fs::is_directory(path)) {
    if (fs::exists(path / "model.safetensors.index.json")) {
      impl->open_sharded(path, path / "model.safetensors.index.json");
    } else if (fs::exists(path / "model.safetensors")) {
      impl->add_all(impl->open(path / "model.safetensors"));
    } else if (fs::exists(path / "pytorch_model.bin.index.json")) {
      impl->open_sharded(path, path / "pytorch_model.bin.index.json");
    } else if (fs::exists(path / "pytorch_model.bin")) {
      impl->add_all(impl->open(path / "pytorch_model.bin"));
    } else if (fs::exists(path / "model.pt")) {
      impl->add_all(impl->open(path / "model.pt"));
    } else {
      throw Error(path.string() +
                  ": no model.safetensors or model.safetensors.index.json in this folder (nor pytorch_model.bin, "
                  "pytorch_model.bin.index.json or model.pt)");
    }
  } else {
    throw Error(path.string() + ": no such file or folder");
  }
  impl_ = std::move(impl);
}

void TensorStore::advise_random() const {
  for (const auto& f : impl_->st_files) f->advise_random();
  for (const auto& f : impl_->torch_files) f->advise_random();
}

const fs::path& TensorStore::path() const { return impl_->path; }

bool TensorStore::has(const std::string& name) const { return impl_->index.count(prefix_ + name) > 0; }

const TensorView& TensorStore::get(const std::string& name) const {
  auto it = impl_->index.find(prefix_ + name);
  if (it == impl_->index.end())
    throw Error(impl_->path.string() + ": tensor '" + prefix_ + name + "' not found in the checkpoint");
  return *it->second;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  for (auto it = impl_->index.lower_bound(prefix_); it != impl_->index.end(); ++it) {
    if (it->first.compare(0, prefix_.size(), prefix_) != 0) break;
    out.push_back(it->first.substr(prefix_.size()));
  }
  return out;
}

TensorStore TensorStore::sub(const std::string& prefix) const { return TensorStore(impl_, prefix_ + prefix); }

uint64_t write_safetensors_streaming(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                                     const std::map<std::string, std::string>& metadata, uint64_t align,
                                     const std::function<void(size_t, std::vector<uint8_t>&)>& fill) {
  if (align < 8 || (align & (align - 1)) != 0) throw Error("safetensors alignment must be a power of two >= 8");
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    uint64_t n = dtype_size(t.dtype);
    for (auto d : t.shape) {
      if (d < 0) throw Error(path.string() + ": tensor '" + t.name + "' has a negative dimension");
      n *= static_cast<uint64_t>(d);
    }
    if (header.contains(t.name)) throw Error(path.string() + ": tensor '" + t.name + "' written twice");
    header[t.name] = {
        {"dtype", dtype_to_safetensors(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    sizes.push_back(n);
    offset += n;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % align != 0) h.push_back(' ');
  AtomicFile out(path);
  uint8_t len[8];
  const uint64_t hl = h.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(hl >> (8 * i));
  out.write(len, 8);
  out.write(h.data(), h.size());
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < tensors.size(); ++i) {
    buf.assign(sizes[i], 0);
    fill(i, buf);
    if (buf.size() != sizes[i])
      throw Error(path.string() + ": tensor '" + tensors[i].name + "' filled with wrong size");
    out.write(buf.data(), buf.size());
  }
  out.commit();
  return 8 + hl;
}

uint64_t write_safetensors(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                           const std::map<std::string, std::string>& metadata, uint64_t align) {
  return write_safetensors_streaming(path, tensors, metadata, align, [&](size_t i, std::vector<uint8_t>& buf) {
    if (!buf.empty()) std::memcpy(buf.data(), tensors[i].data, buf.size());
  });
}

}  // namespace kvrun::io
