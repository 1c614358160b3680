#!/usr/bin/env python3
"""Writes tests/fixtures/chat_templates/goldens.json: chat template renderings by transformers.

For each real tokenizer in .deps/tokenizers/{qwen3,llama3,llama3_1,gemma3} (tokenizer_config.json
with the model's chat template) and a set of conversations, records what
`tokenizer.apply_chat_template(messages, tokenize=False, ...)` returns. kvrun's ChatTemplate
must reproduce every string byte for byte (tests/chat_template_test.cpp). A case whose render
raises (raise_exception) records the error message instead.

strftime_now() is pinned to FIXED_NOW so outputs are deterministic; the C++ test passes the
same instant through ChatOptions::now.

Not run by CI: needs pip transformers (5.x) and jinja2. Usage, from the repository root:
    python3 tools/make_template_goldens.py
"""
import datetime
import json
import os
import sys

from transformers import AutoTokenizer
from transformers.utils import chat_template_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "chat_templates", "goldens.json")
TOKENIZERS = ["qwen3", "llama3", "llama3_1", "gemma3"]
FIXED_NOW = datetime.datetime(2024, 7, 26, 10, 30, 0)


class _FixedDateTime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


chat_template_utils.datetime = _FixedDateTime  # what transformers' strftime_now() calls

# A template of our own (not a model's) that uses what the four model templates do not:
# strftime_now, tojson(indent=...), macros, namespace counters, loop controls, dict
# literals, selectattr/map, string methods. Rendered by transformers with chat_template=.
KVRUN_TOOLS_TEMPLATE = """{#- kvrun test template: tools with a dated system header -#}
{%- macro render_tool(t, idx) -%}
{{ idx }}. {{ t.function.name | upper }}: {{ t.function.description | default('(no description)') | trim }}
{{ t | tojson(indent=4) }}
{%- endmacro -%}
{%- if not date_string is defined -%}
    {%- set date_string = strftime_now("%d %b %Y") -%}
{%- endif -%}
{{- bos_token }}<|system|>
Today Date: {{ date_string }}
{%- if messages[0]['role'] == 'system' %}
{{ messages[0]['content'] | trim }}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set loop_messages = messages -%}
{%- endif %}
{%- if tools %}

Tools ({{ tools | length }}):
{%- for t in tools %}
{{ render_tool(t, loop.index) }}
{%- endfor %}
{%- endif %}
<|end|>
{%- set ns = namespace(user_turns=0, calls=0) %}
{%- for m in loop_messages %}
    {%- if m.role == 'user' %}{% set ns.user_turns = ns.user_turns + 1 %}{% endif %}
    {%- if m.role == 'assistant' and m.tool_calls is defined %}
        {%- for call in m.tool_calls %}
            {%- set ns.calls = ns.calls + 1 %}
<|call|>{{ {'name': call.function.name, 'parameters': call.function.arguments} | tojson }}
        {%- endfor %}
        {%- continue %}
    {%- endif %}
<|{{ m.role }}|>
{{ m.content if m.content is string else m.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}
    {%- if m.role == 'tool' and m.content.startswith('{') %} (json){% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|assistant|>{{ ' [turn ' ~ ns.user_turns ~ ', ' ~ ns.calls ~ ' calls]' }}
{% endif %}"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country, e.g. \"Paris, France\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone ",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": []},
    },
}

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
U2 = {"role": "user", "content": "And of Germany?"}
UNICODE = {"role": "user", "content": "你好，世界！请用中文回答。😀🚀 Ünïcödé — ‘quotes’ … \u3000full-width space\u3000"}
A_UNICODE = {"role": "assistant", "content": "你好！🌍 很高兴见到你。"}
SPECIAL = {
    "role": "user",
    "content": "Quotes \"double\" and 'single', backslashes \\ \\\\ \\n (literal), a real\nnewline,\ttab, "
    "braces {{ not a tag }} {% neither %} {# nor #}, <html> & </tool_call>, trailing spaces   \n\n",
}
TOOL_CALL_MSGS = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}},
            }
        ],
    },
    {"role": "tool", "content": "{\"temperature\": 22, \"condition\": \"sunny\"}"},
    {"role": "assistant", "content": "It is 22 °C and sunny in Paris."},
    {"role": "user", "content": "And the time there?"},
]
MULTI_TOOL_MSGS = [
    {"role": "user", "content": "Weather and time in Tokyo?"},
    {
        "role": "assistant",
        "content": "Let me check both.",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_current_weather", "arguments": {"location": "Tokyo"}}},
            {"type": "function", "function": {"name": "get_time", "arguments": "{\"tz\": \"Asia/Tokyo\"}"}},
        ],
    },
    {"role": "tool", "content": "<tool_response>rain</tool_response>"},
    {"role": "tool", "content": "18:30"},
]


def common_cases():
    return [
        ("system_user", [SYS, U1], {}),
        ("user_only", [U1], {}),
        ("multi_turn", [SYS, U1, A1, U2], {}),
        ("multi_turn_no_generation_prompt", [SYS, U1, A1, U2], {"add_generation_prompt": False}),
        ("ends_with_assistant_no_prompt", [U1, A1], {"add_generation_prompt": False}),
        ("unicode", [SYS, UNICODE, A_UNICODE, UNICODE], {}),
        ("special_characters", [SPECIAL], {}),
        ("special_characters_system", [{"role": "system", "content": SPECIAL["content"]}, U1], {}),
        ("null_keys_dropped", [{"role": "user", "content": "hi", "name": None}], {}),
    ]


def qwen3_cases():
    think_hist = [
        U1,
        {"role": "assistant", "content": "<think>\nThe user asks about France.\n</think>\n\nParis."},
        U2,
        {"role": "assistant", "content": "<think>Germany -> Berlin</think>Berlin."},
    ]
    return [
        ("enable_thinking_false", [SYS, U1], {"enable_thinking": False}),
        ("enable_thinking_true", [SYS, U1], {"enable_thinking": True}),
        ("enable_thinking_false_no_prompt", [U1, A1], {"enable_thinking": False, "add_generation_prompt": False}),
        ("think_in_content_history", think_hist, {"add_generation_prompt": False}),
        ("think_in_content_then_prompt", think_hist + [{"role": "user", "content": "Thanks"}], {}),
        (
            "reasoning_content_field",
            [U1, {"role": "assistant", "content": "Paris.", "reasoning_content": "\nEasy: Paris.\n"}],
            {"add_generation_prompt": False},
        ),
        ("thinking_field_alias", [U1, {"role": "assistant", "content": "Paris.", "thinking": "Recall capitals."}], {}),
        ("tools_only", [SYS, U1], {"tools": [WEATHER_TOOL, TIME_TOOL]}),
        ("tools_no_system", [U1], {"tools": [WEATHER_TOOL]}),
        ("tool_call_and_response", TOOL_CALL_MSGS, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
        ("multi_tool_calls", MULTI_TOOL_MSGS, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
        ("multi_tool_calls_thinking_off", MULTI_TOOL_MSGS, {"tools": [WEATHER_TOOL, TIME_TOOL], "enable_thinking": False}),
        ("system_not_first", [U1, {"role": "system", "content": "Be brief."}, U2], {}),
    ]


def gemma3_cases():
    return [
        (
            "content_parts",
            [
                {"role": "system", "content": [{"type": "text", "text": "  Describe images.  "}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is this? "}]},
            ],
            {},
        ),
        ("roles_must_alternate", [U1, U2], {}),
        ("assistant_first_is_error", [A1], {}),
    ]


def llama3_1_cases():
    return [("tools_ignored_by_template", [SYS, U1], {"tools": [WEATHER_TOOL]})]


def kvrun_tools_cases():
    return [
        ("dated_no_tools", [SYS, U1], {}),
        ("date_string_given", [U1], {"date_string": "01 Jan 2025"}),
        ("tools_and_calls", TOOL_CALL_MSGS, {"tools": [WEATHER_TOOL, TIME_TOOL]}),
        ("unicode_parts", [{"role": "user", "content": [{"type": "text", "text": "图片"}, {"type": "image"}, {"type": "text", "text": "😀"}]}], {}),
    ]


def render(tok, messages, opts, chat_template=None):
    kwargs = dict(opts)
    add = kwargs.pop("add_generation_prompt", True)
    tools = kwargs.pop("tools", None)
    try:
        return {"expected": tok.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add, tokenize=False, chat_template=chat_template, **kwargs)}
    except Exception as e:  # raise_exception() in the template
        return {"error": str(e)}


def main():
    templates, cases = {}, []
    for name in TOKENIZERS:
        tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, ".deps", "tokenizers", name))
        templates[name] = {"source": tok.chat_template, "special_tokens": dict(tok.special_tokens_map)}
        extra = {"qwen3": qwen3_cases, "gemma3": gemma3_cases, "llama3_1": llama3_1_cases}.get(name, lambda: [])()
        for case, messages, opts in common_cases() + extra:
            cases.append({"template": name, "name": case, "messages": messages, "options": opts,
                          **render(tok, messages, opts)})
        if name == "llama3_1":
            templates["kvrun_tools"] = {"source": KVRUN_TOOLS_TEMPLATE, "special_tokens": dict(tok.special_tokens_map)}
            for case, messages, opts in common_cases() + kvrun_tools_cases():
                cases.append({"template": "kvrun_tools", "name": case, "messages": messages, "options": opts,
                              **render(tok, messages, opts, KVRUN_TOOLS_TEMPLATE)})
    import transformers
    import jinja2
    doc = {
        "generator": "tools/make_template_goldens.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "strftime_now": FIXED_NOW.isoformat(),
        "templates": templates,
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum("error" in c for c in cases)
    print(f"wrote {OUT}: {len(cases)} cases ({errors} expected errors) over {len(templates)} templates", file=sys.stderr)


if __name__ == "__main__":
    main()
