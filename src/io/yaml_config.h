// YAML configuration files (FunASR's config.yaml) read with yaml-cpp into JSON, with
// scalars typed the way OmegaConf (PyYAML's YAML 1.1 resolver + OmegaConf's float
// rule) types them:
//   null: ~ null Null NULL and empty values      bool: true/false, yes/no, on/off (3 casings)
//   int: 42 -7 1_000 0x1f 0o17-style 017 0b101    float: 1.5 1e-5 1E5 .5 -.inf .nan
//   everything else, and every quoted scalar: a string.
// Explicit tags !!str !!int !!float !!bool !!null are honoured; any other tag
// (!!python/object ...) is refused. Duplicate keys are refused (as OmegaConf does);
// "<<" merge keys are applied. Errors carry the file, line and column.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace kvrun::io {

// Largest YAML file read (configs are a few KB).
inline constexpr uintmax_t kMaxYamlBytes = 16ull << 20;

nlohmann::json read_yaml_file(const std::filesystem::path& path);
// Parses `text`; `label` names it in errors ("config.yaml").
nlohmann::json parse_yaml(const std::string& text, const std::string& label);

// cfg["a"]["b"]... for the dotted key "a.b" (a numeric part indexes a list). Throws
// kvrun::Error "<label>: missing key 'a.b'" when any part is absent.
const nlohmann::json& yaml_require(const nlohmann::json& cfg, const std::string& dotted_key, const std::string& label);
// The same, typed; a value of another type is an error naming key, found and expected.
int64_t yaml_require_int(const nlohmann::json& cfg, const std::string& dotted_key, const std::string& label);
double yaml_require_number(const nlohmann::json& cfg, const std::string& dotted_key, const std::string& label);
bool yaml_require_bool(const nlohmann::json& cfg, const std::string& dotted_key, const std::string& label);
std::string yaml_require_string(const nlohmann::json& cfg, const std::string& dotted_key, const std::string& label);
// nullptr when the key (or a part of it) is absent.
const nlohmann::json* yaml_find(const nlohmann::json& cfg, const std::string& dotted_key);

}  // namespace kvrun::io
