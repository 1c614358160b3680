// Jinja subset renderer: lexer -> parser (AST) -> tree-walking evaluator.
// Semantics follow jinja2 3.1 as transformers configures it for chat templates; the
// comments name the jinja2 / Python behaviour each piece reproduces.
#include "text/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <functional>
#include <limits>
#include <utility>
#include <variant>
#include <vector>

#include "kvrun/error.h"

namespace kvrun::jinja {
namespace {

// ============================================================ errors

// A render-time error whose template position is added by the node that catches it.
struct TplError {
  std::string msg;
};
[[noreturn]] void fail(std::string msg) { throw TplError{std::move(msg)}; }

std::string where(int line, int col) { return "line " + std::to_string(line) + ", column " + std::to_string(col); }

[[noreturn]] void syntax_error(int line, int col, const std::string& msg) {
  throw Error("chat template syntax error at " + where(line, col) + ": " + msg);
}

// ============================================================ UTF-8 and Python string helpers

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) {  // invalid byte: keep it as a code point of its own
      out.push_back(c);
      ++i;
      continue;
    }
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    out.push_back(cp);
    i += n;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::string encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

size_t cp_count(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xc0) != 0x80;
  return n;
}

// Python's str.isspace().
bool py_isspace(char32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// Python's str.splitlines() boundaries.
bool py_linebreak(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

// str.strip / lstrip / rstrip; chars == nullptr strips whitespace.
std::string py_strip(std::string_view s, const std::u32string* chars, bool left, bool right) {
  const std::u32string u = decode(s);
  auto strip_it = [&](char32_t c) { return chars ? chars->find(c) != std::u32string::npos : py_isspace(c); };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return encode(std::u32string_view(u).substr(b, e - b));
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
char ascii_upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }
bool ascii_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string py_lower(std::string s) {
  for (char& c : s) c = ascii_lower(c);
  return s;
}
std::string py_upper(std::string s) {
  for (char& c : s) c = ascii_upper(c);
  return s;
}
// str.title(): a cased letter after an uncased character starts a word.
std::string py_title(std::string s) {
  bool prev_cased = false;
  for (char& c : s) {
    if (ascii_alpha(c)) {
      c = prev_cased ? ascii_lower(c) : ascii_upper(c);
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return s;
}
std::string py_capitalize(std::string s) {
  s = py_lower(std::move(s));
  if (!s.empty()) s[0] = ascii_upper(s[0]);
  return s;
}

std::string py_replace(std::string_view s, std::string_view old, std::string_view rep, int64_t count,
                       size_t max_bytes) {
  std::string out;
  auto check = [&] {
    if (out.size() > max_bytes)
      fail("replace(): result longer than the limit of " + std::to_string(max_bytes) + " bytes");
  };
  if (old.empty()) {  // Python inserts `rep` before every character and at the end
    const std::u32string u = decode(s);
    int64_t done = 0;
    for (char32_t c : u) {
      if (count < 0 || done < count) out += rep, ++done;
      append_utf8(out, c);
      check();
    }
    if (count < 0 || done < count) out += rep;
    check();
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t q = s.find(old, pos);
    if (q == std::string_view::npos) break;
    out.append(s.substr(pos, q - pos));
    out.append(rep);
    check();
    pos = q + old.size();
    ++done;
  }
  out.append(s.substr(pos));
  check();
  return out;
}

// ============================================================ values

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
[[noreturn]] void too_deep() { fail("value nested more than " + std::to_string(kMaxNesting) + " levels deep"); }
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

Value::Value(DictP d) {
  int h = 0;
  bool ns = false;
  for (const auto& [k, e] : d->items) h = std::max(h, value_depth(e)), ns = ns || holds_ns(e);
  if (h + 1 > kMaxNesting) too_deep();
  d->depth = h + 1;
  d->has_ns = ns;
  v = std::move(d);
}

bool holds_ns(const Value& v) {
  if (v.is_ns()) return true;
  if (v.is_list()) return std::get<ListV>(v.v).has_ns;
  if (v.is_dict()) return v.dict().has_ns;
  return false;
}

bool Namespace::reaches(const Value& v, int level) const {
  if (level > kMaxNesting || !holds_ns(v)) return false;
  if (v.is_ns()) {
    const Namespace* n = std::get<NsP>(v.v).get();
    if (n == this) return true;
    for (const auto& [k, e] : n->attrs.items)
      if (reaches(e, level + 1)) return true;
    return false;
  }
  if (v.is_list()) {
    for (const auto& e : v.list())
      if (reaches(e, level + 1)) return true;
    return false;
  }
  for (const auto& [k, e] : v.dict().items)
    if (reaches(e, level + 1)) return true;
  return false;
}

int value_depth(const Value& v) {
  if (v.is_list()) return std::get<ListV>(v.v).depth;
  if (v.is_dict()) return v.dict().depth;
  if (v.is_ns()) return std::get<NsP>(v.v)->depth;
  return 0;
}

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

struct Ctx;
struct Func {
  std::string name;
  std::function<Value(Ctx&, Args&)> fn;
};

Value undefined(std::string hint) { return Value(Undef{std::move(hint)}); }

std::string type_name(const Value& v) {
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

[[noreturn]] void undefined_error(const Value& v) {
  const auto& h = std::get<Undef>(v.v).hint;
  fail(h.empty() ? "value is undefined" : h);
}

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

std::string py_float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string sign;
  if (sci[0] == '-') sign = "-", sci.erase(0, 1);
  const size_t epos = sci.find('e');
  std::string digits = sci.substr(0, epos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int e = std::stoi(sci.substr(epos + 1));
  if (e < -4 || e >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    const int ae = std::abs(e);
    out += std::string("e") + (e < 0 ? "-" : "+") + (ae < 10 ? "0" : "") + std::to_string(ae);
    return out;
  }
  if (e >= 0) {
    std::string ip = digits.substr(0, std::min<size_t>(digits.size(), e + 1));
    while (ip.size() < static_cast<size_t>(e + 1)) ip += '0';
    std::string fp = digits.size() > static_cast<size_t>(e + 1) ? digits.substr(e + 1) : "0";
    return sign + ip + "." + fp;
  }
  return sign + "0." + std::string(-e - 1, '0') + digits;
}

bool py_printable(char32_t c) {
  if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) return false;
  if (c == 0x1680 || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) || (c >= 0x205f && c <= 0x2064) ||
      c == 0x3000 || c == 0xfeff || (c >= 0xd800 && c <= 0xdfff))
    return false;
  return true;
}

std::string py_str_repr(const std::string& s) {
  const bool has_sq = s.find('\'') != std::string::npos, has_dq = s.find('"') != std::string::npos;
  const char q = has_sq && !has_dq ? '"' : '\'';
  std::string out(1, q);
  char hex[16];
  for (char32_t c : decode(s)) {
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (!py_printable(c)) {
      if (c < 0x100)
        std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned>(c));
      else
        std::snprintf(hex, sizeof hex, "\\u%04x", static_cast<unsigned>(c));
      out += hex;
    } else {
      append_utf8(out, c);
    }
  }
  out += q;
  return out;
}

std::string py_repr(const Value& v, int level = 0);

// str(value) as Python / jinja2 prints it ({{ x }}, ~, |string, |join).
std::string py_str(const Value& v) {
  if (v.undef()) return "";
  if (v.is_str()) return v.str();
  return py_repr(v);
}

std::string py_repr(const Value& v, int level) {
  if (level > kMaxNesting) too_deep();  // a namespace holding itself
  switch (v.v.index()) {
    case 0:
      return "Undefined";
    case 1:
      return "None";
    case 2:
      return std::get<bool>(v.v) ? "True" : "False";
    case 3:
      return std::to_string(std::get<int64_t>(v.v));
    case 4:
      return py_float_repr(std::get<double>(v.v));
    case 5:
      return py_str_repr(v.str());
    case 6: {
      const List& l = v.list();
      std::string out = v.tuple() ? "(" : "[";
      for (size_t i = 0; i < l.size(); ++i) out += (i ? ", " : "") + py_repr(l[i], level + 1);
      if (v.tuple() && l.size() == 1) out += ",";
      return out + (v.tuple() ? ")" : "]");
    }
    case 7:
    case 8: {
      const Dict& d = v.is_dict() ? v.dict() : std::get<NsP>(v.v)->attrs;
      std::string out = "{";
      bool first = true;
      for (const auto& [k, val] : d.items) {
        out += (first ? "" : ", ") + py_str_repr(k) + ": " + py_repr(val, level + 1);
        first = false;
      }
      out += "}";
      return v.is_ns() ? "<Namespace " + out + ">" : out;
    }
    default:
      return "<function " + std::get<FuncP>(v.v)->name + ">";
  }
}

void json_str(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  char hex[16];
  for (char32_t c : decode(s)) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || (ensure_ascii && c > 0x7e && c < 0x10000)) {
          std::snprintf(hex, sizeof hex, "\\u%04x", static_cast<unsigned>(c));
          out += hex;
        } else if (ensure_ascii && c >= 0x10000) {
          const char32_t v = c - 0x10000;
          std::snprintf(hex, sizeof hex, "\\u%04x\\u%04x", static_cast<unsigned>(0xd800 + (v >> 10)),
                        static_cast<unsigned>(0xdc00 + (v & 0x3ff)));
          out += hex;
        } else {
          append_utf8(out, c);
        }
    }
  }
  out += '"';
}

struct JsonOpts {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: single line
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
};

// json.dumps(value, ...) as Python writes it.
void py_json(std::string& out, const Value& v, const JsonOpts& o, int level, size_t max_bytes) {
  if (out.size() > max_bytes) fail("tojson: output longer than the limit of " + std::to_string(max_bytes) + " bytes");
  if (level > 512) fail("tojson: value nested more than 512 levels deep");
  auto newline = [&](int lv) {
    out += '\n';
    for (int i = 0; i < lv; ++i) out += *o.indent;
  };
  switch (v.v.index()) {
    case 0:
      fail("tojson: Object of type Undefined is not JSON serializable");
    case 1:
      out += "null";
      return;
    case 2:
      out += std::get<bool>(v.v) ? "true" : "false";
      return;
    case 3:
      out += std::to_string(std::get<int64_t>(v.v));
      return;
    case 4: {
      const double d = std::get<double>(v.v);
      out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d < 0 ? "-Infinity" : "Infinity") : py_float_repr(d);
      return;
    }
    case 5:
      json_str(out, v.str(), o.ensure_ascii);
      return;
    case 6: {
      const List& l = v.list();
      if (l.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < l.size(); ++i) {
        if (i) out += o.item_sep;
        if (o.indent) newline(level + 1);
        py_json(out, l[i], o, level + 1, max_bytes);
      }
      if (o.indent) newline(level);
      out += ']';
      return;
    }
    case 7: {
      const Dict& d = v.dict();
      if (d.items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : d.items) items.push_back(&kv);
      if (o.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += o.item_sep;
        if (o.indent) newline(level + 1);
        json_str(out, items[i]->first, o.ensure_ascii);
        out += o.key_sep;
        py_json(out, items[i]->second, o, level + 1, max_bytes);
      }
      if (o.indent) newline(level);
      out += '}';
      return;
    }
    default:
      fail("tojson: Object of type " + type_name(v) + " is not JSON serializable");
  }
}

bool truthy(const Value& v) {
  switch (v.v.index()) {
    case 0:
    case 1:
      return false;
    case 2:
      return std::get<bool>(v.v);
    case 3:
      return std::get<int64_t>(v.v) != 0;
    case 4:
      return std::get<double>(v.v) != 0.0;
    case 5:
      return !v.str().empty();
    case 6:
      return !v.list().empty();
    case 7:
      return !v.dict().items.empty();
    default:
      return true;
  }
}

bool equals(const Value& a, const Value& b) {
  if (a.is_num() && b.is_num()) {
    if (a.is_float() || b.is_float()) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.v.index() != b.v.index()) return false;
  switch (a.v.index()) {
    case 0:
    case 1:
      return true;
    case 5:
      return a.str() == b.str();
    case 6: {
      if (a.tuple() != b.tuple()) return false;
      const List &x = a.list(), &y = b.list();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!equals(x[i], y[i])) return false;
      return true;
    }
    case 7: {
      const Dict &x = a.dict(), &y = b.dict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, v] : x.items) {
        const Value* o = y.find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    }
    case 8:
      return std::get<NsP>(a.v) == std::get<NsP>(b.v);
    default:
      return std::get<FuncP>(a.v) == std::get<FuncP>(b.v);
  }
}

// Python's ordering: <0, 0, >0; TypeError for unorderable pairs.
int compare(const Value& a, const Value& b, const char* op) {
  if (a.is_num() && b.is_num()) {
    if (a.is_float() || b.is_float()) {
      const double x = a.as_float(), y = b.as_float();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    const int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_str() && b.is_str()) return a.str() < b.str() ? -1 : a.str() > b.str() ? 1 : 0;  // UTF-8 = code point order
  if (a.is_list() && b.is_list() && a.tuple() == b.tuple()) {
    const List &x = a.list(), &y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!equals(x[i], y[i])) return compare(x[i], y[i], op);
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  if (a.undef()) undefined_error(a);
  if (b.undef()) undefined_error(b);
  fail(std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) +
       "'");
}

// ============================================================ lexer

enum class T { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Tok {
  T t;
  std::string s;  // data, name, decoded string, operator
  int line = 1, col = 1;
  int64_t i = 0;
  double f = 0;
};

std::string describe(const Tok& t) {
  switch (t.t) {
    case T::Data:
      return "template text";
    case T::VarBegin:
      return "'{{'";
    case T::VarEnd:
      return "'}}'";
    case T::BlockBegin:
      return "'{%'";
    case T::BlockEnd:
      return "'%}'";
    case T::Name:
      return "name '" + t.s + "'";
    case T::String:
      return "a string";
    case T::Int:
    case T::Float:
      return "a number";
    case T::Op:
      return "'" + t.s + "'";
    default:
      return "end of template";
  }
}

class Lexer {
 public:
  explicit Lexer(std::string_view src) {
    // jinja2: newlines normalised to \n; one trailing newline dropped (keep_trailing_newline=False).
    s_.reserve(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\r') {
        s_ += '\n';
        if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
      } else {
        s_ += src[i];
      }
    }
    if (!s_.empty() && s_.back() == '\n') s_.pop_back();
    for (size_t i = 0; i < s_.size(); ++i)
      if (s_[i] == '\n') nl_.push_back(i);
  }

  std::vector<Tok> run() {
    size_t pos = 0;
    const size_t n = s_.size();
    while (pos < n) {
      size_t q = pos;
      while (q + 1 < n && !(s_[q] == '{' && (s_[q + 1] == '{' || s_[q + 1] == '%' || s_[q + 1] == '#'))) ++q;
      if (q + 1 >= n) {
        data(s_.substr(pos), pos);
        break;
      }
      const char kind = s_[q + 1];
      size_t p = q + 2;
      char sign = 0;
      if (p < n && (s_[p] == '-' || s_[p] == '+')) sign = s_[p++];
      std::string text = s_.substr(pos, q - pos);
      if (sign == '-') {
        text = py_strip(text, nullptr, false, true);
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks (not for {{ }})
        const size_t nlp = text.rfind('\n');
        const size_t l = nlp == std::string::npos ? 0 : nlp + 1;
        if ((l > 0 || line_starting_) && l < text.size()) {
          const std::u32string rest = decode(std::string_view(text).substr(l));
          if (std::all_of(rest.begin(), rest.end(), py_isspace)) text.resize(l);
        }
      }
      data(std::move(text), pos);
      if (kind == '%') {
        if (const auto after = raw_begin(p, q)) {
          pos = *after;
          continue;
        }
      }
      if (kind == '#') {
        pos = comment(q, p);
        continue;
      }
      pos = tag(q, p, kind == '%');
    }
    Tok eof{T::Eof, "", 0, 0};
    std::tie(eof.line, eof.col) = lc(s_.size());
    out_.push_back(eof);
    return std::move(out_);
  }

 private:
  std::pair<int, int> lc(size_t off) const {
    const auto it = std::lower_bound(nl_.begin(), nl_.end(), off);
    const int line = static_cast<int>(it - nl_.begin()) + 1;
    const size_t start = it == nl_.begin() ? 0 : *(it - 1) + 1;
    return {line, static_cast<int>(cp_count(std::string_view(s_).substr(start, off - start))) + 1};
  }
  void push(T t, std::string s, size_t off) {
    Tok tok{t, std::move(s)};
    std::tie(tok.line, tok.col) = lc(off);
    out_.push_back(std::move(tok));
  }
  void data(std::string text, size_t off) {
    if (!text.empty()) push(T::Data, std::move(text), off);
  }
  bool starts(size_t p, std::string_view w) const { return s_.compare(p, w.size(), w) == 0; }
  size_t skip_ws(size_t p) const {
    while (p < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[p]);
      if (c < 0x80) {
        if (!py_isspace(c)) break;
        ++p;
        continue;
      }
      size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
      const std::u32string u = decode(std::string_view(s_).substr(p, len));
      if (u.size() != 1 || !py_isspace(u[0])) break;
      p += len;
    }
    return p;
  }
  // Block end: "+%}" keeps what follows, "-%}" eats following whitespace, "%}" eats one newline.
  size_t block_end(size_t p, bool* matched) const {
    *matched = true;
    if (starts(p, "+%}")) return p + 3;
    if (starts(p, "-%}")) return skip_ws(p + 3);
    if (starts(p, "%}")) return p + 2 + (p + 2 < s_.size() && s_[p + 2] == '\n');
    *matched = false;
    return p;
  }

  // {% raw %}...{% endraw %}: the text between is data, verbatim.
  std::optional<size_t> raw_begin(size_t p, size_t tag_off) {
    size_t r = skip_ws(p);
    if (!starts(r, "raw")) return std::nullopt;
    r = skip_ws(r + 3);
    size_t body;
    if (starts(r, "-%}"))
      body = skip_ws(r + 3);
    else if (starts(r, "%}"))
      body = r + 2;
    else
      return std::nullopt;
    // find {%[-+]? \s* endraw \s* (+%} | -%}\s* | %}\n?)
    for (size_t q = s_.find("{%", body); q != std::string::npos; q = s_.find("{%", q + 1)) {
      size_t e = q + 2;
      char sign = 0;
      if (e < s_.size() && (s_[e] == '-' || s_[e] == '+')) sign = s_[e++];
      e = skip_ws(e);
      if (!starts(e, "endraw")) continue;
      e = skip_ws(e + 6);
      bool ok;
      const size_t after = block_end(e, &ok);
      if (!ok) continue;
      std::string text = s_.substr(body, q - body);
      line_starting_ = s_[body - 1] == '\n';
      if (sign == '-') {
        text = py_strip(text, nullptr, false, true);
      } else if (sign != '+') {
        const size_t nlp = text.rfind('\n');
        const size_t l = nlp == std::string::npos ? 0 : nlp + 1;
        if ((l > 0 || line_starting_) && l < text.size()) {
          const std::u32string rest = decode(std::string_view(text).substr(l));
          if (std::all_of(rest.begin(), rest.end(), py_isspace)) text.resize(l);
        }
      }
      data(std::move(text), body);
      line_starting_ = s_[after - 1] == '\n';
      return after;
    }
    const auto [line, col] = lc(tag_off);
    syntax_error(line, col, "missing end of raw directive: expected '{% endraw %}' for this '{% raw %}'");
  }

  size_t comment(size_t q, size_t p) {
    for (size_t e = s_.find("#}", p); e != std::string::npos; e = s_.find("#}", e + 1)) {
      size_t after;
      if (e > p && s_[e - 1] == '-')
        after = skip_ws(e + 2);
      else if (e > p && s_[e - 1] == '+')
        after = e + 2;
      else
        after = e + 2 + (e + 2 < s_.size() && s_[e + 2] == '\n');
      line_starting_ = s_[after - 1] == '\n';
      return after;
    }
    const auto [line, col] = lc(q);
    syntax_error(line, col, "unterminated comment: expected '#}' to close the '{#' opened here");
  }

  size_t tag(size_t q, size_t p, bool block) {
    push(block ? T::BlockBegin : T::VarBegin, "", q);
    std::vector<char> balance;
    const size_t n = s_.size();
    for (;;) {
      p = skip_ws(p);
      if (p >= n) {
        const auto [line, col] = lc(q);
        syntax_error(line, col,
                     std::string("unexpected end of template: expected '") + (block ? "%}" : "}}") +
                         "' to close the '" + (block ? "{%" : "{{") + "' opened here");
      }
      if (balance.empty()) {
        if (block) {
          bool ok;
          const size_t after = block_end(p, &ok);
          if (ok) {
            push(T::BlockEnd, "", p);
            line_starting_ = s_[after - 1] == '\n';
            return after;
          }
        } else if (starts(p, "-}}") || starts(p, "}}")) {
          push(T::VarEnd, "", p);
          const size_t after = s_[p] == '-' ? skip_ws(p + 3) : p + 2;
          line_starting_ = s_[after - 1] == '\n';
          return after;
        }
      }
      const char c = s_[p];
      if (c >= '0' && c <= '9') {
        p = number(p);
      } else if (ascii_alpha(c) || c == '_') {
        size_t e = p;
        while (e < n && (ascii_alpha(s_[e]) || s_[e] == '_' || (s_[e] >= '0' && s_[e] <= '9'))) ++e;
        push(T::Name, s_.substr(p, e - p), p);
        p = e;
      } else if (c == '\'' || c == '"') {
        p = string_lit(p);
      } else {
        static const char* two[] = {"//", "**", "==", "!=", ">=", "<="};
        std::string op;
        for (const char* t : two)
          if (starts(p, t)) op = t;
        if (op.empty() && std::string_view("+-*/%~[](){}><=.:|,;").find(c) != std::string_view::npos) op = c;
        if (op.empty()) {
          const auto [line, col] = lc(p);
          const std::u32string u = decode(std::string_view(s_).substr(p, 4));
          syntax_error(line, col, "unexpected character '" + encode(u.substr(0, 1)) + "' in expression");
        }
        if (op == "(" || op == "[" || op == "{") {
          balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          const auto [line, col] = lc(p);
          if (balance.empty()) syntax_error(line, col, "unexpected '" + op + "'");
          if (balance.back() != op[0])
            syntax_error(line, col, "unexpected '" + op + "', expected '" + std::string(1, balance.back()) + "'");
          balance.pop_back();
        }
        push(T::Op, op, p);
        p += op.size();
      }
    }
  }

  size_t digits(size_t p) const {  // \d+(_\d+)*
    while (p < s_.size() && s_[p] >= '0' && s_[p] <= '9') {
      ++p;
      if (p + 1 < s_.size() && s_[p] == '_' && s_[p + 1] >= '0' && s_[p + 1] <= '9') ++p;
    }
    return p;
  }
  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  size_t number(size_t p) {
    const size_t n = s_.size();
    size_t e = digits(p);
    bool is_float = false;
    const bool after_dot = !out_.empty() && out_.back().t == T::Op && out_.back().s == ".";
    if (!after_dot) {
      size_t f = e;
      if (f + 1 < n && s_[f] == '.' && is_digit(s_[f + 1])) f = digits(f + 1), is_float = true;
      if (f < n && (s_[f] == 'e' || s_[f] == 'E')) {
        size_t x = f + 1;
        if (x < n && (s_[x] == '+' || s_[x] == '-')) ++x;
        if (x < n && is_digit(s_[x])) f = digits(x), is_float = true;
      }
      if (is_float) e = f;
    }
    std::string text;
    for (size_t i = p; i < e; ++i)
      if (s_[i] != '_') text += s_[i];
    Tok tok{is_float ? T::Float : T::Int, text};
    std::tie(tok.line, tok.col) = lc(p);
    if (is_float) {
      tok.f = std::strtod(text.c_str(), nullptr);
    } else {
      const auto r = std::from_chars(text.data(), text.data() + text.size(), tok.i);
      if (r.ec != std::errc()) syntax_error(tok.line, tok.col, "integer literal " + text + " is out of 64-bit range");
    }
    out_.push_back(std::move(tok));
    return e;
  }

  // Python unicode-escape decoding of a string literal's body.
  size_t string_lit(size_t p) {
    const char q = s_[p];
    size_t e = p + 1;
    while (e < s_.size() && s_[e] != q) e += s_[e] == '\\' ? 2 : 1;
    if (e >= s_.size()) {
      const auto [line, col] = lc(p);
      syntax_error(line, col,
                   std::string("unterminated string: expected a closing ") + q + " for the string opened here");
    }
    const std::string_view body = std::string_view(s_).substr(p + 1, e - p - 1);
    std::string out;
    auto hexval = [](char c) {
      return c >= '0' && c <= '9'   ? c - '0'
             : c >= 'a' && c <= 'f' ? c - 'a' + 10
             : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                    : -1;
    };
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] != '\\' || i + 1 >= body.size()) {
        out += body[i];
        continue;
      }
      const char c = body[++i];
      switch (c) {
        case '\n':
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t len = c == 'x' ? 2 : c == 'u' ? 4 : 8;
          char32_t cp = 0;
          bool ok = i + len < body.size();
          for (size_t k = 1; ok && k <= len; ++k) {
            const int h = hexval(body[i + k]);
            if (h < 0) ok = false;
            cp = cp * 16 + static_cast<char32_t>(h < 0 ? 0 : h);
          }
          if (!ok || cp > 0x10ffff) {
            const auto [line, col] = lc(p);
            syntax_error(line, col, std::string("invalid \\") + c + " escape in string literal");
          }
          append_utf8(out, cp);
          i += len;
          break;
        }
        default:
          if (c >= '0' && c <= '7') {
            char32_t cp = c - '0';
            for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
              cp = cp * 8 + (body[++i] - '0');
            append_utf8(out, cp);
          } else {
            out += '\\';
            out += c;
          }
      }
    }
    push(T::String, std::move(out), p);
    return e + 1;
  }

  std::string s_;
  std::vector<size_t> nl_;
  std::vector<Tok> out_;
  bool line_starting_ = true;
};

// ============================================================ AST

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum K {
    Const,
    Name,
    Attr,
    Item,
    Slice,
    Call,
    Filter,
    Test,
    Neg,
    Pos,
    Not,
    Bin,
    Cmp,
    And,
    Or,
    Cond,
    ListLit,
    TupleLit,
    DictLit
  };
  K k;
  int line = 0, col = 0;
  Value cval;                                     // Const
  std::string name;                               // Name, Attr, Filter, Test, Bin operator
  std::vector<ExprP> a;                           // operands / arguments (a[0] = subject)
  std::vector<std::pair<std::string, ExprP>> kw;  // keyword arguments
  std::vector<std::string> ops;                   // Cmp operators
  bool negated = false;                           // Test: "is not"
  int depth = 1;                                  // height of this subtree (bounded by the parser)
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum K { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Plain };
  K k;
  int line = 0, col = 0;
  std::string text;                                   // Text; Macro name
  ExprP expr;                                         // Output, Set value, For iterable
  std::vector<std::pair<ExprP, Body>> branches;       // If: (condition or null for else, body)
  std::vector<std::string> targets;                   // For / Set names
  std::string attr;                                   // Set ns.attr
  ExprP filter;                                       // For ... if filter
  Body body, else_body;                               // For, SetBlock, Macro, Plain
  std::vector<std::pair<std::string, ExprP>> params;  // Macro parameters with optional defaults
};

// ============================================================ parser

bool known_filter(const std::string& n);
bool known_test(const std::string& n);

constexpr int kMaxParseDepth = 200;
constexpr int kMaxExprHeight = 400;

class Parser {
 public:
  explicit Parser(std::vector<Tok> toks) : t_(std::move(toks)) {}

  Body parse_template() {
    Body b = body({});
    if (cur().t != T::Eof) err(cur(), "unexpected " + describe(cur()));
    return b;
  }

 private:
  const Tok& cur() const { return t_[i_]; }
  const Tok& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Tok& next() {
    const Tok& t = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return t;
  }
  [[noreturn]] void err(const Tok& t, const std::string& msg) const { syntax_error(t.line, t.col, msg); }
  bool is_op(const char* s) const { return cur().t == T::Op && cur().s == s; }
  bool is_name(const char* s) const { return cur().t == T::Name && cur().s == s; }
  void expect_op(const char* s) {
    if (!is_op(s)) err(cur(), std::string("expected '") + s + "', found " + describe(cur()));
    next();
  }
  std::string expect_name(const char* what) {
    if (cur().t != T::Name) err(cur(), std::string("expected ") + what + ", found " + describe(cur()));
    return next().s;
  }
  void expect_block_end(const char* tag) {
    if (cur().t != T::BlockEnd)
      err(cur(), std::string("expected '%}' to end the '") + tag + "' tag, found " + describe(cur()));
    next();
  }
  struct Depth {
    Parser& p;
    explicit Depth(Parser& pp, const Tok& t) : p(pp) {
      if (++p.depth_ > kMaxParseDepth)
        p.err(t, "template nested too deeply (more than " + std::to_string(kMaxParseDepth) + " levels)");
    }
    ~Depth() { --p.depth_; }
  };

  // Every composite node goes through here: caps the tree height, so evaluating it
  // cannot recurse deeper than kMaxExprHeight (long chains like a+a+...+a included).
  ExprP fin(ExprP e) {
    int h = 0;
    for (const auto& c : e->a)
      if (c) h = std::max(h, c->depth);
    for (const auto& [k, c] : e->kw) h = std::max(h, c->depth);
    e->depth = h + 1;
    if (e->depth > kMaxExprHeight)
      err(Tok{T::Eof, "", e->line, e->col},
          "expression nested too deeply (more than " + std::to_string(kMaxExprHeight) + " levels)");
    return e;
  }
  static ExprP mk(Expr::K k, const Tok& at) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->line = at.line;
    e->col = at.col;
    return e;
  }
  std::unique_ptr<Node> mkn(Node::K k, const Tok& at) {
    auto n = std::make_unique<Node>();
    n->k = k;
    n->line = at.line;
    n->col = at.col;
    return n;
  }

  // Parses nodes until a block tag whose name is in `ends` (left unconsumed: cur() is that name).
  Body body(const std::vector<std::string>& ends, const Tok* opener = nullptr, const char* open_tag = nullptr) {
    Depth d(*this, cur());
    Body out;
    for (;;) {
      const Tok& t = cur();
      if (t.t == T::Eof) {
        if (!ends.empty()) {
          std::string exp;
          for (const auto& e : ends) exp += (exp.empty() ? "'" : " or '") + e + "'";
          err(t, std::string("unexpected end of template: the '") + open_tag + "' block opened at " +
                     where(opener->line, opener->col) + " was never closed (expected " + exp + ")");
        }
        return out;
      }
      if (t.t == T::Data) {
        auto n = mkn(Node::Text, t);
        n->text = t.s;
        next();
        out.push_back(std::move(n));
      } else if (t.t == T::VarBegin) {
        next();
        auto n = mkn(Node::Output, t);
        n->expr = tuple_expr(true);
        if (cur().t != T::VarEnd) err(cur(), "expected '}}' to end the expression, found " + describe(cur()));
        next();
        out.push_back(std::move(n));
      } else if (t.t == T::BlockBegin) {
        const Tok& kw = peek();
        if (kw.t != T::Name) err(kw, "expected a tag name after '{%', found " + describe(kw));
        if (std::find(ends.begin(), ends.end(), kw.s) != ends.end()) {
          next();
          return out;
        }
        next();
        out.push_back(statement());
      } else {
        err(t, "unexpected " + describe(t));
      }
    }
  }

  std::unique_ptr<Node> statement() {
    const Tok& kw = next();
    const std::string& name = kw.s;
    if (name == "if") return if_stmt(kw);
    if (name == "for") return for_stmt(kw);
    if (name == "set") return set_stmt(kw);
    if (name == "macro") return macro_stmt(kw);
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) err(kw, "'" + name + "' outside of a for loop");
      expect_block_end(name.c_str());
      return mkn(name == "break" ? Node::Break : Node::Continue, kw);
    }
    if (name == "generation") {  // transformers' assistant-mask extension: renders its body
      expect_block_end("generation");
      auto n = mkn(Node::Plain, kw);
      n->body = body({"endgeneration"}, &kw, "generation");
      next();
      expect_block_end("endgeneration");
      return n;
    }
    static const char* known_ends[] = {"endif", "endfor", "endset", "endmacro", "else", "elif", "endgeneration"};
    for (const char* e : known_ends)
      if (name == e) err(kw, "unexpected '" + name + "' tag: no open block it could close");
    err(kw, "unknown or unsupported tag '" + name +
                "' (supported: if, elif, else, for, set, macro, break, continue, generation, raw)");
  }

  std::unique_ptr<Node> if_stmt(const Tok& kw) {
    auto n = mkn(Node::If, kw);
    ExprP cond = tuple_expr(false);
    expect_block_end("if");
    for (;;) {
      Body b = body({"elif", "else", "endif"}, &kw, "if");
      const std::string tag = next().s;
      n->branches.emplace_back(std::move(cond), std::move(b));
      if (tag == "elif") {
        cond = tuple_expr(false);
        expect_block_end("elif");
      } else if (tag == "else") {
        expect_block_end("else");
        Body eb = body({"endif"}, &kw, "if");
        next();
        expect_block_end("endif");
        n->branches.emplace_back(nullptr, std::move(eb));
        return n;
      } else {
        expect_block_end("endif");
        return n;
      }
    }
  }

  std::vector<std::string> target_names(const char* what) {
    std::vector<std::string> names;
    const bool paren = is_op("(");
    if (paren) next();
    names.push_back(expect_name(what));
    while (is_op(",")) {
      next();
      if (cur().t != T::Name) break;
      names.push_back(next().s);
    }
    if (paren) expect_op(")");
    return names;
  }

  std::unique_ptr<Node> for_stmt(const Tok& kw) {
    auto n = mkn(Node::For, kw);
    n->targets = target_names("a loop variable name");
    if (!is_name("in")) err(cur(), "expected 'in' in the for loop, found " + describe(cur()));
    next();
    n->expr = tuple_expr(false, /*with_condexpr=*/false);
    if (is_name("if")) {
      next();
      n->filter = expr();
    }
    if (is_name("recursive")) err(cur(), "recursive for loops are not supported");
    expect_block_end("for");
    ++loop_depth_;
    n->body = body({"endfor", "else"}, &kw, "for");
    --loop_depth_;
    if (next().s == "else") {
      expect_block_end("else");
      n->else_body = body({"endfor"}, &kw, "for");
      next();
    }
    expect_block_end("endfor");
    return n;
  }

  std::unique_ptr<Node> set_stmt(const Tok& kw) {
    auto n = mkn(Node::Set, kw);
    if (cur().t == T::Name && peek().t == T::Op && peek().s == ".") {
      n->targets.push_back(next().s);
      next();
      n->attr = expect_name("an attribute name after '.'");
    } else {
      n->targets = target_names("a variable name");
    }
    if (is_op("=")) {
      next();
      n->expr = tuple_expr(false);
      expect_block_end("set");
      return n;
    }
    if (!n->attr.empty() || n->targets.size() != 1) err(cur(), "expected '=' in the set tag, found " + describe(cur()));
    expect_block_end("set");
    n->k = Node::SetBlock;
    n->body = body({"endset"}, &kw, "set");
    next();
    expect_block_end("endset");
    return n;
  }

  std::unique_ptr<Node> macro_stmt(const Tok& kw) {
    auto n = mkn(Node::Macro, kw);
    n->text = expect_name("a macro name");
    expect_op("(");
    while (!is_op(")")) {
      std::string p = expect_name("a parameter name");
      ExprP def;
      if (is_op("=")) {
        next();
        def = expr();
      }
      n->params.emplace_back(std::move(p), std::move(def));
      if (!is_op(")")) expect_op(",");
    }
    next();
    expect_block_end("macro");
    const int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = body({"endmacro"}, &kw, "macro");
    loop_depth_ = saved;
    next();
    if (cur().t == T::Name) next();  // {% endmacro name %}
    expect_block_end("endmacro");
    return n;
  }

  // ---- expressions (jinja2 parser.py precedence)

  ExprP tuple_expr(bool allow_empty_end, bool with_condexpr = true) {
    const Tok& start = cur();
    ExprP first = with_condexpr ? expr() : or_expr();
    if (!is_op(",")) return first;
    auto t = mk(Expr::TupleLit, start);
    t->a.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (cur().t == T::VarEnd || cur().t == T::BlockEnd || is_op(")") || is_name("if")) break;
      t->a.push_back(with_condexpr ? expr() : or_expr());
    }
    (void)allow_empty_end;
    return fin(std::move(t));
  }

  ExprP expr() {  // condexpr
    Depth d(*this, cur());
    ExprP e = or_expr();
    while (is_name("if")) {
      auto c = mk(Expr::Cond, cur());
      next();
      ExprP cond = or_expr();
      ExprP other;
      if (is_name("else")) {
        next();
        other = expr();
      }
      c->a.push_back(std::move(e));
      c->a.push_back(std::move(cond));
      c->a.push_back(std::move(other));
      e = fin(std::move(c));
    }
    return e;
  }
  ExprP or_expr() {
    ExprP l = and_expr();
    while (is_name("or")) {
      auto n = mk(Expr::Or, next());
      n->a.push_back(std::move(l));
      n->a.push_back(and_expr());
      l = fin(std::move(n));
    }
    return l;
  }
  ExprP and_expr() {
    ExprP l = not_expr();
    while (is_name("and")) {
      auto n = mk(Expr::And, next());
      n->a.push_back(std::move(l));
      n->a.push_back(not_expr());
      l = fin(std::move(n));
    }
    return l;
  }
  ExprP not_expr() {
    if (is_name("not")) {
      Depth d(*this, cur());
      auto n = mk(Expr::Not, next());
      n->a.push_back(not_expr());
      return fin(std::move(n));
    }
    return compare();
  }
  ExprP compare() {
    ExprP l = math1();
    ExprP c;
    for (;;) {
      std::string op;
      const Tok& at = cur();
      if (cur().t == T::Op && (cur().s == "==" || cur().s == "!=" || cur().s == "<" || cur().s == "<=" ||
                               cur().s == ">" || cur().s == ">=")) {
        op = next().s;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().t == T::Name && peek().s == "in") {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      if (!c) {
        c = mk(Expr::Cmp, at);
        c->a.push_back(std::move(l));
      }
      c->ops.push_back(op);
      c->a.push_back(math1());
    }
    return c ? fin(std::move(c)) : std::move(l);
  }
  ExprP binary(ExprP l, const Tok& at, std::string op, ExprP r) {
    auto n = mk(Expr::Bin, at);
    n->name = std::move(op);
    n->a.push_back(std::move(l));
    n->a.push_back(std::move(r));
    return fin(std::move(n));
  }
  ExprP math1() {
    ExprP l = concat();
    while (is_op("+") || is_op("-")) {
      const Tok& at = cur();
      std::string op = next().s;
      l = binary(std::move(l), at, op, concat());
    }
    return l;
  }
  ExprP concat() {
    ExprP l = math2();
    while (is_op("~")) {
      const Tok& at = cur();
      next();
      l = binary(std::move(l), at, "~", math2());
    }
    return l;
  }
  ExprP math2() {
    ExprP l = pow_expr();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Tok& at = cur();
      std::string op = next().s;
      l = binary(std::move(l), at, op, pow_expr());
    }
    return l;
  }
  ExprP pow_expr() {
    ExprP l = unary(true);
    while (is_op("**")) {
      const Tok& at = cur();
      next();
      l = binary(std::move(l), at, "**", unary(true));
    }
    return l;
  }
  ExprP unary(bool with_filter) {
    Depth d(*this, cur());
    ExprP n;
    if (is_op("-") || is_op("+")) {
      n = mk(is_op("-") ? Expr::Neg : Expr::Pos, cur());
      next();
      n->a.push_back(unary(false));
      n = fin(std::move(n));
    } else {
      n = primary();
    }
    n = postfix(std::move(n));
    if (with_filter) n = filters(std::move(n));
    return n;
  }

  ExprP primary() {
    const Tok& t = cur();
    switch (t.t) {
      case T::Name: {
        next();
        auto e = mk(Expr::Const, t);
        if (t.s == "true" || t.s == "True") {
          e->cval = Value(true);
        } else if (t.s == "false" || t.s == "False") {
          e->cval = Value(false);
        } else if (t.s == "none" || t.s == "None") {
          e->cval = Value(nullptr);
        } else {
          e->k = Expr::Name;
          e->name = t.s;
        }
        return e;
      }
      case T::String: {
        auto e = mk(Expr::Const, t);
        std::string s;
        while (cur().t == T::String) s += next().s;  // adjacent literals concatenate
        e->cval = Value(std::move(s));
        return e;
      }
      case T::Int:
      case T::Float: {
        auto e = mk(Expr::Const, t);
        e->cval = t.t == T::Int ? Value(t.i) : Value(t.f);
        next();
        return e;
      }
      case T::Op:
        if (t.s == "(") {
          next();
          if (is_op(")")) {
            next();
            return mk(Expr::TupleLit, t);
          }
          ExprP first = expr();
          if (is_op(")")) {
            next();
            return first;
          }
          auto tup = mk(Expr::TupleLit, t);
          tup->a.push_back(std::move(first));
          while (is_op(",")) {
            next();
            if (is_op(")")) break;
            tup->a.push_back(expr());
          }
          expect_op(")");
          return fin(std::move(tup));
        }
        if (t.s == "[") {
          next();
          auto l = mk(Expr::ListLit, t);
          while (!is_op("]")) {
            l->a.push_back(expr());
            if (!is_op("]")) expect_op(",");
          }
          next();
          return fin(std::move(l));
        }
        if (t.s == "{") {
          next();
          auto d = mk(Expr::DictLit, t);
          while (!is_op("}")) {
            d->a.push_back(expr());
            expect_op(":");
            d->a.push_back(expr());
            if (!is_op("}")) expect_op(",");
          }
          next();
          return fin(std::move(d));
        }
        break;
      default:
        break;
    }
    err(t, "expected an expression, found " + describe(t));
  }

  void call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) err(cur(), "*args / **kwargs in calls are not supported");
      if (cur().t == T::Name && peek().t == T::Op && peek().s == "=") {
        std::string k = next().s;
        next();
        e.kw.emplace_back(std::move(k), expr());
      } else {
        if (!e.kw.empty()) err(cur(), "positional argument after a keyword argument");
        e.a.push_back(expr());
      }
      if (!is_op(")")) expect_op(",");
    }
    next();
  }

  ExprP postfix(ExprP n) {
    for (;;) {
      const Tok& t = cur();
      if (is_op(".")) {
        next();
        auto g = mk(Expr::Attr, t);
        if (cur().t == T::Name) {
          g->name = next().s;
        } else if (cur().t == T::Int) {  // foo.0 is foo[0]
          g->k = Expr::Item;
          auto c = mk(Expr::Const, cur());
          c->cval = Value(next().i);
          g->a.push_back(std::move(n));
          g->a.push_back(std::move(c));
          n = fin(std::move(g));
          continue;
        } else {
          err(cur(), "expected an attribute name after '.', found " + describe(cur()));
        }
        g->a.push_back(std::move(n));
        n = fin(std::move(g));
      } else if (is_op("[")) {
        next();
        ExprP idx[3];
        bool slice = false;
        for (int part = 0; part < 3; ++part) {
          if (!is_op(":") && !is_op("]")) idx[part] = expr();
          if (is_op(":") && part < 2) {
            slice = true;
            next();
          } else {
            break;
          }
        }
        expect_op("]");
        if (!slice && !idx[0]) err(t, "expected an index or slice inside '[]'");
        auto g = mk(slice ? Expr::Slice : Expr::Item, t);
        g->a.push_back(std::move(n));
        g->a.push_back(std::move(idx[0]));
        if (slice) {
          g->a.push_back(std::move(idx[1]));
          g->a.push_back(std::move(idx[2]));
        }
        n = fin(std::move(g));
      } else if (is_op("(")) {
        auto c = mk(Expr::Call, t);
        c->line = n->line;  // errors point at the callee, e.g. raise_exception(...)
        c->col = n->col;
        c->a.push_back(std::move(n));
        call_args(*c);
        n = fin(std::move(c));
      } else {
        return n;
      }
    }
  }

  ExprP filters(ExprP n) {
    for (;;) {
      if (is_op("|")) {
        const Tok& t = next();
        auto f = mk(Expr::Filter, t);
        f->name = expect_name("a filter name after '|'");
        while (is_op(".")) {
          next();
          f->name += '.';
          f->name += expect_name("a filter name");
        }
        f->a.push_back(std::move(n));
        if (is_op("(")) call_args(*f);
        if (!known_filter(f->name)) err(t, "no filter named '" + f->name + "'");
        n = fin(std::move(f));
      } else if (is_name("is")) {
        const Tok& t = next();
        auto f = mk(Expr::Test, t);
        if (is_name("not")) {
          next();
          f->negated = true;
        }
        f->name = expect_name("a test name after 'is'");
        f->a.push_back(std::move(n));
        if (is_op("(")) {
          call_args(*f);
        } else if ((cur().t == T::Name || cur().t == T::String || cur().t == T::Int || cur().t == T::Float ||
                    is_op("(") || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) err(cur(), "you cannot chain multiple tests with 'is'");
          f->a.push_back(postfix(primary()));
        }
        if (!known_test(f->name)) err(t, "no test named '" + f->name + "'");
        n = fin(std::move(f));
      } else {
        return n;
      }
    }
  }

  std::vector<Tok> t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

// ============================================================ evaluator

struct Frame;
using FrameP = std::shared_ptr<Frame>;
struct Frame {
  std::vector<std::pair<std::string, Value>> vars;
  FrameP parent;
  const Value* find(std::string_view n) const {
    for (const Frame* f = this; f; f = f->parent.get())
      for (const auto& [k, v] : f->vars)
        if (k == n) return &v;
    return nullptr;
  }
  void set(const std::string& n, Value v) {
    for (auto& [k, old] : vars)
      if (k == n) {
        old = std::move(v);
        return;
      }
    vars.emplace_back(n, std::move(v));
  }
};
FrameP child(const FrameP& parent) {
  auto f = std::make_shared<Frame>();
  f->parent = parent;
  return f;
}

enum class Flow { Normal, Break, Continue };

struct Ctx {
  const Limits& lim;
  std::tm now{};
  uint64_t steps = 0;
  int depth = 0;
  void step(uint64_t n = 1) {
    steps += n;
    if (steps > lim.max_steps)
      fail("template ran more than " + std::to_string(lim.max_steps) +
           " loop iterations / macro calls: refusing to go on (runaway loop or recursion?)");
  }
  void check_size(size_t n, const char* what) const {
    if (n > lim.max_output_bytes)
      fail(std::string(what) + " longer than the limit of " + std::to_string(lim.max_output_bytes) + " bytes");
  }
};

void emit(std::string& out, std::string_view s, Ctx& c) {
  c.check_size(out.size() + s.size(), "rendered output");
  out.append(s);
}

// ---- argument binding

std::vector<std::optional<Value>> bind(Args& a, std::initializer_list<const char*> names, const std::string& fn) {
  std::vector<std::optional<Value>> out(names.size());
  if (a.pos.size() > names.size())
    fail(fn + "() takes at most " + std::to_string(names.size()) + " argument(s), " + std::to_string(a.pos.size()) +
         " given");
  for (size_t i = 0; i < a.pos.size(); ++i) out[i] = a.pos[i];
  for (auto& [k, v] : a.kw) {
    size_t i = 0;
    for (const char* n : names) {
      if (k == n) break;
      ++i;
    }
    if (i == names.size()) fail(fn + "() got an unexpected keyword argument '" + k + "'");
    if (out[i]) fail(fn + "() got multiple values for argument '" + k + "'");
    out[i] = v;
  }
  return out;
}

int64_t want_int(const Value& v, const std::string& what) {
  if (v.is_int() || v.is_bool()) return v.as_int();
  if (v.undef()) undefined_error(v);
  fail(what + ": expected an integer, found " + type_name(v));
}
const std::string& want_str(const Value& v, const std::string& what) {
  if (v.is_str()) return v.str();
  if (v.undef()) undefined_error(v);
  fail(what + ": expected a string, found " + type_name(v));
}

// ---- iteration, attributes, items

ListP iterate(const Value& v) {
  if (v.is_list()) return std::get<ListV>(v.v).items;
  if (v.undef()) return std::make_shared<const List>();
  List out;
  if (v.is_dict()) {
    for (const auto& [k, val] : v.dict().items) out.emplace_back(k);
  } else if (v.is_str()) {
    for (char32_t c : decode(v.str())) {
      std::string s;
      append_utf8(s, c);
      out.emplace_back(std::move(s));
    }
  } else {
    fail("'" + type_name(v) + "' object is not iterable");
  }
  return std::make_shared<const List>(std::move(out));
}

Value make_func(std::string name, std::function<Value(Ctx&, Args&)> fn) {
  return Value(std::make_shared<const Func>(Func{std::move(name), std::move(fn)}));
}

std::vector<std::string> py_split(const std::string& s, const std::optional<Value>& sep_v, int64_t maxsplit,
                                  bool from_right) {
  std::vector<std::string> out;
  if (!sep_v || sep_v->none()) {  // runs of whitespace; leading/trailing ignored
    const std::u32string u = decode(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t i = 0;
    while (i < u.size()) {
      while (i < u.size() && py_isspace(u[i])) ++i;
      if (i >= u.size()) break;
      size_t j = i;
      while (j < u.size() && !py_isspace(u[j])) ++j;
      words.emplace_back(i, j);
      i = j;
    }
    if (maxsplit < 0 || static_cast<size_t>(maxsplit) >= words.size()) {
      for (auto [b, e] : words) out.push_back(encode(std::u32string_view(u).substr(b, e - b)));
      return out;
    }
    // With maxsplit the remainder keeps its inner whitespace (trailing stripped on the split side).
    if (!from_right) {
      for (int64_t k = 0; k < maxsplit; ++k)
        out.push_back(encode(std::u32string_view(u).substr(words[k].first, words[k].second - words[k].first)));
      size_t rb = words[maxsplit].first;
      out.push_back(encode(std::u32string_view(u).substr(rb)));  // the remainder keeps its whitespace
    } else {
      const size_t n = words.size();
      std::vector<std::string> tail;
      for (int64_t k = 0; k < maxsplit; ++k) {
        const auto [b, e] = words[n - 1 - k];
        tail.push_back(encode(std::u32string_view(u).substr(b, e - b)));
      }
      const size_t re = words[n - 1 - maxsplit].second;
      out.push_back(encode(std::u32string_view(u).substr(0, re)));
      out.insert(out.end(), tail.rbegin(), tail.rend());
    }
    return out;
  }
  const std::string& sep = want_str(*sep_v, "split");
  if (sep.empty()) fail("split(): empty separator");
  if (!from_right) {
    size_t pos = 0;
    int64_t n = 0;
    for (;;) {
      const size_t q = s.find(sep, pos);
      if (q == std::string::npos || (maxsplit >= 0 && n >= maxsplit)) break;
      out.push_back(s.substr(pos, q - pos));
      pos = q + sep.size();
      ++n;
    }
    out.push_back(s.substr(pos));
  } else {
    size_t end = s.size();
    int64_t n = 0;
    std::vector<std::string> rev;
    for (;;) {
      if (end < sep.size()) break;
      const size_t q = s.rfind(sep, end - sep.size());
      if (q == std::string::npos || (maxsplit >= 0 && n >= maxsplit)) break;
      rev.push_back(s.substr(q + sep.size(), end - q - sep.size()));
      end = q;
      ++n;
    }
    out.push_back(s.substr(0, end));
    out.insert(out.end(), rev.rbegin(), rev.rend());
  }
  return out;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
  std::vector<std::string> out;
  const std::u32string u = decode(s);
  size_t b = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    if (!py_linebreak(u[i])) continue;
    size_t e = i + 1;
    if (u[i] == '\r' && i + 1 < u.size() && u[i + 1] == '\n') e = i + 2;
    out.push_back(encode(std::u32string_view(u).substr(b, (keepends ? e : i) - b)));
    b = e;
    i = e - 1;
  }
  if (b < u.size()) out.push_back(encode(std::u32string_view(u).substr(b)));
  return out;
}

Value str_list(std::vector<std::string> v) {
  List l;
  l.reserve(v.size());
  for (auto& s : v) l.emplace_back(std::move(s));
  return Value(std::move(l));
}

bool prefix_match(const std::string& s, const Value& p, bool suffix, const char* fn) {
  auto one = [&](const std::string& x) {
    return s.size() >= x.size() &&
           (suffix ? s.compare(s.size() - x.size(), x.size(), x) == 0 : s.compare(0, x.size(), x) == 0);
  };
  if (p.is_list() && p.tuple()) {
    for (const auto& e : p.list())
      if (one(want_str(e, fn))) return true;
    return false;
  }
  if (!p.is_str()) fail(std::string(fn) + " first arg must be str or a tuple of str, not " + type_name(p));
  return one(p.str());
}

std::u32string strip_chars(const std::optional<Value>& v, const char* fn) { return decode(want_str(*v, fn)); }

// Bound methods of str (the ones chat templates use, and their neighbours).
std::optional<Value> str_method(const std::string& self, const std::string& name) {
  using F = std::function<Value(Ctx&, Args&)>;
  F f;
  if (name == "startswith" || name == "endswith") {
    const bool suffix = name == "endswith";
    f = [self, suffix, name](Ctx&, Args& a) {
      auto b = bind(a, {"prefix"}, name);
      if (!b[0]) fail(name + "() takes exactly one argument (0 given)");
      return Value(prefix_match(self, *b[0], suffix, name.c_str()));
    };
  } else if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool l = name != "rstrip", r = name != "lstrip";
    f = [self, l, r, name](Ctx&, Args& a) {
      auto b = bind(a, {"chars"}, name);
      if (b[0] && !b[0]->none()) {
        const std::u32string cs = strip_chars(b[0], name.c_str());
        return Value(py_strip(self, &cs, l, r));
      }
      return Value(py_strip(self, nullptr, l, r));
    };
  } else if (name == "split" || name == "rsplit") {
    const bool right = name == "rsplit";
    f = [self, right, name](Ctx&, Args& a) {
      auto b = bind(a, {"sep", "maxsplit"}, name);
      return str_list(py_split(self, b[0], b[1] ? want_int(*b[1], name) : -1, right));
    };
  } else if (name == "splitlines") {
    f = [self](Ctx&, Args& a) {
      auto b = bind(a, {"keepends"}, "splitlines");
      return str_list(py_splitlines(self, b[0] && truthy(*b[0])));
    };
  } else if (name == "lower" || name == "casefold") {
    f = [self](Ctx&, Args& a) {
      bind(a, {}, "lower");
      return Value(py_lower(self));
    };
  } else if (name == "upper") {
    f = [self](Ctx&, Args& a) {
      bind(a, {}, "upper");
      return Value(py_upper(self));
    };
  } else if (name == "title") {
    f = [self](Ctx&, Args& a) {
      bind(a, {}, "title");
      return Value(py_title(self));
    };
  } else if (name == "capitalize") {
    f = [self](Ctx&, Args& a) {
      bind(a, {}, "capitalize");
      return Value(py_capitalize(self));
    };
  } else if (name == "replace") {
    f = [self](Ctx& c, Args& a) {
      auto b = bind(a, {"old", "new", "count"}, "replace");
      if (!b[0] || !b[1]) fail("replace() expected at least 2 arguments");
      return Value(py_replace(self, want_str(*b[0], "replace"), want_str(*b[1], "replace"),
                              b[2] ? want_int(*b[2], "replace") : -1, c.lim.max_output_bytes));
    };
  } else if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    f = [self, name](Ctx&, Args& a) {
      auto b = bind(a, {"sub"}, name);
      if (!b[0]) fail(name + "() takes at least 1 argument (0 given)");
      const std::string& sub = want_str(*b[0], name);
      if (name == "count") {
        if (sub.empty()) return Value(static_cast<int64_t>(cp_count(self) + 1));
        int64_t n = 0;
        for (size_t p = self.find(sub); p != std::string::npos; p = self.find(sub, p + sub.size())) ++n;
        return Value(n);
      }
      const size_t p = name[0] == 'r' ? self.rfind(sub) : self.find(sub);
      if (p == std::string::npos) {
        if (name.find("index") != std::string::npos) fail("substring not found");
        return Value(int64_t{-1});
      }
      return Value(static_cast<int64_t>(cp_count(std::string_view(self).substr(0, p))));
    };
  } else if (name == "join") {
    f = [self](Ctx& c, Args& a) {
      auto b = bind(a, {"iterable"}, "join");
      if (!b[0]) fail("join() takes exactly one argument (0 given)");
      std::string out;
      const ListP items = iterate(*b[0]);
      for (size_t i = 0; i < items->size(); ++i) {
        if (i) out += self;
        out += want_str((*items)[i], "join");
        c.check_size(out.size(), "join() result");
      }
      return Value(std::move(out));
    };
  } else if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "islower" ||
             name == "isupper") {
    f = [self, name](Ctx&, Args& a) {
      bind(a, {}, name);
      const std::u32string u = decode(self);
      if (u.empty()) return Value(false);
      if (name == "isspace") return Value(std::all_of(u.begin(), u.end(), py_isspace));
      if (name == "islower" || name == "isupper") {
        bool cased = false;
        for (char32_t ch : u) {
          if (ch < 128 && ascii_alpha(static_cast<char>(ch))) {
            cased = true;
            if ((name == "islower") != (ch >= 'a' && ch <= 'z')) return Value(false);
          }
        }
        return Value(cased);
      }
      for (char32_t ch : u) {
        const bool digit = ch >= '0' && ch <= '9';
        const bool alpha = ch < 128 ? ascii_alpha(static_cast<char>(ch)) : ch >= 0xc0;
        if (name == "isdigit" ? !digit : name == "isalpha" ? !alpha : !(digit || alpha)) return Value(false);
      }
      return Value(true);
    };
  } else {
    return std::nullopt;
  }
  return make_func("str." + name, std::move(f));
}

std::optional<Value> dict_method(const Value& self, const std::string& name) {
  std::function<Value(Ctx&, Args&)> f;
  if (name == "items" || name == "keys" || name == "values") {
    f = [self, name](Ctx&, Args& a) {
      bind(a, {}, name);
      List out;
      for (const auto& [k, v] : self.dict().items) {
        if (name == "items")
          out.emplace_back(List{Value(k), v}, true);
        else
          out.push_back(name == "keys" ? Value(k) : v);
      }
      return Value(std::move(out));
    };
  } else if (name == "get") {
    f = [self](Ctx&, Args& a) {
      auto b = bind(a, {"key", "default"}, "get");
      if (!b[0]) fail("get() expected at least 1 argument, got 0");
      if (b[0]->is_str())
        if (const Value* v = self.dict().find(b[0]->str())) return *v;
      return b[1] ? *b[1] : Value(nullptr);
    };
  } else if (name == "pop" || name == "popitem" || name == "setdefault" || name == "update" || name == "clear" ||
             name == "copy" || name == "fromkeys") {
    f = [name](Ctx&, Args&) -> Value { fail("access to attribute '" + name + "' of 'dict' object is unsafe"); };
  } else {
    return std::nullopt;
  }
  return make_func("dict." + name, std::move(f));
}

std::optional<Value> list_method(const Value& self, const std::string& name) {
  if (name == "index" || name == "count") {
    return make_func("list." + name, [self, name](Ctx&, Args& a) {
      auto b = bind(a, {"value"}, name);
      if (!b[0]) fail(name + "() takes exactly one argument (0 given)");
      int64_t n = 0, i = 0;
      for (const auto& e : self.list()) {
        if (equals(e, *b[0])) {
          if (name == "index") return Value(i);
          ++n;
        }
        ++i;
      }
      if (name == "index") fail(py_repr(*b[0]) + " is not in list");
      return Value(n);
    });
  }
  if (name == "append" || name == "extend" || name == "insert" || name == "pop" || name == "remove" ||
      name == "clear" || name == "sort" || name == "reverse") {
    return make_func("list." + name, [name](Ctx&, Args&) -> Value {
      fail("access to attribute '" + name + "' of 'list' object is unsafe (templates cannot modify lists)");
    });
  }
  return std::nullopt;
}

// obj.name: Python attribute first, then item (jinja2 Environment.getattr).
Value get_attr(const Value& obj, const std::string& name) {
  if (obj.undef()) undefined_error(obj);
  if (obj.is_dict()) {
    if (auto m = dict_method(obj, name)) return *m;
    if (const Value* v = obj.dict().find(name)) return *v;
    return undefined("'dict object' has no attribute '" + name + "'");
  }
  if (obj.is_ns()) {
    if (const Value* v = std::get<NsP>(obj.v)->attrs.find(name)) return *v;
    return undefined("'Namespace object' has no attribute '" + name + "'");
  }
  if (obj.is_str())
    if (auto m = str_method(obj.str(), name)) return *m;
  if (obj.is_list())
    if (auto m = list_method(obj, name)) return *m;
  return undefined("'" + type_name(obj) + " object' has no attribute '" + name + "'");
}

// obj[key]: item first, then attribute for string keys (jinja2 Environment.getitem).
Value get_item(const Value& obj, const Value& key) {
  if (obj.undef()) undefined_error(obj);
  if (obj.is_dict()) {
    if (key.is_str()) {
      if (const Value* v = obj.dict().find(key.str())) return *v;
      if (auto m = dict_method(obj, key.str())) return *m;
      return undefined("'dict object' has no attribute '" + key.str() + "'");
    }
    return undefined("'dict object' has no attribute " + py_repr(key));
  }
  if ((obj.is_list() || obj.is_str()) && (key.is_int() || key.is_bool())) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      const List& l = obj.list();
      const auto n = static_cast<int64_t>(l.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n)
        return undefined(type_name(obj) + " index " + std::to_string(key.as_int()) + " out of range");
      return l[static_cast<size_t>(i)];
    }
    const std::u32string u = decode(obj.str());
    const auto n = static_cast<int64_t>(u.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return undefined("string index " + std::to_string(key.as_int()) + " out of range");
    return Value(encode(std::u32string_view(u).substr(static_cast<size_t>(i), 1)));
  }
  if (key.is_str()) return get_attr(obj, key.str());
  return undefined("'" + type_name(obj) + " object' has no item " + py_repr(key));
}

std::vector<size_t> slice_indices(size_t len, const Value& start, const Value& stop, const Value& step) {
  auto opt = [](const Value& v) -> std::optional<int64_t> {
    if (v.undef() || v.none()) return std::nullopt;
    return want_int(v, "slice index");
  };
  const auto n = static_cast<int64_t>(len);
  const int64_t st = opt(step).value_or(1);
  if (st == 0) fail("slice step cannot be zero");
  int64_t b, e;
  auto clamp = [&](std::optional<int64_t> v, int64_t def, int64_t lo, int64_t hi) {
    if (!v) return def;
    int64_t x = *v;
    if (x < 0) x += n;
    return std::clamp(x, lo, hi);
  };
  if (st > 0) {
    b = clamp(opt(start), 0, 0, n);
    e = clamp(opt(stop), n, 0, n);
  } else {
    b = clamp(opt(start), n - 1, -1, n - 1);
    e = clamp(opt(stop), -1, -1, n - 1);
  }
  std::vector<size_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(static_cast<size_t>(i));
  return idx;
}

Value do_slice(const Value& obj, const Value& a, const Value& b, const Value& s) {
  if (obj.undef()) undefined_error(obj);
  if (obj.is_list()) {
    List out;
    for (size_t i : slice_indices(obj.list().size(), a, b, s)) out.push_back(obj.list()[i]);
    return Value(std::move(out), obj.tuple());
  }
  if (obj.is_str()) {
    const std::u32string u = decode(obj.str());
    std::u32string out;
    for (size_t i : slice_indices(u.size(), a, b, s)) out.push_back(u[i]);
    return Value(encode(out));
  }
  return undefined("'" + type_name(obj) + "' object is not subscriptable");
}

bool contains(const Value& container, const Value& item) {
  if (container.undef()) return false;
  if (container.is_str()) {
    if (!item.is_str()) fail("'in <string>' requires string as left operand, not " + type_name(item));
    return container.str().find(item.str()) != std::string::npos;
  }
  if (container.is_list()) {
    for (const auto& e : container.list())
      if (equals(e, item)) return true;
    return false;
  }
  if (container.is_dict()) return item.is_str() && container.dict().find(item.str()) != nullptr;
  fail("argument of type '" + type_name(container) + "' is not iterable");
}

int64_t checked(bool (*op)(int64_t, int64_t, int64_t*), int64_t x, int64_t y) {
  int64_t r = 0;
  if (op(x, y, &r)) fail("integer overflow (kvrun templates use 64-bit integers)");
  return r;
}
bool add_ov(int64_t x, int64_t y, int64_t* r) { return __builtin_add_overflow(x, y, r); }
bool sub_ov(int64_t x, int64_t y, int64_t* r) { return __builtin_sub_overflow(x, y, r); }
bool mul_ov(int64_t x, int64_t y, int64_t* r) { return __builtin_mul_overflow(x, y, r); }

Value binop(const std::string& op, const Value& l, const Value& r, Ctx& c) {
  if (op == "~") {
    std::string s = py_str(l) + py_str(r);
    c.check_size(s.size(), "string");
    return Value(std::move(s));
  }
  if (l.undef()) undefined_error(l);
  if (r.undef()) undefined_error(r);
  auto type_err = [&]() -> Value {
    fail("unsupported operand type(s) for " + op + ": '" + type_name(l) + "' and '" + type_name(r) + "'");
  };
  const bool ints = (l.is_int() || l.is_bool()) && (r.is_int() || r.is_bool());
  const bool nums = l.is_num() && r.is_num();
  if (op == "+") {
    if (ints) return Value(checked(add_ov, l.as_int(), r.as_int()));
    if (nums) return Value(l.as_float() + r.as_float());
    if (l.is_str() && r.is_str()) {
      c.check_size(l.str().size() + r.str().size(), "string");
      return Value(l.str() + r.str());
    }
    if (l.is_list() && r.is_list() && l.tuple() == r.tuple()) {
      c.check_size(l.list().size() + r.list().size(), "list");
      List out = l.list();
      out.insert(out.end(), r.list().begin(), r.list().end());
      return Value(std::move(out), l.tuple());
    }
    return type_err();
  }
  if (op == "-") {
    if (ints) return Value(checked(sub_ov, l.as_int(), r.as_int()));
    if (nums) return Value(l.as_float() - r.as_float());
    return type_err();
  }
  if (op == "*") {
    if (ints) return Value(checked(mul_ov, l.as_int(), r.as_int()));
    if (nums) return Value(l.as_float() * r.as_float());
    const Value* seq = (l.is_str() || l.is_list()) ? &l : (r.is_str() || r.is_list()) ? &r : nullptr;
    const Value* cnt = seq == &l ? &r : &l;
    if (seq && (cnt->is_int() || cnt->is_bool())) {
      const int64_t n = std::max<int64_t>(0, cnt->as_int());
      const size_t unit = seq->is_str() ? seq->str().size() : seq->list().size();
      if (unit && static_cast<uint64_t>(n) > c.lim.max_output_bytes / unit)
        c.check_size(c.lim.max_output_bytes + 1, "repeated sequence");
      if (seq->is_str()) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq->str();
        return Value(std::move(out));
      }
      List out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq->list().begin(), seq->list().end());
      return Value(std::move(out), seq->tuple());
    }
    return type_err();
  }
  if (op == "/") {
    if (!nums) return type_err();
    if (r.as_float() == 0.0) fail("division by zero");
    return Value(l.as_float() / r.as_float());
  }
  if (op == "//" || op == "%") {
    if (!nums) {
      if (op == "%" && l.is_str()) fail("printf-style string formatting ('%' on a string) is not supported");
      return type_err();
    }
    if (ints) {
      const int64_t a = l.as_int(), b = r.as_int();
      if (b == 0) fail(op == "%" ? "integer modulo by zero" : "integer division or modulo by zero");
      if (a == std::numeric_limits<int64_t>::min() && b == -1)
        fail("integer overflow (kvrun templates use 64-bit integers)");
      int64_t q = a / b, m = a % b;
      if (m != 0 && ((m < 0) != (b < 0))) --q, m += b;
      return Value(op == "//" ? q : m);
    }
    const double a = l.as_float(), b = r.as_float();
    if (b == 0.0) fail("float division by zero");
    if (op == "//") return Value(std::floor(a / b));
    double m = std::fmod(a, b);
    if (m != 0 && ((m < 0) != (b < 0))) m += b;
    return Value(m);
  }
  if (op == "**") {
    if (ints && r.as_int() >= 0) {
      int64_t base = l.as_int(), e = r.as_int(), acc = 1;
      while (e > 0) {
        if (e & 1) acc = checked(mul_ov, acc, base);
        e >>= 1;
        if (e) base = checked(mul_ov, base, base);
      }
      return Value(acc);
    }
    if (nums) return Value(std::pow(l.as_float(), r.as_float()));
    return type_err();
  }
  return type_err();
}

// ---- tests (jinja2 tests.py)

const char* const kTests[] = {"defined",  "undefined", "none",    "boolean", "false",    "true",        "integer",
                              "float",    "number",    "string",  "mapping", "iterable", "sequence",    "callable",
                              "sameas",   "eq",        "equalto", "==",      "ne",       "!=",          "lt",
                              "lessthan", "<",         "le",      "<=",      "gt",       "greaterthan", ">",
                              "ge",       ">=",        "in",      "odd",     "even",     "divisibleby", "lower",
                              "upper",    "escaped",   "filter",  "test"};

bool run_test(const std::string& name, const Value& v, Args& a) {
  auto arg = [&](const char* what) -> const Value& {
    if (a.pos.empty()) fail("test '" + name + "' needs " + what);
    return a.pos[0];
  };
  if (name == "defined") return !v.undef();
  if (name == "undefined") return v.undef();
  if (name == "none") return v.none();
  if (name == "boolean") return v.is_bool();
  if (name == "false") return v.is_bool() && !std::get<bool>(v.v);
  if (name == "true") return v.is_bool() && std::get<bool>(v.v);
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_num();
  if (name == "string") return v.is_str();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.undef() || v.is_str() || v.is_list() || v.is_dict();
  if (name == "sequence") return v.is_str() || v.is_list() || v.is_dict();
  if (name == "callable") return v.is_func();
  if (name == "sameas") {
    const Value& o = arg("a value to compare with");
    if (v.v.index() != o.v.index()) return false;
    if (v.none() || v.is_bool() || v.undef()) return equals(v, o) && !v.undef();
    return equals(v, o) && (v.is_int() || v.is_str());  // small ints / interned strings: best effort
  }
  if (name == "eq" || name == "equalto" || name == "==") return equals(v, arg("a value to compare with"));
  if (name == "ne" || name == "!=") return !equals(v, arg("a value to compare with"));
  if (name == "lt" || name == "lessthan" || name == "<") return compare(v, arg("a value"), "<") < 0;
  if (name == "le" || name == "<=") return compare(v, arg("a value"), "<=") <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return compare(v, arg("a value"), ">") > 0;
  if (name == "ge" || name == ">=") return compare(v, arg("a value"), ">=") >= 0;
  if (name == "in") return contains(arg("a container"), v);
  if (name == "odd" || name == "even") {
    const int64_t i = want_int(v, "test '" + name + "'");
    return ((i % 2) != 0) == (name == "odd");
  }
  if (name == "divisibleby") {
    const int64_t d = want_int(arg("a divisor"), "divisibleby");
    if (d == 0) fail("integer division or modulo by zero");
    return want_int(v, "divisibleby") % d == 0;
  }
  if (name == "lower") return py_lower(py_str(v)) == py_str(v);
  if (name == "upper") return py_upper(py_str(v)) == py_str(v);
  if (name == "escaped") return false;
  if (name == "filter") return v.is_str() && known_filter(v.str());
  if (name == "test") return v.is_str() && known_test(v.str());
  fail("no test named '" + name + "'");
}

bool known_test(const std::string& n) {
  return std::find_if(std::begin(kTests), std::end(kTests), [&](const char* t) { return n == t; }) != std::end(kTests);
}

// ---- filters (jinja2 filters.py, tojson from transformers)

const char* const kFilters[] = {
    "abs",   "attr",   "capitalize", "count",      "d",       "default", "dictsort", "e",     "escape",   "first",
    "float", "indent", "int",        "items",      "join",    "last",    "length",   "list",  "lower",    "map",
    "max",   "min",    "reject",     "rejectattr", "replace", "reverse", "round",    "safe",  "select",   "selectattr",
    "sort",  "string", "sum",        "title",      "tojson",  "trim",    "unique",   "upper", "wordcount"};

bool known_filter(const std::string& n) {
  return std::find_if(std::begin(kFilters), std::end(kFilters), [&](const char* t) { return n == t; }) !=
         std::end(kFilters);
}

Value run_filter(const std::string& name, const Value& v, Args& a, Ctx& c);

// attribute="a.b.0" as jinja2's make_attrgetter reads it (item access per part).
Value attr_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t b = 0;
  for (;;) {
    const size_t e = path.find('.', b);
    const std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    const bool digits =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    int64_t idx = 0;
    const bool as_int = digits && std::from_chars(part.data(), part.data() + part.size(), idx).ec == std::errc();
    cur = as_int ? get_item(cur, Value(idx)) : get_item(cur, Value(part));
    if (e == std::string::npos) return cur;
    b = e + 1;
  }
}

// Sort key: case-insensitive unless asked (jinja2 ignore_case).
Value sort_key(const Value& v, bool case_sensitive) {
  return !case_sensitive && v.is_str() ? Value(py_lower(v.str())) : v;
}

Value select_like(const std::string& name, const Value& v, Args& a, Ctx& c) {
  const bool attr = name == "selectattr" || name == "rejectattr";
  const bool keep_if = name == "select" || name == "selectattr";
  std::string attr_name, test;
  size_t next = 0;
  if (attr) {
    if (a.pos.empty()) fail(name + "() needs an attribute name");
    attr_name = want_str(a.pos[0], name);
    next = 1;
  }
  if (a.pos.size() > next) test = want_str(a.pos[next], name), ++next;
  Args targs;
  targs.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(std::min(next, a.pos.size())), a.pos.end());
  if (!test.empty() && !known_test(test)) fail("no test named '" + test + "'");
  List out;
  const ListP items = iterate(v);
  for (const auto& item : *items) {
    c.step();
    const Value x = attr ? attr_path(item, attr_name) : item;
    const bool ok = test.empty() ? truthy(x) : run_test(test, x, targs);
    if (ok == keep_if) out.push_back(item);
  }
  return Value(std::move(out));
}

std::string py_indent(const std::string& text, const Value& width, bool first, bool blank) {
  const int64_t w = width.is_str() ? 0 : want_int(width, "indent");
  if (w > 4096) fail("indent(): width " + std::to_string(w) + " is larger than 4096");
  const std::string ind = width.is_str() ? width.str() : std::string(static_cast<size_t>(std::max<int64_t>(0, w)), ' ');
  const std::string s = text + "\n";
  std::vector<std::string> lines = py_splitlines(s, false);
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
  } else {
    rv = lines.empty() ? "" : lines[0];
    if (lines.size() > 1) {
      rv += "\n";
      for (size_t i = 1; i < lines.size(); ++i) rv += (i > 1 ? "\n" : "") + (lines[i].empty() ? "" : ind) + lines[i];
    }
  }
  return first ? ind + rv : rv;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

Value run_filter(const std::string& name, const Value& v, Args& a, Ctx& c) {
  if (name == "default" || name == "d") {
    auto b = bind(a, {"default_value", "boolean"}, name);
    const bool boolean = b[1] && truthy(*b[1]);
    if (v.undef() || (boolean && !truthy(v))) return b[0] ? *b[0] : Value(std::string());
    return v;
  }
  if (name == "tojson") {  // transformers: json.dumps(x, ensure_ascii=False, indent, separators, sort_keys)
    auto b = bind(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, "tojson");
    JsonOpts o;
    o.ensure_ascii = b[0] && truthy(*b[0]);
    if (b[1] && !b[1]->none()) {
      if (b[1]->is_str())
        o.indent = b[1]->str();
      else {
        const int64_t w = want_int(*b[1], "tojson indent");
        if (w > 4096) fail("tojson: indent " + std::to_string(w) + " is larger than 4096");
        o.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, w)), ' ');
      }
      o.item_sep = ",";
    }
    if (b[2] && !b[2]->none()) {
      if (!b[2]->is_list() || b[2]->list().size() != 2) fail("tojson separators: expected a (item, key) pair");
      o.item_sep = want_str(b[2]->list()[0], "tojson separators");
      o.key_sep = want_str(b[2]->list()[1], "tojson separators");
    }
    o.sort_keys = b[3] && truthy(*b[3]);
    std::string out;
    py_json(out, v, o, 0, c.lim.max_output_bytes);
    return Value(std::move(out));
  }
  if (name == "map") {
    List out;
    const ListP items = iterate(v);
    const Value* attr = nullptr;
    const Value* def = nullptr;
    for (const auto& [k, val] : a.kw) {
      if (k == "attribute")
        attr = &val;
      else if (k == "default")
        def = &val;
      else if (a.pos.empty())
        fail("map() got an unexpected keyword argument '" + k + "'");
    }
    if (attr) {
      const std::string path = want_str(*attr, "map attribute");
      for (const auto& item : *items) {
        c.step();
        Value x = attr_path(item, path);
        out.push_back(x.undef() && def ? *def : x);
      }
      return Value(std::move(out));
    }
    if (a.pos.empty()) fail("map() needs a filter name or attribute=");
    const std::string f = want_str(a.pos[0], "map");
    if (!known_filter(f)) fail("no filter named '" + f + "'");
    Args fa;
    fa.pos.assign(a.pos.begin() + 1, a.pos.end());
    fa.kw = a.kw;
    for (const auto& item : *items) {
      c.step();
      Args copy = fa;
      out.push_back(run_filter(f, item, copy, c));
    }
    return Value(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr")
    return select_like(name, v, a, c);
  if (name == "attr") {
    auto b = bind(a, {"name"}, "attr");
    if (!b[0]) fail("attr() needs an attribute name");
    return get_attr(v, want_str(*b[0], "attr"));
  }
  if (name == "safe") {
    bind(a, {}, name);
    return v.is_str() ? v : Value(py_str(v));
  }
  if (name == "items") {
    bind(a, {}, name);
    if (v.undef()) return Value(List{});
    if (!v.is_dict()) fail("items filter: can only get item pairs from a mapping, found " + type_name(v));
    List out;
    for (const auto& [k, val] : v.dict().items) out.emplace_back(List{Value(k), val}, true);
    return Value(std::move(out));
  }
  if (name == "length" || name == "count") {
    bind(a, {}, name);
    if (v.undef()) return Value(int64_t{0});
    if (v.is_str()) return Value(static_cast<int64_t>(cp_count(v.str())));
    if (v.is_list()) return Value(static_cast<int64_t>(v.list().size()));
    if (v.is_dict()) return Value(static_cast<int64_t>(v.dict().items.size()));
    fail("object of type '" + type_name(v) + "' has no len()");
  }
  if (name == "first" || name == "last") {
    bind(a, {}, name);
    const ListP items = iterate(v);
    if (items->empty()) return undefined(std::string("no ") + name + " item, sequence was empty");
    return name == "first" ? items->front() : items->back();
  }
  if (name == "list") {
    bind(a, {}, name);
    return Value(List(*iterate(v)));
  }
  if (name == "reverse") {
    bind(a, {}, name);
    if (v.is_str()) {
      std::u32string u = decode(v.str());
      std::reverse(u.begin(), u.end());
      return Value(encode(u));
    }
    List l = *iterate(v);
    std::reverse(l.begin(), l.end());
    return Value(std::move(l));
  }
  if (name == "sort" || name == "unique" || name == "min" || name == "max") {
    auto b = name == "sort" ? bind(a, {"reverse", "case_sensitive", "attribute"}, name)
                            : bind(a, {"case_sensitive", "attribute"}, name);
    if (name != "sort") b.insert(b.begin(), std::nullopt);
    const bool rev = b[0] && truthy(*b[0]);
    const bool cs = b[1] && truthy(*b[1]);
    std::optional<std::string> attr;
    if (b[2] && !b[2]->none()) attr = want_str(*b[2], name + " attribute");
    auto key = [&](const Value& x) { return sort_key(attr ? attr_path(x, *attr) : x, cs); };
    List l = *iterate(v);
    c.step(l.size());
    if (name == "unique") {
      List out, seen;
      for (const auto& x : l) {
        const Value k = key(x);
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, k); })) {
          seen.push_back(k);
          out.push_back(x);
        }
      }
      return Value(std::move(out));
    }
    if (name == "min" || name == "max") {
      if (l.empty()) return undefined("no " + name + " item, sequence was empty");
      size_t best = 0;
      for (size_t i = 1; i < l.size(); ++i) {
        const int cmp = compare(key(l[i]), key(l[best]), "<");
        if (name == "min" ? cmp < 0 : cmp > 0) best = i;
      }
      return l[best];
    }
    std::stable_sort(l.begin(), l.end(), [&](const Value& x, const Value& y) {
      return rev ? compare(key(y), key(x), "<") < 0 : compare(key(x), key(y), "<") < 0;
    });
    return Value(std::move(l));
  }
  if (name == "dictsort") {
    auto b = bind(a, {"case_sensitive", "by", "reverse"}, name);
    if (!v.is_dict()) fail("dictsort: expected a mapping, found " + type_name(v));
    const bool cs = b[0] && truthy(*b[0]);
    const bool by_value = b[1] && b[1]->is_str() && b[1]->str() == "value";
    const bool rev = b[2] && truthy(*b[2]);
    List l;
    for (const auto& [k, val] : v.dict().items) l.emplace_back(List{Value(k), val}, true);
    std::stable_sort(l.begin(), l.end(), [&](const Value& x, const Value& y) {
      const Value& kx = x.list()[by_value ? 1 : 0];
      const Value& ky = y.list()[by_value ? 1 : 0];
      return rev ? compare(sort_key(ky, cs), sort_key(kx, cs), "<") < 0
                 : compare(sort_key(kx, cs), sort_key(ky, cs), "<") < 0;
    });
    return Value(std::move(l));
  }
  if (name == "sum") {
    auto b = bind(a, {"attribute", "start"}, name);
    Value acc = b[1] ? *b[1] : Value(int64_t{0});
    for (const auto& x : *iterate(v)) acc = binop("+", acc, b[0] ? attr_path(x, want_str(*b[0], "sum")) : x, c);
    return acc;
  }
  if (name == "join") {
    auto b = bind(a, {"d", "attribute"}, name);
    const std::string sep = b[0] ? py_str(*b[0]) : "";
    std::string out;
    bool first = true;
    for (const auto& x : *iterate(v)) {
      if (!first) out += sep;
      first = false;
      out += py_str(b[1] && !b[1]->none() ? attr_path(x, py_str(*b[1])) : x);
      c.check_size(out.size(), "join result");
    }
    return Value(std::move(out));
  }
  if (name == "int") {
    auto b = bind(a, {"default", "base"}, name);
    const Value def = b[0] ? *b[0] : Value(int64_t{0});
    if (v.is_int() || v.is_bool()) return Value(v.as_int());
    if (v.is_float()) {
      const double d = std::trunc(std::get<double>(v.v));
      if (!(std::fabs(d) < 9.2e18)) return def;
      return Value(static_cast<int64_t>(d));
    }
    if (v.is_str()) {
      const std::string s = py_strip(v.str(), nullptr, true, true);
      int64_t i = 0;
      const int base = b[1] ? static_cast<int>(want_int(*b[1], "int base")) : 10;
      const char* beg = s.data() + (!s.empty() && s[0] == '+');
      const auto r = std::from_chars(beg, s.data() + s.size(), i, base);
      if (r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty()) return Value(i);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size() && std::fabs(d) < 9.2e18)
        return Value(static_cast<int64_t>(std::trunc(d)));
    }
    return def;
  }
  if (name == "float") {
    auto b = bind(a, {"default"}, name);
    const Value def = b[0] ? *b[0] : Value(0.0);
    if (v.is_num()) return Value(v.as_float());
    if (v.is_str()) {
      const std::string s = py_strip(v.str(), nullptr, true, true);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size()) return Value(d);
    }
    return def;
  }
  if (name == "abs") {
    bind(a, {}, name);
    if (v.is_int() || v.is_bool()) {
      if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("integer overflow");
      return Value(std::abs(v.as_int()));
    }
    if (v.is_float()) return Value(std::fabs(std::get<double>(v.v)));
    fail("bad operand type for abs(): '" + type_name(v) + "'");
  }
  if (name == "round") {
    auto b = bind(a, {"precision", "method"}, name);
    const int64_t prec = b[0] ? want_int(*b[0], "round precision") : 0;
    const std::string method = b[1] ? want_str(*b[1], "round method") : "common";
    if (!v.is_num()) fail("round: expected a number, found " + type_name(v));
    const double scale = std::pow(10.0, static_cast<double>(prec));
    const double x = v.as_float() * scale;
    double r = method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x) : std::nearbyint(x);
    if (method != "common" && method != "ceil" && method != "floor")
      fail("round: method must be common, ceil or floor");
    return Value(r / scale);
  }
  if (name == "indent") {
    auto b = bind(a, {"width", "first", "blank"}, name);
    return Value(py_indent(py_str(v), b[0] ? *b[0] : Value(int64_t{4}), b[1] && truthy(*b[1]), b[2] && truthy(*b[2])));
  }
  if (name == "wordcount") {
    bind(a, {}, name);
    return Value(static_cast<int64_t>(py_split(py_str(v), std::nullopt, -1, false).size()));
  }
  // The string filters below all work on str(value).
  const std::string s = py_str(v);
  if (name == "trim") {
    auto b = bind(a, {"chars"}, name);
    if (b[0] && !b[0]->none()) {
      const std::u32string cs = decode(want_str(*b[0], "trim chars"));
      return Value(py_strip(s, &cs, true, true));
    }
    return Value(py_strip(s, nullptr, true, true));
  }
  if (name == "string") return bind(a, {}, name), Value(s);
  if (name == "lower") return bind(a, {}, name), Value(py_lower(s));
  if (name == "upper") return bind(a, {}, name), Value(py_upper(s));
  if (name == "capitalize") return bind(a, {}, name), Value(py_capitalize(s));
  if (name == "escape" || name == "e") return bind(a, {}, name), Value(html_escape(s));
  if (name == "title") {  // jinja2: words split at whitespace and -({[<
    bind(a, {}, name);
    std::string out;
    bool start = true;
    for (char32_t ch : decode(s)) {
      const bool sepc = py_isspace(ch) || ch == '-' || ch == '(' || ch == '{' || ch == '[' || ch == '<';
      if (sepc) {
        append_utf8(out, ch);
        start = true;
        continue;
      }
      const char a8 = ch < 128 ? static_cast<char>(ch) : 0;
      if (a8)
        out += start ? ascii_upper(a8) : ascii_lower(a8);
      else
        append_utf8(out, ch);
      start = false;
    }
    return Value(std::move(out));
  }
  if (name == "replace") {
    auto b = bind(a, {"old", "new", "count"}, name);
    if (!b[0] || !b[1]) fail("replace filter needs old and new strings");
    return Value(py_replace(s, py_str(*b[0]), py_str(*b[1]),
                            b[2] && !b[2]->none() ? want_int(*b[2], "replace count") : -1, c.lim.max_output_bytes));
  }
  fail("no filter named '" + name + "'");
}

// ---- globals

struct RaisedError {
  std::string msg;
};

std::optional<Value> global(const std::string& name) {
  if (name == "range") {
    static const Value f = make_func("range", [](Ctx& c, Args& a) {
      if (!a.kw.empty()) fail("range() takes no keyword arguments");
      if (a.pos.empty() || a.pos.size() > 3)
        fail("range() expected 1 to 3 arguments, got " + std::to_string(a.pos.size()));
      int64_t start = 0, stop, step = 1;
      if (a.pos.size() == 1) {
        stop = want_int(a.pos[0], "range");
      } else {
        start = want_int(a.pos[0], "range");
        stop = want_int(a.pos[1], "range");
        if (a.pos.size() == 3) step = want_int(a.pos[2], "range");
      }
      if (step == 0) fail("range() arg 3 must not be zero");
      const long double n = step > 0
                                ? std::ceil((static_cast<long double>(stop) - start) / step)
                                : std::ceil((static_cast<long double>(start) - stop) / -static_cast<long double>(step));
      constexpr int64_t kMaxRange = 1'000'000;
      if (n > kMaxRange)
        fail("range() of more than " + std::to_string(kMaxRange) + " items is not supported (asked for " +
             std::to_string(static_cast<long long>(n)) + ")");
      List out;
      for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) out.emplace_back(start + i * step);
      c.step(out.size() / 16);
      return Value(std::move(out));
    });
    return f;
  }
  if (name == "namespace") {  // transformers' TemplateNamespace: no underscore-prefixed names
    static const Value f = make_func("namespace", [](Ctx&, Args& a) {
      auto ns = std::make_shared<Namespace>();
      for (const auto& p : a.pos) {
        if (!p.is_dict()) fail("namespace() positional argument must be a mapping, found " + type_name(p));
        for (const auto& [k, v] : p.dict().items) ns->set(k, v);
      }
      for (const auto& [k, v] : a.kw) ns->set(k, v);
      for (const auto& [k, v] : ns->attrs.items)
        if (!k.empty() && k[0] == '_')
          fail("chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + k + "'");
      return Value(ns);
    });
    return f;
  }
  if (name == "dict") {
    static const Value f = make_func("dict", [](Ctx&, Args& a) {
      auto d = std::make_shared<Dict>();
      for (const auto& p : a.pos) {
        if (!p.is_dict()) fail("dict() positional argument must be a mapping, found " + type_name(p));
        for (const auto& [k, v] : p.dict().items) d->set(k, v);
      }
      for (const auto& [k, v] : a.kw) d->set(k, v);
      return Value(DictP(std::move(d)));
    });
    return f;
  }
  if (name == "raise_exception") {
    static const Value f = make_func("raise_exception", [](Ctx&, Args& a) -> Value {
      throw RaisedError{a.pos.empty() ? std::string() : py_str(a.pos[0])};
    });
    return f;
  }
  if (name == "strftime_now") {
    static const Value f = make_func("strftime_now", [](Ctx& c, Args& a) {
      auto b = bind(a, {"format"}, "strftime_now");
      if (!b[0]) fail("strftime_now() needs a format string");
      const std::string& fmt = want_str(*b[0], "strftime_now");
      if (fmt.size() > 256) fail("strftime_now(): format longer than 256 bytes");
      if (fmt.empty()) return Value(std::string());
      std::string buf(1024, '\0');
      const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &c.now);
      buf.resize(n);
      return Value(std::move(buf));
    });
    return f;
  }
  return std::nullopt;
}

Value call(const Value& f, Args& a, Ctx& c) {
  if (f.is_func()) return std::get<FuncP>(f.v)->fn(c, a);
  if (f.undef()) undefined_error(f);
  fail("'" + type_name(f) + "' object is not callable");
}

// ---- expressions and statements

Value eval(const Expr& e, Ctx& c, const FrameP& f);
Flow exec(const Body& body, Ctx& c, const FrameP& f, std::string& out);

Args eval_args(const Expr& e, size_t first, Ctx& c, const FrameP& f) {
  Args a;
  for (size_t i = first; i < e.a.size(); ++i) a.pos.push_back(eval(*e.a[i], c, f));
  for (const auto& [k, x] : e.kw) a.kw.emplace_back(k, eval(*x, c, f));
  return a;
}

Value eval_inner(const Expr& e, Ctx& c, const FrameP& f) {
  switch (e.k) {
    case Expr::Const:
      return e.cval;
    case Expr::Name: {
      if (const Value* v = f->find(e.name)) return *v;
      if (auto g = global(e.name)) return *g;
      return undefined("'" + e.name + "' is undefined");
    }
    case Expr::Attr:
      return get_attr(eval(*e.a[0], c, f), e.name);
    case Expr::Item:
      return get_item(eval(*e.a[0], c, f), eval(*e.a[1], c, f));
    case Expr::Slice: {
      const Value obj = eval(*e.a[0], c, f);
      auto part = [&](size_t i) { return e.a[i] ? eval(*e.a[i], c, f) : Value(nullptr); };
      return do_slice(obj, part(1), part(2), part(3));
    }
    case Expr::Call: {
      const Value fn = eval(*e.a[0], c, f);
      Args a = eval_args(e, 1, c, f);
      return call(fn, a, c);
    }
    case Expr::Filter: {
      const Value v = eval(*e.a[0], c, f);
      Args a = eval_args(e, 1, c, f);
      return run_filter(e.name, v, a, c);
    }
    case Expr::Test: {
      const Value v = eval(*e.a[0], c, f);
      Args a = eval_args(e, 1, c, f);
      return Value(run_test(e.name, v, a) != e.negated);
    }
    case Expr::Neg:
    case Expr::Pos: {
      const Value v = eval(*e.a[0], c, f);
      if (v.undef()) undefined_error(v);
      if (v.is_float()) return Value(e.k == Expr::Neg ? -std::get<double>(v.v) : std::get<double>(v.v));
      if (!v.is_int() && !v.is_bool())
        fail("bad operand type for unary " + std::string(e.k == Expr::Neg ? "-" : "+") + ": '" + type_name(v) + "'");
      if (e.k == Expr::Pos) return Value(v.as_int());
      if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("integer overflow");
      return Value(-v.as_int());
    }
    case Expr::Not:
      return Value(!truthy(eval(*e.a[0], c, f)));
    case Expr::Bin: {
      const Value l = eval(*e.a[0], c, f);
      return binop(e.name, l, eval(*e.a[1], c, f), c);
    }
    case Expr::Cmp: {
      Value l = eval(*e.a[0], c, f);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value r = eval(*e.a[i + 1], c, f);
        const std::string& op = e.ops[i];
        bool ok;
        if (op == "==")
          ok = equals(l, r);
        else if (op == "!=")
          ok = !equals(l, r);
        else if (op == "in")
          ok = contains(r, l);
        else if (op == "not in")
          ok = !contains(r, l);
        else {
          const int cmp = compare(l, r, op.c_str());
          ok = op == "<" ? cmp < 0 : op == "<=" ? cmp <= 0 : op == ">" ? cmp > 0 : cmp >= 0;
        }
        if (!ok) return Value(false);
        l = std::move(r);
      }
      return Value(true);
    }
    case Expr::And: {
      Value l = eval(*e.a[0], c, f);
      return truthy(l) ? eval(*e.a[1], c, f) : l;
    }
    case Expr::Or: {
      Value l = eval(*e.a[0], c, f);
      return truthy(l) ? l : eval(*e.a[1], c, f);
    }
    case Expr::Cond:
      if (truthy(eval(*e.a[1], c, f))) return eval(*e.a[0], c, f);
      return e.a[2] ? eval(*e.a[2], c, f) : undefined("the inline if expression had no else branch");
    case Expr::ListLit:
    case Expr::TupleLit: {
      List l;
      for (const auto& x : e.a) l.push_back(eval(*x, c, f));
      return Value(std::move(l), e.k == Expr::TupleLit);
    }
    case Expr::DictLit: {
      auto d = std::make_shared<Dict>();
      for (size_t i = 0; i + 1 < e.a.size(); i += 2) {
        const Value k = eval(*e.a[i], c, f);
        if (!k.is_str()) fail("dict literal keys must be strings here, found " + type_name(k));
        d->set(k.str(), eval(*e.a[i + 1], c, f));
      }
      return Value(DictP(std::move(d)));
    }
  }
  fail("internal error: unknown expression");
}

[[noreturn]] void located(int line, int col, const std::string& msg) {
  throw Error("chat template error at " + where(line, col) + ": " + msg);
}

Value eval(const Expr& e, Ctx& c, const FrameP& f) {
  try {
    return eval_inner(e, c, f);
  } catch (const TplError& t) {
    located(e.line, e.col, t.msg);
  } catch (const RaisedError& r) {
    throw Error("chat template raised an exception at " + where(e.line, e.col) + ": " + r.msg);
  }
}

void assign(const std::vector<std::string>& targets, const Value& v, Frame& f) {
  if (targets.size() == 1) {
    f.set(targets[0], v);
    return;
  }
  const ListP items = iterate(v);
  if (items->size() != targets.size())
    fail("cannot unpack " + std::to_string(items->size()) + " value(s) into " + std::to_string(targets.size()) +
         " names");
  for (size_t i = 0; i < targets.size(); ++i) f.set(targets[i], (*items)[i]);
}

Value loop_object(const ListP& items, size_t i) {
  const auto n = static_cast<int64_t>(items->size());
  const auto k = static_cast<int64_t>(i);
  auto d = std::make_shared<Dict>();
  d->items = {{"index", Value(k + 1)},
              {"index0", Value(k)},
              {"revindex", Value(n - k)},
              {"revindex0", Value(n - k - 1)},
              {"first", Value(k == 0)},
              {"last", Value(k == n - 1)},
              {"length", Value(n)},
              {"depth", Value(1)},
              {"depth0", Value(0)},
              {"previtem", k > 0 ? (*items)[i - 1] : undefined("there is no previous item")},
              {"nextitem", k + 1 < n ? (*items)[i + 1] : undefined("there is no next item")},
              {"cycle", make_func("loop.cycle", [i](Ctx&, Args& a) {
                 if (a.pos.empty()) fail("loop.cycle() needs at least one argument");
                 return a.pos[i % a.pos.size()];
               })}};
  return Value(DictP(std::move(d)));
}

Value call_macro(const Node& m, const std::weak_ptr<Frame>& closure, Args& a, Ctx& c) {
  const FrameP parent = closure.lock();
  if (!parent) fail("macro '" + m.text + "' called after the scope that defined it ended");
  if (c.depth >= c.lim.max_call_depth)
    fail("macro calls nested more than " + std::to_string(c.lim.max_call_depth) + " deep (runaway recursion?)");
  c.step();
  struct Guard {
    int& d;
    ~Guard() { --d; }
  } guard{++c.depth};
  FrameP fr = child(parent);
  if (a.pos.size() > m.params.size())
    fail("macro '" + m.text + "' takes not more than " + std::to_string(m.params.size()) + " argument(s)");
  for (const auto& [k, v] : a.kw)
    if (std::none_of(m.params.begin(), m.params.end(), [&](const auto& p) { return p.first == k; }))
      fail("macro '" + m.text + "' takes no keyword argument '" + k + "'");
  for (size_t i = 0; i < m.params.size(); ++i) {
    const auto& [pname, def] = m.params[i];
    std::optional<Value> v;
    if (i < a.pos.size()) v = a.pos[i];
    for (const auto& [k, kv] : a.kw)
      if (k == pname) v = kv;
    if (!v) v = def ? eval(*def, c, fr) : undefined("parameter '" + pname + "' was not provided");
    fr->set(pname, *v);
  }
  std::string out;
  exec(m.body, c, fr, out);
  return Value(std::move(out));
}

Flow exec_node(const Node& n, Ctx& c, const FrameP& f, std::string& out) {
  switch (n.k) {
    case Node::Text:
      emit(out, n.text, c);
      return Flow::Normal;
    case Node::Output: {
      const Value v = eval(*n.expr, c, f);
      emit(out, py_str(v), c);
      return Flow::Normal;
    }
    case Node::If:
      for (const auto& [cond, body] : n.branches)
        if (!cond || truthy(eval(*cond, c, f))) return exec(body, c, f, out);
      return Flow::Normal;
    case Node::For: {
      const Value it = eval(*n.expr, c, f);
      ListP items = iterate(it);
      if (n.filter) {
        List kept;
        for (const auto& x : *items) {
          c.step();
          FrameP fr = child(f);
          assign(n.targets, x, *fr);
          if (truthy(eval(*n.filter, c, fr))) kept.push_back(x);
        }
        items = std::make_shared<const List>(std::move(kept));
      }
      if (items->empty()) {
        exec(n.else_body, c, child(f), out);
        return Flow::Normal;
      }
      for (size_t i = 0; i < items->size(); ++i) {
        c.step();
        FrameP fr = child(f);  // a fresh scope per iteration, as jinja2's loop bodies have
        assign(n.targets, (*items)[i], *fr);
        fr->set("loop", loop_object(items, i));
        if (exec(n.body, c, fr, out) == Flow::Break) break;
      }
      return Flow::Normal;
    }
    case Node::Set: {
      const Value v = eval(*n.expr, c, f);
      if (!n.attr.empty()) {
        const Value* target = f->find(n.targets[0]);
        if (!target || !target->is_ns())
          fail("cannot assign attribute '" + n.attr + "' on '" + n.targets[0] +
               "': expected a namespace() object, found " +
               (target ? type_name(*target) : std::string("an undefined name")));
        if (n.attr[0] == '_')
          fail("chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + n.attr + "'");
        std::get<NsP>(target->v)->set(n.attr, v);
      } else {
        assign(n.targets, v, *f);
      }
      return Flow::Normal;
    }
    case Node::SetBlock: {
      std::string s;
      exec(n.body, c, child(f), s);
      f->set(n.targets[0], Value(std::move(s)));
      return Flow::Normal;
    }
    case Node::Macro: {
      const Node* m = &n;
      std::weak_ptr<Frame> closure = f;
      f->set(n.text, make_func(n.text, [m, closure](Ctx& cc, Args& a) { return call_macro(*m, closure, a, cc); }));
      return Flow::Normal;
    }
    case Node::Break:
      return Flow::Break;
    case Node::Continue:
      return Flow::Continue;
    case Node::Plain:
      return exec(n.body, c, f, out);
  }
  return Flow::Normal;
}

Flow exec(const Body& body, Ctx& c, const FrameP& f, std::string& out) {
  for (const auto& n : body) {
    Flow fl;
    try {
      fl = exec_node(*n, c, f, out);
    } catch (const TplError& t) {
      located(n->line, n->col, t.msg);
    }
    if (fl != Flow::Normal) return fl;
  }
  return Flow::Normal;
}

}  // namespace

// ============================================================ Template

struct Template::Impl {
  Body body;
};

Template::Template(std::string_view source) {
  auto impl = std::make_shared<Impl>();
  Parser p(Lexer(source).run());
  impl->body = p.parse_template();
  impl_ = std::move(impl);
}

Template::~Template() = default;

std::string Template::render(const nlohmann::ordered_json& context, const RenderOptions& opt) const {
  if (!context.is_object())
    throw Error(std::string("chat template context: expected a JSON object of variables, found ") +
                context.type_name());
  Ctx c{opt.limits};
  const std::time_t t = std::chrono::system_clock::to_time_t(opt.now.value_or(std::chrono::system_clock::now()));
  if (opt.now)
    gmtime_r(&t, &c.now);
  else
    localtime_r(&t, &c.now);
  auto root = std::make_shared<Frame>();
  try {
    for (auto it = context.begin(); it != context.end(); ++it) root->set(it.key(), from_json(it.value()));
  } catch (const TplError& e) {
    throw Error("chat template context: " + e.msg);
  }
  std::string out;
  try {
    exec(impl_->body, c, root, out);
  } catch (const TplError& e) {  // not expected: every node adds its position
    throw Error("chat template error: " + e.msg);
  } catch (const RaisedError& r) {
    throw Error("chat template raised an exception: " + r.msg);
  }
  return out;
}

}  // namespace kvrun::jinja
