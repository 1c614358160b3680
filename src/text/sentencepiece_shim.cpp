// libkvrun_sentencepiece.so: a C interface over libsentencepiece, loaded by
// sentencepiece_tokenizer.cpp with dlmopen() into its own link namespace.
//
// Why: Debian's libsentencepiece carries a private copy of protobuf-lite 3.14 whose
// symbols are exported; the ONNX libraries kvrun links use libprotobuf 3.21. In one
// namespace the two copies interpose each other and protobuf aborts. Isolated, each
// sees its own. Only plain data crosses this interface (caller-owned buffers).
// Built without sanitizers (see CMakeLists.txt); not part of kvrun_core.
#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
void set_err(char* err, size_t cap, const std::string& msg) {
  if (!err || cap == 0) return;
  const size_t n = std::min(cap - 1, msg.size());
  std::memcpy(err, msg.data(), n);
  err[n] = 0;
}
sentencepiece::SentencePieceProcessor* sp(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h); }
}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* kvrun_spm_load(const char* path, char* err, size_t cap) {
  try {
    auto* p = new sentencepiece::SentencePieceProcessor();
    const auto st = p->Load(path);
    if (!st.ok()) {
      set_err(err, cap, st.ToString());
      delete p;
      return nullptr;
    }
    return p;
  } catch (const std::exception& e) {
    set_err(err, cap, e.what());
    return nullptr;
  }
}

__attribute__((visibility("default"))) void kvrun_spm_free(void* h) { delete sp(h); }

// Encodes text; writes up to cap ids; returns the number of ids (call again with a
// larger buffer when it exceeds cap), or -1 with err set.
__attribute__((visibility("default"))) int64_t kvrun_spm_encode(void* h, const char* text, size_t len, int32_t* out,
                                                                size_t cap, char* err, size_t err_cap) {
  try {
    std::vector<int> ids;
    const auto st = sp(h)->Encode(std::string_view(text, len), &ids);
    if (!st.ok()) {
      set_err(err, err_cap, st.ToString());
      return -1;
    }
    for (size_t i = 0; i < ids.size() && i < cap; ++i) out[i] = ids[i];
    return static_cast<int64_t>(ids.size());
  } catch (const std::exception& e) {
    set_err(err, err_cap, e.what());
    return -1;
  }
}

// Decodes ids; writes up to cap bytes; returns the text length, or -1 with err set.
__attribute__((visibility("default"))) int64_t kvrun_spm_decode(void* h, const int32_t* ids, size_t n, char* out,
                                                                size_t cap, char* err, size_t err_cap) {
  try {
    std::string s;
    const auto st = sp(h)->Decode(std::vector<int>(ids, ids + n), &s);
    if (!st.ok()) {
      set_err(err, err_cap, st.ToString());
      return -1;
    }
    std::memcpy(out, s.data(), std::min(cap, s.size()));
    return static_cast<int64_t>(s.size());
  } catch (const std::exception& e) {
    set_err(err, err_cap, e.what());
    return -1;
  }
}

// Encodes text into pieces (SentencePieceProcessor::Encode to strings: an unknown run is
// its surface text); writes [uint32 length][bytes] per piece, up to cap bytes; returns
// the bytes needed (call again with a larger buffer when it exceeds cap), or -1 with err set.
__attribute__((visibility("default"))) int64_t kvrun_spm_encode_pieces(void* h, const char* text, size_t len, char* out,
                                                                       size_t cap, char* err, size_t err_cap) {
  try {
    std::vector<std::string> pieces;
    const auto st = sp(h)->Encode(std::string_view(text, len), &pieces);
    if (!st.ok()) {
      set_err(err, err_cap, st.ToString());
      return -1;
    }
    size_t pos = 0;
    for (const auto& p : pieces) {
      const auto n = static_cast<uint32_t>(p.size());
      if (pos + 4 + n <= cap) {
        std::memcpy(out + pos, &n, 4);
        std::memcpy(out + pos + 4, p.data(), n);
      }
      pos += 4 + n;
    }
    return static_cast<int64_t>(pos);
  } catch (const std::exception& e) {
    set_err(err, err_cap, e.what());
    return -1;
  }
}

// Decodes pieces given as [uint32 length][bytes] each (SentencePieceProcessor::Decode of
// strings: a piece the model lacks comes out verbatim); writes up to cap bytes; returns
// the text length, or -1 with err set.
__attribute__((visibility("default"))) int64_t kvrun_spm_decode_pieces(void* h, const char* in, size_t len, char* out,
                                                                       size_t cap, char* err, size_t err_cap) {
  try {
    std::vector<std::string> pieces;
    size_t pos = 0;
    while (pos + 4 <= len) {
      uint32_t n = 0;
      std::memcpy(&n, in + pos, 4);
      pos += 4;
      if (n > len - pos) {
        set_err(err, err_cap, "truncated piece list");
        return -1;
      }
      pieces.emplace_back(in + pos, n);
      pos += n;
    }
    std::string s;
    const auto st = sp(h)->Decode(pieces, &s);
    if (!st.ok()) {
      set_err(err, err_cap, st.ToString());
      return -1;
    }
    std::memcpy(out, s.data(), std::min(cap, s.size()));
    return static_cast<int64_t>(s.size());
  } catch (const std::exception& e) {
    set_err(err, err_cap, e.what());
    return -1;
  }
}

__attribute__((visibility("default"))) int32_t kvrun_spm_piece_size(void* h) { return sp(h)->GetPieceSize(); }
__attribute__((visibility("default"))) int32_t kvrun_spm_piece_to_id(void* h, const char* s, size_t n) {
  return sp(h)->PieceToId(std::string_view(s, n));
}
// Copies the piece of id (valid) into out; returns its length.
__attribute__((visibility("default"))) int64_t kvrun_spm_id_to_piece(void* h, int32_t id, char* out, size_t cap) {
  const std::string& s = sp(h)->IdToPiece(id);
  std::memcpy(out, s.data(), std::min(cap, s.size()));
  return static_cast<int64_t>(s.size());
}
__attribute__((visibility("default"))) int32_t kvrun_spm_is_control(void* h, int32_t id) {
  return sp(h)->IsControl(id) ? 1 : 0;
}
// which: 0 unk, 1 bos, 2 eos, 3 pad. -1 when the model has none.
__attribute__((visibility("default"))) int32_t kvrun_spm_special_id(void* h, int32_t which) {
  switch (which) {
    case 0:
      return sp(h)->unk_id();
    case 1:
      return sp(h)->bos_id();
    case 2:
      return sp(h)->eos_id();
    default:
      return sp(h)->pad_id();
  }
}
}
