// The values a template computes with (Python's None, bool, int, float, str, list, tuple,
// dict, jinja2's Undefined and namespace, callables) and their Python semantics:
// str() / repr() / json.dumps(), truth, ==, ordering and `in`.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "text/jinja/error.h"

namespace kvrun::jinja::detail {

struct Value;
struct Dict;
struct Namespace;
struct Func;
using List = std::vector<Value>;
using ListP = std::shared_ptr<const List>;
using DictP = std::shared_ptr<const Dict>;
using NsP = std::shared_ptr<Namespace>;
using FuncP = std::shared_ptr<const Func>;

struct Undef {
  std::string hint;  // what an operation on it reports, e.g. "'x' is undefined"
};
struct ListV {
  ListP items;
  bool tuple = false;
  int depth = 1;        // nesting height (lists, dicts, namespaces), kept below kMaxNesting
  bool has_ns = false;  // holds a namespace somewhere inside
};

// Values nest at most this deep: printing, comparing and freeing them recurse.
constexpr int kMaxNesting = 500;
[[noreturn]] void too_deep();
int value_depth(const Value& v);
bool holds_ns(const Value& v);

struct Value {
  std::variant<Undef, std::nullptr_t, bool, int64_t, double, std::string, ListV, DictP, NsP, FuncP> v;
  Value() : v(Undef{}) {}
  Value(Undef u) : v(std::move(u)) {}
  Value(std::nullptr_t) : v(nullptr) {}
  Value(bool b) : v(b) {}
  Value(int64_t i) : v(i) {}
  Value(int i) : v(static_cast<int64_t>(i)) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(List l, bool tuple = false) {
    int d = 0;
    bool ns = false;
    for (const auto& e : l) d = std::max(d, value_depth(e)), ns = ns || holds_ns(e);
    if (d + 1 > kMaxNesting) too_deep();
    v = ListV{std::make_shared<const List>(std::move(l)), tuple, d + 1, ns};
  }
  Value(DictP d);
  Value(NsP n) : v(std::move(n)) {}
  Value(FuncP f) : v(std::move(f)) {}

  bool undef() const { return std::holds_alternative<Undef>(v); }
  bool none() const { return std::holds_alternative<std::nullptr_t>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<int64_t>(v); }
  bool is_float() const { return std::holds_alternative<double>(v); }
  bool is_num() const { return is_bool() || is_int() || is_float(); }
  bool is_str() const { return std::holds_alternative<std::string>(v); }
  bool is_list() const { return std::holds_alternative<ListV>(v); }
  bool is_dict() const { return std::holds_alternative<DictP>(v); }
  bool is_ns() const { return std::holds_alternative<NsP>(v); }
  bool is_func() const { return std::holds_alternative<FuncP>(v); }
  const std::string& str() const { return std::get<std::string>(v); }
  const List& list() const { return *std::get<ListV>(v).items; }
  bool tuple() const { return std::get<ListV>(v).tuple; }
  const Dict& dict() const { return *std::get<DictP>(v); }
  int64_t as_int() const { return is_bool() ? (std::get<bool>(v) ? 1 : 0) : std::get<int64_t>(v); }
  double as_float() const { return is_float() ? std::get<double>(v) : static_cast<double>(as_int()); }
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  mutable int depth = 1;        // set when wrapped in a Value
  mutable bool has_ns = false;  // likewise
  const Value* find(std::string_view k) const {
    for (const auto& [key, val] : items)
      if (key == k) return &val;
    return nullptr;
  }
  void set(const std::string& k, Value val) {
    for (auto& [key, v] : items)
      if (key == k) {
        v = std::move(val);
        return;
      }
    items.emplace_back(k, std::move(val));
  }
};

struct Namespace {
  Dict attrs;
  int depth = 1;
  void set(const std::string& k, Value val) {
    // No reference cycles (they would leak and print forever).
    if (holds_ns(val) && reaches(val, 0)) fail("a namespace cannot be stored inside itself");
    depth = std::max(depth, value_depth(val) + 1);
    if (depth > kMaxNesting) too_deep();
    attrs.set(k, std::move(val));
  }
  bool reaches(const Value& v, int level) const;
};

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

struct Ctx;
struct Func {
  std::string name;
  std::function<Value(Ctx&, Args&)> fn;
};

Value undefined(std::string hint);

// Python's type(v).__name__.
inline std::string type_name(const Value& v) {
  switch (v.v.index()) {
    case 0:
      return "undefined";
    case 1:
      return "NoneType";
    case 2:
      return "bool";
    case 3:
      return "int";
    case 4:
      return "float";
    case 5:
      return "str";
    case 6:
      return v.tuple() ? "tuple" : "list";
    case 7:
      return "dict";
    case 8:
      return "Namespace";
    default:
      return "function";
  }
}

[[noreturn]] void undefined_error(const Value& v);

template <class J>
Value from_json(const J& j, int level = 0) {
  if (level > kMaxNesting) too_deep();
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value(nullptr);
    case nlohmann::json::value_t::boolean:
      return Value(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail("integer " + std::to_string(u) + " is larger than the supported 64-bit range");
      return Value(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      l.reserve(j.size());
      for (const auto& e : j) l.push_back(from_json(e, level + 1));
      return Value(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      auto d = std::make_shared<Dict>();
      for (auto it = j.begin(); it != j.end(); ++it) d->items.emplace_back(it.key(), from_json(it.value(), level + 1));
      return Value(DictP(std::move(d)));
    }
    default:
      fail("unsupported JSON value (binary)");
  }
}

// ---- Python formatting: str(), repr(), json.dumps()

// str(value) as Python / jinja2 prints it ({{ x }}, ~, |string, |join).
std::string py_str(const Value& v);
std::string py_repr(const Value& v, int level = 0);

struct JsonOpts {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: single line
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
};

// json.dumps(value, ...) as Python writes it.
void py_json(std::string& out, const Value& v, const JsonOpts& o, int level, size_t max_bytes);

// ---- Python semantics

bool truthy(const Value& v);
bool equals(const Value& a, const Value& b);
// Python's ordering: <0, 0, >0; TypeError for unorderable pairs.
int compare(const Value& a, const Value& b, const char* op);
bool contains(const Value& container, const Value& item);  // `item in container`

}  // namespace kvrun::jinja::detail
