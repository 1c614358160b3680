// Jinja filters and tests (see filters_and_tests.h).
#include "text/jinja/filters_and_tests.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <iterator>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "text/jinja/builtins.h"
#include "text/jinja/error.h"
#include "text/jinja/operators.h"
#include "text/jinja/pystring.h"

namespace kvrun::jinja::detail {

// ---- tests (jinja2 tests.py)

namespace {

const char* const kTests[] = {"defined",  "undefined", "none",    "boolean", "false",    "true",        "integer",
                              "float",    "number",    "string",  "mapping", "iterable", "sequence",    "callable",
                              "sameas",   "eq",        "equalto", "==",      "ne",       "!=",          "lt",
                              "lessthan", "<",         "le",      "<=",      "gt",       "greaterthan", ">",
                              "ge",       ">=",        "in",      "odd",     "even",     "divisibleby", "lower",
                              "upper",    "escaped",   "filter",  "test"};

}  // namespace

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

namespace {

const char* const kFilters[] = {
    "abs",   "attr",   "capitalize", "count",      "d",       "default", "dictsort", "e",     "escape",   "first",
    "float", "indent", "int",        "items",      "join",    "last",    "length",   "list",  "lower",    "map",
    "max",   "min",    "reject",     "rejectattr", "replace", "reverse", "round",    "safe",  "select",   "selectattr",
    "sort",  "string", "sum",        "title",      "tojson",  "trim",    "unique",   "upper", "wordcount"};

}  // namespace

bool known_filter(const std::string& n) {
  return std::find_if(std::begin(kFilters), std::end(kFilters), [&](const char* t) { return n == t; }) !=
         std::end(kFilters);
}

namespace {

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

}  // namespace

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

}  // namespace kvrun::jinja::detail
