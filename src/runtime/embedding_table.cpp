#include "runtime/embedding_table.h"

#include "kvrun/error.h"

namespace kvrun::runtime {

EmbeddingTable::EmbeddingTable(const std::filesystem::path& file, const std::string& tensor)
    : store_(std::make_unique<io::SafetensorsFile>(file)), file_(file.string()) {
  store_->advise_random();  // row lookups: without this, read-ahead maps most of the table
  if ((dense_ = store_->find(tensor))) {
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
  if (B->shape[2] != nbits_.blob() || S->shape != std::vector<int64_t>{rows_, kb} ||
      (M && M->shape != S->shape) || (Z && Z->shape != std::vector<int64_t>{rows_, nbits_.zp_row()}))
    throw Error(file_ + ": the parts of quantized embedding table '" + tensor + "' disagree: qweight " +
                io::shape_str(B->shape) + ", scales " + io::shape_str(S->shape) +
                (Z ? ", zero_points " + io::shape_str(Z->shape) : "") + (M ? ", mins " + io::shape_str(M->shape) : ""));
  nbits_.B = B->data;
  nbits_.scales = reinterpret_cast<const float*>(S->data);
  nbits_.zp = Z ? Z->data : nullptr;
  nbits_.mins = M ? reinterpret_cast<const float*>(M->data) : nullptr;
  width_ = nbits_.K;
}

void EmbeddingTable::row_f32(TokenId r, float* out) const {
  if (dense_) return dense_->row_f32(r, out);
  if (r < 0 || r >= rows_)
    throw Error("token id " + std::to_string(r) + " is outside the vocabulary [0, " + std::to_string(rows_) + ")");
  nbits_.row_f32(r, out);
}

std::string EmbeddingTable::describe() const {
  if (dense_) return io::dtype_name(dense_->dtype);
  return std::to_string(nbits_.bits) + "-bit block " + std::to_string(nbits_.block) + " (MatMulNBits)";
}

}  // namespace kvrun::runtime
