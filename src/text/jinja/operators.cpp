// Binary operators (see operators.h).
#include "text/jinja/operators.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "text/jinja/error.h"

namespace kvrun::jinja::detail {

namespace {

int64_t checked(bool (*op)(int64_t, int64_t, int64_t*), int64_t x, int64_t y) {
  int64_t r = 0;
  if (op(x, y, &r)) fail("integer overflow (kvrun templates use 64-bit integers)");
  return r;
}
bool add_ov(int64_t x, int64_t y, int64_t* r) { return __builtin_add_overflow(x, y, r); }
bool sub_ov(int64_t x, int64_t y, int64_t* r) { return __builtin_sub_overflow(x, y, r); }
bool mul_ov(int64_t x, int64_t y, int64_t* r) { return __builtin_mul_overflow(x, y, r); }

}  // namespace

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

}  // namespace kvrun::jinja::detail
