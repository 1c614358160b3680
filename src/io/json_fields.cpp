#include "io/json_fields.h"

#include "kvrun/error.h"

namespace kvrun::io {
using nlohmann::json;

int64_t get_int(const json& j, const std::string& key, const std::string& src, std::optional<int64_t> dflt) {
  if (!j.contains(key) || j[key].is_null()) {
    if (dflt) return *dflt;
    throw Error(src + ": missing required field '" + key + "' (expected an integer)");
  }
  if (!j[key].is_number_integer())
    throw Error(src + ": field '" + key + "' must be an integer, found " + j[key].dump());
  return j[key].get<int64_t>();
}

double get_num(const json& j, const std::string& key, const std::string& src, double dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number()) throw Error(src + ": field '" + key + "' must be a number, found " + j[key].dump());
  return j[key].get<double>();
}

bool get_bool(const json& j, const std::string& key, const std::string& src, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) throw Error(src + ": field '" + key + "' must be true or false, found " + j[key].dump());
  return j[key].get<bool>();
}

std::optional<int64_t> get_opt_id(const json& j, const std::string& key) {
  if (!j.contains(key) || !j[key].is_number_integer()) return std::nullopt;
  return j[key].get<int64_t>();
}

std::vector<int64_t> get_ids(const json& j, const std::string& key) {
  std::vector<int64_t> out;
  if (!j.contains(key)) return out;
  if (j[key].is_number_integer()) out.push_back(j[key].get<int64_t>());
  if (j[key].is_array())
    for (const auto& v : j[key])
      if (v.is_number_integer()) out.push_back(v.get<int64_t>());
  return out;
}

}  // namespace kvrun::io
