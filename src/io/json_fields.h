// Typed reads of config.json-style fields, each failure a kvrun::Error naming the file
// (`src`), the key, what was expected and what was found.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kvrun::io {

// An integer field; absent or null -> `dflt`, or an error when there is none.
int64_t get_int(const nlohmann::json& j, const std::string& key, const std::string& src,
                std::optional<int64_t> dflt = {});
// A number field; absent or null -> `dflt`.
double get_num(const nlohmann::json& j, const std::string& key, const std::string& src, double dflt);
// A boolean field; absent or null -> `dflt`.
bool get_bool(const nlohmann::json& j, const std::string& key, const std::string& src, bool dflt);
// An optional token id (absent, null or not an integer -> nullopt).
std::optional<int64_t> get_opt_id(const nlohmann::json& j, const std::string& key);
// One id or a list of ids (non-integers skipped); absent -> empty.
std::vector<int64_t> get_ids(const nlohmann::json& j, const std::string& key);

}  // namespace kvrun::io
