// Loads libkvrun_sentencepiece.so (see sentencepiece_shim.cpp for why it is isolated) and
// wraps one model in SpmModel.
#include "text/spm_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "kvrun/error.h"

namespace kvrun::text {
namespace fs = std::filesystem;

const SpmApi& spm_api() {
  static SpmApi api;
  static std::once_flag once;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("KVRUN_SENTENCEPIECE_SHIM")) candidates.emplace_back(env);
    std::error_code ec;
    // Next to the object holding this code: the Python module (kvrun/_kvrun*.so) ships the shim
    // beside it.
    Dl_info self{};
    if (dladdr(reinterpret_cast<void*>(&spm_api), &self) && self.dli_fname)
      candidates.push_back((fs::path(self.dli_fname).parent_path() / "libkvrun_sentencepiece.so").string());
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      candidates.push_back((exe.parent_path() / "libkvrun_sentencepiece.so").string());
      candidates.push_back((exe.parent_path() / ".." / "lib" / "libkvrun_sentencepiece.so").string());
    }
#ifdef KVRUN_SENTENCEPIECE_SHIM
    candidates.emplace_back(KVRUN_SENTENCEPIECE_SHIM);
#endif
    void* lib = nullptr;
    std::string tried;
    for (const auto& c : candidates) {
      if (!fs::exists(c, ec)) {
        tried += " " + c + " (absent)";
        continue;
      }
      lib = dlmopen(LM_ID_NEWLM, c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
      const char* e = dlerror();
      tried += " " + c + " (" + (e ? e : "dlmopen failed") + ")";
    }
    if (!lib) {
      api.error = "SentencePiece support library libkvrun_sentencepiece.so not loadable; tried:" + tried;
      return;
    }
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn && api.error.empty()) api.error = std::string("libkvrun_sentencepiece.so lacks ") + name;
    };
    sym(api.load, "kvrun_spm_load");
    sym(api.free, "kvrun_spm_free");
    sym(api.encode, "kvrun_spm_encode");
    sym(api.decode, "kvrun_spm_decode");
    sym(api.encode_pieces, "kvrun_spm_encode_pieces");
    sym(api.decode_pieces, "kvrun_spm_decode_pieces");
    sym(api.piece_size, "kvrun_spm_piece_size");
    sym(api.piece_to_id, "kvrun_spm_piece_to_id");
    sym(api.id_to_piece, "kvrun_spm_id_to_piece");
    sym(api.is_control, "kvrun_spm_is_control");
    sym(api.special_id, "kvrun_spm_special_id");
  });
  if (!api.error.empty()) throw Error(api.error);
  return api;
}

SpmModel::SpmModel(const fs::path& file) : api_(spm_api()), file_(file) {
  char err[1024] = {0};
  handle_ = api_.load(file.c_str(), err, sizeof err);
  if (!handle_) throw Error(file.string() + ": expected a SentencePiece model, but it does not load: " + err);
  const int32_t n = api_.piece_size(handle_);
  pieces_.resize(static_cast<size_t>(n > 0 ? n : 0));
  control_.resize(pieces_.size());
  std::string buf(256, '\0');
  for (int32_t id = 0; id < n; ++id) {
    int64_t len = api_.id_to_piece(handle_, id, buf.data(), buf.size());
    if (static_cast<size_t>(len) > buf.size()) {
      buf.resize(static_cast<size_t>(len));
      len = api_.id_to_piece(handle_, id, buf.data(), buf.size());
    }
    pieces_[static_cast<size_t>(id)] = buf.substr(0, static_cast<size_t>(len));
    control_[static_cast<size_t>(id)] = api_.is_control(handle_, id) != 0;
  }
  unk_ = api_.special_id(handle_, 0);
}

SpmModel::~SpmModel() {
  if (handle_) api_.free(handle_);
}

// The shim's piece lists: [uint32 length][bytes] per piece.
std::vector<std::string> SpmModel::encode_pieces(std::string_view text) const {
  std::string buf(text.size() * 8 + 64, '\0');
  char err[1024] = {0};
  int64_t n = api_.encode_pieces(handle_, text.data(), text.size(), buf.data(), buf.size(), err, sizeof err);
  if (n > static_cast<int64_t>(buf.size())) {
    buf.resize(static_cast<size_t>(n));
    n = api_.encode_pieces(handle_, text.data(), text.size(), buf.data(), buf.size(), err, sizeof err);
  }
  if (n < 0) throw Error(file_.string() + ": SentencePiece encode failed: " + err);
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos + 4 <= static_cast<size_t>(n)) {
    uint32_t len = 0;
    std::memcpy(&len, buf.data() + pos, 4);
    pos += 4;
    if (len > static_cast<size_t>(n) - pos) throw Error(file_.string() + ": SentencePiece encode: bad piece list");
    out.emplace_back(buf.data() + pos, len);
    pos += len;
  }
  return out;
}

std::string SpmModel::decode_pieces(const std::vector<std::string>& pieces) const {
  std::string in;
  size_t total = 0;
  for (const auto& p : pieces) total += 4 + p.size();
  in.reserve(total);
  for (const auto& p : pieces) {
    const auto len = static_cast<uint32_t>(p.size());
    in.append(reinterpret_cast<const char*>(&len), 4);
    in += p;
  }
  std::string out(total * 2 + 64, '\0');
  char err[1024] = {0};
  int64_t n = api_.decode_pieces(handle_, in.data(), in.size(), out.data(), out.size(), err, sizeof err);
  if (n > static_cast<int64_t>(out.size())) {
    out.resize(static_cast<size_t>(n));
    n = api_.decode_pieces(handle_, in.data(), in.size(), out.data(), out.size(), err, sizeof err);
  }
  if (n < 0) throw Error(file_.string() + ": SentencePiece decode failed: " + err);
  out.resize(static_cast<size_t>(n));
  return out;
}

}  // namespace kvrun::text
