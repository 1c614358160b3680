// Jinja subset renderer: lexer -> parser (AST) -> tree-walking evaluator.
// Semantics follow jinja2 3.1 as transformers configures it for chat templates; the
// comments name the jinja2 / Python behaviour each piece reproduces.
// Files (src/text/jinja/): lexer, parser (-> ast.h), evaluator over value.h values, with
// operators, filters_and_tests, builtins and runtime (shared render state); pystring and
// error hold the UTF-8 / Python str helpers and the error types.
#include <chrono>
#include <ctime>
#include <memory>
#include <string>

#include "kvrun/error.h"
#include "text/jinja.h"
#include "text/jinja/ast.h"
#include "text/jinja/error.h"
#include "text/jinja/evaluator.h"
#include "text/jinja/lexer.h"
#include "text/jinja/parser.h"
#include "text/jinja/runtime.h"
#include "text/jinja/value.h"

namespace kvrun::jinja {

using detail::Body;
using detail::Ctx;
using detail::exec;
using detail::Frame;
using detail::from_json;
using detail::lex;
using detail::parse;
using detail::RaisedError;
using detail::TplError;

struct Template::Impl {
  Body body;
};

Template::Template(std::string_view source) {
  auto impl = std::make_shared<Impl>();
  impl->body = parse(lex(source));
  impl_ = std::move(impl);
}

Template::~Template() = default;

std::string Template::render(const nlohmann::ordered_json& context, const RenderOptions& opt) const {
  if (!context.is_object())
    throw Error(std::string("chat template context: expected a JSON object of variables, found ") +
                context.type_name());
  Ctx c{opt.limits};
  const std::time_t t = std::chrono::system_clock::to_time_t(opt.now.value_or(std::chrono::system_clock::now()));
  if (opt.now)
    gmtime_r(&t, &c.now);
  else
    localtime_r(&t, &c.now);
  auto root = std::make_shared<Frame>();
  try {
    for (auto it = context.begin(); it != context.end(); ++it) root->set(it.key(), from_json(it.value()));
  } catch (const TplError& e) {
    throw Error("chat template context: " + e.msg);
  }
  std::string out;
  try {
    exec(impl_->body, c, root, out);
  } catch (const TplError& e) {  // not expected: every node adds its position
    throw Error("chat template error: " + e.msg);
  } catch (const RaisedError& r) {
    throw Error("chat template raised an exception: " + r.msg);
  }
  return out;
}

}  // namespace kvrun::jinja
