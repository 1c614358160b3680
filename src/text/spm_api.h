// The C interface of libkvrun_sentencepiece.so (sentencepiece_shim.cpp), loaded once with
// dlmopen() into its own link namespace, and SpmModel: one loaded SentencePiece model.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace kvrun::text {

struct SpmApi {
  void* (*load)(const char*, char*, size_t) = nullptr;
  void (*free)(void*) = nullptr;
  int64_t (*encode)(void*, const char*, size_t, int32_t*, size_t, char*, size_t) = nullptr;
  int64_t (*decode)(void*, const int32_t*, size_t, char*, size_t, char*, size_t) = nullptr;
  int64_t (*encode_pieces)(void*, const char*, size_t, char*, size_t, char*, size_t) = nullptr;
  int64_t (*decode_pieces)(void*, const char*, size_t, char*, size_t, char*, size_t) = nullptr;
  int32_t (*piece_size)(void*) = nullptr;
  int32_t (*piece_to_id)(void*, const char*, size_t) = nullptr;
  int64_t (*id_to_piece)(void*, int32_t, char*, size_t) = nullptr;
  int32_t (*is_control)(void*, int32_t) = nullptr;
  int32_t (*special_id)(void*, int32_t) = nullptr;
  std::string error;  // why it could not be loaded
};

// The shim's functions; throws kvrun::Error when the library cannot be loaded.
const SpmApi& spm_api();

// A SentencePiece model file, read through the shim. Const methods are thread-safe
// (SentencePieceProcessor's encode/decode are const).
class SpmModel {
 public:
  // Throws kvrun::Error naming the file when it is not a SentencePiece model.
  explicit SpmModel(const std::filesystem::path& file);
  ~SpmModel();
  SpmModel(const SpmModel&) = delete;
  SpmModel& operator=(const SpmModel&) = delete;

  // SentencePieceProcessor::Encode(text, out_type=str): the pieces as surface strings
  // (an unknown run is its own text, not "<unk>").
  std::vector<std::string> encode_pieces(std::string_view text) const;
  // SentencePieceProcessor::DecodePieces: pieces the model lacks come out verbatim.
  std::string decode_pieces(const std::vector<std::string>& pieces) const;
  int32_t piece_size() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& id_to_piece(int32_t id) const { return pieces_.at(static_cast<size_t>(id)); }
  bool is_control(int32_t id) const { return control_.at(static_cast<size_t>(id)); }
  int32_t unk_id() const { return unk_; }
  const std::filesystem::path& file() const { return file_; }

 private:
  const SpmApi& api_;
  std::filesystem::path file_;
  void* handle_ = nullptr;
  std::vector<std::string> pieces_;
  std::vector<bool> control_;
  int32_t unk_ = -1;
};

}  // namespace kvrun::text
