// Safetensors reading (memory-mapped, every header field validated) and writing.
//
// Format: u64 little-endian header length N, N bytes of JSON header, then the data
// buffer. Each header entry {dtype, shape, data_offsets:[begin,end]} is checked:
// offsets inside the buffer, begin <= end, no two tensors overlap, and
// product(shape) * sizeof(dtype) == end - begin.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/dtype.h"

namespace kvrun::io {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into a memory-mapped file
  size_t nbytes = 0;
  std::string file;  // which file it lives in (for error messages)
  // GGUF tensors of a quantized ggml type: `data` holds ggml blocks (rows of shape.back()
  // elements) and dtype is F32, the type they dequantize to. -1: plain `dtype` values.
  int32_t ggml_type = -1;

  int64_t numel() const;
  bool quantized() const { return ggml_type >= 0; }
  // Copies (and converts) the tensor to float32.
  std::vector<float> to_f32() const;
  // Row `r` of a rank-2 tensor (an embedding table) as float32 into `out` (shape[1]
  // values). Throws kvrun::Error when r is outside [0, shape[0]).
  void row_f32(int64_t r, float* out) const;
};

std::string shape_str(const std::vector<int64_t>& shape);

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  // Largest header we accept (the format's own reference implementation uses 100 MB).
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorView* find(const std::string& name) const;
  // Byte offset of a tensor's data in the file (v must be one of this file's tensors).
  uint64_t file_offset(const TensorView& v) const {
    return static_cast<uint64_t>(v.data - static_cast<const uint8_t*>(map_));
  }
  // Tells the kernel reads will be scattered (row lookups in an embedding table): no
  // read-ahead, so each row brings in its own page rather than a window around it.
  void advise_random() const;

 private:
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

class TorchCheckpoint;

// All tensors of a checkpoint:
//  - a Hugging Face folder: model.safetensors, or the shards listed by
//    model.safetensors.index.json; else pytorch_model.bin, or the shards listed by
//    pytorch_model.bin.index.json (torch.save zip archives); else model.pt;
//  - a single file: *.safetensors, or a torch.save archive (*.pt, *.pth, *.bin, *.ckpt,
//    or any file that is a zip archive).
// Torch files are read by io/torch_checkpoint.h (restricted unpickler, nothing runs):
// a top-level "state_dict" / "model_state_dict" / "model" dict is unwrapped, a
// "module." prefix stripped. Tensor data is used in place from the memory maps
// (strided torch tensors are materialized once, owned by the store).
//
// Copies are cheap and share the files; sub(prefix) is a view of the tensors whose
// names start with `prefix`, with the prefix removed: sub("llm.").get("x") is
// get("llm.x") (the same TensorView, no data copied).
class TensorStore {
 public:
  explicit TensorStore(const std::filesystem::path& path);

  void advise_random() const;  // madvise(MADV_RANDOM) for every file
  bool has(const std::string& name) const;
  // Throws kvrun::Error naming the checkpoint when the tensor is missing.
  const TensorView& get(const std::string& name) const;
  // Names in this view (the view's prefix removed), sorted.
  std::vector<std::string> names() const;
  const std::filesystem::path& path() const;
  // A view of the tensors under `prefix` (relative to this view's own prefix).
  TensorStore sub(const std::string& prefix) const;
  // The full prefix of this view ("" for the whole checkpoint).
  const std::string& prefix() const { return prefix_; }

 private:
  struct Impl;
  TensorStore(std::shared_ptr<const Impl> impl, std::string prefix);
  std::shared_ptr<const Impl> impl_;
  std::string prefix_;
};

// A tensor to write; `data` holds nbytes = numel * dtype_size(dtype) bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes a .safetensors file atomically (temp file in the same folder, then rename).
// Tensors are laid out in the order given; the header is padded with spaces so the
// data buffer starts at a multiple of `align` (8 as the reference implementation;
// 4096 lets ONNX graphs map tensors of the file in place). Returns the data start.
uint64_t write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                           const std::map<std::string, std::string>& metadata = {}, uint64_t align = 8);

// Streaming variant: `fill(i, buffer)` writes tensor i's bytes (numel * dtype size) into
// `buffer`; only one tensor is in memory at a time. `data` pointers are ignored.
uint64_t write_safetensors_streaming(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                                     const std::map<std::string, std::string>& metadata, uint64_t align,
                                     const std::function<void(size_t, std::vector<uint8_t>&)>& fill);

}  // namespace kvrun::io
