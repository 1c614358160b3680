// Binary operators (+ - * / // % ** ~) with Python semantics; integers are 64-bit and
// overflow is an error.
#pragma once
#include <string>

#include "text/jinja/runtime.h"
#include "text/jinja/value.h"

namespace kvrun::jinja::detail {

// `l op r` for op one of + - * / // % ** ~.
Value binop(const std::string& op, const Value& l, const Value& r, Ctx& c);

}  // namespace kvrun::jinja::detail
