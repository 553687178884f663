"""``/v1/chat/completions`` shaping in one process (the real models, the in-process backend, real HTTP)."""

from __future__ import annotations

import json

from tests.helpers import GEMMA, SMOL

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}]


def test_chat_non_streamed_and_streamed_agree(client):
    msgs = [{"role": "user", "content": "Name three colors."}]
    r = client.chat.completions.create(model=SMOL, messages=msgs, temperature=0, max_tokens=24)
    assert r.object == "chat.completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.id.startswith("chatcmpl-") and r.system_fingerprint

    text, usage, finish = "", None, None
    for ch in client.chat.completions.create(model=SMOL, messages=msgs, temperature=0, max_tokens=24,
                                             stream=True, stream_options={"include_usage": True}):
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
        if ch.usage:
            usage = ch.usage
    assert text == r.choices[0].message.content
    assert finish == r.choices[0].finish_reason
    assert usage.completion_tokens == r.usage.completion_tokens
    assert usage.prompt_tokens == r.usage.prompt_tokens


def test_max_completion_tokens_wins_over_max_tokens(client):
    r = client.chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Tell a story."}],
                                       temperature=0, max_tokens=30, max_completion_tokens=4,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4


def test_second_turn_reports_cached_prompt_tokens(client):
    msgs = [{"role": "user", "content": "Tell me about the sea."}]
    first = client.chat.completions.create(model=SMOL, messages=msgs, temperature=0, max_tokens=12)
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And the mountains?"}]
    second = client.chat.completions.create(model=SMOL, messages=msgs, temperature=0, max_tokens=4)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens


def test_tool_call_required_returns_a_parsed_call(client):
    r = client.chat.completions.create(model=SMOL, temperature=0, max_tokens=60, tools=WEATHER,
                                       tool_choice="required",
                                       messages=[{"role": "user", "content": "Weather in Paris?"}])
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    # the streamed form: id/type/name in the first fragment, arguments spread over fragments
    frags = [c.choices[0].delta.tool_calls for c in client.chat.completions.create(
        model=SMOL, temperature=0, max_tokens=60, tools=WEATHER, tool_choice="required", stream=True,
        messages=[{"role": "user", "content": "Weather in Paris?"}]) if c.choices and c.choices[0].delta.tool_calls]
    first = frags[0][0]
    assert first.id and first.type == "function" and first.function.name == "get_weather"
    args = "".join(f[0].function.arguments or "" for f in frags)
    assert json.loads(args) == json.loads(call.function.arguments)


def test_a_tool_round_trip_renders(client):
    """The assistant's call and the tool's answer go back into the template (ids kept, arguments as text)."""
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}]
    r = client.chat.completions.create(model=SMOL, temperature=0, max_tokens=20, tools=WEATHER, messages=msgs)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r.usage.prompt_tokens > 30


def test_template_markup_never_reaches_content(client):
    markup = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<|endoftext|>")
    for model in (SMOL, GEMMA):
        r = client.chat.completions.create(model=model, temperature=0, max_tokens=60,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert not any(m in r.choices[0].message.content for m in markup), r.choices[0].message.content


def test_auto_tools_are_left_out_where_the_template_cannot_render_them(client, services, monkeypatch):
    """SmolLM2's template renders no tools and its catalog entry does not say it calls tools: with tool_choice
    auto the tools are not described to it (a small model would recite them); a forced call describes them."""
    msgs = [{"role": "user", "content": "Why is the sky blue?"}]

    def prompt_tokens(**kw) -> int:
        return client.chat.completions.create(model=SMOL, temperature=0, max_tokens=1, messages=msgs,
                                              **kw).usage.prompt_tokens

    plain = prompt_tokens()
    assert prompt_tokens(tools=WEATHER) == plain
    assert prompt_tokens(tools=WEATHER, tool_choice="required") > plain + 10
    monkeypatch.setattr(services[SMOL], "prompt_tools", True)  # as if the catalog said "tools"
    assert prompt_tokens(tools=WEATHER) > plain + 10


def test_reasoning_fields_reach_the_template_and_structure_turns_thinking_off():
    from types import SimpleNamespace

    from kronk.api.chat.prompt import template_kwargs
    from kronk.api.chat.schemas import ChatCompletionRequest

    def req(**kw) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                     **kw})

    thinker, plain = SimpleNamespace(reasoning=True), SimpleNamespace(reasoning=False)
    assert template_kwargs(thinker, req(reasoning_effort="low", enable_thinking=True), forced=False) == {
        "reasoning_effort": "low", "enable_thinking": True}
    assert template_kwargs(thinker, req(), forced=True) == {"enable_thinking": False}
    assert template_kwargs(thinker, req(enable_thinking=True), forced=True) == {"enable_thinking": True}
    assert template_kwargs(thinker, req(chat_template_kwargs={"enable_thinking": True}), forced=True) == {
        "enable_thinking": True}
    assert template_kwargs(plain, req(), forced=True) == {}


def test_a_forced_call_cut_by_the_token_limit_is_length_and_never_content(client):
    """tool_choice required makes the whole answer a call (grammar): cut anywhere by max_tokens, none of it is
    content; once its name is out, it is reported as a call (arguments as far as they got), finish_reason
    length, streamed or not."""
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    named = 0
    for limit in (4, 8, 12, 16):
        r = client.chat.completions.create(model=SMOL, temperature=0, max_tokens=limit, tools=WEATHER,
                                           tool_choice="required", messages=msgs)
        choice = r.choices[0]
        assert choice.finish_reason == "length" and not choice.message.content, choice
        calls = choice.message.tool_calls or []
        assert all(c.function.name == "get_weather" for c in calls), calls
        named += bool(calls)
        streamed = [c.choices[0].delta for c in client.chat.completions.create(
            model=SMOL, temperature=0, max_tokens=limit, tools=WEATHER, tool_choice="required", messages=msgs,
            stream=True) if c.choices]
        assert not "".join(d.content or "" for d in streamed)
        frags = [f for d in streamed for f in d.tool_calls or []]
        assert [f.function.name for f in frags if f.function.name] == [c.function.name for c in calls]
        assert "".join(f.function.arguments or "" for f in frags) == "".join(c.function.arguments for c in calls)
    assert named >= 2  # the longer limits get past the name


def test_a_named_tool_choice_returns_arguments_that_validate(client):
    """tool_choice naming one of two functions: that function is called (grammar-constrained), with arguments
    valid against its schema, streamed and not; parallel_tool_calls false: one call."""
    import jsonschema

    tools = [*WEATHER, {"type": "function", "function": {
        "name": "get_time", "description": "The local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                        "hours24": {"type": "boolean"}},
                       "required": ["city", "hours24"]}}}]
    kw = {"model": SMOL, "temperature": 0, "max_tokens": 48, "tools": tools, "parallel_tool_calls": False,
          "tool_choice": {"type": "function", "function": {"name": "get_time"}},
          "messages": [{"role": "user", "content": "What time is it in Tokyo?"}]}
    r = client.chat.completions.create(**kw)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1 and calls[0].function.name == "get_time"
    jsonschema.validate(json.loads(calls[0].function.arguments), tools[1]["function"]["parameters"])
    frags = [f for c in client.chat.completions.create(**kw, stream=True) if c.choices
             for f in c.choices[0].delta.tool_calls or []]
    assert [f.function.name for f in frags if f.function.name] == ["get_time"]
    assert json.loads("".join(f.function.arguments or "" for f in frags)) == json.loads(calls[0].function.arguments)


def test_continue_final_message_needs_an_assistant_message_to_continue(client):
    import openai
    import pytest

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOL, max_tokens=4, messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"continue_final_message": True})
    assert e.value.body["param"] == "messages" and "continue_final_message" in e.value.body["message"]
    r = client.chat.completions.create(model=SMOL, max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "1, 2,"}],
        extra_body={"continue_final_message": True})
    assert r.choices[0].message.content and not r.choices[0].message.content.startswith("1, 2,")
