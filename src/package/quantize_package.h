// Quantizing the decoder graphs of a kvrun package (shared by `kvrun quantize` and
// `kvrun build --precision int8|int4`).
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "graph/quantize.h"

namespace kvrun::build {

// Loads src's decoder graphs (kvrun.json "graphs" except the embedding), quantizes them
// (standard ops for a portable package) and saves them into `dst` with one shared data
// file; the embedding table stays referenced in place. src may equal dst. Does not touch
// kvrun.json or other files.
graph::QuantizeReport quantize_package_graphs(const std::filesystem::path& src, const std::filesystem::path& dst,
                                              graph::QuantizeOptions gopt, uint64_t* file_bytes_before = nullptr,
                                              uint64_t* file_bytes_after = nullptr);

// Throws kvrun::Error naming the first skip reason when no node was quantized.
void require_some_quantized(const graph::QuantizeReport& r, const std::string& what);
// What kvrun.json records under "quantization".
nlohmann::json quantization_record(const graph::QuantizeOptions& gopt, const graph::QuantizeReport& r);
// "int8" for int8 and int8-dynamic, "int4" for int4.
std::string precision_of_mode(const std::string& mode);

}  // namespace kvrun::build
