// kvrun::ensure_package: GGUF files run directly, through packages built once into a
// content-addressed cache folder (see include/kvrun/build.h and docs/run.md).
#include "package/gguf_cache.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "io/fs.h"
#include "io/gguf_checkpoint.h"
#include "kvrun/build.h"
#include "package/manifest.h"

namespace kvrun {
namespace fs = std::filesystem;
using nlohmann::json;

namespace build {
namespace {

// The build options a cached package is made with; part of its key.
BuildOptions cache_build_options() {
  BuildOptions o;
  o.target = "ort";
  o.precision = "auto";
  o.kv_dtype = "auto";
  return o;
}

struct Digest {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx{EVP_MD_CTX_new(), EVP_MD_CTX_free};
  Digest() {
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw Error("sha256: OpenSSL init failed");
  }
  void update(const void* p, size_t n) {
    if (EVP_DigestUpdate(ctx.get(), p, n) != 1) throw Error("sha256: OpenSSL update failed");
  }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), md, &len) != 1) throw Error("sha256: OpenSSL final failed");
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < len; ++i) {
      s += digits[md[i] >> 4];
      s += digits[md[i] & 15];
    }
    return s;
  }
};

// What says a file is unchanged since its sha256 was recorded.
json file_stamp(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) throw Error(file.string() + ": cannot stat: " + std::strerror(errno));
  auto ns = [](const timespec& t) { return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec; };
  return {{"size", static_cast<uint64_t>(st.st_size)},
          {"mtime_ns", ns(st.st_mtim)},
          {"ctime_ns", ns(st.st_ctim)},
          {"inode", static_cast<uint64_t>(st.st_ino)},
          {"device", static_cast<uint64_t>(st.st_dev)}};
}

constexpr size_t kMaxIndexEntries = 1000;

json read_index(const fs::path& index) {
  try {
    json j = io::read_json_file(index);
    if (j.is_object() && j.value("version", 0) == 1 && j.contains("files") && j["files"].is_object()) return j;
  } catch (const std::exception&) {
    // missing or damaged: start over (it only saves hashing)
  }
  return {{"version", 1}, {"files", json::object()}};
}

// flock() on <package>.lock for the build of one package. The holder unlinks the file
// before unlocking; a process that then gets the lock on the unlinked inode tries again.
class BuildLock {
 public:
  BuildLock(const fs::path& path, const std::function<void()>& on_wait) : path_(path) {
    bool waited = false;
    for (;;) {
      fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd_ < 0) throw Error(path.string() + ": cannot create the lock file: " + std::strerror(errno));
      int rc = ::flock(fd_, LOCK_EX | LOCK_NB);
      if (rc != 0 && errno == EWOULDBLOCK) {
        if (!waited && on_wait) on_wait();
        waited = true;
        while ((rc = ::flock(fd_, LOCK_EX)) != 0 && errno == EINTR) {
        }
      }
      if (rc != 0) {
        const int err = errno;
        ::close(fd_);
        throw Error(path.string() + ": cannot lock: " + std::strerror(err));
      }
      struct stat held {
      }, now{};
      if (::fstat(fd_, &held) == 0 && ::stat(path.c_str(), &now) == 0 && held.st_ino == now.st_ino &&
          held.st_dev == now.st_dev)
        return;
      ::close(fd_);  // the previous holder removed it: lock the new file
    }
  }
  ~BuildLock() {
    ::unlink(path_.c_str());
    ::close(fd_);
  }
  BuildLock(const BuildLock&) = delete;
  BuildLock& operator=(const BuildLock&) = delete;

 private:
  fs::path path_;
  int fd_ = -1;
};

bool is_package(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / "kvrun.json", ec);
}

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  Digest d;
  d.update(bytes.data(), bytes.size());
  return d.hex();
}

std::string sha256_file(const fs::path& file, const ProgressFn& progress) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot open: " + std::strerror(errno));
  std::error_code ec;
  const uint64_t size = fs::file_size(file, ec);
  const int64_t total_mib = ec ? 0 : static_cast<int64_t>((size + (1 << 20) - 1) >> 20);
  Digest d;
  std::vector<char> buf(1 << 20);
  int64_t mib = 0;
  if (progress && total_mib > 0) progress("sha256", 0, total_mib);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    d.update(buf.data(), static_cast<size_t>(n));
    if (progress && total_mib > 0) progress("sha256", std::min(++mib, total_mib), total_mib);
  }
  if (in.bad()) throw Error(file.string() + ": read error");
  return d.hex();
}

std::string indexed_sha256(const fs::path& cache_dir, const fs::path& file, const ProgressFn& progress, bool* hashed) {
  const fs::path index_file = cache_dir / "index.json";
  const std::string key = fs::weakly_canonical(fs::absolute(file)).string();
  const json stamp = file_stamp(file);
  if (hashed) *hashed = false;
  {
    const json index = read_index(index_file);
    const auto it = index["files"].find(key);
    if (it != index["files"].end() && it->is_object() && it->value("stamp", json()) == stamp &&
        it->value("sha256", "").size() == 64)
      return (*it)["sha256"].get<std::string>();
  }
  const std::string sha = sha256_file(file, progress);
  if (hashed) *hashed = true;
  if (file_stamp(file) != stamp) return sha;  // changed while read: use it, remember nothing
  // Re-read (another process may have added entries), drop entries of files that are gone,
  // keep the newest kMaxIndexEntries, write atomically. A lost update only costs a rehash.
  json index = read_index(index_file);
  json files = json::object();
  std::vector<std::pair<int64_t, std::string>> order;
  for (auto& [path, e] : index["files"].items()) {
    std::error_code ec;
    if (path == key || !e.is_object() || !fs::exists(path, ec)) continue;
    files[path] = e;
    order.emplace_back(e.value("hashed_at", int64_t{0}), path);
  }
  if (order.size() >= kMaxIndexEntries) {
    std::sort(order.begin(), order.end());
    for (size_t i = 0; i + kMaxIndexEntries <= order.size(); ++i) files.erase(order[i].second);
  }
  files[key] = {{"stamp", stamp}, {"sha256", sha}, {"hashed_at", static_cast<int64_t>(::time(nullptr))}};
  index["files"] = files;
  try {
    io::write_text_file_atomic(index_file, index.dump(1) + "\n");
  } catch (const std::exception&) {
    // a read-only cache still works; it hashes every time
  }
  return sha;
}

std::string package_cache_key(const std::string& content_sha256) {
  const BuildOptions o = cache_build_options();
  const std::string material = "kvrun-gguf-package\nbuild-format=" + std::to_string(kBuildFormatVersion) +
                               "\nmanifest=" + std::to_string(kManifestVersion) + "\ntarget=" + o.target +
                               "\nprecision=" + o.precision + "\nkv-dtype=" + o.kv_dtype +
                               "\nmax-length=" + std::to_string(o.max_length) +
                               "\nall-logits=" + std::to_string(o.all_logits) + "\nsha256=" + content_sha256 + "\n";
  return sha256_hex(material).substr(0, 32);
}

}  // namespace build

fs::path package_cache_dir() {
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  if (const std::string d = env("KVRUN_CACHE_DIR"); !d.empty()) return fs::absolute(d);
  if (const std::string d = env("XDG_CACHE_HOME"); !d.empty() && fs::path(d).is_absolute())
    return fs::path(d) / "kvrun" / "packages";
  std::string home = env("HOME");
  if (home.empty())
    if (const passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) home = pw->pw_dir;
  if (home.empty()) throw Error("package cache: no home folder (set KVRUN_CACHE_DIR)");
  return fs::path(home) / ".cache" / "kvrun" / "packages";
}

fs::path ensure_package(const fs::path& model, const ProgressFn& progress) {
  if (!io::is_gguf_file(model)) return model;
  const fs::path dir = package_cache_dir();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot create the package cache folder: " + ec.message());

  const std::string key = build::package_cache_key(build::indexed_sha256(dir, model, progress));
  const fs::path final_dir = dir / key;
  if (build::is_package(final_dir)) return final_dir;

  build::BuildLock lock(dir / (key + ".lock"), [&] {
    std::fprintf(stderr, "kvrun: waiting for another kvrun building %s into %s\n", model.c_str(), final_dir.c_str());
  });
  if (build::is_package(final_dir)) return final_dir;  // built while we waited
  // Leftovers of a build that was killed (this key only; we hold its lock), and a final
  // folder without kvrun.json (damaged): gone before building.
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name == key || (name.rfind(key + ".", 0) == 0 && name != key + ".lock")) fs::remove_all(e.path(), ec);
  }

  std::fprintf(stderr, "kvrun: building %s into %s (first use)\n", model.c_str(), final_dir.c_str());
  std::fflush(stderr);
  BuildOptions bo = build::cache_build_options();
  bo.checkpoint = model;
  bo.out = dir / (key + ".tmp-" + std::to_string(::getpid()));
  bo.progress = progress;
  try {
    build_package(bo);
  } catch (const std::exception& e) {
    fs::remove_all(bo.out, ec);
    throw Error(model.string() + ": cannot build a package from this GGUF file: " + e.what());
  }
  fs::rename(bo.out, final_dir, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove_all(bo.out, ec);
    throw Error(final_dir.string() + ": cannot move the built package into place: " + why);
  }
  return final_dir;
}

}  // namespace kvrun
