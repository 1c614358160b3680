// Writes torch.save-compatible checkpoints (the zip format, as torch 2.x writes it):
//   <stem>/data.pkl               protocol-2 pickle: {wrap_key: OrderedDict(name -> tensor)}
//                                 (or the OrderedDict itself when wrap_key is empty), tensors
//                                 as torch._utils._rebuild_tensor_v2 over persistent ids
//                                 ('storage', torch.<T>Storage, '<i>', 'cpu', numel)
//   <stem>/.format_version, .storage_alignment ("64"), byteorder ("little")
//   <stem>/data/<i>               tensor i's bytes, stored, 64-byte aligned in the file
//   <stem>/version ("3"), <stem>/.data/serialization_id
// torch.load(path, weights_only=True) reads it; so does io::TorchCheckpoint.
// Written atomically (temporary sibling, then rename); zip64 records when needed.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"

namespace kvrun::io {

void write_torch_checkpoint(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                            const std::string& wrap_key = "state_dict");

// Streaming: `fill(i, buffer)` writes tensor i's bytes (numel * dtype size; the buffer
// comes sized and zeroed) — one tensor in memory at a time. `data` pointers are ignored.
void write_torch_checkpoint_streaming(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                                      const std::string& wrap_key,
                                      const std::function<void(size_t, std::vector<uint8_t>&)>& fill);

// A zip archive of stored (uncompressed, 64-byte aligned) entries, written atomically.
// Tests and fuzz seeds use it to make archives with hand-made pickles.
void write_stored_zip(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, std::string>>& entries);

// The torch storage class for a dtype ("FloatStorage", ...); throws for types torch lacks.
std::string torch_storage_class(DType t);

}  // namespace kvrun::io
