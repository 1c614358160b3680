#include "io/zip_archive.h"

#include <sys/mman.h>
#include <zip.h>

#include <algorithm>
#include <cstring>

#include "io/mapped_file.h"
#include "kvrun/error.h"

namespace kvrun::io {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50, kEnd64LocatorSig = 0x07064b50;

uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t* p) { return static_cast<uint32_t>(rd16(p)) | (static_cast<uint32_t>(rd16(p + 2)) << 16); }
uint64_t rd64(const uint8_t* p) { return static_cast<uint64_t>(rd32(p)) | (static_cast<uint64_t>(rd32(p + 4)) << 32); }

// What the central directory says about one entry (parsed here because libzip does
// not expose the local header offset).
struct CentralRecord {
  std::string name;
  uint16_t method = 0;
  uint64_t size = 0, compressed_size = 0, local_offset = 0;
};

std::string range_str(uint64_t a, uint64_t b) {
  std::string s = "[";
  s += std::to_string(a);
  s += ", ";
  s += std::to_string(b);
  s += ")";
  return s;
}

}  // namespace

ZipArchive::ZipArchive(const std::filesystem::path& path)
    : label_(path.string()), map_(std::make_unique<MappedFile>(path)) {
  data_ = map_->data();
  size_ = map_->size();
  open();
}

ZipArchive::ZipArchive(const uint8_t* data, size_t size, std::string label)
    : label_(std::move(label)), data_(data), size_(size) {
  open();
}

ZipArchive::~ZipArchive() {
  if (zip_) zip_discard(static_cast<zip_t*>(zip_));
}

void ZipArchive::fail(const std::string& msg) const { throw Error(label_ + ": " + msg); }

void ZipArchive::advise_random() const {
  if (map_ && size_ > 0) ::madvise(const_cast<uint8_t*>(data_), size_, MADV_RANDOM);
}

void ZipArchive::open() {
  try {
    open_checked();
  } catch (...) {  // the constructor throws: no destructor will free libzip's handle
    if (zip_) zip_discard(static_cast<zip_t*>(zip_));
    zip_ = nullptr;
    throw;
  }
}

void ZipArchive::open_checked() {
  if (size_ < 22)
    fail("not a zip archive: expected at least 22 bytes (the end-of-central-directory record), found " +
         std::to_string(size_) + " bytes (empty or truncated file?)");
  if (rd32(data_) != kLocalSig && rd32(data_) != kEndSig)
    fail("not a zip archive: expected the signature PK\\3\\4 at offset 0");

  // ---- our own walk of the central directory (for the local header offsets)
  uint64_t eocd = size_;
  const uint64_t lowest = size_ > 22 + 65535 ? size_ - 22 - 65535 : 0;
  for (uint64_t p = size_ - 22 + 1; p-- > lowest;) {
    if (rd32(data_ + p) == kEndSig && p + 22 + rd16(data_ + p + 20) == size_) {
      eocd = p;
      break;
    }
  }
  if (eocd == size_)
    fail("no end-of-central-directory record at the end of the file: truncated or corrupt zip archive");
  uint64_t count = rd16(data_ + eocd + 10), cd_size = rd32(data_ + eocd + 12), cd_offset = rd32(data_ + eocd + 16);
  if (count == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    if (eocd < 20 || rd32(data_ + eocd - 20) != kEnd64LocatorSig)
      fail("zip64 archive without a zip64 end-of-central-directory locator (truncated or corrupt)");
    const uint64_t e64 = rd64(data_ + eocd - 20 + 8);
    if (e64 > size_ || size_ - e64 < 56 || rd32(data_ + e64) != kEnd64Sig)
      fail("zip64 end-of-central-directory record expected at offset " + std::to_string(e64) + ", not found");
    count = rd64(data_ + e64 + 32);
    cd_size = rd64(data_ + e64 + 40);
    cd_offset = rd64(data_ + e64 + 48);
  }
  if (count > kMaxEntries)
    fail("central directory lists " + std::to_string(count) + " entries, more than the limit of " +
         std::to_string(kMaxEntries));
  if (cd_offset > size_ || cd_size > size_ - cd_offset)
    fail("central directory " + range_str(cd_offset, cd_offset + cd_size) + " runs past the end of the file (" +
         std::to_string(size_) + " bytes): truncated archive");
  std::vector<CentralRecord> central;
  central.reserve(static_cast<size_t>(std::min<uint64_t>(count, cd_size / 46 + 1)));
  uint64_t p = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (cd_end - p < 46 || rd32(data_ + p) != kCentralSig)
      fail("central directory record " + std::to_string(i) + " of " + std::to_string(count) + " expected at offset " +
           std::to_string(p) + ", not found (corrupt archive)");
    const uint8_t* r = data_ + p;
    const uint64_t name_len = rd16(r + 28), extra_len = rd16(r + 30), comment_len = rd16(r + 32);
    if (cd_end - p - 46 < name_len + extra_len + comment_len)
      fail("central directory record " + std::to_string(i) + " runs past the central directory (corrupt archive)");
    CentralRecord c;
    c.method = rd16(r + 10);
    c.compressed_size = rd32(r + 20);
    c.size = rd32(r + 24);
    c.local_offset = rd32(r + 42);
    c.name.assign(reinterpret_cast<const char*>(r + 46), name_len);
    // zip64 extended information: the 0xffffffff fields, in this order.
    const uint8_t* x = r + 46 + name_len;
    const uint8_t* x_end = x + extra_len;
    while (x_end - x >= 4) {
      const uint16_t id = rd16(x), len = rd16(x + 2);
      if (x_end - x - 4 < len) break;
      if (id == 0x0001) {
        const uint8_t* f = x + 4;
        const uint8_t* f_end = f + len;
        auto take = [&](uint64_t& v) {
          if (v != 0xffffffffu) return;
          if (f_end - f < 8) fail("entry '" + c.name + "': zip64 extra field too short (corrupt archive)");
          v = rd64(f);
          f += 8;
        };
        take(c.size);
        take(c.compressed_size);
        take(c.local_offset);
      }
      x += 4 + len;
    }
    central.push_back(std::move(c));
    p += 46 + name_len + extra_len + comment_len;
  }

  // ---- libzip opens the same bytes, with its consistency checks
  zip_error_t err;
  zip_error_init(&err);
  zip_source_t* src = zip_source_buffer_create(data_, size_, 0, &err);
  if (!src) {
    const std::string m = zip_error_strerror(&err);
    zip_error_fini(&err);
    fail("libzip cannot read the archive: " + m);
  }
  zip_t* za = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (!za) {
    zip_source_free(src);
    const std::string m = zip_error_strerror(&err);
    zip_error_fini(&err);
    fail("not a valid zip archive (truncated or corrupt?): " + m);
  }
  zip_error_fini(&err);
  zip_ = za;
  const zip_int64_t n = zip_get_num_entries(za, 0);
  if (n < 0 || static_cast<uint64_t>(n) != central.size())
    fail("libzip lists " + std::to_string(n) + " entries, the central directory " + std::to_string(central.size()) +
         " (corrupt archive)");
  entries_.reserve(central.size());
  for (uint64_t i = 0; i < central.size(); ++i) {
    const CentralRecord& c = central[i];
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(za, i, ZIP_FL_ENC_RAW, &st) != 0)
      fail("cannot read entry " + std::to_string(i) + ": " + zip_strerror(za));
    ZipEntry e;
    e.name = c.name;
    e.index = i;
    e.size = c.size;
    e.compressed_size = c.compressed_size;
    if (!(st.valid & ZIP_STAT_SIZE) || st.size != c.size || !(st.valid & ZIP_STAT_COMP_SIZE) ||
        st.comp_size != c.compressed_size || !(st.valid & ZIP_STAT_NAME) || c.name != st.name)
      fail("entry " + std::to_string(i) + " ('" + c.name + "'): libzip and the central directory disagree on its " +
           "name or sizes (corrupt archive)");
    const bool encrypted = (st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE;
    if (encrypted) fail("entry '" + e.name + "' is encrypted; expected a plain torch.save archive");
    e.stored = c.method == ZIP_CM_STORE;
    if (e.stored) {
      if (e.compressed_size != e.size)
        fail("entry '" + e.name + "' is stored uncompressed but its sizes differ: " + std::to_string(e.size) + " vs " +
             std::to_string(e.compressed_size) + " (corrupt archive)");
      const uint64_t lh = c.local_offset;
      if (lh > size_ || size_ - lh < 30 || rd32(data_ + lh) != kLocalSig)
        fail("entry '" + e.name + "': local header expected at offset " + std::to_string(lh) + ", not found (file is " +
             std::to_string(size_) + " bytes: truncated or corrupt archive)");
      const uint64_t ln = rd16(data_ + lh + 26), lx = rd16(data_ + lh + 28);
      if (size_ - lh - 30 < ln + lx)
        fail("entry '" + e.name + "': local header runs past the end of the file (truncated archive)");
      if (ln != e.name.size() || std::memcmp(data_ + lh + 30, e.name.data(), ln) != 0)
        fail("entry '" + e.name + "': local header names '" +
             std::string(reinterpret_cast<const char*>(data_ + lh + 30), ln) + "' (corrupt archive)");
      e.data_offset = lh + 30 + ln + lx;
      if (e.data_offset > size_ || e.size > size_ - e.data_offset)
        fail("entry '" + e.name + "': its " + std::to_string(e.size) + " bytes at " +
             range_str(e.data_offset, e.data_offset + e.size) + " run past the end of the file (" +
             std::to_string(size_) + " bytes): truncated archive");
    }
    if (!by_name_.emplace(e.name, entries_.size()).second)
      fail("entry '" + e.name + "' appears twice in the central directory");
    entries_.push_back(std::move(e));
  }
}

const ZipEntry* ZipArchive::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

const ZipEntry& ZipArchive::get(const std::string& name) const {
  const ZipEntry* e = find(name);
  if (!e) fail("entry '" + name + "' not found in the archive");
  return *e;
}

const uint8_t* ZipArchive::stored_data(const ZipEntry& e) const {
  if (!e.stored) fail("entry '" + e.name + "' is compressed; expected it stored uncompressed");
  return data_ + e.data_offset;
}

std::vector<uint8_t> ZipArchive::read(const ZipEntry& e, uint64_t max_bytes) const {
  if (e.size > max_bytes)
    fail("entry '" + e.name + "' is " + std::to_string(e.size) + " bytes, more than the limit of " +
         std::to_string(max_bytes));
  auto* za = static_cast<zip_t*>(zip_);
  zip_file_t* f = zip_fopen_index(za, e.index, 0);
  if (!f) fail("cannot open entry '" + e.name + "': " + zip_strerror(za));
  std::vector<uint8_t> out;
  // Grows as bytes arrive: a lying size field never allocates more than what is read.
  constexpr uint64_t kChunk = 1 << 20;
  try {
    while (true) {
      const uint64_t want = std::min<uint64_t>(kChunk, e.size - std::min<uint64_t>(e.size, out.size()) + 1);
      const size_t at = out.size();
      out.resize(at + want);
      const zip_int64_t got = zip_fread(f, out.data() + at, want);
      if (got < 0) fail("entry '" + e.name + "': read failed: " + zip_file_strerror(f));
      out.resize(at + static_cast<size_t>(got));
      if (got == 0) break;
      if (out.size() > e.size)
        fail("entry '" + e.name + "': holds more than the " + std::to_string(e.size) + " bytes its header says");
    }
  } catch (...) {
    zip_fclose(f);
    throw;
  }
  zip_fclose(f);
  if (out.size() != e.size)
    fail("entry '" + e.name + "': expected " + std::to_string(e.size) + " bytes, read " + std::to_string(out.size()) +
         " (truncated archive)");
  return out;
}

}  // namespace kvrun::io
