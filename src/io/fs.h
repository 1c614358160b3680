// File helpers: atomic writes, staged output folders, bounded JSON reading.
#pragma once
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace kvrun::io {

// Largest JSON file we parse (configs, tokenizer.json of big vocabularies fit easily).
inline constexpr uintmax_t kMaxJsonBytes = 256ull << 20;

// Reads and parses a JSON file; errors name the file. Refuses files over kMaxJsonBytes.
nlohmann::json read_json_file(const std::filesystem::path& path);
std::string read_text_file(const std::filesystem::path& path, uintmax_t max_bytes = kMaxJsonBytes);

// Writes `path` through a temporary sibling; only commit() makes it appear under its
// name. Destroyed without commit() -> the temporary is removed, nothing half-written stays.
class AtomicFile {
 public:
  explicit AtomicFile(const std::filesystem::path& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  uint64_t offset() const { return offset_; }
  void commit();

 private:
  std::filesystem::path path_, tmp_;
  std::FILE* f_ = nullptr;
  uint64_t offset_ = 0;
};

void write_text_file_atomic(const std::filesystem::path& path, const std::string& text);

// An output folder built under a temporary name beside the final one
// (`<out>.partial-<pid>`), moved into place by commit(); removed if never committed.
class StagedDir {
 public:
  // overwrite=false: refuse an existing non-empty `final_dir`.
  StagedDir(const std::filesystem::path& final_dir, bool overwrite);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;

  const std::filesystem::path& path() const { return tmp_; }
  const std::filesystem::path& final_path() const { return final_; }
  void commit();

 private:
  std::filesystem::path final_, tmp_;
  bool overwrite_ = false, committed_ = false;
};

}  // namespace kvrun::io
