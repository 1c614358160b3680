// Values of the Jinja subset and their Python semantics (see value.h).
#include "text/jinja/value.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "text/jinja/pystring.h"

namespace kvrun::jinja::detail {

[[noreturn]] void too_deep() { fail("value nested more than " + std::to_string(kMaxNesting) + " levels deep"); }

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

Value undefined(std::string hint) { return Value(Undef{std::move(hint)}); }

[[noreturn]] void undefined_error(const Value& v) {
  const auto& h = std::get<Undef>(v.v).hint;
  fail(h.empty() ? "value is undefined" : h);
}

// ---- Python formatting: str(), repr(), json.dumps()

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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

}  // namespace kvrun::jinja::detail
