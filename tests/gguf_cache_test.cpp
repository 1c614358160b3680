// GGUF files run directly: kvrun::ensure_package builds a package into the cache folder on
// first use and reuses it after (tests/fixtures/gguf-models, tools/make_gguf_model_fixtures.py).
#include "package/gguf_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>

#include "kvrun/build.h"
#include "kvrun/runtime.h"
#include "test_util.h"

namespace kvrun::test {
namespace {
namespace fs = std::filesystem;

// Sets an environment variable for a scope, then puts the old value back.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_.c_str(), old_->c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

fs::path tiny_gguf() { return fixture("gguf-models") / "qwen3-trained-q8_0.gguf"; }

// A private copy of the tiny GGUF (its own path, mtime and inode) and cache folder.
struct CacheSetup {
  TempDir tmp;
  fs::path gguf = tmp / "tiny.gguf";
  fs::path cache = tmp / "cache";
  ScopedEnv env{"KVRUN_CACHE_DIR", cache.string()};
  CacheSetup() { fs::copy_file(tiny_gguf(), gguf); }
};

// ensure_package with a progress callback that counts its calls (0: nothing was built).
fs::path ensure_counting(const fs::path& model, int* build_calls, int* hash_calls = nullptr) {
  *build_calls = 0;
  if (hash_calls) *hash_calls = 0;
  return ensure_package(model, [&](const std::string& stage, int64_t, int64_t) {
    if (stage == "sha256") {
      if (hash_calls) ++*hash_calls;
    } else {
      ++*build_calls;
    }
  });
}

std::vector<fs::path> cache_entries(const fs::path& cache) {
  std::vector<fs::path> out;
  if (fs::exists(cache))
    for (const auto& e : fs::directory_iterator(cache)) out.push_back(e.path());
  return out;
}

std::vector<TokenId> generate_ids(const fs::path& model) {
  auto m = Model::load(model);
  GenerationOptions g;
  g.max_new_tokens = 4;
  g.stop_at_eos = false;
  return m->generate(Prompt().text("Return the nex"), g).tokens;
}

TEST(GgufCache, Sha256KnownVectors) {
  EXPECT_EQ(build::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(build::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  TempDir tmp;
  // Over one 1 MiB read: the streaming path across buffer boundaries.
  const std::string big((1 << 20) + 12345, 'x');
  std::ofstream(tmp / "f", std::ios::binary) << big;
  int64_t last_done = 0, last_total = 0;
  EXPECT_EQ(build::sha256_file(tmp / "f",
                               [&](const std::string& stage, int64_t d, int64_t t) {
                                 EXPECT_EQ(stage, "sha256");
                                 last_done = d;
                                 last_total = t;
                               }),
            build::sha256_hex(big));
  EXPECT_EQ(last_total, 2);
  EXPECT_EQ(last_done, 2);
}

TEST(GgufCache, CacheDirFromEnvironment) {
  {
    ScopedEnv a("KVRUN_CACHE_DIR", "/tmp/kv-cache"), b("XDG_CACHE_HOME", "/tmp/xdg");
    EXPECT_EQ(package_cache_dir(), fs::path("/tmp/kv-cache"));
  }
  {
    ScopedEnv a("KVRUN_CACHE_DIR", std::nullopt), b("XDG_CACHE_HOME", "/tmp/xdg");
    EXPECT_EQ(package_cache_dir(), fs::path("/tmp/xdg/kvrun/packages"));
  }
  {
    ScopedEnv a("KVRUN_CACHE_DIR", std::nullopt), b("XDG_CACHE_HOME", std::nullopt), c("HOME", "/home/someone");
    EXPECT_EQ(package_cache_dir(), fs::path("/home/someone/.cache/kvrun/packages"));
  }
}

TEST(GgufCache, NonGgufPathsPassThrough) {
  TempDir tmp;
  ScopedEnv env("KVRUN_CACHE_DIR", (tmp / "cache").string());
  EXPECT_EQ(ensure_package(fixture("qwen3-trained")), fixture("qwen3-trained"));
  EXPECT_EQ(ensure_package(tmp / "missing.gguf"), tmp / "missing.gguf");
  EXPECT_FALSE(fs::exists(tmp / "cache"));
}

TEST(GgufCache, FirstUseBuildsLaterUsesReuse) {
  CacheSetup s;
  int builds = 0, hashes = 0;
  const fs::path pkg = ensure_counting(s.gguf, &builds, &hashes);
  EXPECT_GT(builds, 0);
  EXPECT_GT(hashes, 0);
  EXPECT_EQ(pkg.parent_path(), s.cache);
  EXPECT_EQ(pkg.filename().string().size(), 32u);
  ASSERT_TRUE(fs::exists(pkg / "kvrun.json"));
  const auto built_at = fs::last_write_time(pkg / "kvrun.json");
  // Only the package folder and the sha256 index stay: no lock, no staging folder.
  std::vector<fs::path> expected = {pkg, s.cache / "index.json"};
  auto entries = cache_entries(s.cache);
  std::sort(entries.begin(), entries.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(entries, expected);

  // Later uses: same folder, no build, no hashing (the index knows the file).
  EXPECT_EQ(ensure_counting(s.gguf, &builds, &hashes), pkg);
  EXPECT_EQ(builds, 0);
  EXPECT_EQ(hashes, 0);
  EXPECT_EQ(fs::last_write_time(pkg / "kvrun.json"), built_at);

  // Model::load takes the GGUF file itself and runs its cached package.
  const auto ids = generate_ids(s.gguf);
  EXPECT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids, generate_ids(pkg));
  EXPECT_EQ(fs::last_write_time(pkg / "kvrun.json"), built_at);

  // The same content under another name shares the package (hashed once, not built).
  fs::copy_file(s.gguf, s.tmp / "copy.gguf");
  EXPECT_EQ(ensure_counting(s.tmp / "copy.gguf", &builds, &hashes), pkg);
  EXPECT_EQ(builds, 0);
  EXPECT_GT(hashes, 0);

  // Touched but unchanged: hashed again, same package, no build.
  fs::last_write_time(s.gguf, built_at + std::chrono::seconds(5));
  EXPECT_EQ(ensure_counting(s.gguf, &builds, &hashes), pkg);
  EXPECT_EQ(builds, 0);
  EXPECT_GT(hashes, 0);
}

TEST(GgufCache, ChangedFileRebuilds) {
  CacheSetup s;
  int builds = 0;
  const fs::path first = ensure_counting(s.gguf, &builds);
  ASSERT_GT(builds, 0);
  // New content of the same size (the last byte is an int8 weight of a Q8_0 block), and a
  // new mtime: a new package.
  {
    std::fstream f(s.gguf, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-1, std::ios::end);
    char c = 0;
    f.get(c);
    f.seekp(-1, std::ios::end);
    f.put(static_cast<char>(c ^ 1));
  }
  fs::last_write_time(s.gguf, fs::last_write_time(s.gguf) + std::chrono::seconds(5));
  const fs::path second = ensure_counting(s.gguf, &builds);
  EXPECT_GT(builds, 0);
  EXPECT_NE(second, first);
  EXPECT_TRUE(fs::exists(second / "kvrun.json"));
  EXPECT_TRUE(fs::exists(first / "kvrun.json"));  // the old one stays (another file may have that content)
}

TEST(GgufCache, CorruptFileFailsCleanly) {
  CacheSetup s;
  const auto size = fs::file_size(s.gguf);
  fs::resize_file(s.gguf, size / 2);
  expect_error([&] { ensure_package(s.gguf); }, {s.gguf.string(), "cannot build a package from this GGUF file"});
  for (const auto& e : cache_entries(s.cache)) {
    EXPECT_FALSE(fs::is_directory(e)) << e;
    EXPECT_EQ(e.filename(), "index.json");
  }
  // Only the header: the magic and not much else.
  std::ofstream(s.gguf, std::ios::binary | std::ios::trunc) << "GGUF\x03";
  expect_error([&] { ensure_package(s.gguf); }, {"cannot build a package from this GGUF file"});
  for (const auto& e : cache_entries(s.cache)) EXPECT_FALSE(fs::is_directory(e)) << e;
}

TEST(GgufCache, ConcurrentFirstUsesBuildOnce) {
  CacheSetup s;
  std::atomic<int> builds{0};
  fs::path got[3];
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i)
    threads.emplace_back([&, i] {
      got[i] = ensure_package(s.gguf, [&](const std::string& stage, int64_t done, int64_t) {
        if (stage == "embedding" && done == 0) ++builds;
      });
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(builds.load(), 1);
  EXPECT_EQ(got[0], got[1]);
  EXPECT_EQ(got[0], got[2]);
  EXPECT_TRUE(fs::exists(got[0] / "kvrun.json"));
  EXPECT_EQ(cache_entries(s.cache).size(), 2u);  // the package and index.json
}

TEST(GgufCacheCli, RunChatBenchVerifyTakeGguf) {
  CacheSetup s;
  CliResult r = run_cli({"run", s.gguf.string(), "--prompt", "Return the nex", "--raw", "--max-new-tokens", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("kvrun: building " + s.gguf.string() + " into " + s.cache.string()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(first use)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("decoder"), std::string::npos) << r.out;  // the build's progress bar

  r = run_cli({"run", s.gguf.string(), "--prompt", "Return the nex", "--raw", "--max-new-tokens", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out.find("building"), std::string::npos) << r.out;
  EXPECT_FALSE(r.out.empty());

  r = run_cli({"chat", s.gguf.string(), "--max-new-tokens", "4"}, "hello\n");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out.find("building"), std::string::npos) << r.out;

  r = run_cli({"bench", s.gguf.string(), "--prompt-len", "4", "--gen-len", "2", "--runs", "1", "--warmup", "0",
               "--no-bandwidth", "--json", "-q"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("kvrun-bench/1"), std::string::npos) << r.out;

  // verify checks the cached package against the GGUF file itself. Its verdict is not
  // asserted: verify judges precision "source" by the fp32 logit tolerance, which MatMulNBits
  // at accuracy_level 4 (int8 activations) exceeds (argmax agreement is 100% here).
  r = run_cli({"verify", s.gguf.string(), "--greedy-tokens", "4"});
  EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 1) << r.out;
  EXPECT_NE(r.out.find("verify (source)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("argmax agreement 100.0%"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("building"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kvrun::test
