// The package cache behind kvrun::ensure_package (include/kvrun/build.h): the pieces
// tests look at one by one.
#pragma once
#include <filesystem>
#include <string>

#include "kvrun/types.h"

namespace kvrun::build {

// Lowercase hex sha256 of bytes / of a file's content (read in 1 MiB pieces; `progress`
// gets ("sha256", MiB done, MiB total)). OpenSSL's libcrypto does the hashing.
std::string sha256_hex(const std::string& bytes);
std::string sha256_file(const std::filesystem::path& file, const ProgressFn& progress = {});

// The file's sha256, from <cache_dir>/index.json when the file's absolute path, size,
// mtime, ctime and inode match the entry there; else hashed and recorded. `hashed` (when
// given) says whether this call read the file.
std::string indexed_sha256(const std::filesystem::path& cache_dir, const std::filesystem::path& file,
                           const ProgressFn& progress = {}, bool* hashed = nullptr);

// The package folder's name for a GGUF file of this content: a sha256 over the content's
// sha256, the build-format and manifest versions and the build options used (32 hex digits).
std::string package_cache_key(const std::string& content_sha256);

}  // namespace kvrun::build
