#include "io/torch_checkpoint.h"

#include <cstring>
#include <fstream>
#include <limits>

#include "io/pickle.h"
#include "kvrun/error.h"

namespace kvrun::io {
namespace fs = std::filesystem;
using pickle::Kind;
using pickle::Value;

namespace {

constexpr uint64_t kMaxPickleBytes = 256ull << 20;
constexpr uint64_t kMaxExpandedElements = 1ull << 24;
constexpr const char* kWrapKeys[] = {"state_dict", "model_state_dict", "model"};

bool has_tensor(const Value* d) {
  if (!d || d->kind != Kind::Dict) return false;
  for (const auto& [k, v] : d->entries)
    if (v->kind == Kind::Tensor) return true;
  return false;
}

std::string key_list(const Value* d) {
  std::string s;
  size_t n = 0;
  for (const auto& [k, v] : d->entries) {
    if (n == 8) return s + ", ...";
    if (n++) s += ", ";
    s += k->kind == Kind::String ? "'" + k->s + "'" : std::string(pickle::kind_name(k->kind));
  }
  return s.empty() ? "none" : s;
}

}  // namespace

bool looks_like_zip(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  char b[4] = {};
  in.read(b, 4);
  return in.gcount() == 4 && std::memcmp(b, "PK\x03\x04", 4) == 0;
}

TorchCheckpoint::TorchCheckpoint(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(path.string() + ": no such file");
  if (!looks_like_zip(path)) {
    std::ifstream in(path, std::ios::binary);
    const int first = in.get();
    if (first == 0x80)
      throw Error(path.string() +
                  ": legacy torch.save format (a bare pickle, written by torch < 1.6 or with "
                  "_use_new_zipfile_serialization=False) is not supported; expected the zip format: re-save it "
                  "with a current torch (torch.save(torch.load(f, weights_only=True), f))");
    throw Error(path.string() + ": not a torch.save checkpoint: expected a zip archive (PK\\3\\4), found " +
                (first < 0 ? std::string("an empty file") : "other bytes"));
  }
  zip_ = std::make_unique<ZipArchive>(path);
  load();
}

TorchCheckpoint::TorchCheckpoint(std::unique_ptr<ZipArchive> zip) : zip_(std::move(zip)) { load(); }

const TensorView* TorchCheckpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void TorchCheckpoint::load() {
  const std::string& label = zip_->label();
  auto bad = [&](const std::string& msg) -> Error { return Error(label + ": " + msg); };

  // ---- the pickle: exactly one "<prefix>/data.pkl"
  const ZipEntry* pkl = nullptr;
  for (const ZipEntry& e : zip_->entries()) {
    const size_t slash = e.name.find('/');
    if (slash == std::string::npos || slash == 0 || e.name.compare(slash, std::string::npos, "/data.pkl") != 0)
      continue;
    if (pkl) throw bad("two pickles, '" + pkl->name + "' and '" + e.name + "': expected one torch.save archive");
    pkl = &e;
  }
  if (!pkl)
    throw bad("no '<archive>/data.pkl' entry: not a torch.save archive (" + std::to_string(zip_->entries().size()) +
              " entries" + (zip_->entries().empty() ? "" : ", first '" + zip_->entries()[0].name + "'") + ")");
  prefix_ = pkl->name.substr(0, pkl->name.size() - std::strlen("/data.pkl"));
  const std::vector<uint8_t> bytes = zip_->read(*pkl, kMaxPickleBytes);
  const pickle::Document doc = pickle::unpickle(bytes.data(), bytes.size(), label + ":" + pkl->name);
  const Value* root = doc.root();
  if (root->kind != Kind::Dict)
    throw bad(std::string("the pickled object is a ") + pickle::kind_name(root->kind) +
              ", expected a dict of tensors (a state dict)");

  const Value* sd = root;
  for (const char* k : kWrapKeys) {
    if (has_tensor(root->get(k))) {
      sd = root->get(k);
      unwrapped_key_ = k;
      break;
    }
  }
  if (!has_tensor(sd))
    throw bad(
        "no tensors found: expected a dict of tensors, or one under 'state_dict', 'model_state_dict' or "
        "'model'; top-level keys: " +
        key_list(root));

  // ---- storages: zip entry "<prefix>/data/<key>", sized for numel elements
  struct Storage {
    const uint8_t* data = nullptr;
    uint64_t numel = 0;
    DType dtype = DType::F32;
  };
  std::map<std::string, Storage> storages;
  auto storage_of = [&](const Value* s, const std::string& tensor) -> const Storage& {
    auto it = storages.find(s->key);
    if (it != storages.end()) {
      if (it->second.dtype != s->dtype || it->second.numel != static_cast<uint64_t>(s->numel))
        throw bad("storage '" + s->key + "' is referenced as " + dtype_name(s->dtype) + " x " +
                  std::to_string(s->numel) + " by tensor '" + tensor + "' but as " + dtype_name(it->second.dtype) +
                  " x " + std::to_string(it->second.numel) + " before");
      return it->second;
    }
    const std::string entry = prefix_ + "/data/" + s->key;
    const ZipEntry* e = zip_->find(entry);
    if (!e) throw bad("tensor '" + tensor + "': its storage entry '" + entry + "' is missing (truncated archive?)");
    uint64_t need = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(s->numel), dtype_size(s->dtype), &need) || e->size < need)
      throw bad("tensor '" + tensor + "': storage '" + entry + "' holds " + std::to_string(e->size) +
                " bytes, expected " + std::to_string(s->numel) + " x " + dtype_name(s->dtype) + " = " +
                (need || s->numel == 0 ? std::to_string(need) : std::string("too many")) + " bytes");
    Storage st;
    st.numel = static_cast<uint64_t>(s->numel);
    st.dtype = s->dtype;
    if (need == 0) {
      st.data = nullptr;
    } else if (e->stored) {
      st.data = zip_->stored_data(*e);
    } else {
      owned_.push_back(zip_->read(*e, std::numeric_limits<uint64_t>::max()));
      st.data = owned_.back().data();
    }
    return storages.emplace(s->key, st).first->second;
  };

  for (const auto& [k, v] : sd->entries) {
    if (v->kind != Kind::Tensor) continue;
    if (k->kind != Kind::String)
      throw bad(std::string("a tensor under a key of type ") + pickle::kind_name(k->kind) + ", expected a string name");
    std::string name = k->s;
    if (name.rfind("module.", 0) == 0) name = name.substr(7);
    if (tensors_.count(name))
      throw bad("tensor '" + name + "' appears twice (once with the 'module.' prefix, once without)");
    const Storage& st = storage_of(v->storage, k->s);
    const size_t es = dtype_size(v->dtype);
    const std::string where = "tensor '" + k->s + "': ";
    if (v->storage_offset < 0) throw bad(where + "negative storage offset " + std::to_string(v->storage_offset));
    uint64_t numel = 1, last = static_cast<uint64_t>(v->storage_offset);
    bool overflow = false;
    for (size_t d = 0; d < v->size.size(); ++d) {
      if (v->size[d] < 0 || v->stride[d] < 0)
        throw bad(where + "negative size or stride (size " + shape_str(v->size) + ", stride " + shape_str(v->stride) +
                  ")");
      overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(v->size[d]), &numel);
    }
    if (overflow || numel > (1ull << 48)) throw bad(where + "shape " + shape_str(v->size) + " is too large");
    if (numel > 0) {
      for (size_t d = 0; d < v->size.size(); ++d) {
        uint64_t span = 0;
        overflow |=
            __builtin_mul_overflow(static_cast<uint64_t>(v->size[d] - 1), static_cast<uint64_t>(v->stride[d]), &span);
        overflow |= __builtin_add_overflow(last, span, &last);
      }
      if (overflow || last >= st.numel)
        throw bad(where + "size " + shape_str(v->size) + ", stride " + shape_str(v->stride) + " at storage offset " +
                  std::to_string(v->storage_offset) + " reaches element " +
                  (overflow ? std::string("(overflow)") : std::to_string(last)) + ", but storage '" + v->storage->key +
                  "' holds " + std::to_string(st.numel) + " elements");
    }
    TensorView t;
    t.name = name;
    t.dtype = v->dtype;
    t.shape = v->size;
    t.file = label;
    t.nbytes = static_cast<size_t>(numel * es);
    bool contiguous = true;
    int64_t expect = 1;
    for (size_t d = v->size.size(); d-- > 0;) {
      if (v->size[d] != 1 && v->stride[d] != expect) contiguous = false;
      expect *= v->size[d];
    }
    if (numel == 0) {
      t.data = nullptr;
    } else if (contiguous) {
      t.data = st.data + static_cast<uint64_t>(v->storage_offset) * es;
    } else {  // gather once, row-major
      // Overlapping views (expand(): stride 0) could ask for far more bytes than the file holds.
      if (numel > st.numel && numel > kMaxExpandedElements)
        throw bad(where + "an overlapping view (size " + shape_str(v->size) + ", stride " + shape_str(v->stride) +
                  ") of " + std::to_string(numel) + " elements over a storage of " + std::to_string(st.numel) +
                  "; expanded views are accepted up to " + std::to_string(kMaxExpandedElements) + " elements");
      std::vector<uint8_t> buf(t.nbytes);
      const size_t rank = v->size.size();
      std::vector<int64_t> idx(rank, 0);
      const uint8_t* src = st.data;
      for (uint64_t i = 0; i < numel; ++i) {
        uint64_t off = static_cast<uint64_t>(v->storage_offset);
        for (size_t d = 0; d < rank; ++d) off += static_cast<uint64_t>(idx[d]) * static_cast<uint64_t>(v->stride[d]);
        std::memcpy(buf.data() + i * es, src + off * es, es);
        for (size_t d = rank; d-- > 0;) {
          if (++idx[d] < v->size[d]) break;
          idx[d] = 0;
        }
      }
      owned_.push_back(std::move(buf));
      t.data = owned_.back().data();
    }
    tensors_.emplace(name, std::move(t));
  }
}

}  // namespace kvrun::io
