// The tree-walking evaluator (see evaluator.h).
#include "text/jinja/evaluator.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <variant>

#include "text/jinja/builtins.h"
#include "text/jinja/error.h"
#include "text/jinja/filters_and_tests.h"
#include "text/jinja/operators.h"

namespace kvrun::jinja::detail {

namespace {

FrameP child(const FrameP& parent) {
  auto f = std::make_shared<Frame>();
  f->parent = parent;
  return f;
}

void emit(std::string& out, std::string_view s, Ctx& c) {
  c.check_size(out.size() + s.size(), "rendered output");
  out.append(s);
}

Value call(const Value& f, Args& a, Ctx& c) {
  if (f.is_func()) return std::get<FuncP>(f.v)->fn(c, a);
  if (f.undef()) undefined_error(f);
  fail("'" + type_name(f) + "' object is not callable");
}

// ---- expressions and statements

Value eval(const Expr& e, Ctx& c, const FrameP& f);

Args eval_args(const Expr& e, size_t first, Ctx& c, const FrameP& f) {
  Args a;
  for (size_t i = first; i < e.a.size(); ++i) a.pos.push_back(eval(*e.a[i], c, f));
  for (const auto& [k, x] : e.kw) a.kw.emplace_back(k, eval(*x, c, f));
  return a;
}

Value eval_inner(const Expr& e, Ctx& c, const FrameP& f) {
  switch (e.k) {
    case Expr::Const:
      return e.cval;
    case Expr::Name: {
      if (const Value* v = f->find(e.name)) return *v;
      if (auto g = global(e.name)) return *g;
      return undefined("'" + e.name + "' is undefined");
    }
    case Expr::Attr:
      return get_attr(eval(*e.a[0], c, f), e.name);
    case Expr::Item:
      return get_item(eval(*e.a[0], c, f), eval(*e.a[1], c, f));
    case Expr::Slice: {
      const Value obj = eval(*e.a[0], c, f);
      auto part = [&](size_t i) { return e.a[i] ? eval(*e.a[i], c, f) : Value(nullptr); };
      return do_slice(obj, part(1), part(2), part(3));
    }
    case Expr::Call: {
      const Value fn = eval(*e.a[0], c, f);
      Args a = eval_args(e, 1, c, f);
      return call(fn, a, c);
    }
    case Expr::Filter: {
      const Value v = eval(*e.a[0], c, f);
      Args a = eval_args(e, 1, c, f);
      return run_filter(e.name, v, a, c);
    }
    case Expr::Test: {
      const Value v = eval(*e.a[0], c, f);
      Args a = eval_args(e, 1, c, f);
      return Value(run_test(e.name, v, a) != e.negated);
    }
    case Expr::Neg:
    case Expr::Pos: {
      const Value v = eval(*e.a[0], c, f);
      if (v.undef()) undefined_error(v);
      if (v.is_float()) return Value(e.k == Expr::Neg ? -std::get<double>(v.v) : std::get<double>(v.v));
      if (!v.is_int() && !v.is_bool())
        fail("bad operand type for unary " + std::string(e.k == Expr::Neg ? "-" : "+") + ": '" + type_name(v) + "'");
      if (e.k == Expr::Pos) return Value(v.as_int());
      if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("integer overflow");
      return Value(-v.as_int());
    }
    case Expr::Not:
      return Value(!truthy(eval(*e.a[0], c, f)));
    case Expr::Bin: {
      const Value l = eval(*e.a[0], c, f);
      return binop(e.name, l, eval(*e.a[1], c, f), c);
    }
    case Expr::Cmp: {
      Value l = eval(*e.a[0], c, f);
      for (size_t i = 0; i < e.ops.size(); ++i) {
        Value r = eval(*e.a[i + 1], c, f);
        const std::string& op = e.ops[i];
        bool ok;
        if (op == "==")
          ok = equals(l, r);
        else if (op == "!=")
          ok = !equals(l, r);
        else if (op == "in")
          ok = contains(r, l);
        else if (op == "not in")
          ok = !contains(r, l);
        else {
          const int cmp = compare(l, r, op.c_str());
          ok = op == "<" ? cmp < 0 : op == "<=" ? cmp <= 0 : op == ">" ? cmp > 0 : cmp >= 0;
        }
        if (!ok) return Value(false);
        l = std::move(r);
      }
      return Value(true);
    }
    case Expr::And: {
      Value l = eval(*e.a[0], c, f);
      return truthy(l) ? eval(*e.a[1], c, f) : l;
    }
    case Expr::Or: {
      Value l = eval(*e.a[0], c, f);
      return truthy(l) ? l : eval(*e.a[1], c, f);
    }
    case Expr::Cond:
      if (truthy(eval(*e.a[1], c, f))) return eval(*e.a[0], c, f);
      return e.a[2] ? eval(*e.a[2], c, f) : undefined("the inline if expression had no else branch");
    case Expr::ListLit:
    case Expr::TupleLit: {
      List l;
      for (const auto& x : e.a) l.push_back(eval(*x, c, f));
      return Value(std::move(l), e.k == Expr::TupleLit);
    }
    case Expr::DictLit: {
      auto d = std::make_shared<Dict>();
      for (size_t i = 0; i + 1 < e.a.size(); i += 2) {
        const Value k = eval(*e.a[i], c, f);
        if (!k.is_str()) fail("dict literal keys must be strings here, found " + type_name(k));
        d->set(k.str(), eval(*e.a[i + 1], c, f));
      }
      return Value(DictP(std::move(d)));
    }
  }
  fail("internal error: unknown expression");
}

[[noreturn]] void located(int line, int col, const std::string& msg) {
  throw Error("chat template error at " + where(line, col) + ": " + msg);
}

Value eval(const Expr& e, Ctx& c, const FrameP& f) {
  try {
    return eval_inner(e, c, f);
  } catch (const TplError& t) {
    located(e.line, e.col, t.msg);
  } catch (const RaisedError& r) {
    throw Error("chat template raised an exception at " + where(e.line, e.col) + ": " + r.msg);
  }
}

void assign(const std::vector<std::string>& targets, const Value& v, Frame& f) {
  if (targets.size() == 1) {
    f.set(targets[0], v);
    return;
  }
  const ListP items = iterate(v);
  if (items->size() != targets.size())
    fail("cannot unpack " + std::to_string(items->size()) + " value(s) into " + std::to_string(targets.size()) +
         " names");
  for (size_t i = 0; i < targets.size(); ++i) f.set(targets[i], (*items)[i]);
}

Value loop_object(const ListP& items, size_t i) {
  const auto n = static_cast<int64_t>(items->size());
  const auto k = static_cast<int64_t>(i);
  auto d = std::make_shared<Dict>();
  d->items = {{"index", Value(k + 1)},
              {"index0", Value(k)},
              {"revindex", Value(n - k)},
              {"revindex0", Value(n - k - 1)},
              {"first", Value(k == 0)},
              {"last", Value(k == n - 1)},
              {"length", Value(n)},
              {"depth", Value(1)},
              {"depth0", Value(0)},
              {"previtem", k > 0 ? (*items)[i - 1] : undefined("there is no previous item")},
              {"nextitem", k + 1 < n ? (*items)[i + 1] : undefined("there is no next item")},
              {"cycle", make_func("loop.cycle", [i](Ctx&, Args& a) {
                 if (a.pos.empty()) fail("loop.cycle() needs at least one argument");
                 return a.pos[i % a.pos.size()];
               })}};
  return Value(DictP(std::move(d)));
}

Value call_macro(const Node& m, const std::weak_ptr<Frame>& closure, Args& a, Ctx& c) {
  const FrameP parent = closure.lock();
  if (!parent) fail("macro '" + m.text + "' called after the scope that defined it ended");
  if (c.depth >= c.lim.max_call_depth)
    fail("macro calls nested more than " + std::to_string(c.lim.max_call_depth) + " deep (runaway recursion?)");
  c.step();
  struct Guard {
    int& d;
    ~Guard() { --d; }
  } guard{++c.depth};
  FrameP fr = child(parent);
  if (a.pos.size() > m.params.size())
    fail("macro '" + m.text + "' takes not more than " + std::to_string(m.params.size()) + " argument(s)");
  for (const auto& [k, v] : a.kw)
    if (std::none_of(m.params.begin(), m.params.end(), [&](const auto& p) { return p.first == k; }))
      fail("macro '" + m.text + "' takes no keyword argument '" + k + "'");
  for (size_t i = 0; i < m.params.size(); ++i) {
    const auto& [pname, def] = m.params[i];
    std::optional<Value> v;
    if (i < a.pos.size()) v = a.pos[i];
    for (const auto& [k, kv] : a.kw)
      if (k == pname) v = kv;
    if (!v) v = def ? eval(*def, c, fr) : undefined("parameter '" + pname + "' was not provided");
    fr->set(pname, *v);
  }
  std::string out;
  exec(m.body, c, fr, out);
  return Value(std::move(out));
}

Flow exec_node(const Node& n, Ctx& c, const FrameP& f, std::string& out) {
  switch (n.k) {
    case Node::Text:
      emit(out, n.text, c);
      return Flow::Normal;
    case Node::Output: {
      const Value v = eval(*n.expr, c, f);
      emit(out, py_str(v), c);
      return Flow::Normal;
    }
    case Node::If:
      for (const auto& [cond, body] : n.branches)
        if (!cond || truthy(eval(*cond, c, f))) return exec(body, c, f, out);
      return Flow::Normal;
    case Node::For: {
      const Value it = eval(*n.expr, c, f);
      ListP items = iterate(it);
      if (n.filter) {
        List kept;
        for (const auto& x : *items) {
          c.step();
          FrameP fr = child(f);
          assign(n.targets, x, *fr);
          if (truthy(eval(*n.filter, c, fr))) kept.push_back(x);
        }
        items = std::make_shared<const List>(std::move(kept));
      }
      if (items->empty()) {
        exec(n.else_body, c, child(f), out);
        return Flow::Normal;
      }
      for (size_t i = 0; i < items->size(); ++i) {
        c.step();
        FrameP fr = child(f);  // a fresh scope per iteration, as jinja2's loop bodies have
        assign(n.targets, (*items)[i], *fr);
        fr->set("loop", loop_object(items, i));
        if (exec(n.body, c, fr, out) == Flow::Break) break;
      }
      return Flow::Normal;
    }
    case Node::Set: {
      const Value v = eval(*n.expr, c, f);
      if (!n.attr.empty()) {
        const Value* target = f->find(n.targets[0]);
        if (!target || !target->is_ns())
          fail("cannot assign attribute '" + n.attr + "' on '" + n.targets[0] +
               "': expected a namespace() object, found " +
               (target ? type_name(*target) : std::string("an undefined name")));
        if (n.attr[0] == '_')
          fail("chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + n.attr + "'");
        std::get<NsP>(target->v)->set(n.attr, v);
      } else {
        assign(n.targets, v, *f);
      }
      return Flow::Normal;
    }
    case Node::SetBlock: {
      std::string s;
      exec(n.body, c, child(f), s);
      f->set(n.targets[0], Value(std::move(s)));
      return Flow::Normal;
    }
    case Node::Macro: {
      const Node* m = &n;
      std::weak_ptr<Frame> closure = f;
      f->set(n.text, make_func(n.text, [m, closure](Ctx& cc, Args& a) { return call_macro(*m, closure, a, cc); }));
      return Flow::Normal;
    }
    case Node::Break:
      return Flow::Break;
    case Node::Continue:
      return Flow::Continue;
    case Node::Plain:
      return exec(n.body, c, f, out);
  }
  return Flow::Normal;
}

}  // namespace

Flow exec(const Body& body, Ctx& c, const FrameP& f, std::string& out) {
  for (const auto& n : body) {
    Flow fl;
    try {
      fl = exec_node(*n, c, f, out);
    } catch (const TplError& t) {
      located(n->line, n->col, t.msg);
    }
    if (fl != Flow::Normal) return fl;
  }
  return Flow::Normal;
}

}  // namespace kvrun::jinja::detail
