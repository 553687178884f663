"""Tool-call parsers, reasoning parser and the prompt side of tools (kronk.parsers)."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from kronk.engine.templates import BUILTIN_TEMPLATES
from kronk.parsers import (
    TOOL_PARSERS,
    OutputParser,
    ReasoningParser,
    StreamEvent,
    get_tool_parser,
    guess_tool_parser,
    render_tools_system_prompt,
    template_supports_tools,
    tool_call_grammar_schema,
)
from kronk.parsers.families import DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN, DS_CALLS_END, DS_SEP

ID_RE = re.compile(r"call_[A-Za-z0-9]{24}")

W = '{"city": "Paris", "unit": "celsius"}'  # get_weather's arguments
T = '{"tz": "Europe/Paris"}'  # get_time's arguments
WEATHER = ("get_weather", W)
TIME = ("get_time", T)
PRE = "Let me look that up."


def hermes(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def ds_v3(name: str, args: str) -> str:
    return f"{DS_CALL_BEGIN}function{DS_SEP}{name}\n```json\n{args}\n```{DS_CALL_END}"


def ds_v31(name: str, args: str) -> str:
    return f"{DS_CALL_BEGIN}{name}{DS_SEP}{args}{DS_CALL_END}"


def obj(name: str, args: str, key: str = "arguments") -> str:
    return f'{{"name": "{name}", "{key}": {args}}}'


# (family, text, expected content, expected [(name, arguments)])
VALID: list[tuple[str, str, str | None, list[tuple[str, str]]]] = [
    ("hermes", hermes(*WEATHER), None, [WEATHER]),
    ("hermes", hermes(*WEATHER) + "\n" + hermes(*TIME), None, [WEATHER, TIME]),
    ("hermes", PRE + "\n\n" + hermes(*WEATHER), PRE, [WEATHER]),
    ("hermes", PRE + " " + hermes(*WEATHER) + "\nDone.", PRE + "Done.", [WEATHER]),
    ("hermes", '<tool_call>{"name": "now"}</tool_call>', None, [("now", "{}")]),
    ("hermes", hermes(*WEATHER).replace("</tool_call>", ""), None, [WEATHER]),
    ("llama3", obj(*WEATHER, key="parameters"), None, [WEATHER]),
    ("llama3", obj(*WEATHER, key="parameters") + "; " + obj(*TIME, key="parameters"), None, [WEATHER, TIME]),
    ("llama3", f"[{obj(*WEATHER, key='parameters')}, {obj(*TIME)}]", None, [WEATHER, TIME]),
    ("llama3", PRE + "<|python_tag|>" + obj(*WEATHER, key="parameters"), PRE, [WEATHER]),
    ("llama3", "<|python_tag|>" + obj(*WEATHER) + "<|python_tag|>" + obj(*TIME), None, [WEATHER, TIME]),
    (
        "llama3",
        '<|python_tag|>brave_search.call(query="weather in Paris")',
        None,
        [("brave_search", '{"query": "weather in Paris"}')],
    ),
    ("mistral", f"[TOOL_CALLS][{obj(*WEATHER)}]", None, [WEATHER]),
    ("mistral", f"[TOOL_CALLS][{obj(*WEATHER)}, {obj(*TIME)}]", None, [WEATHER, TIME]),
    ("mistral", f"[TOOL_CALLS]get_weather[ARGS]{W}", None, [WEATHER]),
    ("mistral", f"[TOOL_CALLS]get_weather[ARGS]{W}[TOOL_CALLS]get_time[ARGS]{T}", None, [WEATHER, TIME]),
    ("mistral", f"[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{W}", None, [WEATHER]),
    ("mistral", f"{PRE}[TOOL_CALLS]get_weather[ARGS]{W}", PRE, [WEATHER]),
    ("granite", f"<|tool_call|>[{obj(*WEATHER)}]", None, [WEATHER]),
    ("granite", f"<|tool_call|>[{obj(*WEATHER)}, {obj(*TIME)}]", None, [WEATHER, TIME]),
    ("granite", f"{PRE}\n<|tool_call|>[{obj(*WEATHER)}]", PRE, [WEATHER]),
    ("phi4", f"functools[{obj(*WEATHER)}]", None, [WEATHER]),
    ("phi4", f"functools[{obj(*WEATHER)}, {obj(*TIME)}]", None, [WEATHER, TIME]),
    ("phi4", f"{PRE} functools[{obj(*WEATHER)}]", PRE, [WEATHER]),
    ("deepseek", DS_CALLS_BEGIN + ds_v3(*WEATHER) + DS_CALLS_END, None, [WEATHER]),
    ("deepseek", DS_CALLS_BEGIN + ds_v3(*WEATHER) + "\n" + ds_v3(*TIME) + DS_CALLS_END, None, [WEATHER, TIME]),
    ("deepseek", PRE + "\n\n" + DS_CALLS_BEGIN + ds_v3(*WEATHER) + DS_CALLS_END, PRE, [WEATHER]),
    ("deepseek", DS_CALLS_BEGIN + ds_v31(*WEATHER) + ds_v31(*TIME) + DS_CALLS_END, None, [WEATHER, TIME]),
    ("generic", obj(*WEATHER), None, [WEATHER]),
    ("generic", f"[{obj(*WEATHER)}, {obj(*TIME)}]", None, [WEATHER, TIME]),
    ("generic", obj(*WEATHER) + "\n" + obj(*TIME), None, [WEATHER, TIME]),
    ("generic", f"{PRE}\n```json\n{obj(*WEATHER)}\n```", PRE, [WEATHER]),
    ("generic", f"```\n{obj(*WEATHER)}\n```\n```json\n{obj(*TIME)}\n```", None, [WEATHER, TIME]),
    ("generic", f"{PRE} {obj(*WEATHER, key='parameters')}", PRE, [WEATHER]),
    ("generic", hermes(*WEATHER), None, [WEATHER]),
]

# Text that must come out exactly as written, with no calls, for every family.
PLAIN = [
    "Hello! How can I help you today?",
    "Use a < b and c > d; see [1] and [the docs](http://x.y).",
    "<b>bold</b> and <tool>not a call</tool> and <tool_calls> hmm <|tool|>",
    'Array: [1, 2, 3] and object {"a": 1} and {not json} and [x].',
    "import functools\nfunctools.partial(f) and functools [oops",
    "[TOOL] [TOOL_CALL] [ARGS] brackets",
    "Ends with a partial marker <tool_ca",
    "Ends with [TOOL_CA",
    "Ends with functool",
    "Ends with <|python_t",
    "trailing whitespace  \n\n",
    "  \n leading whitespace",
    "```python\nprint('hi')\n```\nand ``` stray fences",
    '{"title": "Weather in Paris"}',
    '[{"a": 1}, {"b": [true, false, null, -1.5e3]}]',
    '{"name": "John", "age": 30}',
    "<think>not reasoning here</think>",
    "Unicode: Zürich, 東京, emoji 🎉, fullwidth ｜ and ▁.",
    "",
]

# Malformed calls (broken before the call could be committed): content, both ways.
MALFORMED = [
    ("hermes", '<tool_call>get_weather(city="Paris")</tool_call>'),
    ("hermes", "<tool_call>{'name': 'get_weather', 'arguments': {'city': 'Paris'}}</tool_call>"),
    ("hermes", '<tool_call>{"name": get_weather, "arguments": {}}</tool_call>'),
    ("hermes", '<tool_call>{"arguments": {"city": "Paris"}, "name": "get_weather",}</tool_call>'),
    ("llama3", '{"name": get_weather, "parameters": {"city": "Paris"}}'),
    ("llama3", '{"parameters": {"city": "Paris"}, "name": "get_weather"'),
    ("llama3", "<|python_tag|>this is not python ((("),
    ("mistral", "[TOOL_CALLS][{'name': 'get_weather'}]"),
    ("mistral", "[TOOL_CALLS]get weather[ARGS]{}"),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]["city"]'),
    ("granite", '<|tool_call|>[{name: "get_weather", "arguments": {"city": "Paris"}}]'),
    ("phi4", 'functools[{"name": "get_weather" "arguments": {}}]'),
    ("deepseek", f"{DS_CALL_BEGIN}function{DS_SEP}get weather\n```json\n{{}}\n```{DS_CALL_END}"),
    ("deepseek", f"{DS_CALL_BEGIN}get_weather{DS_SEP}not json{DS_CALL_END}"),
    ("generic", '{"name": "get_weather", "arguments": {"city": "Paris"}'),
    ("generic", '```json\n{"name": "get_weather", "arguments": {city: "Paris"}}\n```'),
]


# -- helpers ---------------------------------------------------------------------------


def chunkings(text: str, seed: int = 1234) -> list[list[str]]:
    """Every split into two pieces, one character at a time, and random pieces."""
    out = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    out.append(list(text))
    rng = random.Random(seed)
    for _ in range(25):
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 8)
            pieces.append(text[i : i + n])
            i += n
        out.append(pieces)
    return out


def assemble(events: list[StreamEvent]) -> tuple[str, list[tuple[str, str, str]]]:
    """Content and [(id, name, arguments)] from stream events, checking their OpenAI shape."""
    content = ""
    calls: list[list[str]] = []
    for ev in events:
        assert [ev.content, ev.reasoning, ev.tool_call].count(None) == 2
        if ev.content is not None:
            assert ev.content != ""
            content += ev.content
            continue
        tc = ev.tool_call
        assert tc is not None
        if "id" in tc:
            assert tc["index"] == len(calls), "indexes count up from 0"
            assert set(tc) == {"index", "id", "type", "function"}
            assert ID_RE.fullmatch(tc["id"]) and tc["type"] == "function"
            assert tc["function"]["arguments"] == "" and tc["function"]["name"]
            calls.append([tc["id"], tc["function"]["name"], ""])
        else:
            assert tc["index"] == len(calls) - 1, "fragments belong to the latest call"
            assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
            assert tc["function"]["arguments"] != ""
            calls[-1][2] += tc["function"]["arguments"]
    return content, [(c[0], c[1], c[2]) for c in calls]


def run_stream(family: str, pieces: list[str], **kw: object) -> tuple[str, list[tuple[str, str, str]]]:
    state = get_tool_parser(family, **kw).stream()  # type: ignore[arg-type]
    events: list[StreamEvent] = []
    for piece in pieces:
        events += state.feed(piece)
    events += state.finish()
    return assemble(events)


def whole(family: str, text: str) -> tuple[str | None, list[tuple[str, str]]]:
    out = get_tool_parser(family).parse(text)
    for call in out.tool_calls:
        assert ID_RE.fullmatch(call.id) and call.type == "function"
        assert isinstance(json.loads(call.function.arguments), dict)
    return out.content, [(c.function.name, c.function.arguments) for c in out.tool_calls]


def norm(content: str, calls: list) -> str | None:
    return None if calls and not content.strip() else content


# -- whole text ------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "text", "content", "calls"), VALID)
def test_whole_text(family: str, text: str, content: str | None, calls: list) -> None:
    assert whole(family, text) == (content, calls)


@pytest.mark.parametrize("family", sorted({f for f, *_ in VALID}))  # the newer ones: test_parser_families.py
def test_every_family_has_one_two_and_content_before(family: str) -> None:
    cases = [(c, calls) for f, _, c, calls in VALID if f == family]
    assert any(len(calls) == 1 and c is None for c, calls in cases)
    assert any(len(calls) == 2 for _, calls in cases)
    assert any(c == PRE for c, _ in cases)
    assert any(f == family for f, _ in MALFORMED)


@pytest.mark.parametrize(("family", "text"), MALFORMED)
def test_malformed_is_content(family: str, text: str) -> None:
    assert whole(family, text) == (text, [])


@pytest.mark.parametrize("family", TOOL_PARSERS)
@pytest.mark.parametrize("text", PLAIN)
def test_plain_text_is_untouched(family: str, text: str) -> None:
    assert whole(family, text) == (text, [])


def test_ids_are_unique_and_arguments_are_strings() -> None:
    out = get_tool_parser("hermes").parse(hermes(*WEATHER) + hermes(*WEATHER))
    assert len({c.id for c in out.tool_calls}) == 2
    assert out.tool_calls[0].to_dict() == {
        "id": out.tool_calls[0].id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": W},
    }


def test_argument_shapes_are_normalised() -> None:
    p = get_tool_parser("hermes")
    nested = '<tool_call>{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}</tool_call>'
    assert whole("hermes", nested) == (None, [("f", '{"a": 1}')])
    as_string = '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'
    assert whole("hermes", as_string) == (None, [("f", '{"a": 1}')])
    null_args = '<tool_call>{"name": "f", "arguments": null}</tool_call>'
    assert whole("hermes", null_args) == (None, [("f", "{}")])
    bad_string = '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>'
    assert p.parse(bad_string).content == bad_string
    # a raw newline inside a string (small models do this) comes out escaped: strict JSON
    raw_nl = '<tool_call>{"name": "write", "arguments": {"text": "a\nb"}}</tool_call>'
    (call,) = p.parse(raw_nl).tool_calls
    assert call.function.arguments == '{"text": "a\\nb"}'
    assert json.loads(call.function.arguments) == {"text": "a\nb"}


def test_missing_brace_recovers_the_call() -> None:
    """A call whose own JSON misses its last "}" still has complete arguments: it stands."""
    text = PRE + '\n<tool_call>{"name": "get_weather", "arguments": ' + W + "</tool_call>\nok"
    assert whole("hermes", text) == (PRE + "ok", [WEATHER])
    assert run_stream("hermes", list(text))[0] == PRE + "ok"


@pytest.mark.parametrize(
    ("family", "text", "content"),
    [
        ("granite", f'<|tool_call|>[{{"name": "get_weather", "arguments": {W}]', ""),
        ("phi4", f'functools[{{"name": "get_weather", "arguments": {W}}}', ""),
        ("mistral", f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {W}}} oops', "oops"),
    ],
)
def test_broken_after_complete_arguments_keeps_the_call(family: str, text: str, content: str) -> None:
    assert whole(family, text) == (content or None, [WEATHER])
    for pieces in chunkings(text):
        got_content, calls = run_stream(family, pieces)
        assert (got_content, [(n, a) for _, n, a in calls]) == (content, [WEATHER])


def test_broken_inside_arguments_is_content_whole_but_streamed_as_sent() -> None:
    """Once a stream has sent a call's name it can't take it back: the break and what
    follows go on as content (the same at every split); whole-text parsing keeps it all
    as content."""
    text = '{"name": "get_weather", "parameters": {"city": Paris}}'
    assert whole("llama3", text) == (text, [])
    for pieces in chunkings(text):
        content, calls = run_stream("llama3", pieces)
        assert content == "Paris}}"
        assert [(n, a) for _, n, a in calls] == [("get_weather", '{"city": ')]


def test_truncated_call_is_reported_cut_whole_and_streamed() -> None:
    """An output cut off inside a call (max_tokens): the call stands with the arguments
    read so far, in both modes, and the result says it was cut."""
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Par'
    out = get_tool_parser("hermes").parse(text)
    assert out.cut_call and out.content is None
    assert [(c.function.name, c.function.arguments) for c in out.tool_calls] == [("get_weather", '{"city": "Par')]
    for pieces in ([text], list(text)):
        content, calls = run_stream("hermes", pieces)
        assert content == ""
        assert [(n, a) for _, n, a in calls] == [("get_weather", '{"city": "Par')]


def test_generic_needs_arguments_key_and_known_names() -> None:
    assert whole("generic", '{"name": "get_weather"}') == ('{"name": "get_weather"}', [])
    p = get_tool_parser("generic", tool_names=["get_time"])
    text = obj(*WEATHER)
    assert p.parse(text).content == text and p.parse(text).tool_calls == []
    assert [c.function.name for c in p.parse(obj(*TIME)).tool_calls] == ["get_time"]
    assert run_stream("generic", list(text), tool_names=["get_time"]) == (text, [])


def test_unknown_parser_name() -> None:
    with pytest.raises(ValueError, match="unknown tool parser"):
        get_tool_parser("nope")
    assert get_tool_parser(" Hermes ").name == "hermes"


# -- streaming -------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "text", "content", "calls"), VALID)
def test_stream_matches_whole_text_at_every_split(family: str, text: str, content: str | None, calls: list) -> None:
    for pieces in chunkings(text):
        got_content, got_calls = run_stream(family, pieces)
        assert norm(got_content, got_calls) == content, pieces
        assert [(n, a) for _, n, a in got_calls] == calls, pieces


@pytest.mark.parametrize(("family", "text"), MALFORMED)
def test_stream_malformed_is_content_at_every_split(family: str, text: str) -> None:
    for pieces in chunkings(text):
        assert run_stream(family, pieces) == (text, []), pieces


@pytest.mark.parametrize("family", TOOL_PARSERS)
@pytest.mark.parametrize("text", PLAIN)
def test_stream_plain_text_at_every_split(family: str, text: str) -> None:
    for pieces in chunkings(text):
        assert run_stream(family, pieces) == (text, []), pieces


@pytest.mark.parametrize("family", TOOL_PARSERS)
def test_plain_content_streams_promptly(family: str) -> None:
    state = get_tool_parser(family).stream()
    got = [state.feed(p) for p in ["Hello", " there,", " how are", " you?"]]
    assert [[e.content for e in evs] for evs in got] == [["Hello"], [" there,"], [" how are"], [" you?"]]
    assert state.finish() == []


def test_possible_marker_is_held_back_then_released() -> None:
    state = get_tool_parser("hermes").stream()
    assert [e.content for e in state.feed("Look <tool_ca")] == ["Look"]
    assert [e.content for e in state.feed("r is here")] == [" <tool_car is here"]
    state = get_tool_parser("mistral").stream()
    assert [e.content for e in state.feed("See [TOOL")] == ["See"]
    assert [e.content for e in state.finish()] == [" [TOOL"]


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("hermes", hermes(*WEATHER)),
        ("llama3", obj(*WEATHER, key="parameters")),
        ("mistral", f"[TOOL_CALLS]get_weather[ARGS]{W}"),
        ("mistral", f"[TOOL_CALLS][{obj(*WEATHER)}]"),
        ("granite", f"<|tool_call|>[{obj(*WEATHER)}]"),
        ("phi4", f"functools[{obj(*WEATHER)}]"),
        ("deepseek", DS_CALLS_BEGIN + ds_v3(*WEATHER)),
        ("deepseek", DS_CALLS_BEGIN + ds_v31(*WEATHER)),
    ],
)
def test_arguments_stream_while_written(family: str, text: str) -> None:
    """The name goes out once known and arguments as they come, before the call ends."""
    cut = text.index('"Paris"') + 4  # inside the arguments
    state = get_tool_parser(family).stream()
    events = state.feed(text[:cut])
    first, *rest = [e.tool_call for e in events if e.tool_call is not None]
    assert first["function"]["name"] == "get_weather" and first["index"] == 0
    sent = "".join(tc["function"]["arguments"] for tc in rest)
    assert sent and W.startswith(sent) and sent.endswith('"Par')
    events = state.feed(text[cut:]) + state.finish()
    assert sent + "".join(e.tool_call["function"]["arguments"] for e in events if e.tool_call) == W


def test_generic_sends_arguments_in_one_piece() -> None:
    state = get_tool_parser("generic").stream()
    text = obj(*WEATHER)
    assert state.feed(text[:-1]) == []
    events = state.feed(text[-1:]) + state.finish()
    assert [e.tool_call for e in events] == [
        {
            "index": 0,
            "id": events[0].tool_call["id"],  # type: ignore[index]
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": W}},
    ]


def test_feed_after_finish_raises() -> None:
    state = get_tool_parser("hermes").stream()
    state.finish()
    with pytest.raises(RuntimeError):
        state.feed("x")


# -- reasoning -------------------------------------------------------------------------

REASONING = [
    # (starts_in_reasoning, text, reasoning, content)
    (
        False,
        "<think>\nThe user wants X.\nSo Y.\n</think>\n\nThe answer is Y.",
        "The user wants X.\nSo Y.",
        "The answer is Y.",
    ),
    (False, "  <think>short</think>done", "short", "done"),
    (False, "<think>\n\n</think>\n\nNo thinking.", None, "No thinking."),
    (
        False,
        "Plain answer with </think> inside and <think> too.",
        None,
        "Plain answer with </think> inside and <think> too.",
    ),
    (False, "<thinking is not the tag", None, "<thinking is not the tag"),
    (False, "  spaced answer  ", None, "  spaced answer  "),
    (False, "<think>cut off mid thought </th", "cut off mid thought </th", ""),
    (False, "", None, ""),
    (True, "Okay, let me think.\n</think>\n\nAnswer.", "Okay, let me think.", "Answer."),
    (True, "<think>\nre-opened anyway\n</think>Answer.", "re-opened anyway", "Answer."),
    (True, "never closed, all reasoning", "never closed, all reasoning", ""),
    (True, "a < b </thin k> </think> c </think> d", "a < b </thin k>", "c </think> d"),
]


@pytest.mark.parametrize(("starts", "text", "reasoning", "content"), REASONING)
def test_reasoning_whole_and_every_split(starts: bool, text: str, reasoning: str | None, content: str) -> None:
    parser = ReasoningParser(starts_in_reasoning=starts)
    assert parser.parse(text) == (reasoning, content)
    for pieces in chunkings(text):
        state = parser.stream()
        events = [ev for p in pieces for ev in state.feed(p)] + state.finish()
        assert all((e.reasoning is None) != (e.content is None) and e.tool_call is None for e in events)
        got_r = "".join(e.reasoning for e in events if e.reasoning is not None)
        got_c = "".join(e.content for e in events if e.content is not None)
        assert (got_r or None, got_c) == (reasoning, content), pieces


def test_reasoning_streams_promptly_and_holds_partial_tags() -> None:
    state = ReasoningParser().stream()
    assert state.feed("<thi") == []
    assert [e.reasoning for e in state.feed("nk>\nStep one")] == ["Step one"]
    assert [e.reasoning for e in state.feed(". </thi")] == ["."]
    assert [e.content for e in state.feed("nk>\n\nAns")] == ["Ans"]
    assert [e.content for e in state.feed("wer")] == ["wer"]
    assert state.finish() == []


def test_output_parser_reasoning_then_tool_calls() -> None:
    text = "<think>\nNeed the weather.\n</think>\n\n" + PRE + "\n" + hermes(*WEATHER)
    parser = OutputParser(get_tool_parser("hermes"), ReasoningParser())
    out = parser.parse(text)
    assert out.reasoning_content == "Need the weather."
    assert out.content == PRE
    assert [(c.function.name, c.function.arguments) for c in out.tool_calls] == [WEATHER]
    for pieces in (list(text), [text], chunkings(text)[40]):
        state = parser.stream()
        events = [ev for p in pieces for ev in state.feed(p)] + state.finish()
        assert "".join(e.reasoning for e in events if e.reasoning) == "Need the weather."
        others = [e for e in events if e.reasoning is None]
        content, calls = assemble(others)
        assert content == PRE and [(n, a) for _, n, a in calls] == [WEATHER]
    r1 = "Hmm.\n</think>\n\n" + DS_CALLS_BEGIN + ds_v3(*WEATHER) + DS_CALLS_END
    out = OutputParser(get_tool_parser("deepseek"), ReasoningParser(starts_in_reasoning=True)).parse(r1)
    assert (out.reasoning_content, out.content) == ("Hmm.", None)
    assert [c.function.name for c in out.tool_calls] == ["get_weather"]


# -- choosing a parser -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "template", "family"),
    [
        ("Qwen2.5-7B-Instruct", None, "hermes"),
        ("qwen3-8b-q4_k_m.gguf", None, "hermes"),
        ("SmolLM2-135M-Instruct", None, "hermes"),
        ("Meta-Llama-3.1-8B-Instruct", None, "llama3"),
        ("llama3.2:3b", None, "llama3"),
        ("Mistral-Nemo-Instruct-2407", None, "mistral"),
        ("granite-3.3-8b-instruct", None, "granite"),
        ("Phi-4-mini-instruct", None, "phi4"),
        ("DeepSeek-R1-Distill-Qwen-7B", None, "deepseek"),
        ("gemma-3-270m", None, "gemma"),
        ("my-model", "{% for t in tools %}<tool_call>{% endfor %}", "hermes"),
        ("my-model", "[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", "mistral"),
        ("my-model", "<|start_of_role|>...<|tool_call|>", "granite"),
        ("my-model", "...functools[...]", "phi4"),
        ("my-model", "<|python_tag|>{{ x }}", "llama3"),
        ("my-model", "{{'<\uff5ctool\u2581calls\u2581begin\uff5c>'}}", "deepseek"),
        ("qwen-thing", BUILTIN_TEMPLATES["chatml"], "hermes"),  # no markers: the name decides
        ("unknown", BUILTIN_TEMPLATES["gemma"], "generic"),
    ],
)
def test_guess_tool_parser(model: str, template: str | None, family: str) -> None:
    assert guess_tool_parser(model, template) == family
    assert family in TOOL_PARSERS


# -- prompt side -----------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather\n  for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


def test_template_supports_tools() -> None:
    for name, source in BUILTIN_TEMPLATES.items():
        assert template_supports_tools(source) is False, name
    qwen_like = "{%- if tools %}{{- '<tools>' }}{%- for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}"
    assert template_supports_tools(qwen_like) is True
    assert template_supports_tools("{% for m in messages %}{{ m.tools_used }}{% endfor %}") is False
    with_break = "{% for t in tools %}{% break %}{% endfor %}"
    assert template_supports_tools(with_break) is True
    assert template_supports_tools("{% if tools %}{% generation %}x{% endgeneration %}{% endif %}") is True
    assert template_supports_tools(None) is False


def test_render_tools_system_prompt_describes_tools_and_format() -> None:
    text = render_tools_system_prompt(TOOLS, "auto")
    assert "- get_weather: Current weather for a city." in text
    assert '{"type":"object","properties":{"city":{"type":"string"}' in text
    assert '- get_time\n  parameters (JSON Schema): {"type":"object","properties":{}}' in text
    assert '{"name": "<function name>", "arguments": {' in text
    assert "otherwise answer normally" in text
    assert "You must call the function get_time now." in render_tools_system_prompt(
        TOOLS, {"type": "function", "function": {"name": "get_time"}}
    )
    assert "at least one" in render_tools_system_prompt(TOOLS, "required")
    assert render_tools_system_prompt(TOOLS, "none") == ""
    assert render_tools_system_prompt([], "auto") == ""
    with pytest.raises(ValueError, match="not among the tools"):
        render_tools_system_prompt(TOOLS, {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValueError):
        render_tools_system_prompt(TOOLS, "sometimes")


def test_reply_in_the_prompted_format_parses_with_generic() -> None:
    reply = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    out = get_tool_parser("generic", tool_names=["get_weather", "get_time"]).parse(reply)
    assert [(c.function.name, c.function.arguments) for c in out.tool_calls] == [("get_weather", '{"city": "Oslo"}')]


def test_tool_call_grammar_schema() -> None:
    assert tool_call_grammar_schema(TOOLS, "auto") is None
    assert tool_call_grammar_schema(TOOLS, "none") is None
    assert tool_call_grammar_schema(TOOLS, None) is None
    required = tool_call_grammar_schema(TOOLS, "required")
    assert required is not None and len(required["anyOf"]) == 2
    ok = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    jsonschema.validate(ok, required)
    jsonschema.validate({"name": "get_time", "arguments": {}}, required)
    for bad in (
        {"name": "get_weather", "arguments": {}},  # city is required
        {"name": "other", "arguments": {}},
        {"name": "get_weather"},
        {"name": "get_weather", "arguments": {"city": "Oslo"}, "extra": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, required)
    named = tool_call_grammar_schema(TOOLS, {"type": "function", "function": {"name": "get_weather"}})
    assert named is not None and named["properties"]["name"] == {"const": "get_weather"}
    assert named["properties"]["arguments"] == TOOLS[0]["function"]["parameters"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_time", "arguments": {}}, named)
    parallel = tool_call_grammar_schema(TOOLS, "required", parallel=True)
    assert parallel is not None and parallel["type"] == "array" and parallel["minItems"] == 1
    jsonschema.validate([ok, {"name": "get_time", "arguments": {}}], parallel)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], parallel)
    with pytest.raises(ValueError):
        tool_call_grammar_schema([], "required")
    with pytest.raises(ValueError):
        tool_call_grammar_schema(TOOLS, {"type": "function", "function": {"name": "nope"}})


# -- any text --------------------------------------------------------------------------

FRAGMENTS = [
    *("<tool_call>", "</tool_call>", "<|tool_call|>", "functools", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"),
    *("<|python_tag|>", DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN, DS_CALLS_END, DS_SEP, "```", "```json\n"),
    *(obj("f", '{"a": 1}'), obj("g", '{"b": [1, 2]}', key="parameters"), '{"name": "h"', '"arguments": {'),
    *("{", "}", "[", "]", ",", ";", ":", '"', "\\", "\n", " ", "text", "<", "<tool", "[TOOL", "function"),
    *('"x"', "1", "true", "null", "ü", '{"a": "b\n"}', "brave_search.call(q=1)", "get_weather"),
]


@pytest.mark.parametrize("family", TOOL_PARSERS)
def test_any_text_streams_the_same_at_any_split(family: str) -> None:
    """Random mixes of markers, JSON pieces and prose: parsing never raises, arguments are
    JSON objects, a reply with no calls loses no text, and streaming gives the same
    result for one delta, one character at a time and random pieces."""
    rng = random.Random(f"fuzz-{family}")
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12)))
        content, calls = whole(family, text)
        cut = get_tool_parser(family).parse(text).cut_call  # an output ending in a call's markup
        if not calls and not cut and family not in ("deepseek", "harmony"):  # they drop their markers
            assert content == text
        ref = run_stream(family, [text])
        ref_calls = [(n, a) for _, n, a in ref[1]]
        for pieces in (list(text), chunkings(text, seed=len(text))[-1]):
            got = run_stream(family, pieces)
            assert (got[0], [(n, a) for _, n, a in got[1]]) == (ref[0], ref_calls), (text, pieces)


@pytest.mark.parametrize("family", TOOL_PARSERS)
def test_pathological_text_does_not_raise(family: str) -> None:
    deep = "[" * 3000 + "]" * 3000
    assert whole(family, deep) == (deep, [])
    assert run_stream(family, [deep[:10], deep[10:]]) == (deep, [])
    deep_args = '<tool_call>{"name": "f", "arguments": ' + "[" * 3000 + "]" * 3000 + "}</tool_call>"
    assert whole(family, deep_args)[1] == []
    python = "<|python_tag|>f(a=" + "(" * 3000 + ")" * 3000 + ")"
    assert whole(family, python)[1] == []
