// Jinja filters (jinja2 filters.py, tojson as transformers defines it) and tests
// (jinja2 tests.py).
#pragma once
#include <string>

#include "text/jinja/runtime.h"
#include "text/jinja/value.h"

namespace kvrun::jinja::detail {

// `v is name(args...)`.
bool run_test(const std::string& name, const Value& v, Args& a);
bool known_test(const std::string& n);

// `v | name(args...)`.
Value run_filter(const std::string& name, const Value& v, Args& a, Ctx& c);
bool known_filter(const std::string& n);

}  // namespace kvrun::jinja::detail
