// Jinja parser (see parser.h).
#include "text/jinja/parser.h"

#include <algorithm>
#include <string>
#include <utility>

#include "text/jinja/error.h"
#include "text/jinja/filters_and_tests.h"

namespace kvrun::jinja::detail {

namespace {

constexpr int kMaxParseDepth = 200;
constexpr int kMaxExprHeight = 400;

class Parser {
 public:
  explicit Parser(std::vector<Tok> toks) : t_(std::move(toks)) {}

  Body parse_template() {
    Body b = body({});
    if (cur().t != T::Eof) err(cur(), "unexpected " + describe(cur()));
    return b;
  }

 private:
  const Tok& cur() const { return t_[i_]; }
  const Tok& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Tok& next() {
    const Tok& t = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return t;
  }
  [[noreturn]] void err(const Tok& t, const std::string& msg) const { syntax_error(t.line, t.col, msg); }
  bool is_op(const char* s) const { return cur().t == T::Op && cur().s == s; }
  bool is_name(const char* s) const { return cur().t == T::Name && cur().s == s; }
  void expect_op(const char* s) {
    if (!is_op(s)) err(cur(), std::string("expected '") + s + "', found " + describe(cur()));
    next();
  }
  std::string expect_name(const char* what) {
    if (cur().t != T::Name) err(cur(), std::string("expected ") + what + ", found " + describe(cur()));
    return next().s;
  }
  void expect_block_end(const char* tag) {
    if (cur().t != T::BlockEnd)
      err(cur(), std::string("expected '%}' to end the '") + tag + "' tag, found " + describe(cur()));
    next();
  }
  struct Depth {
    Parser& p;
    explicit Depth(Parser& pp, const Tok& t) : p(pp) {
      if (++p.depth_ > kMaxParseDepth)
        p.err(t, "template nested too deeply (more than " + std::to_string(kMaxParseDepth) + " levels)");
    }
    ~Depth() { --p.depth_; }
  };

  // Every composite node goes through here: caps the tree height, so evaluating it
  // cannot recurse deeper than kMaxExprHeight (long chains like a+a+...+a included).
  ExprP fin(ExprP e) {
    int h = 0;
    for (const auto& c : e->a)
      if (c) h = std::max(h, c->depth);
    for (const auto& [k, c] : e->kw) h = std::max(h, c->depth);
    e->depth = h + 1;
    if (e->depth > kMaxExprHeight)
      err(Tok{T::Eof, "", e->line, e->col},
          "expression nested too deeply (more than " + std::to_string(kMaxExprHeight) + " levels)");
    return e;
  }
  static ExprP mk(Expr::K k, const Tok& at) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->line = at.line;
    e->col = at.col;
    return e;
  }
  std::unique_ptr<Node> mkn(Node::K k, const Tok& at) {
    auto n = std::make_unique<Node>();
    n->k = k;
    n->line = at.line;
    n->col = at.col;
    return n;
  }

  // Parses nodes until a block tag whose name is in `ends` (left unconsumed: cur() is that name).
  Body body(const std::vector<std::string>& ends, const Tok* opener = nullptr, const char* open_tag = nullptr) {
    Depth d(*this, cur());
    Body out;
    for (;;) {
      const Tok& t = cur();
      if (t.t == T::Eof) {
        if (!ends.empty()) {
          std::string exp;
          for (const auto& e : ends) exp += (exp.empty() ? "'" : " or '") + e + "'";
          err(t, std::string("unexpected end of template: the '") + open_tag + "' block opened at " +
                     where(opener->line, opener->col) + " was never closed (expected " + exp + ")");
        }
        return out;
      }
      if (t.t == T::Data) {
        auto n = mkn(Node::Text, t);
        n->text = t.s;
        next();
        out.push_back(std::move(n));
      } else if (t.t == T::VarBegin) {
        next();
        auto n = mkn(Node::Output, t);
        n->expr = tuple_expr(true);
        if (cur().t != T::VarEnd) err(cur(), "expected '}}' to end the expression, found " + describe(cur()));
        next();
        out.push_back(std::move(n));
      } else if (t.t == T::BlockBegin) {
        const Tok& kw = peek();
        if (kw.t != T::Name) err(kw, "expected a tag name after '{%', found " + describe(kw));
        if (std::find(ends.begin(), ends.end(), kw.s) != ends.end()) {
          next();
          return out;
        }
        next();
        out.push_back(statement());
      } else {
        err(t, "unexpected " + describe(t));
      }
    }
  }

  std::unique_ptr<Node> statement() {
    const Tok& kw = next();
    const std::string& name = kw.s;
    if (name == "if") return if_stmt(kw);
    if (name == "for") return for_stmt(kw);
    if (name == "set") return set_stmt(kw);
    if (name == "macro") return macro_stmt(kw);
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) err(kw, "'" + name + "' outside of a for loop");
      expect_block_end(name.c_str());
      return mkn(name == "break" ? Node::Break : Node::Continue, kw);
    }
    if (name == "generation") {  // transformers' assistant-mask extension: renders its body
      expect_block_end("generation");
      auto n = mkn(Node::Plain, kw);
      n->body = body({"endgeneration"}, &kw, "generation");
      next();
      expect_block_end("endgeneration");
      return n;
    }
    static const char* known_ends[] = {"endif", "endfor", "endset", "endmacro", "else", "elif", "endgeneration"};
    for (const char* e : known_ends)
      if (name == e) err(kw, "unexpected '" + name + "' tag: no open block it could close");
    err(kw, "unknown or unsupported tag '" + name +
                "' (supported: if, elif, else, for, set, macro, break, continue, generation, raw)");
  }

  std::unique_ptr<Node> if_stmt(const Tok& kw) {
    auto n = mkn(Node::If, kw);
    ExprP cond = tuple_expr(false);
    expect_block_end("if");
    for (;;) {
      Body b = body({"elif", "else", "endif"}, &kw, "if");
      const std::string tag = next().s;
      n->branches.emplace_back(std::move(cond), std::move(b));
      if (tag == "elif") {
        cond = tuple_expr(false);
        expect_block_end("elif");
      } else if (tag == "else") {
        expect_block_end("else");
        Body eb = body({"endif"}, &kw, "if");
        next();
        expect_block_end("endif");
        n->branches.emplace_back(nullptr, std::move(eb));
        return n;
      } else {
        expect_block_end("endif");
        return n;
      }
    }
  }

  std::vector<std::string> target_names(const char* what) {
    std::vector<std::string> names;
    const bool paren = is_op("(");
    if (paren) next();
    names.push_back(expect_name(what));
    while (is_op(",")) {
      next();
      if (cur().t != T::Name) break;
      names.push_back(next().s);
    }
    if (paren) expect_op(")");
    return names;
  }

  std::unique_ptr<Node> for_stmt(const Tok& kw) {
    auto n = mkn(Node::For, kw);
    n->targets = target_names("a loop variable name");
    if (!is_name("in")) err(cur(), "expected 'in' in the for loop, found " + describe(cur()));
    next();
    n->expr = tuple_expr(false, /*with_condexpr=*/false);
    if (is_name("if")) {
      next();
      n->filter = expr();
    }
    if (is_name("recursive")) err(cur(), "recursive for loops are not supported");
    expect_block_end("for");
    ++loop_depth_;
    n->body = body({"endfor", "else"}, &kw, "for");
    --loop_depth_;
    if (next().s == "else") {
      expect_block_end("else");
      n->else_body = body({"endfor"}, &kw, "for");
      next();
    }
    expect_block_end("endfor");
    return n;
  }

  std::unique_ptr<Node> set_stmt(const Tok& kw) {
    auto n = mkn(Node::Set, kw);
    if (cur().t == T::Name && peek().t == T::Op && peek().s == ".") {
      n->targets.push_back(next().s);
      next();
      n->attr = expect_name("an attribute name after '.'");
    } else {
      n->targets = target_names("a variable name");
    }
    if (is_op("=")) {
      next();
      n->expr = tuple_expr(false);
      expect_block_end("set");
      return n;
    }
    if (!n->attr.empty() || n->targets.size() != 1) err(cur(), "expected '=' in the set tag, found " + describe(cur()));
    expect_block_end("set");
    n->k = Node::SetBlock;
    n->body = body({"endset"}, &kw, "set");
    next();
    expect_block_end("endset");
    return n;
  }

  std::unique_ptr<Node> macro_stmt(const Tok& kw) {
    auto n = mkn(Node::Macro, kw);
    n->text = expect_name("a macro name");
    expect_op("(");
    while (!is_op(")")) {
      std::string p = expect_name("a parameter name");
      ExprP def;
      if (is_op("=")) {
        next();
        def = expr();
      }
      n->params.emplace_back(std::move(p), std::move(def));
      if (!is_op(")")) expect_op(",");
    }
    next();
    expect_block_end("macro");
    const int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = body({"endmacro"}, &kw, "macro");
    loop_depth_ = saved;
    next();
    if (cur().t == T::Name) next();  // {% endmacro name %}
    expect_block_end("endmacro");
    return n;
  }

  // ---- expressions (jinja2 parser.py precedence)

  ExprP tuple_expr(bool allow_empty_end, bool with_condexpr = true) {
    const Tok& start = cur();
    ExprP first = with_condexpr ? expr() : or_expr();
    if (!is_op(",")) return first;
    auto t = mk(Expr::TupleLit, start);
    t->a.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (cur().t == T::VarEnd || cur().t == T::BlockEnd || is_op(")") || is_name("if")) break;
      t->a.push_back(with_condexpr ? expr() : or_expr());
    }
    (void)allow_empty_end;
    return fin(std::move(t));
  }

  ExprP expr() {  // condexpr
    Depth d(*this, cur());
    ExprP e = or_expr();
    while (is_name("if")) {
      auto c = mk(Expr::Cond, cur());
      next();
      ExprP cond = or_expr();
      ExprP other;
      if (is_name("else")) {
        next();
        other = expr();
      }
      c->a.push_back(std::move(e));
      c->a.push_back(std::move(cond));
      c->a.push_back(std::move(other));
      e = fin(std::move(c));
    }
    return e;
  }
  ExprP or_expr() {
    ExprP l = and_expr();
    while (is_name("or")) {
      auto n = mk(Expr::Or, next());
      n->a.push_back(std::move(l));
      n->a.push_back(and_expr());
      l = fin(std::move(n));
    }
    return l;
  }
  ExprP and_expr() {
    ExprP l = not_expr();
    while (is_name("and")) {
      auto n = mk(Expr::And, next());
      n->a.push_back(std::move(l));
      n->a.push_back(not_expr());
      l = fin(std::move(n));
    }
    return l;
  }
  ExprP not_expr() {
    if (is_name("not")) {
      Depth d(*this, cur());
      auto n = mk(Expr::Not, next());
      n->a.push_back(not_expr());
      return fin(std::move(n));
    }
    return compare();
  }
  ExprP compare() {
    ExprP l = math1();
    ExprP c;
    for (;;) {
      std::string op;
      const Tok& at = cur();
      if (cur().t == T::Op && (cur().s == "==" || cur().s == "!=" || cur().s == "<" || cur().s == "<=" ||
                               cur().s == ">" || cur().s == ">=")) {
        op = next().s;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().t == T::Name && peek().s == "in") {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      if (!c) {
        c = mk(Expr::Cmp, at);
        c->a.push_back(std::move(l));
      }
      c->ops.push_back(op);
      c->a.push_back(math1());
    }
    return c ? fin(std::move(c)) : std::move(l);
  }
  ExprP binary(ExprP l, const Tok& at, std::string op, ExprP r) {
    auto n = mk(Expr::Bin, at);
    n->name = std::move(op);
    n->a.push_back(std::move(l));
    n->a.push_back(std::move(r));
    return fin(std::move(n));
  }
  ExprP math1() {
    ExprP l = concat();
    while (is_op("+") || is_op("-")) {
      const Tok& at = cur();
      std::string op = next().s;
      l = binary(std::move(l), at, op, concat());
    }
    return l;
  }
  ExprP concat() {
    ExprP l = math2();
    while (is_op("~")) {
      const Tok& at = cur();
      next();
      l = binary(std::move(l), at, "~", math2());
    }
    return l;
  }
  ExprP math2() {
    ExprP l = pow_expr();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Tok& at = cur();
      std::string op = next().s;
      l = binary(std::move(l), at, op, pow_expr());
    }
    return l;
  }
  ExprP pow_expr() {
    ExprP l = unary(true);
    while (is_op("**")) {
      const Tok& at = cur();
      next();
      l = binary(std::move(l), at, "**", unary(true));
    }
    return l;
  }
  ExprP unary(bool with_filter) {
    Depth d(*this, cur());
    ExprP n;
    if (is_op("-") || is_op("+")) {
      n = mk(is_op("-") ? Expr::Neg : Expr::Pos, cur());
      next();
      n->a.push_back(unary(false));
      n = fin(std::move(n));
    } else {
      n = primary();
    }
    n = postfix(std::move(n));
    if (with_filter) n = filters(std::move(n));
    return n;
  }

  ExprP primary() {
    const Tok& t = cur();
    switch (t.t) {
      case T::Name: {
        next();
        auto e = mk(Expr::Const, t);
        if (t.s == "true" || t.s == "True") {
          e->cval = Value(true);
        } else if (t.s == "false" || t.s == "False") {
          e->cval = Value(false);
        } else if (t.s == "none" || t.s == "None") {
          e->cval = Value(nullptr);
        } else {
          e->k = Expr::Name;
          e->name = t.s;
        }
        return e;
      }
      case T::String: {
        auto e = mk(Expr::Const, t);
        std::string s;
        while (cur().t == T::String) s += next().s;  // adjacent literals concatenate
        e->cval = Value(std::move(s));
        return e;
      }
      case T::Int:
      case T::Float: {
        auto e = mk(Expr::Const, t);
        e->cval = t.t == T::Int ? Value(t.i) : Value(t.f);
        next();
        return e;
      }
      case T::Op:
        if (t.s == "(") {
          next();
          if (is_op(")")) {
            next();
            return mk(Expr::TupleLit, t);
          }
          ExprP first = expr();
          if (is_op(")")) {
            next();
            return first;
          }
          auto tup = mk(Expr::TupleLit, t);
          tup->a.push_back(std::move(first));
          while (is_op(",")) {
            next();
            if (is_op(")")) break;
            tup->a.push_back(expr());
          }
          expect_op(")");
          return fin(std::move(tup));
        }
        if (t.s == "[") {
          next();
          auto l = mk(Expr::ListLit, t);
          while (!is_op("]")) {
            l->a.push_back(expr());
            if (!is_op("]")) expect_op(",");
          }
          next();
          return fin(std::move(l));
        }
        if (t.s == "{") {
          next();
          auto d = mk(Expr::DictLit, t);
          while (!is_op("}")) {
            d->a.push_back(expr());
            expect_op(":");
            d->a.push_back(expr());
            if (!is_op("}")) expect_op(",");
          }
          next();
          return fin(std::move(d));
        }
        break;
      default:
        break;
    }
    err(t, "expected an expression, found " + describe(t));
  }

  void call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) err(cur(), "*args / **kwargs in calls are not supported");
      if (cur().t == T::Name && peek().t == T::Op && peek().s == "=") {
        std::string k = next().s;
        next();
        e.kw.emplace_back(std::move(k), expr());
      } else {
        if (!e.kw.empty()) err(cur(), "positional argument after a keyword argument");
        e.a.push_back(expr());
      }
      if (!is_op(")")) expect_op(",");
    }
    next();
  }

  ExprP postfix(ExprP n) {
    for (;;) {
      const Tok& t = cur();
      if (is_op(".")) {
        next();
        auto g = mk(Expr::Attr, t);
        if (cur().t == T::Name) {
          g->name = next().s;
        } else if (cur().t == T::Int) {  // foo.0 is foo[0]
          g->k = Expr::Item;
          auto c = mk(Expr::Const, cur());
          c->cval = Value(next().i);
          g->a.push_back(std::move(n));
          g->a.push_back(std::move(c));
          n = fin(std::move(g));
          continue;
        } else {
          err(cur(), "expected an attribute name after '.', found " + describe(cur()));
        }
        g->a.push_back(std::move(n));
        n = fin(std::move(g));
      } else if (is_op("[")) {
        next();
        ExprP idx[3];
        bool slice = false;
        for (int part = 0; part < 3; ++part) {
          if (!is_op(":") && !is_op("]")) idx[part] = expr();
          if (is_op(":") && part < 2) {
            slice = true;
            next();
          } else {
            break;
          }
        }
        expect_op("]");
        if (!slice && !idx[0]) err(t, "expected an index or slice inside '[]'");
        auto g = mk(slice ? Expr::Slice : Expr::Item, t);
        g->a.push_back(std::move(n));
        g->a.push_back(std::move(idx[0]));
        if (slice) {
          g->a.push_back(std::move(idx[1]));
          g->a.push_back(std::move(idx[2]));
        }
        n = fin(std::move(g));
      } else if (is_op("(")) {
        auto c = mk(Expr::Call, t);
        c->line = n->line;  // errors point at the callee, e.g. raise_exception(...)
        c->col = n->col;
        c->a.push_back(std::move(n));
        call_args(*c);
        n = fin(std::move(c));
      } else {
        return n;
      }
    }
  }

  ExprP filters(ExprP n) {
    for (;;) {
      if (is_op("|")) {
        const Tok& t = next();
        auto f = mk(Expr::Filter, t);
        f->name = expect_name("a filter name after '|'");
        while (is_op(".")) {
          next();
          f->name += '.';
          f->name += expect_name("a filter name");
        }
        f->a.push_back(std::move(n));
        if (is_op("(")) call_args(*f);
        if (!known_filter(f->name)) err(t, "no filter named '" + f->name + "'");
        n = fin(std::move(f));
      } else if (is_name("is")) {
        const Tok& t = next();
        auto f = mk(Expr::Test, t);
        if (is_name("not")) {
          next();
          f->negated = true;
        }
        f->name = expect_name("a test name after 'is'");
        f->a.push_back(std::move(n));
        if (is_op("(")) {
          call_args(*f);
        } else if ((cur().t == T::Name || cur().t == T::String || cur().t == T::Int || cur().t == T::Float ||
                    is_op("(") || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) err(cur(), "you cannot chain multiple tests with 'is'");
          f->a.push_back(postfix(primary()));
        }
        if (!known_test(f->name)) err(t, "no test named '" + f->name + "'");
        n = fin(std::move(f));
      } else {
        return n;
      }
    }
  }

  std::vector<Tok> t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse(std::vector<Tok> tokens) { return Parser(std::move(tokens)).parse_template(); }

}  // namespace kvrun::jinja::detail
