// Errors of the Jinja subset: render-time failures (TplError: the node that catches one
// adds the template position), syntax errors, and what raise_exception() throws.
#pragma once
#include <string>
#include <utility>

#include "kvrun/error.h"

namespace kvrun::jinja::detail {

// A render-time error whose template position is added by the node that catches it.
struct TplError {
  std::string msg;
};
[[noreturn]] inline void fail(std::string msg) { throw TplError{std::move(msg)}; }

inline std::string where(int line, int col) {
  return "line " + std::to_string(line) + ", column " + std::to_string(col);
}

[[noreturn]] inline void syntax_error(int line, int col, const std::string& msg) {
  throw Error("chat template syntax error at " + where(line, col) + ": " + msg);
}

// raise_exception(msg) from a template (reported as "chat template raised an exception").
struct RaisedError {
  std::string msg;
};

}  // namespace kvrun::jinja::detail
