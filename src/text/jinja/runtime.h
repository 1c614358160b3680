// What the evaluator, filters, tests and built-in functions share while rendering: the
// render state (Ctx: limits, step count, call depth, the time for strftime_now) and the
// calling convention of callables (argument binding, type checks, iteration).
#pragma once
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "text/jinja.h"
#include "text/jinja/value.h"

namespace kvrun::jinja::detail {

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

// ---- argument binding

// Python-style binding of positional and keyword arguments to `names` for function `fn`.
std::vector<std::optional<Value>> bind(Args& a, std::initializer_list<const char*> names, const std::string& fn);
int64_t want_int(const Value& v, const std::string& what);
const std::string& want_str(const Value& v, const std::string& what);

// The items a for loop / filter visits: list items, dict keys, string characters.
ListP iterate(const Value& v);
Value make_func(std::string name, std::function<Value(Ctx&, Args&)> fn);

}  // namespace kvrun::jinja::detail
