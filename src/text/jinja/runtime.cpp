// Argument binding, type checks and iteration for callables (see runtime.h).
#include "text/jinja/runtime.h"

#include <memory>
#include <utility>

#include "text/jinja/pystring.h"

namespace kvrun::jinja::detail {

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

}  // namespace kvrun::jinja::detail
