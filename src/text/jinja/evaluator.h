// The tree-walking evaluator: expressions to values, statements to output, with scopes
// (Frame), loops, macros and the render limits.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/jinja/ast.h"
#include "text/jinja/runtime.h"
#include "text/jinja/value.h"

namespace kvrun::jinja::detail {

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

enum class Flow { Normal, Break, Continue };

// Runs the statements of `body` in scope `f`, appending to `out`. Errors carry the
// position of the node that failed.
Flow exec(const Body& body, Ctx& c, const FrameP& f, std::string& out);

}  // namespace kvrun::jinja::detail
