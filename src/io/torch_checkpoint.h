// torch.save checkpoints (the zip format torch >= 1.6 writes) read without torch:
// `<archive>/data.pkl` is read by the restricted unpickler (io/pickle.h), each tensor's
// storage is `<archive>/data/<key>`.
//
// Tensors are checked against their storage (offset + extent within the element
// count, which must fit in the zip entry). Row-major contiguous tensors of stored
// entries point into the memory map; other layouts (transposed, strided) and
// compressed entries are copied once into buffers the checkpoint owns.
//
// The top-level object must be a dict. When it holds a dict under "state_dict",
// "model_state_dict" or "model" with tensors, that dict is used; a "module." prefix
// (DataParallel) is stripped. Non-tensor entries (epoch counters, ...) are ignored.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/zip_archive.h"

namespace kvrun::io {

class TorchCheckpoint {
 public:
  explicit TorchCheckpoint(const std::filesystem::path& path);
  // From an opened archive (the fuzz target passes one held in memory).
  explicit TorchCheckpoint(std::unique_ptr<ZipArchive> zip);
  TorchCheckpoint(const TorchCheckpoint&) = delete;
  TorchCheckpoint& operator=(const TorchCheckpoint&) = delete;

  const std::string& label() const { return zip_->label(); }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  // Which top-level key held the tensors ("" when the top-level dict itself did).
  const std::string& unwrapped_key() const { return unwrapped_key_; }
  // The archive's folder name inside the zip ("archive", or the saved file's stem).
  const std::string& archive_prefix() const { return prefix_; }
  void advise_random() const { zip_->advise_random(); }

 private:
  void load();

  std::unique_ptr<ZipArchive> zip_;
  std::string prefix_, unwrapped_key_;
  std::map<std::string, TensorView> tensors_;
  std::vector<std::vector<uint8_t>> owned_;  // materialized tensors and decompressed storages
};

// True when the file starts like a zip archive (torch.save's default format).
bool looks_like_zip(const std::filesystem::path& path);

}  // namespace kvrun::io
