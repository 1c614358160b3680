// A read-only memory map of a whole file (RAII). Used for ONNX external data.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace kvrun::io {

class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);  // throws kvrun::Error naming the file
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return static_cast<const uint8_t*>(map_); }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvrun::io
