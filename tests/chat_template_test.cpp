// Chat templates: goldens from transformers' apply_chat_template (tools/make_template_goldens.py)
// rendered byte-identical, plus unit tests of the Jinja subset (text/jinja.h, text/jinja/).
#include "kvrun/chat_template.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "kvrun/error.h"
#include "test_util.h"
#include "text/jinja.h"

namespace fs = std::filesystem;
using kvrun::ChatOptions;
using kvrun::ChatTemplate;
using nlohmann::ordered_json;

namespace {

const ordered_json& goldens() {
  static const ordered_json g = [] {
    std::ifstream f(kvrun::test::fixture("chat_templates/goldens.json"));
    return ordered_json::parse(f);
  }();
  return g;
}

// The instant the goldens pinned strftime_now() to: 2024-07-26 10:30:00.
std::chrono::system_clock::time_point golden_now() {
  using namespace std::chrono;
  return sys_days{year{2024} / July / 26} + hours{10} + minutes{30};
}

std::string render(const std::string& src, const ordered_json& ctx = ordered_json::object(),
                   const ChatOptions& o = {}) {
  return ChatTemplate(src).render_context(ctx, o);
}

// Message of the kvrun::Error the render throws ("" if none).
std::string render_error(const std::string& src, const ordered_json& ctx = ordered_json::object(),
                         const ChatOptions& o = {}) {
  try {
    render(src, ctx, o);
  } catch (const kvrun::Error& e) {
    return e.what();
  }
  return "";
}
std::string parse_error(const std::string& src) {
  try {
    ChatTemplate t(src);
  } catch (const kvrun::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ChatTemplateGolden, AllCasesByteIdentical) {
  const ordered_json& g = goldens();
  int checked = 0, errors = 0;
  for (const auto& c : g["cases"]) {
    const std::string tname = c["template"], cname = c["name"];
    SCOPED_TRACE(tname + "/" + cname);
    const ordered_json& t = g["templates"][tname];
    const ordered_json& sp = t["special_tokens"];
    ChatTemplate tpl(t["source"].get<std::string>(), sp.value("bos_token", ""), sp.value("eos_token", ""));
    ChatOptions o;
    o.now = golden_now();
    o.extra = ordered_json::object();
    for (auto it = sp.begin(); it != sp.end(); ++it)
      if (it.key() != "bos_token" && it.key() != "eos_token") o.extra[it.key()] = it.value();
    for (auto it = c["options"].begin(); it != c["options"].end(); ++it) {
      if (it.key() == "add_generation_prompt")
        o.add_generation_prompt = it.value().get<bool>();
      else if (it.key() == "enable_thinking")
        o.enable_thinking = it.value().get<bool>();
      else if (it.key() == "tools")
        o.tools = it.value();
      else
        o.extra[it.key()] = it.value();
    }
    if (c.contains("error")) {
      try {
        tpl.render(c["messages"], o);
        ADD_FAILURE() << "expected an error: " << c["error"];
      } catch (const kvrun::Error& e) {
        EXPECT_NE(std::string(e.what()).find(c["error"].get<std::string>()), std::string::npos) << e.what();
      }
      ++errors;
    } else {
      EXPECT_EQ(tpl.render(c["messages"], o), c["expected"].get<std::string>());
    }
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(g["cases"].size()));
  EXPECT_GE(checked, 60);
  EXPECT_GE(errors, 2);
}

// The real tokenizer_config.json files (fetched into .deps by scripts/install-deps.sh) give the
// templates and special tokens the goldens were made with.
TEST(ChatTemplateGolden, FromTokenizerConfigMatchesGoldens) {
  const fs::path deps = kvrun::test::source_dir() / ".deps" / "tokenizers";
  if (!fs::exists(deps / "qwen3" / "tokenizer_config.json")) GTEST_SKIP() << "no " << deps;
  const ordered_json& g = goldens();
  for (const char* name : {"qwen3", "llama3", "llama3_1", "gemma3"}) {
    SCOPED_TRACE(name);
    const ChatTemplate t = ChatTemplate::from_tokenizer_config(deps / name / "tokenizer_config.json");
    const ordered_json& want = g["templates"][name];
    EXPECT_EQ(t.source(), want["source"].get<std::string>());
    for (const char* k : {"bos_token", "eos_token", "pad_token", "unk_token", "image_token", "boi_token"}) {
      if (want["special_tokens"].contains(k) && t.special_tokens().contains(k)) {
        EXPECT_EQ(t.special_tokens()[k], want["special_tokens"][k]) << k;
      }
    }
    EXPECT_EQ(t.special_tokens().value("eos_token", ""), want["special_tokens"].value("eos_token", ""));
    EXPECT_EQ(t.special_tokens().value("bos_token", ""), want["special_tokens"].value("bos_token", ""));
  }
}

TEST(ChatTemplate, ChatMLFallback) {
  const ordered_json msgs = {{{"role", "system"}, {"content", "S"}}, {{"role", "user"}, {"content", "hi"}}};
  EXPECT_EQ(ChatTemplate::chatml().render(msgs),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  ChatOptions o;
  o.add_generation_prompt = false;
  EXPECT_EQ(ChatTemplate::chatml().render(msgs, o),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");

  kvrun::test::TempDir dir;
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": {"content": "<|im_end|>"}, "bos_token": null})";
  const ChatTemplate t = ChatTemplate::from_tokenizer_config(dir / "tokenizer_config.json");
  EXPECT_EQ(t.source(), ChatTemplate::chatml().source());
  EXPECT_EQ(t.special_tokens().value("eos_token", ""), "<|im_end|>");
  EXPECT_FALSE(t.special_tokens().contains("bos_token"));
}

TEST(ChatTemplate, FindsTemplates) {
  kvrun::test::TempDir dir;
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": "<s>", "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D"}]})";
  EXPECT_EQ(ChatTemplate::from_tokenizer_config(dir / "tokenizer_config.json").render({{{"role", "user"}}}), "<s>D");
  EXPECT_EQ(ChatTemplate::from_folder(dir.path()).render({{{"role", "user"}}}), "<s>D");
  std::ofstream(dir / "chat_template.jinja") << "{{ bos_token }}J\n";  // beside the config: preferred
  EXPECT_EQ(ChatTemplate::from_folder(dir.path()).render({{{"role", "user"}}}), "<s>J");
  std::ofstream(dir / "kvrun.json") << R"({"chat_template": "{{ bos_token }}K"})";  // a package: manifest first
  EXPECT_EQ(ChatTemplate::from_folder(dir.path()).render({{{"role", "user"}}}), "<s>K");

  kvrun::test::TempDir bad;
  std::ofstream(bad / "tokenizer_config.json") << R"({"chat_template": 5})";
  EXPECT_THROW(ChatTemplate::from_tokenizer_config(bad / "tokenizer_config.json"), kvrun::Error);
  std::ofstream(bad / "tokenizer_config.json") << R"({"chat_template": "{% if %}"})";
  EXPECT_THROW(ChatTemplate::from_tokenizer_config(bad / "tokenizer_config.json"), kvrun::Error);
}

TEST(ChatTemplate, RenderValidatesMessages) {
  const ChatTemplate t = ChatTemplate::chatml();
  EXPECT_THROW(t.render(ordered_json::object()), kvrun::Error);
  EXPECT_THROW(t.render(ordered_json::array()), kvrun::Error);
  EXPECT_THROW(t.render(ordered_json::array({1})), kvrun::Error);
  EXPECT_THROW(t.render_context(ordered_json::array()), kvrun::Error);
  // Keys with null values are dropped, as apply_chat_template does.
  const ChatTemplate d("{{ messages[0].content is defined }}");
  EXPECT_EQ(d.render({{{"role", "user"}, {"content", nullptr}}}), "False");
}

// ---------------------------------------------------------------- Jinja subset

TEST(JinjaWhitespace, TrimAndLstripBlocks) {
  EXPECT_EQ(render("  {% if true %}\n  x\n  {% endif %}\n  {{ 1 }}\n"), "  x\n  1");
  EXPECT_EQ(render("a\n  {%- if true -%}  \n b {%+ if 1 %}c{% endif +%}\n\nd{# c #}\n  {# x #}\ne{% endif %}"),
            "ab c\n\nde");
  EXPECT_EQ(render("{%- for x in [1, 2] -%}\n  {{- x -}}\n{%- endfor %}\n"), "12");
  EXPECT_EQ(render("{% raw %}{{ kept }}{% endraw %}!"), "{{ kept }}!");
  EXPECT_EQ(render("x\r\ny\n"), "x\ny");  // newlines normalised, one trailing newline dropped
}

TEST(JinjaLoops, LoopVariablesElseBreakContinue) {
  EXPECT_EQ(render("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
                   "{{ loop.length }}{{ loop.revindex }}{{ loop.cycle('-', '+') }}{% endfor %}"),
            "10TrueFalse33-21FalseFalse32+32FalseTrue31-");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}"), "2/2 4/2 ");
  EXPECT_EQ(render("{% for x in range(10) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}"
                   "{% endif %}{{ x }}{% endfor %}"),
            "023");
  // Each iteration starts from the outer scope; set inside a loop does not leak out.
  EXPECT_EQ(render("{% set x = 0 %}{% for i in range(3) %}{{ x }}{% if i == 1 %}{% set x = 5 %}{% endif %}{{ x }}|"
                   "{% endfor %}{{ x }}"),
            "00|05|00|0");
  EXPECT_EQ(render("{% for k, v in {'b': 1, 'a': 2} | items %}{{ k }}={{ v }};{% endfor %}"), "b=1;a=2;");
}

TEST(JinjaFilters, Common) {
  const ordered_json ctx = {
      {"xs", {3, 1, 2}},
      {"d", {{"b", 1}, {"a", {1, 2.5, nullptr, true, "x"}}}},
      {"msgs", {{{"role", "user"}, {"content", "u"}}, {{"role", "assistant"}, {"content", "a"}}}}};
  EXPECT_EQ(
      render("{{ '  a b  ' | trim }}|{{ xs | length }}|{{ xs | join(',') }}|{{ xs | first }}{{ xs | last }}", ctx),
      "a b|3|3,1,2|32");
  EXPECT_EQ(render("{{ d | tojson }}", ctx), R"({"b": 1, "a": [1, 2.5, null, true, "x"]})");
  EXPECT_EQ(render("{{ {'k': 'é\n'} | tojson(indent=2) }}"), "{\n  \"k\": \"é\\n\"\n}");
  EXPECT_EQ(render("{{ d }}", ctx), "{'b': 1, 'a': [1, 2.5, None, True, 'x']}");
  EXPECT_EQ(render("{{ 'Hello' | lower }}{{ 'Hello' | upper }}{{ 'a-b c' | title }}{{ 'aXa' | replace('a', 'o') }}"),
            "helloHELLOA-B CoXo");
  EXPECT_EQ(render("{{ u | default('dflt') }}{{ '' | default('e', true) }}{{ 1 | string ~ 2 }}"), "dflte12");
  EXPECT_EQ(render("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join }}"
                   "{{ msgs | rejectattr('role', 'eq', 'user') | map(attribute='role') | list }}",
                   ctx),
            "u['assistant']");
  EXPECT_EQ(
      render("{{ xs | sort | list }}{{ xs | reverse | list }}{{ xs | sum }}{{ xs | max }}{{ 'abc' | reverse }}", ctx),
      "[1, 2, 3][2, 1, 3]63cba");
}

TEST(JinjaExpressions, OperatorsTestsAndMethods) {
  EXPECT_EQ(
      render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 3 / 2 }} {{ 2 ** 10 }} {{ 'a' ~ 1 ~ none }}"),
      "7 3 -4 -2 1.5 1024 a1None");
  EXPECT_EQ(
      render("{{ 'b' in 'abc' }}{{ 2 not in [1, 2] }}{{ 1 < 2 < 3 }}{{ 1 == 1.0 }}{{ none or 'x' }}{{ 0 and 1 }}"),
      "TrueFalseTrueTruex0");
}

TEST(JinjaExpressions, PythonSemantics) {
  EXPECT_EQ(render("{{ none or 'x' }}|{{ 'y' if false }}|{{ 'y' if true else 'n' }}"), "x||y");
  EXPECT_EQ(render("{{ u is defined }}{{ u is undefined }}{{ none is none }}{{ 's' is string }}{{ {} is mapping }}"
                   "{{ [] is iterable }}{{ 1 is number }}{{ false is false }}{{ 0 is false }}{{ 4 is divisibleby 2 }}"),
            "FalseTrueTrueTrueTrueTrueTrueTrueFalseTrue");
  EXPECT_EQ(render("{{ '<think>a</think>\n\nb'.split('</think>')[-1].lstrip('\\n') }}|{{ 'abc'[::-1] }}{{ 'abc'[1:] }}"
                   "{{ [1, 2, 3][-2:] }}{{ '你好😀'[1] }}{{ '你好😀' | length }}"),
            "b|cbabc[2, 3]好3");
  EXPECT_EQ(
      render("{{ 'x'.startswith('x') }}{{ 'x.py'.endswith(('.txt', '.py')) }}{{ ' a '.strip() }}{{ 'a b'.split() }}"
             "{{ 'Ab'.upper() }}{{ 'ab'.replace('b', 'c') }}{{ 'hello world'.title() }}"),
      "TrueTruea['a', 'b']ABacHello World");
  const ordered_json ctx = {{"m", {{"role", "user"}}}};
  EXPECT_EQ(render("{{ m.role }}{{ m['role'] }}{{ m.content }}|{{ m.content is defined }}{{ m.get('x', 1) }}", ctx),
            "useruser|False1");
  EXPECT_EQ(render("{{ [1, 'a', none, 1.0, 1e-5, 1e16, (1,)] }}{{ {'a': \"it's\"} }}"),
            "[1, 'a', None, 1.0, 1e-05, 1e+16, (1,)]{'a': \"it's\"}");
  EXPECT_EQ(render("{{ \"a\\tb\\x41\\u00e9\\U0001F600\\q\" }}"), "a\tbAé😀\\q");
}

TEST(JinjaStatements, SetNamespaceMacros) {
  EXPECT_EQ(render("{% set ns = namespace(n=0, last=none) %}{% for x in [5, 6] %}{% set ns.n = ns.n + x %}"
                   "{% set ns.last = x %}{% endfor %}{{ ns.n }} {{ ns.last }}"),
            "11 6");
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set blk %}x{{ a }}{% endset %}{{ blk }}"), "12x1");
  EXPECT_EQ(render("{% macro f(a, b='B') %}[{{ a }}{{ b }}]{% endmacro %}{{ f(1) }}{{ f(1, 2) }}{{ f(b=3, a=4) }}"),
            "[1B][12][43]");
  EXPECT_EQ(render("{{ strftime_now('%Y-%m-%d %H:%M') }}", ordered_json::object(),
                   [] {
                     ChatOptions o;
                     o.now = golden_now();
                     return o;
                   }()),
            "2024-07-26 10:30");
}

TEST(JinjaErrors, SyntaxErrorsNameLineAndColumn) {
  std::string e = parse_error("line one\n{{ x | nosuchfilter }}");
  EXPECT_NE(e.find("line 2, column 6"), std::string::npos) << e;
  EXPECT_NE(e.find("no filter named 'nosuchfilter'"), std::string::npos) << e;

  e = parse_error("{% for x in xs %}\n{{ x }}\n");
  EXPECT_NE(e.find("'for' block opened at line 1, column 4 was never closed"), std::string::npos) << e;
  EXPECT_NE(e.find("expected 'endfor' or 'else'"), std::string::npos) << e;

  e = parse_error("a\n  {{ 'unterminated }}");
  EXPECT_NE(e.find("line 2, column 6"), std::string::npos) << e;
  EXPECT_NE(e.find("unterminated string"), std::string::npos) << e;

  e = parse_error("{% if x %}a{% endfor %}");
  EXPECT_NE(e.find("'endfor'"), std::string::npos) << e;
  e = parse_error("{{ x is nosuchtest }}");
  EXPECT_NE(e.find("no test named 'nosuchtest'"), std::string::npos) << e;
  e = parse_error("{% include 'x' %}");
  EXPECT_NE(e.find("unsupported tag 'include'"), std::string::npos) << e;
  e = parse_error("{# never closed");
  EXPECT_NE(e.find("unterminated comment"), std::string::npos) << e;
  e = parse_error("{{ (1 + 2 }}");
  EXPECT_NE(e.find("line 1"), std::string::npos) << e;
  e = parse_error("{% break %}");
  EXPECT_NE(e.find("outside of a for loop"), std::string::npos) << e;
  e = parse_error("{{ 1 + }}");
  EXPECT_NE(e.find("expected an expression"), std::string::npos) << e;
}

TEST(JinjaErrors, RenderErrors) {
  std::string e = render_error("ok\n  {{ raise_exception('Roles must alternate') }}");
  EXPECT_NE(e.find("Roles must alternate"), std::string::npos) << e;
  EXPECT_NE(e.find("line 2, column 6"), std::string::npos) << e;
  EXPECT_NE(e.find("raised an exception"), std::string::npos) << e;

  e = render_error("{{ x.y }}");
  EXPECT_NE(e.find("'x' is undefined"), std::string::npos) << e;
  e = render_error("{{ 'a' + 1 }}");
  EXPECT_NE(e.find("unsupported operand"), std::string::npos) << e;
  e = render_error("{% set n = 5 %}{% set n.x = 1 %}");
  EXPECT_NE(e.find("expected a namespace() object"), std::string::npos) << e;
  e = render_error("{{ 1 // 0 }}");
  EXPECT_NE(e.find("division"), std::string::npos) << e;
  e = render_error("{% for x in 5 %}{% endfor %}");
  EXPECT_NE(e.find("not iterable"), std::string::npos) << e;
  e = render_error("{{ namespace(_x=1) }}");
  EXPECT_NE(e.find("underscore"), std::string::npos) << e;
}

TEST(JinjaLimits, RunawayTemplatesAreBounded) {
  // Unbounded macro recursion: a clear error, no stack overflow.
  std::string e = render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  EXPECT_NE(e.find("macro calls nested more than"), std::string::npos) << e;
  // Exponential fan-out within the depth limit: stopped by the step budget.
  ChatOptions o;
  o.max_steps = 50'000;
  e = render_error("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
                   ordered_json::object(), o);
  EXPECT_NE(e.find("refusing to go on"), std::string::npos) << e;
  // Huge loops (nested, producing nothing).
  e = render_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                   ordered_json::object(), o);
  EXPECT_NE(e.find("refusing to go on"), std::string::npos) << e;
  e = render_error("{{ range(10000000000) }}");
  EXPECT_NE(e.find("range()"), std::string::npos) << e;
  // Output size.
  o = {};
  o.max_output_bytes = 1 << 20;
  e = render_error("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", ordered_json::object(), o);
  EXPECT_NE(e.find("longer than the limit"), std::string::npos) << e;
  e = render_error("{{ 'x' * 10000000000 }}", ordered_json::object(), o);
  EXPECT_NE(e.find("longer than the limit"), std::string::npos) << e;
  // Values nested without bound (or holding themselves) are refused, not printed recursively.
  e = render_error("{% set ns = namespace(x=[]) %}{% for i in range(2000) %}{% set ns.x = [ns.x] %}{% endfor %}");
  EXPECT_NE(e.find("nested more than"), std::string::npos) << e;
  e = render_error("{% set ns = namespace() %}{% set ns.self = [{'a': ns}] %}{{ ns }}");
  EXPECT_NE(e.find("cannot be stored inside itself"), std::string::npos) << e;
  ordered_json deep = 1;
  for (int i = 0; i < 600; ++i) deep = ordered_json::array({deep});
  e = render_error("{{ x }}", {{"x", deep}});
  EXPECT_NE(e.find("nested more than"), std::string::npos) << e;
  // Deep nesting in the source is refused at parse time.
  e = parse_error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}");
  EXPECT_NE(e.find("nested too deeply"), std::string::npos) << e;
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  e = parse_error(chain + " }}");
  EXPECT_NE(e.find("nested too deeply"), std::string::npos) << e;
  std::string ifs;
  for (int i = 0; i < 1000; ++i) ifs += "{% if true %}";
  e = parse_error(ifs);
  EXPECT_NE(e.find("nested too deeply"), std::string::npos) << e;
}
