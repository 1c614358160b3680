// Attribute / item / slice access, methods of str, dict and list, and global functions
// (see builtins.h).
#include "text/jinja/builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "text/jinja/error.h"
#include "text/jinja/pystring.h"
#include "text/jinja/runtime.h"

namespace kvrun::jinja::detail {

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

namespace {

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

}  // namespace

// GCC 12.2 reports a false -Wrestrict inside std::string's operator+(const char*, string&&)
// for the messages below once these functions are out of line (GCC bug 105651).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
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

namespace {

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

}  // namespace

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
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// ---- globals

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

}  // namespace kvrun::jinja::detail
