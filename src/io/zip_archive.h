// Read-only zip archives (libzip) as torch.save writes them: entries listed, read
// whole (CRC checked by libzip), and for entries stored uncompressed the absolute
// offset of their bytes so a storage can be used in place from the memory map.
//
// Everything is validated against the file: the central directory must be complete,
// every entry's local header must sit inside the file and name the same entry, and
// a stored entry's bytes must end inside the file. Failures are kvrun::Error naming
// the archive, the entry and what was expected and found.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kvrun::io {

class MappedFile;

struct ZipEntry {
  std::string name;
  uint64_t index = 0;            // libzip's index
  uint64_t size = 0;             // uncompressed size
  uint64_t compressed_size = 0;  // == size when stored
  bool stored = false;           // compression method 0 (not compressed, not encrypted)
  uint64_t data_offset = 0;      // absolute offset of the bytes in the archive; valid when stored
};

class ZipArchive {
 public:
  // Largest entry read() copies into memory (data.pkl and friends are small).
  static constexpr uint64_t kMaxReadBytes = 1ull << 30;
  // Most entries an archive may list.
  static constexpr uint64_t kMaxEntries = 1ull << 20;

  // Memory-maps the file and opens it.
  explicit ZipArchive(const std::filesystem::path& path);
  // An archive held in memory (not copied: `data` must outlive the archive). `label`
  // names it in error messages. Used by the fuzz targets.
  ZipArchive(const uint8_t* data, size_t size, std::string label);
  ~ZipArchive();
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;

  const std::string& label() const { return label_; }
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;
  // Throws kvrun::Error naming the archive when the entry is missing.
  const ZipEntry& get(const std::string& name) const;
  // The whole entry, decompressed, CRC checked. Refuses entries over max_bytes.
  std::vector<uint8_t> read(const ZipEntry& e, uint64_t max_bytes = kMaxReadBytes) const;
  // A stored entry's bytes in place (data() + data_offset); throws for compressed entries.
  const uint8_t* stored_data(const ZipEntry& e) const;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // madvise(MADV_RANDOM) over the mapping (advice only).
  void advise_random() const;

 private:
  void open();
  void open_checked();
  [[noreturn]] void fail(const std::string& msg) const;

  std::string label_;
  std::unique_ptr<MappedFile> map_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  void* zip_ = nullptr;  // zip_t*
  std::vector<ZipEntry> entries_;
  std::map<std::string, size_t> by_name_;
};

}  // namespace kvrun::io
