"""The newer tool-call families (qwen3_coder, harmony, gemma, nemotron, pythonic), the
Llama 3 and Mistral forms, argument coercion, cut calls and max_calls (kronk.parsers).

Each case is an output as the model prints it. Every case is checked three ways:
whole-text parse, streamed in two pieces cut at every character boundary, and
streamed one character at a time; all must give the same content, reasoning, calls
and cut flag.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from kronk.engine.templates import BUILTIN_TEMPLATES
from kronk.parsers import (
    TOOL_PARSERS,
    OutputParser,
    ReasoningParser,
    StreamEvent,
    get_tool_parser,
    guess_tool_parser,
    output_parser,
)
from kronk.parsers.coerce import Coercer, coerce_value

ID_RE = re.compile(r"call_[A-Za-z0-9]{24}")


def fn(name: str, **props: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": props}},
    }


TOOLS = [
    fn(
        "get_weather",
        city={"type": "string"},
        unit={"type": "string", "enum": ["celsius", "fahrenheit"]},
        days={"type": "integer"},
        metric={"type": "boolean"},
        hours={"type": "array", "items": {"type": "integer"}},
        options={"type": "object", "properties": {"lang": {"type": "string"}, "limit": {"type": "number"}}},
    ),
    fn("get_time", tz={"type": "string"}),
    fn("write_file", path={"type": "string"}, content={"type": "string"}),
]
NAMES = [t["function"]["name"] for t in TOOLS]

W = '{"city": "Paris", "unit": "celsius"}'
T = '{"tz": "Europe/Paris"}'


@dataclass
class Case:
    id: str
    family: str
    text: str
    content: str | None
    calls: list[tuple[str, str]]
    reasoning: str | None = None
    cut: bool = False
    kw: dict[str, Any] = field(default_factory=dict)
    # where a stream can't match the whole text (JSON that breaks after a call's name and
    # its arguments' "{" were sent): what every split streams instead
    stream: tuple[str | None, str | None, list[tuple[str, str]], bool] | None = None


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


# -- recorded outputs ----------------------------------------------------------------------

QWEN_ONE = (
    "I'll check the current weather in Paris for you.\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=unit>\ncelsius\n</parameter>\n</function>\n</tool_call>"
)
QWEN_TWO = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\n"
    "<tool_call>\n<function=get_time>\n<parameter=tz>\nEurope/Paris\n</parameter>\n</function>\n</tool_call>"
)
QWEN_CODE = (
    "<tool_call>\n<function=write_file>\n<parameter=path>\nhello.py\n</parameter>\n<parameter=content>\n"
    'def main():\n    print("a < b </para")\n\n\nif __name__ == "__main__":\n    main()\n'
    "</parameter>\n</function>\n</tool_call>"
)
QWEN_TYPED = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n"
    "<parameter=hours>\n[9, 12]\n</parameter>\n"
    '<parameter=options>\n{"lang": "fr", "limit": "5"}\n</parameter>\n</function>\n</tool_call>'
)

# the headers of calls to get_weather and get_time
HW = "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
HT = "<|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>"
HARMONY_CALL = (
    "<|channel|>analysis<|message|>The user asks for the weather in Paris. We have a get_weather "
    "function. Let's call it.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather "
    '<|constrain|>json<|message|>{"city":"Paris","unit":"celsius"}<|call|>'
)
HARMONY_FINAL = (
    "<|channel|>analysis<|message|>Simple greeting; respond politely.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello! How can I help you today?<|return|>"
)
HARMONY_TO_FIRST = (
    "<|channel|>analysis<|message|>Need the time.<|end|>"
    '<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{"tz": "Europe/Paris"}<|call|>'
)
HARMONY_TWO = (
    "<|channel|>analysis<|message|>Two lookups.<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>Let me look both up.<|end|>"
    + HW
    + '{"city":"Paris"}<|call|>'
    + HT
    + '{"tz":"Europe/Paris"}<|call|>'
)

GEMMA_ONE = 'I will check the weather for you.\n```tool_code\nget_weather(city="Paris", unit="celsius")\n```'
GEMMA_TWO = '```tool_code\nget_weather(city="Paris")\nget_time(tz="Europe/Paris")\n```'
GEMMA_LIST = '[get_weather(city="Paris", unit="celsius"), get_time(tz="Europe/Paris")]'
GEMMA_PRINT = '```tool_code\nprint(default_api.get_time(tz="Europe/Paris"))\n```'

NEMOTRON_ONE = f'<TOOLCALL>[{{"name": "get_weather", "arguments": {W}}}]</TOOLCALL>'
NEMOTRON_TWO = (
    f'<TOOLCALL>[{{"name": "get_weather", "arguments": {W}}}, {{"name": "get_time", "arguments": {T}}}]</TOOLCALL>'
)

CASES: list[Case] = [
    # qwen3_coder
    Case("qwen-one", "qwen3_coder", QWEN_ONE, "I'll check the current weather in Paris for you.", [("get_weather", W)]),
    Case("qwen-two", "qwen3_coder", QWEN_TWO, None, [("get_weather", '{"city": "Paris"}'), ("get_time", T)]),
    Case(
        "qwen-code",
        "qwen3_coder",
        QWEN_CODE,
        None,
        [
            (
                "write_file",
                dumps(
                    {
                        "path": "hello.py",
                        "content": 'def main():\n    print("a < b </para")\n\n\nif __name__ == "__main__":\n    main()',
                    }
                ),
            )
        ],
    ),
    Case(
        "qwen-typed",
        "qwen3_coder",
        QWEN_TYPED,
        None,
        [
            (
                "get_weather",
                dumps(
                    {
                        "city": "Paris",
                        "days": 3,
                        "metric": True,
                        "hours": [9, 12],
                        "options": {"lang": "fr", "limit": 5},
                    }
                ),
            )
        ],
        kw={"tools": TOOLS},
    ),
    Case(  # without schemas the values stay text
        "qwen-untyped",
        "qwen3_coder",
        QWEN_TYPED,
        None,
        [
            (
                "get_weather",
                dumps(
                    {
                        "city": "Paris",
                        "days": "3",
                        "metric": "true",
                        "hours": "[9, 12]",
                        "options": '{"lang": "fr", "limit": "5"}',
                    }
                ),
            )
        ],
    ),
    Case(
        "qwen-no-wrapper",
        "qwen3_coder",
        "<function=get_time>\n<parameter=tz>\nEurope/Paris\n</parameter>\n</function>",
        None,
        [("get_time", T)],
    ),
    Case(
        "qwen-no-close-param",
        "qwen3_coder",
        "<tool_call>\n<function=get_time>\n<parameter=tz>\nEurope/Paris\n</function>\n</tool_call>",
        None,
        [("get_time", T)],
    ),
    Case(
        "qwen-json",
        "qwen3_coder",
        f'<tool_call>\n{{"name": "get_weather", "arguments": {W}}}\n</tool_call>',
        None,
        [("get_weather", W)],
    ),
    Case(
        "qwen-malformed-name",
        "qwen3_coder",
        "<tool_call>\n<function=get weather>\n</function>\n</tool_call>",
        "<tool_call>\n<function=get weather>\n</function>\n</tool_call>",
        [],
    ),
    Case(
        "qwen-malformed-body",
        "qwen3_coder",
        "<tool_call>\n<function=get_time>\noops\n</function>\n</tool_call>",
        "<tool_call>\n<function=get_time>\noops\n</function>\n</tool_call>",
        [],
    ),
    Case(
        "qwen-cut-value",
        "qwen3_coder",
        "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
        "Sure.",
        [("get_weather", '{"city": "Par"}')],
        cut=True,
    ),
    Case(
        "qwen-cut-endtag",
        "qwen3_coder",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</param",
        None,
        [("get_weather", '{"city": "Paris"}')],
        cut=True,
    ),
    Case("qwen-cut-name", "qwen3_coder", "Sure.\n<tool_call>\n<function=get_wea", "Sure.", [], cut=True),
    Case(
        "qwen-cut-typed",
        "qwen3_coder",
        "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n",
        None,
        [("get_weather", '{"days": 3}')],
        cut=True,
        kw={"tools": TOOLS},
    ),
    Case("qwen-partial-opener", "qwen3_coder", "Let me check <tool_ca", "Let me check <tool_ca", []),
    Case(
        "qwen-max1",
        "qwen3_coder",
        QWEN_TWO + "\nDone.",
        None,
        [("get_weather", '{"city": "Paris"}')],
        kw={"max_calls": 1},
    ),
    # harmony
    Case(
        "harmony-call",
        "harmony",
        HARMONY_CALL,
        None,
        [("get_weather", '{"city":"Paris","unit":"celsius"}')],
        reasoning="The user asks for the weather in Paris. We have a get_weather function. Let's call it.",
    ),
    Case(
        "harmony-final",
        "harmony",
        HARMONY_FINAL,
        "Hello! How can I help you today?",
        [],
        reasoning="Simple greeting; respond politely.",
    ),
    Case(
        "harmony-final-no-return",
        "harmony",
        HARMONY_FINAL.removesuffix("<|return|>"),
        "Hello! How can I help you today?",
        [],
        reasoning="Simple greeting; respond politely.",
    ),
    Case(
        "harmony-to-first",
        "harmony",
        HARMONY_TO_FIRST,
        None,
        [("get_time", '{"tz": "Europe/Paris"}')],
        reasoning="Need the time.",
    ),
    Case(
        "harmony-two",
        "harmony",
        HARMONY_TWO,
        "Let me look both up.",
        [("get_weather", '{"city":"Paris"}'), ("get_time", '{"tz":"Europe/Paris"}')],
        reasoning="Two lookups.",
    ),
    Case(
        "harmony-two-analysis",
        "harmony",
        "<|channel|>analysis<|message|>First.<|end|><|start|>assistant<|channel|>analysis<|message|>Second.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Done.",
        "Done.",
        [],
        reasoning="First.\n\nSecond.",
    ),
    Case(
        "harmony-plain", "harmony", "No markup at all, < and | and <| too.", "No markup at all, < and | and <| too.", []
    ),
    Case(  # arguments that are not JSON: the header names the call, so it stands, text as written
        "harmony-malformed",
        "harmony",
        HW + '{"city": Paris}<|call|>',
        None,
        [("get_weather", '{"city": Paris}')],
    ),
    Case(
        "harmony-typed",
        "harmony",
        HW.removeprefix("<|start|>assistant") + '{"city":"Paris","days":"3","metric":"false"}<|call|>',
        None,
        [("get_weather", '{"city": "Paris", "days": 3, "metric": false}')],
        kw={"tools": TOOLS},
    ),
    Case(
        "harmony-cut-args",
        "harmony",
        "<|channel|>analysis<|message|>Call it.<|end|>" + HW + '{"city":"Par',
        None,
        [("get_weather", '{"city":"Par')],
        reasoning="Call it.",
        cut=True,
    ),
    Case(
        "harmony-cut-header",
        "harmony",
        "<|channel|>analysis<|message|>Call it.<|end|>" + HT.removesuffix("json<|message|>")[:-4],
        None,
        [("get_time", "{}")],
        reasoning="Call it.",
        cut=True,
    ),
    Case(
        "harmony-cut-analysis",
        "harmony",
        "<|channel|>analysis<|message|>The user wants the wea",
        "",
        [],
        reasoning="The user wants the wea",
    ),
    Case(
        "harmony-max1",
        "harmony",
        HARMONY_TWO,
        "Let me look both up.",
        [("get_weather", '{"city":"Paris"}')],
        reasoning="Two lookups.",
        kw={"max_calls": 1},
    ),
    # gemma
    Case("gemma-one", "gemma", GEMMA_ONE, "I will check the weather for you.", [("get_weather", W)]),
    Case("gemma-two", "gemma", GEMMA_TWO, None, [("get_weather", '{"city": "Paris"}'), ("get_time", T)]),
    Case("gemma-list", "gemma", GEMMA_LIST, None, [("get_weather", W), ("get_time", T)], kw={"tool_names": NAMES}),
    Case("gemma-print", "gemma", GEMMA_PRINT, None, [("get_time", T)]),
    Case(
        "gemma-json-fence",
        "gemma",
        f'```json\n{{"name": "get_weather", "parameters": {W}}}\n```',
        None,
        [("get_weather", W)],
    ),
    Case(
        "gemma-typed",
        "gemma",
        '```tool_code\nget_weather(city="Paris", days="3", metric=true)\n```',
        None,
        [("get_weather", '{"city": "Paris", "days": 3, "metric": true}')],
        kw={"tools": TOOLS},
    ),
    Case(
        "gemma-plain",
        "gemma",
        "The capital of France is Paris.",
        "The capital of France is Paris.",
        [],
        kw={"tools": TOOLS},
    ),
    Case(
        "gemma-plain-code",
        "gemma",
        "Here you go:\n```python\nprint(max([1, 2]))\n```\nSee [the docs](https://x.y) and [1, 2, 3].",
        "Here you go:\n```python\nprint(max([1, 2]))\n```\nSee [the docs](https://x.y) and [1, 2, 3].",
        [],
        kw={"tools": TOOLS},
    ),
    Case(
        "gemma-list-unknown-name",
        "gemma",
        "[sorted(key=len)] is a list.",
        "[sorted(key=len)] is a list.",
        [],
        kw={"tools": TOOLS},
    ),
    Case(
        "gemma-malformed",
        "gemma",
        '```tool_code\nget_weather("Paris")\n```',
        '```tool_code\nget_weather("Paris")\n```',
        [],
    ),
    Case(
        "gemma-cut",
        "gemma",
        '```tool_code\nget_weather(city="Paris", unit="cel',
        None,
        [("get_weather", W.replace("celsius", "cel"))],
        cut=True,
    ),
    Case(
        "gemma-cut-list",
        "gemma",
        '[get_weather(city="Paris"), get_time(tz="Eur',
        None,
        [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "Eur"}')],
        cut=True,
        kw={"tools": TOOLS},
    ),
    Case("gemma-cut-prose", "gemma", "The list is [len(x", "The list is [len(x", [], kw={"tools": TOOLS}),
    Case(
        "gemma-max1",
        "gemma",
        GEMMA_TWO + "\nThat's all.",
        None,
        [("get_weather", '{"city": "Paris"}')],
        kw={"max_calls": 1},
    ),
    # nemotron
    Case("nemotron-one", "nemotron", NEMOTRON_ONE, None, [("get_weather", W)]),
    Case("nemotron-two", "nemotron", NEMOTRON_TWO, None, [("get_weather", W), ("get_time", T)]),
    Case("nemotron-before", "nemotron", "Checking.\n" + NEMOTRON_ONE, "Checking.", [("get_weather", W)]),
    Case(
        "nemotron-malformed",
        "nemotron",
        '<TOOLCALL>[{"name": get_weather, "arguments": {"city": "Paris"}}]</TOOLCALL>',
        '<TOOLCALL>[{"name": get_weather, "arguments": {"city": "Paris"}}]</TOOLCALL>',
        [],
    ),
    Case(  # broken inside the arguments: whole text is content; a stream had sent the call
        "nemotron-malformed-args",
        "nemotron",
        '<TOOLCALL>[{"name": "get_weather", "arguments": {city: "Paris"}}]</TOOLCALL>',
        '<TOOLCALL>[{"name": "get_weather", "arguments": {city: "Paris"}}]</TOOLCALL>',
        [],
        stream=('city: "Paris"}}]</TOOLCALL>', None, [("get_weather", "{")], False),
    ),
    Case(
        "nemotron-typed",
        "nemotron",
        '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}}]</TOOLCALL>',
        None,
        [("get_weather", '{"city": "Paris", "days": 3}')],
        kw={"tools": TOOLS},
    ),
    Case(
        "nemotron-cut",
        "nemotron",
        '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Pa',
        None,
        [("get_weather", '{"city": "Pa')],
        cut=True,
    ),
    Case(
        "nemotron-cut-second",
        "nemotron",
        f'<TOOLCALL>[{{"name": "get_weather", "arguments": {W}}}, {{"name": "get_time", "argu',
        None,
        [("get_weather", W), ("get_time", "{}")],
        cut=True,
    ),
    Case("nemotron-max1", "nemotron", NEMOTRON_TWO, None, [("get_weather", W)], kw={"max_calls": 1}),
    # pythonic (Llama 3.2 / 4)
    Case(
        "pythonic-two",
        "pythonic",
        '[get_weather(city="Paris", unit="celsius"), get_time(tz="Europe/Paris")]',
        None,
        [("get_weather", W), ("get_time", T)],
    ),
    Case(
        "pythonic-llama4",
        "pythonic",
        '<|python_start|>[get_time(tz="Europe/Paris")]<|python_end|>',
        None,
        [("get_time", T)],
    ),
    Case(
        "pythonic-cut",
        "pythonic",
        '<|python_start|>[get_time(tz="Europe/Pa',
        None,
        [("get_time", '{"tz": "Europe/Pa"}')],
        cut=True,
    ),
    # llama3: <|python_tag|> and bare JSON with "parameters"
    Case(
        "llama3-tag",
        "llama3",
        f'<|python_tag|>{{"name": "get_weather", "parameters": {W}}}<|eom_id|>',
        None,
        [("get_weather", W)],
    ),
    Case(
        "llama3-two",
        "llama3",
        f'{{"name": "get_weather", "parameters": {W}}}; {{"name": "get_time", "parameters": {T}}}',
        None,
        [("get_weather", W), ("get_time", T)],
    ),
    Case("llama3-bare", "llama3", f'{{"name": "get_weather", "parameters": {W}}}', None, [("get_weather", W)]),
    Case(
        "llama3-typed",
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": "3"}}',
        None,
        [("get_weather", '{"city": "Paris", "days": 3}')],
        kw={"tools": TOOLS},
    ),
    Case(
        "llama3-cut",
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "Pa',
        None,
        [("get_weather", '{"city": "Pa')],
        cut=True,
    ),
    Case("llama3-cut-before-args", "llama3", '{"name": "get_weather", "param', '{"name": "get_weather", "param', []),
    Case(
        "llama3-max1",
        "llama3",
        f'{{"name": "get_weather", "parameters": {W}}}; {{"name": "get_time", "parameters": {T}}}',
        None,
        [("get_weather", W)],
        kw={"max_calls": 1},
    ),
    # mistral: both forms
    Case(
        "mistral-array",
        "mistral",
        f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {W}}}, {{"name": "get_time", "arguments": {T}}}]',
        None,
        [("get_weather", W), ("get_time", T)],
    ),
    Case(
        "mistral-args",
        "mistral",
        f"[TOOL_CALLS]get_weather[ARGS]{W}[TOOL_CALLS]get_time[ARGS]{T}",
        None,
        [("get_weather", W), ("get_time", T)],
    ),
    Case(
        "mistral-cut",
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Pa',
        None,
        [("get_weather", '{"city": "Pa')],
        cut=True,
    ),
    Case("mistral-cut-name", "mistral", "[TOOL_CALLS]get_wea", "", [], cut=True),
    Case("mistral-one", "mistral", f"[TOOL_CALLS]get_weather[ARGS]{W}", None, [("get_weather", W)]),
    Case(
        "mistral-typed",
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "hours": "[9, 12]"}',
        None,
        [("get_weather", '{"city": "Paris", "hours": [9, 12]}')],
        kw={"tools": TOOLS},
    ),
    Case(
        "mistral-max1",
        "mistral",
        f"[TOOL_CALLS]get_weather[ARGS]{W}[TOOL_CALLS]get_time[ARGS]{T}",
        None,
        [("get_weather", W)],
        kw={"max_calls": 1},
    ),
    # hermes: coercion, max_calls and cuts on the existing family
    Case(
        "hermes-typed",
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}}\n</tool_call>',
        None,
        [("get_weather", '{"city": "Paris", "days": 3}')],
        kw={"tools": TOOLS},
    ),
    Case(
        "hermes-max1",
        "hermes",
        f'<tool_call>\n{{"name": "get_weather", "arguments": {W}}}\n</tool_call>\n'
        f'<tool_call>\n{{"name": "get_time", "arguments": {T}}}\n</tool_call>\nDone.',
        None,
        [("get_weather", W)],
        kw={"max_calls": 1},
    ),
    Case("hermes-cut-opener-only", "hermes", "Checking.\n<tool_call>\n", "Checking.", [], cut=True),
]


# -- helpers -------------------------------------------------------------------------------


def parser_for(case: Case) -> OutputParser:
    return OutputParser(tools=get_tool_parser(case.family, **case.kw))


def assemble(events: list[StreamEvent]) -> tuple[str, str, list[tuple[str, str]]]:
    """(content, reasoning, [(name, arguments)]) of stream events, checking their OpenAI shape."""
    content, reasoning = "", ""
    calls: list[list[str]] = []
    for ev in events:
        assert [ev.content, ev.reasoning, ev.tool_call].count(None) == 2
        if ev.content is not None:
            assert ev.content
            content += ev.content
        elif ev.reasoning is not None:
            assert ev.reasoning
            reasoning += ev.reasoning
        else:
            tc = ev.tool_call
            assert tc is not None
            if "id" in tc:
                assert tc["index"] == len(calls) and ID_RE.fullmatch(tc["id"]) and tc["type"] == "function"
                assert tc["function"]["arguments"] == "" and tc["function"]["name"]
                calls.append([tc["function"]["name"], ""])
            else:
                assert tc["index"] == len(calls) - 1 and set(tc) == {"index", "function"}
                assert tc["function"]["arguments"]
                calls[-1][1] += tc["function"]["arguments"]
    return content, reasoning, [(n, a) for n, a in calls]


def streamed(parser: OutputParser, pieces: list[str]) -> tuple[str | None, str | None, list[tuple[str, str]], bool]:
    stream = parser.stream()
    events: list[StreamEvent] = []
    for p in pieces:
        events += stream.feed(p)
    events += stream.finish()
    content, reasoning, calls = assemble(events)
    return (None if calls and not content.strip() else content), reasoning or None, calls, stream.cut_call


def whole(parser: OutputParser, text: str) -> tuple[str | None, str | None, list[tuple[str, str]], bool]:
    out = parser.parse(text)
    for c in out.tool_calls:
        assert ID_RE.fullmatch(c.id or "")
    calls = [(c.function.name, c.function.arguments) for c in out.tool_calls]
    return out.content, out.reasoning_content, calls, out.cut_call


Result = tuple[str | None, str | None, list[tuple[str, str]], bool]


def check_everywhere(parser: OutputParser, text: str, stream: Result | None = None) -> Result:
    """The whole-text result, after checking that streaming gives the same (or ``stream``)
    at every two-piece split and one character at a time."""
    got = whole(parser, text)
    ref = got if stream is None else stream
    for i in range(len(text) + 1):
        assert streamed(parser, [text[:i], text[i:]]) == ref, (text[:i], text[i:])
    assert streamed(parser, list(text)) == ref, "char by char"
    return got


# -- the cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_whole_and_streamed_at_every_split(case: Case) -> None:
    got = check_everywhere(parser_for(case), case.text, case.stream)
    assert got == (case.content, case.reasoning, case.calls, case.cut)


@pytest.mark.parametrize("family", ["qwen3_coder", "harmony", "gemma", "nemotron", "llama3", "mistral"])
def test_every_family_has_all_kinds_of_case(family: str) -> None:
    mine = [c for c in CASES if c.family == family]
    assert any(len(c.calls) == 1 and not c.cut and not c.kw for c in mine), "complete parse"
    assert any(len(c.calls) == 2 for c in mine), "two calls in one turn"
    assert any(c.cut and c.calls for c in mine), "cut by max_tokens"
    assert any("tools" in c.kw and not c.cut for c in mine), "coercion"
    assert any(c.kw.get("max_calls") == 1 for c in mine), "max_calls=1"
    if family not in ("llama3", "mistral"):  # theirs are in test_parsers.py
        assert any("malformed" in c.id for c in mine)


def test_new_families_are_listed() -> None:
    for name in ("qwen3_coder", "harmony", "gemma", "nemotron", "pythonic"):
        assert name in TOOL_PARSERS


# -- streaming details ---------------------------------------------------------------------


def test_coerced_arguments_are_sent_once_complete_others_while_written() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}}</tool_call>'
    cut = text.index('"Paris"') + 3
    typed = get_tool_parser("hermes", tools=TOOLS).stream()
    events = typed.feed(text[:cut])
    assert [e.tool_call["function"] for e in events if e.tool_call] == [{"name": "get_weather", "arguments": ""}]
    rest = typed.feed(text[cut:]) + typed.finish()
    assert [e.tool_call["function"]["arguments"] for e in rest if e.tool_call] == ['{"city": "Paris", "days": 3}']
    # a tool whose properties are all strings streams its arguments as written
    plain = get_tool_parser("hermes", tools=TOOLS).stream()
    text2 = text.replace("get_weather", "get_time").replace('"city": "Paris", "days": "3"', '"tz": "Europe/Paris"')
    events = plain.feed(text2[: text2.index("Europe") + 3])
    assert [e.tool_call["function"]["arguments"] for e in events if e.tool_call][-1] == '{"tz": "Eur'


def test_harmony_streams_reasoning_and_arguments_as_written() -> None:
    stream = output_parser("harmony", TOOLS[1:2]).stream()  # get_time: no coercion
    got = stream.feed("<|channel|>analysis<|message|>Thinking ab")
    assert [e.reasoning for e in got] == ["Thinking ab"]
    got = stream.feed("out it.<|end|>" + HT + '{"tz": "Eu')
    assert got[0].reasoning == "out it."
    assert got[1].tool_call["function"]["name"] == "get_time"  # type: ignore[index]
    assert got[2].tool_call["function"]["arguments"] == '{"tz": "Eu'  # type: ignore[index]
    got = stream.feed('rope/Paris"}<|call|>') + stream.finish()
    assert [e.tool_call["function"]["arguments"] for e in got if e.tool_call] == ['rope/Paris"}']
    assert not stream.cut_call


def test_output_parser_with_harmony_ignores_the_think_parser() -> None:
    parser = OutputParser(tools=get_tool_parser("harmony"), reasoning=ReasoningParser())
    out = parser.parse(HARMONY_FINAL)
    assert (out.reasoning_content, out.content) == (
        "Simple greeting; respond politely.",
        "Hello! How can I help you today?",
    )


def test_output_parser_factory() -> None:
    # harmony without tools: still split into channels, markup never content
    out = output_parser("harmony").parse(HARMONY_FINAL)
    assert (out.reasoning_content, out.content, out.tool_calls) == (
        "Simple greeting; respond politely.",
        "Hello! How can I help you today?",
        [],
    )
    # no tools: no tool parsing at all (the text is content), <think> when asked
    text = f'<think>\nHmm.\n</think>\n\n<tool_call>{{"name": "get_time", "arguments": {T}}}</tool_call>'
    out = output_parser("hermes", None, reasoning=True).parse(text)
    assert out.reasoning_content == "Hmm." and out.tool_calls == [] and out.content.startswith("<tool_call>")
    out = output_parser("hermes", TOOLS, reasoning=True).parse(text)
    assert out.reasoning_content == "Hmm." and [c.function.name for c in out.tool_calls] == ["get_time"]
    two = text + f'<tool_call>{{"name": "get_weather", "arguments": {W}}}</tool_call>'
    assert len(output_parser("hermes", TOOLS).parse(two).tool_calls) == 2
    assert len(output_parser("hermes", TOOLS, parallel_tool_calls=False).parse(two).tool_calls) == 1
    assert (
        output_parser("qwen3_coder", TOOLS, starts_in_reasoning=True, reasoning=True)
        .parse("a</think>b")
        .reasoning_content
        == "a"
    )


def test_cut_call_streamed_state() -> None:
    stream = parser_for(Case("", "hermes", "", None, [])).stream()
    stream.feed('<tool_call>{"name": "get_time", "arguments": {"tz": "Eu')
    assert not stream.cut_call  # not known until the end
    events = stream.finish()
    assert stream.cut_call and not any(e.content for e in events)


def test_tool_names_still_work_and_max_calls_is_checked() -> None:
    p = get_tool_parser("generic", ["get_time"])
    assert p.parse('{"name": "get_weather", "arguments": {}}').tool_calls == []
    assert len(p.parse('{"name": "get_time", "arguments": {}}').tool_calls) == 1
    with pytest.raises(ValueError, match="max_calls"):
        get_tool_parser("hermes", max_calls=0)


# -- coercion ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "schema", "expected"),
    [
        ("42", {"type": "integer"}, 42),
        ("-7", {"type": "number"}, -7),
        ("2.5", {"type": "number"}, 2.5),
        ("2.5", {"type": "integer"}, "2.5"),
        ("true", {"type": "boolean"}, True),
        ("False", {"type": "boolean"}, False),
        ("yes", {"type": "boolean"}, "yes"),
        ("42", {"type": "string"}, "42"),
        ("42", {"type": ["integer", "string"]}, "42"),
        ("42", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, 42),
        ("null", {"type": ["integer", "null"]}, None),
        ('{"a": 1}', {"type": "object"}, {"a": 1}),
        ("[1, 2]", {"type": "array"}, [1, 2]),
        ("[1, 2]", {"type": "object"}, "[1, 2]"),
        ("{not json", {"type": "object"}, "{not json"),
        ("nan", {"type": "number"}, "nan"),
        ("42", {}, "42"),
        ("42", None, "42"),
        (["1", "2"], {"type": "array", "items": {"type": "integer"}}, [1, 2]),
        ({"n": "3", "s": "3"}, {"type": "object", "properties": {"n": {"type": "integer"}}}, {"n": 3, "s": "3"}),
        (3, {"type": "string"}, 3),
    ],
)
def test_coerce_value(value: Any, schema: Any, expected: Any) -> None:
    got = coerce_value(value, schema)
    assert got == expected and type(got) is type(expected)


def test_coercer_keeps_text_when_nothing_changes() -> None:
    c = Coercer(TOOLS)
    assert c.needs("get_weather") and not c.needs("get_time") and not c.needs("nope")
    text = '{"city":"Paris",  "days": 3}'
    assert c.arguments("get_weather", text) == text  # same value: the model's own text
    assert c.arguments("get_weather", '{"days": "3"}') == '{"days": 3}'
    assert c.arguments("get_weather", '{"days": "3"') == '{"days": "3"'  # not JSON: as it is
    assert c.arguments("get_time", '{"tz": 1}') == '{"tz": 1}'
    Coercer([{"type": "function"}, "junk", {"function": {"name": "x", "parameters": "bad"}}])  # type: ignore[list-item]


# -- choosing a family ---------------------------------------------------------------------

QWEN3_CODER_TEMPLATE = (
    "{%- if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n</function>\n</tool_call>{% endif %}"
)
GPT_OSS_TEMPLATE = "{{- '<|start|>assistant<|channel|>final<|message|>' }}{% for t in tools %}{% endfor %}"
GEMMA_TOOLS_TEMPLATE = (
    "{% if tools %}{{ tools | tojson }}{% endif %}<start_of_turn>user\n{{ messages[0].content }}<end_of_turn>"
)
NEMOTRON_TEMPLATE = (
    "{% if tools %}<AVAILABLE_TOOLS>{{ tools | tojson }}</AVAILABLE_TOOLS>{% endif %}<TOOLCALL>[...]</TOOLCALL>"
)


@pytest.mark.parametrize(
    ("model", "template", "kw", "family"),
    [
        ("my-model", QWEN3_CODER_TEMPLATE, {}, "qwen3_coder"),  # before hermes' <tool_call>
        ("my-model", GPT_OSS_TEMPLATE, {}, "harmony"),
        ("my-model", GEMMA_TOOLS_TEMPLATE, {}, "gemma"),
        ("my-model", NEMOTRON_TEMPLATE, {}, "nemotron"),
        ("my-model", "<|python_start|>", {}, "pythonic"),
        ("unknown", BUILTIN_TEMPLATES["gemma"], {}, "generic"),  # Gemma's turns without tools
        ("my-model", "{% for t in tools %}<function=x>{% endfor %}", {}, "generic"),  # <function= alone
        ("Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf", None, {}, "qwen3_coder"),
        ("Qwen3-8B", None, {}, "hermes"),
        ("gpt-oss-20b", None, {}, "harmony"),
        ("gemma-3-12b-it", None, {}, "gemma"),
        ("Llama-3.1-Nemotron-Nano-8B-v1", None, {}, "nemotron"),
        ("Llama-4-Scout-17B-16E-Instruct", None, {}, "pythonic"),
        ("Meta-Llama-3.1-8B-Instruct", None, {}, "llama3"),
        ("model.gguf", None, {"gguf_name": "Qwen3 Coder 30B A3B Instruct"}, "qwen3_coder"),
        ("model.gguf", None, {"gguf_name": "Model", "architecture": "gpt-oss"}, "harmony"),
        ("model.gguf", None, {"architecture": "gemma3"}, "gemma"),
        ("model.gguf", None, {"architecture": "llama"}, "generic"),
        ("gemma-3-270m", QWEN3_CODER_TEMPLATE, {}, "qwen3_coder"),  # the template outranks the name
    ],
)
def test_guess_tool_parser_new_families(model: str, template: str | None, kw: dict[str, Any], family: str) -> None:
    assert guess_tool_parser(model, template, **kw) == family
    assert guess_tool_parser(model, template) in TOOL_PARSERS


# -- any text ------------------------------------------------------------------------------

FRAGMENTS = [
    *("<tool_call>", "</tool_call>", "<function=", "get_weather>", "<parameter=", "city>", "\nParis\n"),
    *("</parameter>", "</function>", "<TOOLCALL>", "</TOOLCALL>", "```tool_code\n", "```", "<|python_start|>"),
    *("<|start|>", "assistant", "<|channel|>", "analysis", "final", "commentary", " to=functions.get_time "),
    *("<|constrain|>", "json", "<|message|>", "<|end|>", "<|call|>", "<|return|>", "<|python_end|>"),
    *('get_weather(city="Paris")', "get_time(tz='x')", "[", "]", "(", ")", ",", '"', "'''", "=", "{", "}"),
    *('{"name": "get_time", "arguments": {"tz": "x"}}', '"arguments": {', "text", " ", "\n", "<", "<|", "ü"),
]


@pytest.mark.parametrize("family", ["qwen3_coder", "harmony", "gemma", "nemotron", "pythonic"])
def test_any_text_streams_the_same_at_any_split(family: str) -> None:
    """Random mixes of the new families' markers and prose: nothing raises, a reply with
    no calls (and not cut) loses no text (harmony drops its markup), and one delta, one
    character at a time and random pieces all give the same result."""
    import random

    rng = random.Random(f"families-{family}")
    for kw in ({}, {"tools": TOOLS}, {"max_calls": 1}):
        parser = OutputParser(tools=get_tool_parser(family, **kw))  # type: ignore[arg-type]
        for _ in range(100):
            text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 14)))
            content, _, calls, cut = whole(parser, text)
            if not calls and not cut and family != "harmony" and "max_calls" not in kw:
                assert content == text
            ref = streamed(parser, [text])
            pieces, i = [], 0
            while i < len(text):
                n = rng.randint(1, 6)
                pieces.append(text[i : i + n])
                i += n
            assert streamed(parser, list(text)) == ref, text
            assert streamed(parser, pieces) == ref, (text, pieces)


@pytest.mark.parametrize("family", ["qwen3_coder", "harmony", "gemma", "nemotron", "pythonic"])
def test_pathological_text_does_not_raise(family: str) -> None:
    parser = OutputParser(tools=get_tool_parser(family, tools=TOOLS))
    for text in (
        "[" * 3000 + "]" * 3000,
        "```tool_code\nf(a=" + "(" * 3000 + ")" * 3000 + ")\n```",
        "[f(a=" + "[" * 3000,
        "<tool_call><function=f><parameter=a>" + "x" * 50_000,
        "<|start|>" + "a" * 5000 + "<|message|>hi",
        "<|channel|>commentary to=functions.f<|message|>" + "{" * 3000,
    ):
        whole(parser, text)
        streamed(parser, [text[:7], text[7:]])
