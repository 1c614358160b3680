#include "io/fs.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "kvrun/error.h"

namespace kvrun::io {
namespace fs = std::filesystem;

std::string read_text_file(const fs::path& path, uintmax_t max_bytes) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(path.string() + ": no such file");
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw Error(path.string() + ": cannot read size: " + ec.message());
  if (size > max_bytes)
    throw Error(path.string() + ": file is " + std::to_string(size) + " bytes, expected at most " +
                std::to_string(max_bytes));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open");
  std::string s(static_cast<size_t>(size), '\0');
  in.read(s.data(), static_cast<std::streamsize>(size));
  if (!in) throw Error(path.string() + ": read failed");
  return s;
}

nlohmann::json read_json_file(const fs::path& path) {
  const std::string s = read_text_file(path);
  try {
    return nlohmann::json::parse(s);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": invalid JSON: " + e.what());
  }
}

AtomicFile::AtomicFile(const fs::path& path) : path_(path), tmp_(path.string() + ".tmp-" + std::to_string(::getpid())) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) throw Error(tmp_.string() + ": cannot create: " + std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    std::error_code ec;
    fs::remove(tmp_, ec);
  }
}

void AtomicFile::write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, f_) != n)
    throw Error(tmp_.string() + ": write failed (disk full?): " + std::strerror(errno));
  offset_ += n;
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0 || std::fclose(f_) != 0) {
    f_ = nullptr;
    std::error_code ec;
    fs::remove(tmp_, ec);
    throw Error(tmp_.string() + ": write failed: " + std::strerror(errno));
  }
  f_ = nullptr;
  std::error_code ec;
  fs::rename(tmp_, path_, ec);
  if (ec) {
    fs::remove(tmp_, ec);
    throw Error(path_.string() + ": cannot rename into place: " + ec.message());
  }
}

void write_text_file_atomic(const fs::path& path, const std::string& text) {
  AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

StagedDir::StagedDir(const fs::path& final_dir, bool overwrite) : final_(final_dir), overwrite_(overwrite) {
  std::error_code ec;
  if (fs::exists(final_, ec) && !overwrite_ && !(fs::is_directory(final_, ec) && fs::is_empty(final_, ec)))
    throw Error(final_.string() + ": output folder exists and is not empty (use --overwrite)");
  const fs::path abs = fs::absolute(final_, ec);
  if (ec) throw Error(final_.string() + ": invalid output path: " + ec.message());
  fs::path parent = abs.parent_path();
  fs::create_directories(parent, ec);
  if (ec) throw Error(parent.string() + ": cannot create: " + ec.message());
  tmp_ = fs::path(abs.string() + ".partial-" + std::to_string(::getpid()));
  fs::remove_all(tmp_, ec);
  fs::create_directories(tmp_, ec);
  if (ec) throw Error(tmp_.string() + ": cannot create: " + ec.message());
}

StagedDir::~StagedDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

void StagedDir::commit() {
  std::error_code ec;
  if (fs::exists(final_, ec)) {
    fs::remove_all(final_, ec);
    if (ec) throw Error(final_.string() + ": cannot replace: " + ec.message());
  }
  fs::rename(tmp_, final_, ec);
  if (ec) throw Error(final_.string() + ": cannot move the finished package into place: " + ec.message());
  committed_ = true;
}

}  // namespace kvrun::io
