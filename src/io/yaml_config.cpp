#include "io/yaml_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "io/fs.h"
#include "kvrun/error.h"

namespace kvrun::io {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kMaxDepth = 256;
constexpr size_t kMaxNodes = 1u << 20;  // alias expansion ("billion laughs") stops here

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Digits of `base` with '_' allowed anywhere after `begin` (PyYAML's [0-9_]*).
bool digits_us(std::string_view s, int base, bool first_must_be_digit) {
  if (s.empty()) return false;
  bool any = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '_') {
      if (i == 0 && first_must_be_digit) return false;
      continue;
    }
    int v = -1;
    if (c >= '0' && c <= '9')
      v = c - '0';
    else if (c >= 'a' && c <= 'f')
      v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      v = c - 'A' + 10;
    if (v < 0 || v >= base) return false;
    any = true;
  }
  return any;
}

std::string strip_us(std::string_view s) {
  std::string o;
  for (char c : s)
    if (c != '_') o += c;
  return o;
}

// PyYAML's int resolver; false when `s` is not an int.
bool parse_int(const std::string& s, json* out) {
  std::string_view v = s;
  bool neg = false;
  if (!v.empty() && (v[0] == '-' || v[0] == '+')) {
    neg = v[0] == '-';
    v.remove_prefix(1);
  }
  if (v.empty()) return false;
  int base = 10;
  std::string_view digits;
  if (v.size() > 2 && v[0] == '0' && v[1] == 'b' && digits_us(v.substr(2), 2, false)) {
    base = 2;
    digits = v.substr(2);
  } else if (v.size() > 2 && v[0] == '0' && v[1] == 'x' && digits_us(v.substr(2), 16, false)) {
    base = 16;
    digits = v.substr(2);
  } else if (v.size() > 1 && v[0] == '0' && digits_us(v.substr(1), 8, false)) {
    base = 8;
    digits = v.substr(1);
  } else if (v == "0") {
    digits = v;
  } else if (v[0] >= '1' && v[0] <= '9' && digits_us(v, 10, true)) {
    digits = v;
  } else if (v[0] >= '1' && v[0] <= '9') {  // sexagesimal 1:30:05
    size_t colon = v.find(':');
    if (colon == std::string_view::npos || !digits_us(v.substr(0, colon), 10, true)) return false;
    double acc = std::strtod(strip_us(v.substr(0, colon)).c_str(), nullptr);
    std::string_view rest = v.substr(colon);
    while (!rest.empty()) {
      if (rest[0] != ':') return false;
      rest.remove_prefix(1);
      size_t n = 0;
      while (n < rest.size() && n < 2 && is_digit(rest[n])) ++n;
      if (n == 0 || (n == 2 && rest[0] > '5') || (n < rest.size() && rest[n] != ':')) return false;
      acc = acc * 60 + std::strtod(std::string(rest.substr(0, n)).c_str(), nullptr);
      rest.remove_prefix(n);
    }
    if (acc > 9.0e18) return false;
    *out = static_cast<int64_t>(neg ? -acc : acc);
    return true;
  } else {
    return false;
  }
  const std::string d = strip_us(digits);
  if (d.empty()) return false;
  unsigned __int128 acc = 0;
  double dacc = 0;  // used once the value no longer fits 64 bits (Python would keep a big int)
  bool big = false;
  for (char c : d) {
    const int x = is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
    dacc = dacc * base + x;
    if (!big) {
      acc = acc * static_cast<unsigned>(base) + static_cast<unsigned>(x);
      big = acc > std::numeric_limits<uint64_t>::max();
    }
  }
  if (big || (neg && acc > static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max()) + 1)) {
    *out = neg ? -dacc : dacc;
  } else if (neg) {
    *out = static_cast<int64_t>(-static_cast<__int128>(acc));
  } else if (acc > static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max())) {
    *out = static_cast<uint64_t>(acc);
  } else {
    *out = static_cast<int64_t>(acc);
  }
  return true;
}

// PyYAML's float resolver joined with OmegaConf's (which adds 1e-5 forms).
bool parse_float(const std::string& s, json* out) {
  std::string_view v = s;
  if (v == ".nan" || v == ".NaN" || v == ".NAN") {
    *out = std::numeric_limits<double>::quiet_NaN();
    return true;
  }
  bool neg = false, sign = false;
  if (!v.empty() && (v[0] == '-' || v[0] == '+')) {
    neg = v[0] == '-';
    sign = true;
    v.remove_prefix(1);
  }
  if (v == ".inf" || v == ".Inf" || v == ".INF") {
    *out = neg ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
    return true;
  }
  // mantissa: int part [0-9][0-9_]* (optional only in the ".5" form), '.', [0-9_]*
  size_t i = 0;
  const size_t int_begin = i;
  if (i < v.size() && is_digit(v[i])) {
    while (i < v.size() && (is_digit(v[i]) || v[i] == '_')) ++i;
  }
  const bool has_int = i > int_begin;
  bool has_dot = false;
  if (i < v.size() && v[i] == '.') {
    has_dot = true;
    ++i;
    const size_t frac_begin = i;
    while (i < v.size() && (is_digit(v[i]) || v[i] == '_')) ++i;
    if (!has_int && (sign || i == frac_begin || !is_digit(v[frac_begin]))) return false;  // ".5" form: no sign
  }
  if (!has_int && !has_dot) return false;
  bool has_exp = false;
  if (i < v.size() && (v[i] == 'e' || v[i] == 'E')) {
    ++i;
    const bool exp_sign = i < v.size() && (v[i] == '-' || v[i] == '+');
    if (exp_sign) ++i;
    const size_t e_begin = i;
    while (i < v.size() && is_digit(v[i])) ++i;
    if (i == e_begin) return false;
    if (!has_int && !exp_sign) return false;  // ".5e3" needs a signed exponent
    has_exp = true;
  }
  if (i != v.size()) return false;
  if (!has_dot && !has_exp) return false;  // an int
  if (!has_dot) {
    // OmegaConf: [0-9]+(_[0-9]+)* before the exponent (no leading/trailing/double '_')
    const std::string_view m = v.substr(0, v.find_first_of("eE"));
    if (m.find("__") != std::string_view::npos || m.back() == '_') return false;
  }
  std::string clean = neg ? "-" : "";
  clean += strip_us(v);
  *out = std::strtod(clean.c_str(), nullptr);
  return true;
}

bool parse_bool(const std::string& s, json* out) {
  static const char* t[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  static const char* f[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
  for (const char* x : t)
    if (s == x) return *out = true, true;
  for (const char* x : f)
    if (s == x) return *out = false, true;
  return false;
}

bool is_null(const std::string& s) { return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL"; }

class Converter {
 public:
  explicit Converter(const std::string& label) : label_(label) {}

  [[noreturn]] void fail(const YAML::Mark& m, const std::string& msg) const {
    if (m.is_null()) throw Error(label_ + ": " + msg);
    throw Error(label_ + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1) + ": " + msg);
  }

  json convert(const YAML::Node& n, int depth) {
    if (depth > kMaxDepth) fail(n.Mark(), "nested deeper than " + std::to_string(kMaxDepth) + " levels");
    if (++nodes_ > kMaxNodes) fail(n.Mark(), "more than " + std::to_string(kMaxNodes) + " values (alias expansion?)");
    const std::string& tag = n.Tag();
    switch (n.Type()) {
      case YAML::NodeType::Undefined:
      case YAML::NodeType::Null:
        if (tag != "" && tag != "?" && tag != "!" && tag != "tag:yaml.org,2002:null")
          fail(n.Mark(), "unsupported tag '" + tag + "' on a null value");
        return nullptr;
      case YAML::NodeType::Scalar:
        return scalar(n);
      case YAML::NodeType::Sequence: {
        if (tag != "?" && tag != "" && tag != "!" && tag != "tag:yaml.org,2002:seq")
          fail(n.Mark(), "unsupported tag '" + tag + "' on a list");
        json a = json::array();
        for (const auto& x : n) a.push_back(convert(x, depth + 1));
        return a;
      }
      case YAML::NodeType::Map: {
        if (tag != "?" && tag != "" && tag != "!" && tag != "tag:yaml.org,2002:map")
          fail(n.Mark(), "unsupported tag '" + tag + "' on a mapping");
        json o = json::object();
        std::vector<json> merges;
        for (const auto& kv : n) {
          if (!kv.first.IsScalar()) fail(kv.first.Mark(), "mapping keys must be scalars");
          const std::string key = kv.first.Scalar();
          if (key == "<<" && kv.first.Tag() == "?") {
            json m = convert(kv.second, depth + 1);
            if (m.is_object()) {
              merges.push_back(std::move(m));
            } else if (m.is_array()) {
              for (auto& x : m) {
                if (!x.is_object()) fail(kv.second.Mark(), "'<<' merges mappings only");
                merges.push_back(std::move(x));
              }
            } else {
              fail(kv.second.Mark(), "'<<' merges mappings only");
            }
            continue;
          }
          if (o.contains(key)) fail(kv.first.Mark(), "duplicate key '" + key + "'");
          o[key] = convert(kv.second, depth + 1);
        }
        for (const auto& m : merges)
          for (auto it = m.begin(); it != m.end(); ++it)
            if (!o.contains(it.key())) o[it.key()] = it.value();
        return o;
      }
    }
    fail(n.Mark(), "unknown node type");
  }

 private:
  json scalar(const YAML::Node& n) {
    const std::string& s = n.Scalar();
    const std::string& tag = n.Tag();
    json v;
    if (tag == "!" || tag == "tag:yaml.org,2002:str") return s;  // quoted, or !!str
    if (tag == "?") {
      if (is_null(s)) return nullptr;
      if (parse_bool(s, &v) || parse_int(s, &v) || parse_float(s, &v)) return v;
      return s;
    }
    if (tag == "tag:yaml.org,2002:int") {
      if (!parse_int(s, &v)) fail(n.Mark(), "!!int value '" + s + "' is not an integer");
      return v;
    }
    if (tag == "tag:yaml.org,2002:float") {
      if (!parse_float(s, &v) && !parse_int(s, &v)) fail(n.Mark(), "!!float value '" + s + "' is not a number");
      return v.is_number() ? json(v.get<double>()) : v;
    }
    if (tag == "tag:yaml.org,2002:bool") {
      if (!parse_bool(s, &v)) fail(n.Mark(), "!!bool value '" + s + "' is not a boolean");
      return v;
    }
    if (tag == "tag:yaml.org,2002:null") return nullptr;
    fail(n.Mark(), "unsupported tag '" + tag + "' (only plain values and !!str/!!int/!!float/!!bool/!!null)");
  }

  const std::string& label_;
  size_t nodes_ = 0;
};

}  // namespace

json parse_yaml(const std::string& text, const std::string& label) {
  Converter c(label);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    c.fail(e.mark, "invalid YAML: " + e.msg);
  }
  try {
    return c.convert(root, 0);
  } catch (const YAML::Exception& e) {
    c.fail(e.mark, "invalid YAML: " + e.msg);
  }
}

json read_yaml_file(const fs::path& path) { return parse_yaml(read_text_file(path, kMaxYamlBytes), path.string()); }

const json* yaml_find(const json& cfg, const std::string& dotted_key) {
  const json* cur = &cfg;
  size_t start = 0;
  while (true) {
    const size_t dot = dotted_key.find('.', start);
    const std::string part = dotted_key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur->is_object()) {
      auto it = cur->find(part);
      if (it == cur->end()) return nullptr;
      cur = &*it;
    } else if (cur->is_array() && !part.empty() && part.size() < 10 &&
               part.find_first_not_of("0123456789") == std::string::npos) {
      const size_t idx = std::stoul(part);
      if (idx >= cur->size()) return nullptr;
      cur = &(*cur)[idx];
    } else {
      return nullptr;
    }
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

const json& yaml_require(const json& cfg, const std::string& dotted_key, const std::string& label) {
  const json* v = yaml_find(cfg, dotted_key);
  if (!v) throw Error(label + ": missing key '" + dotted_key + "'");
  return *v;
}

namespace {
[[noreturn]] void wrong_type(const json& v, const std::string& key, const std::string& label, const char* expected) {
  std::string found = v.type_name();
  std::string shown = v.dump();
  if (shown.size() > 60) shown = shown.substr(0, 60) + "...";
  throw Error(label + ": key '" + key + "' is " + found + " " + shown + ", expected " + expected);
}
}  // namespace

int64_t yaml_require_int(const json& cfg, const std::string& key, const std::string& label) {
  const json& v = yaml_require(cfg, key, label);
  if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX)) return v.get<int64_t>();
  wrong_type(v, key, label, "an integer");
}

double yaml_require_number(const json& cfg, const std::string& key, const std::string& label) {
  const json& v = yaml_require(cfg, key, label);
  if (v.is_number()) return v.get<double>();
  wrong_type(v, key, label, "a number");
}

bool yaml_require_bool(const json& cfg, const std::string& key, const std::string& label) {
  const json& v = yaml_require(cfg, key, label);
  if (v.is_boolean()) return v.get<bool>();
  wrong_type(v, key, label, "a boolean");
}

std::string yaml_require_string(const json& cfg, const std::string& key, const std::string& label) {
  const json& v = yaml_require(cfg, key, label);
  if (v.is_string()) return v.get<std::string>();
  wrong_type(v, key, label, "a string");
}

}  // namespace kvrun::io
