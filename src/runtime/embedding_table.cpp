#include "runtime/embedding_table.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kvrun/error.h"

namespace kvrun::runtime {

EmbeddingTable::EmbeddingTable(const std::filesystem::path& file, const std::string& tensor)
    : store_(std::make_unique<io::SafetensorsFile>(file)), file_(file.string()) {
  fd_ = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error(file_ + ": cannot open: " + std::strerror(errno));
  if ((dense_ = store_->find(tensor))) {
    dense_off_ = store_->file_offset(*dense_);
    if (dense_->shape.size() != 2)
      throw Error(file_ + ": embedding table '" + tensor + "' has shape " + io::shape_str(dense_->shape) +
                  ", expected [vocab, hidden]");
    rows_ = dense_->shape[0], width_ = dense_->shape[1];
    return;
  }
  if (!store_->find(tensor + ".qweight"))
    throw Error(file_ + ": no embedding table '" + tensor + "' (nor its quantized form '" + tensor + ".qweight')");
  auto part = [&](const std::string& suffix, io::DType dt, size_t rank) -> const io::TensorView* {
    const io::TensorView* found = store_->find(tensor + suffix);
    if (!found) return nullptr;
    const io::TensorView& v = *found;
    if (v.dtype != dt || v.shape.size() != rank)
      throw Error(file_ + ": '" + tensor + suffix + "' has dtype " + io::dtype_name(v.dtype) + " and shape " +
                  io::shape_str(v.shape) + ", expected " + io::dtype_name(dt) + " of rank " + std::to_string(rank));
    return &v;
  };
  const io::TensorView* B = part(".qweight", io::DType::U8, 3);
  const io::TensorView* S = part(".scales", io::DType::F32, 2);
  const io::TensorView* Z = part(".zero_points", io::DType::U8, 2);
  const io::TensorView* M = part(".mins", io::DType::F32, 2);
  if (!S) throw Error(file_ + ": '" + tensor + ".qweight' has no '" + tensor + ".scales'");
  const auto& meta = store_->metadata();
  auto meta_int = [&](const char* key) -> int64_t {
    auto it = meta.find(key);
    if (it == meta.end()) throw Error(file_ + ": quantized embedding table without '" + key + "' in its metadata");
    try {
      return std::stoll(it->second);
    } catch (const std::exception&) {
      throw Error(file_ + ": metadata '" + key + "' is '" + it->second + "', expected an integer");
    }
  };
  nbits_.bits = static_cast<int>(meta_int("bits"));
  nbits_.block = meta_int("block_size");
  if ((nbits_.bits != 4 && nbits_.bits != 8) || nbits_.block < 2 || nbits_.block % 2)
    throw Error(file_ + ": quantized embedding table of " + std::to_string(nbits_.bits) + " bits, block " +
                std::to_string(nbits_.block) + "; expected 4 or 8 bits and an even block");
  rows_ = B->shape[0];
  nbits_.N = rows_;
  const int64_t kb = B->shape[1];
  nbits_.K = meta.count("columns") ? meta_int("columns") : kb * nbits_.block;
  if (nbits_.K <= (kb - 1) * nbits_.block || nbits_.K > kb * nbits_.block)
    throw Error(file_ + ": quantized embedding table of " + std::to_string(nbits_.K) + " columns in " +
                std::to_string(kb) + " blocks of " + std::to_string(nbits_.block));
  if (B->shape[2] != nbits_.blob() || S->shape != std::vector<int64_t>{rows_, kb} || (M && M->shape != S->shape) ||
      (Z && Z->shape != std::vector<int64_t>{rows_, nbits_.zp_row()}))
    throw Error(file_ + ": the parts of quantized embedding table '" + tensor + "' disagree: qweight " +
                io::shape_str(B->shape) + ", scales " + io::shape_str(S->shape) +
                (Z ? ", zero_points " + io::shape_str(Z->shape) : "") + (M ? ", mins " + io::shape_str(M->shape) : ""));
  b_off_ = store_->file_offset(*B);
  s_off_ = store_->file_offset(*S);
  if ((has_zp_ = Z != nullptr)) z_off_ = store_->file_offset(*Z);
  if ((has_mins_ = M != nullptr)) m_off_ = store_->file_offset(*M);
  width_ = nbits_.K;
}

EmbeddingTable::~EmbeddingTable() {
  if (fd_ >= 0) ::close(fd_);
}

void EmbeddingTable::read_at(uint64_t offset, size_t n, uint8_t* out) const {
  size_t done = 0;
  while (done < n) {
    const ssize_t got = ::pread(fd_, out + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw Error(file_ + ": reading " + std::to_string(n) + " bytes at offset " + std::to_string(offset) + ": " +
                  (got < 0 ? std::strerror(errno) : "unexpected end of file"));
    done += static_cast<size_t>(got);
  }
}

void EmbeddingTable::row_f32(TokenId r, float* out) const {
  if (r < 0 || r >= rows_)
    throw Error("token id " + std::to_string(r) + " is outside the vocabulary [0, " + std::to_string(rows_) + ")");
  const auto row = static_cast<uint64_t>(r);
  if (dense_) {
    const size_t bytes = static_cast<size_t>(width_) * io::dtype_size(dense_->dtype);
    std::vector<uint8_t> buf(bytes);
    read_at(dense_off_ + row * bytes, bytes, buf.data());
    io::to_f32(dense_->dtype, buf.data(), out, static_cast<size_t>(width_));
    return;
  }
  const int64_t kb = nbits_.kb();
  const size_t qb = static_cast<size_t>(kb * nbits_.blob()), fb = static_cast<size_t>(kb) * 4,
               zb = static_cast<size_t>(nbits_.zp_row());
  std::vector<uint8_t> q(qb), zp(has_zp_ ? zb : 0);
  std::vector<float> sc(static_cast<size_t>(kb)), mn(has_mins_ ? static_cast<size_t>(kb) : 0);
  read_at(b_off_ + row * qb, qb, q.data());
  read_at(s_off_ + row * fb, fb, reinterpret_cast<uint8_t*>(sc.data()));
  if (has_zp_) read_at(z_off_ + row * zb, zb, zp.data());
  if (has_mins_) read_at(m_off_ + row * fb, fb, reinterpret_cast<uint8_t*>(mn.data()));
  graph::NBitsRef one = nbits_;
  one.N = 1;
  one.B = q.data();
  one.scales = sc.data();
  one.zp = has_zp_ ? zp.data() : nullptr;
  one.mins = has_mins_ ? mn.data() : nullptr;
  one.row_f32(0, out);
}

}  // namespace kvrun::runtime
