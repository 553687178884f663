"""``/v1/responses`` (kronk/api/responses) with the official client: plain, streamed (named events), function
tools and their round trip, text formats, stored responses continued by ``previous_response_id`` (only the new
tokens prefilled), retrieve / delete, per-key isolation, the store's bounds, and errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from kronk.api.app import create_app
from kronk.api.limits import Limits
from kronk.api.responses.routes import _passed
from kronk.api.responses.serving import OutputBuilder, event
from kronk.api.responses.store import Conversation, ResponseNotFound, ResponseStore
from kronk.parsers import StreamEvent
from kronk.security.access import Access
from kronk.serving.items import Failure, Item
from kronk.serving.local import LocalBackend
from kronk.settings import Settings
from tests.helpers import GEMMA, SMOL, http_server, openai_client

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False}}
COLOR = {"type": "object", "properties": {"color": {"type": "string", "maxLength": 12}}, "required": ["color"],
         "additionalProperties": False}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def events_of(stream) -> list:
    return list(stream)


# ---------------------------------------------------------------------- answers


def test_a_plain_response(client):
    r = client.responses.create(model=SMOL, input="Name three colors.", temperature=0, max_output_tokens=16)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == SMOL
    assert r.status in ("completed", "incomplete") and r.error is None
    msg = r.output[-1]
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content[0].type == "output_text" and msg.content[0].annotations == []
    assert r.output_text.strip() and r.output_text == msg.content[0].text
    u = r.usage
    assert u.input_tokens > 5 and 0 < u.output_tokens <= 16 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens >= 0 and u.output_tokens_details.reasoning_tokens == 0
    assert r.store is True and r.previous_response_id is None and r.tool_choice == "auto" and r.tools == []
    assert r.temperature == 0 and r.max_output_tokens == 16 and r.text.format.type == "text"


def test_a_cut_response_is_incomplete(client):
    r = client.responses.create(model=GEMMA, input="Tell a story.", temperature=0, max_output_tokens=3,
                                extra_body={"ignore_eos": True})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[-1].status == "incomplete"
    kinds = [e.type for e in client.responses.create(model=GEMMA, input="Tell a story.", temperature=0,
                                                       max_output_tokens=3, stream=True,
                                                       extra_body={"ignore_eos": True})]
    assert kinds[-1] == "response.incomplete" and "response.completed" not in kinds


def test_a_streamed_response_is_named_events_that_build_the_same_answer(client):
    kw = {"model": SMOL, "input": "Name three colors.", "temperature": 0, "max_output_tokens": 16}
    whole = client.responses.create(**kw)
    evs = events_of(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in evs]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if whole.status == "completed" else "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in evs] == list(range(len(evs)))
    assert evs[0].response.status == "in_progress" and evs[0].response.output == []
    deltas = [e for e in evs if e.type == "response.output_text.delta"]
    text = "".join(e.delta for e in deltas)
    done, final = evs[-4], evs[-1].response
    item_id = evs[2].item.id
    assert all(e.item_id == item_id and e.output_index == 0 and e.content_index == 0 for e in deltas)
    assert text == done.text == final.output_text == whole.output_text
    assert final.id == evs[0].response.id and final.usage.output_tokens == whole.usage.output_tokens
    assert client.responses.retrieve(final.id).output_text == text  # a streamed response is stored too


def test_the_stream_names_each_event_as_its_data_does(api_url):
    r = httpx.post(api_url + "/v1/responses", json={"model": GEMMA, "input": "Hi", "max_output_tokens": 2,
                                                     "temperature": 0, "stream": True}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    assert blocks and all(b.startswith("event: ") for b in blocks)
    for b in blocks:
        name, data = b.split("\n")
        assert json.loads(data.removeprefix("data: "))["type"] == name.removeprefix("event: ")
    assert "[DONE]" not in r.text


def test_reasoning_text_and_calls_are_items_in_the_order_they_come():
    """What the test models cannot show (they do not reason): a turn's pieces as items and their events."""
    evs = [StreamEvent(reasoning="Think"), StreamEvent(reasoning="ing."), StreamEvent(content="\n\n"),
           StreamEvent(content="Hi"), StreamEvent(content="!"),
           StreamEvent(tool_call={"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "f", "arguments": ""}}),
           StreamEvent(tool_call={"index": 0, "function": {"arguments": '{"a":'}}),
           StreamEvent(tool_call={"index": 0, "function": {"arguments": " 1}"}}),
           StreamEvent(content=" "),  # blank text after a call opens no message
           StreamEvent(tool_call={"index": 1, "id": "call_2", "type": "function",
                                  "function": {"name": "g", "arguments": "{}"}})]
    streamed, whole = OutputBuilder("r", emit=True), OutputBuilder("r", emit=False)
    for b in (streamed, whole):
        for ev in evs:
            b.feed(ev)
        b.finish("completed")
    assert streamed.items == whole.items and whole.events == []
    rs, msg, c1, c2 = whole.items
    assert rs == {"type": "reasoning", "id": "rs_r_0", "summary": [], "status": "completed",
                  "content": [{"type": "reasoning_text", "text": "Thinking."}]}
    assert msg["type"] == "message" and msg["content"][0]["text"] == "\n\nHi!" and msg["id"] == "msg_r_1"
    assert (c1["call_id"], c1["name"], c1["arguments"], c1["id"]) == ("call_1", "f", '{"a": 1}', "fc_r_2")
    assert (c2["call_id"], c2["arguments"], c2["status"]) == ("call_2", "{}", "completed")
    sent = [json.loads(b.split("\n")[1].removeprefix("data: ")) for b in streamed.take().split("\n\n") if b]
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    assert [e["type"] for e in sent] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done"]
    assert sent[0]["item"]["status"] == "in_progress" and sent[0]["item"]["content"] == []
    assert sent[9]["delta"] == "\n\nHi" and sent[9]["item_id"] == "msg_r_1" and sent[9]["output_index"] == 1
    assert sent[-2]["arguments"] == "{}" and sent[-2]["name"] == "g"


def test_a_turn_of_blank_text_still_has_its_message():
    b = OutputBuilder("r", emit=False)
    b.feed(StreamEvent(content=" "))
    b.finish("incomplete")
    assert [(i["type"], i["status"], i["content"][0]["text"]) for i in b.items] == [("message", "incomplete", " ")]


# ---------------------------------------------------------------------- tools and formats


def test_a_required_function_tool_makes_a_schema_valid_call(client):
    kw = {"model": SMOL, "input": "What is the weather in Paris?", "tools": [WEATHER], "tool_choice": "required",
          "temperature": 0, "max_output_tokens": 32}
    r = client.responses.create(**kw)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and r.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert r.tools[0].name == "get_weather" and r.tool_choice == "required"

    evs = events_of(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in evs]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    added = next(e for e in evs if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather"
    args = "".join(e.delta for e in evs if e.type == "response.function_call_arguments.delta")
    done = next(e for e in evs if e.type == "response.function_call_arguments.done")
    assert args == done.arguments == call.arguments and done.item_id == added.item.id


def test_a_named_tool_choice(client):
    r = client.responses.create(model=SMOL, input="Weather?", tools=[WEATHER], temperature=0, max_output_tokens=24,
                                tool_choice={"type": "function", "name": "get_weather"})
    call = next(o for o in r.output if o.type == "function_call")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_a_tool_round_trip_by_previous_response_id(client):
    first = client.responses.create(model=SMOL, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice="required", temperature=0, max_output_tokens=32)
    call = next(o for o in first.output if o.type == "function_call")
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}
    second = client.responses.create(model=SMOL, previous_response_id=first.id, input=[result], tools=[WEATHER],
                                     temperature=0, max_output_tokens=12)
    assert second.status in ("completed", "incomplete") and second.previous_response_id == first.id
    asked = client.responses.create(model=SMOL, input="What is the weather in Paris?", tools=[WEATHER],
                                    temperature=0, max_output_tokens=1, store=False)
    assert second.usage.input_tokens > asked.usage.input_tokens  # the call and its output are in the prompt
    # the same conversation sent whole renders the same prompt
    whole = client.responses.create(model=SMOL, tools=[WEATHER], temperature=0, max_output_tokens=12, store=False,
                                    input=[{"role": "user", "content": "What is the weather in Paris?"},
                                           {"type": "function_call", "call_id": call.call_id, "name": call.name,
                                            "arguments": call.arguments}, result])
    assert whole.usage.input_tokens == second.usage.input_tokens
    assert whole.output_text == second.output_text


def test_a_json_schema_text_format(client):
    r = client.responses.create(model=SMOL, input="Pick a color.", temperature=0, max_output_tokens=32,
                                text={"format": {"type": "json_schema", "name": "color", "schema": COLOR,
                                                 "strict": True}})
    jsonschema.validate(json.loads(r.output_text), COLOR)
    assert r.text.format.type == "json_schema" and r.text.format.name == "color"
    obj = client.responses.create(model=SMOL, input="A JSON object:", temperature=0, max_output_tokens=32,
                                  text={"format": {"type": "json_object"}})
    if obj.status == "completed":
        assert isinstance(json.loads(obj.output_text), dict)
    else:
        assert obj.output_text.lstrip().startswith("{")


# ---------------------------------------------------------------------- stored conversations


def test_a_continued_response_prefills_only_the_new_turn(client):
    first = client.responses.create(model=SMOL, input="Tell me about the sea.", temperature=0, max_output_tokens=12)
    second = client.responses.create(model=SMOL, previous_response_id=first.id, input="And the mountains?",
                                     temperature=0, max_output_tokens=4)
    whole = client.responses.create(model=SMOL, temperature=0, max_output_tokens=4, store=False, input=[
        {"role": "user", "content": "Tell me about the sea."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And the mountains?"}])
    n1, n2 = first.usage.input_tokens, second.usage.input_tokens
    assert n2 == whole.usage.input_tokens > n1  # the stored history is the whole conversation
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= n1  # the first turn's prompt came from the slot's cache
    assert n2 - cached < n2 - n1 + first.usage.output_tokens + 4  # only (about) the new turn was prefilled
    assert second.usage.input_tokens_details.cache_write_tokens == n2 - cached
    assert second.previous_response_id == first.id


def test_instructions_are_not_carried_over(client):
    first = client.responses.create(model=GEMMA, input="Hello", instructions="Answer in French.", temperature=0,
                                    max_output_tokens=2)
    second = client.responses.create(model=GEMMA, previous_response_id=first.id, input="Bye", temperature=0,
                                     max_output_tokens=2)
    assert first.instructions == "Answer in French." and second.instructions is None
    # the same conversation sent whole, the first answer's output items sent back as they came
    sent_back = [o.model_dump(exclude_none=True) for o in first.output]
    assert sent_back[0]["type"] == "message" and sent_back[0]["id"]
    whole = client.responses.create(model=GEMMA, temperature=0, max_output_tokens=2, store=False, input=[
        {"role": "user", "content": "Hello"}, *sent_back, {"role": "user", "content": "Bye"}])
    assert second.usage.input_tokens == whole.usage.input_tokens


def test_retrieve_and_delete(client):
    r = client.responses.create(model=GEMMA, input="Hi", temperature=0, max_output_tokens=2,
                                metadata={"topic": "greeting"})
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"topic": "greeting"}
    assert got.usage.input_tokens == r.usage.input_tokens
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(r.id)
    assert e.value.body["type"] == "invalid_request_error" and r.id in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_delete_answers_as_openai_does(api_url):
    r = httpx.post(api_url + "/v1/responses", json={"model": GEMMA, "input": "Hi", "max_output_tokens": 1},
                   timeout=60).json()
    d = httpx.delete(api_url + f"/v1/responses/{r['id']}", timeout=10)
    assert d.status_code == 200 and d.json() == {"id": r["id"], "object": "response", "deleted": True}


def test_a_response_not_stored_cannot_be_continued(client):
    r = client.responses.create(model=GEMMA, input="Hi", temperature=0, max_output_tokens=1, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=GEMMA, input="Hi", previous_response_id=r.id, max_output_tokens=1)
    assert e.value.body["param"] == "previous_response_id"
    assert e.value.body["code"] == "previous_response_not_found"


@pytest.fixture
def keyed_url(services, tmp_path: Path) -> Iterator[str]:
    settings = Settings(home=tmp_path)
    app = create_app(LocalBackend.of_services(services, settings), access=Access(api_keys=["key-a", "key-b"]),
                     limits=Limits.from_settings(settings))
    with http_server(app) as url:
        yield url


def test_a_stored_response_is_only_its_keys(keyed_url):
    a = openai.OpenAI(base_url=keyed_url + "/v1", api_key="key-a", max_retries=0, timeout=60)
    b = openai.OpenAI(base_url=keyed_url + "/v1", api_key="key-b", max_retries=0, timeout=60)
    r = a.responses.create(model=GEMMA, input="Hi", temperature=0, max_output_tokens=1)
    assert a.responses.retrieve(r.id).id == r.id
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.create(model=GEMMA, input="Hi", previous_response_id=r.id, max_output_tokens=1)
    # another key's request id cannot replace it: the answer gets an id of its own
    other = b.responses.create(model=GEMMA, input="Hi", max_output_tokens=1,
                               extra_headers={"X-Request-ID": r.id.removeprefix("resp_")})
    assert other.id != r.id and b.responses.retrieve(other.id).id == other.id
    assert a.responses.retrieve(r.id).id == r.id
    a.responses.delete(r.id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed_url + "/v1", api_key="nope", max_retries=0).responses.retrieve(other.id)


# ---------------------------------------------------------------------- the store's bounds


def test_the_store_is_bounded_in_count_least_recently_used_first():
    store, conv, me = ResponseStore(max_stored=2, ttl_s=60, clock=Clock()), Conversation.of(None, []), ("k", None)
    for rid in ("a", "b"):
        assert store.put(rid, me, {"id": rid}, conv)
    store.get("a", me)  # a is now the most recently used
    store.put("c", me, {"id": "c"}, conv)
    assert len(store) == 2 and store.get("a", me) and store.get("c", me)
    with pytest.raises(ResponseNotFound):
        store.get("b", me)
    assert not ResponseStore(max_stored=0).put("x", me, {}, conv)


def test_the_store_is_bounded_in_age_and_per_key():
    clock = Clock()
    store, conv = ResponseStore(max_stored=10, ttl_s=60, clock=clock), Conversation.of(None, [])
    store.put("a", ("k1", None), {"id": "a"}, conv)
    clock.t += 30
    store.put("b", ("k1", None), {"id": "b"}, conv)
    assert not store.put("a", ("k2", None), {"id": "a"}, conv)  # another key's id is not replaced
    with pytest.raises(ResponseNotFound):
        store.get("a", ("k2", None))
    clock.t += 31
    with pytest.raises(ResponseNotFound):
        store.get("a", ("k1", None))  # 61 s old
    assert store.get("b", ("k1", None)).response == {"id": "b"} and len(store) == 1
    clock.t += 30
    assert len(store) == 0


def test_the_store_is_bounded_in_bytes():
    clock, me = Clock(), ("k", None)
    store = ResponseStore(max_stored=100, ttl_s=60, max_bytes=10_000, clock=clock)
    big = {"id": "x", "text": "y" * 4000}
    for rid in ("a", "b"):
        assert store.put(rid, me, big, Conversation.of(None, []))
    assert 8000 < store.bytes <= 10_000
    assert store.put("c", me, big, Conversation.of(None, []))  # a (the least recently used) goes
    assert len(store) == 2 and store.bytes <= 10_000
    with pytest.raises(ResponseNotFound):
        store.get("a", me)
    # a conversation counts whole (with the turns it continues) and one over the budget is not kept
    long = Conversation.of(Conversation.of(None, [{"text": "z" * 3000}]), [{"text": "z" * 3000}])
    assert long.chars > 6000
    assert not store.put("d", me, {"id": "d"}, Conversation.of(long, [{"text": "z" * 4000}]))
    store.delete("b", me)
    clock.t += 61
    assert len(store) == 0 and store.bytes == 0


def test_conversations_share_their_earlier_turns():
    first = Conversation.of(None, ["u1"])
    answered = Conversation.of(first, ["a1"])
    second = Conversation.of(answered, ["u2"])
    assert second.resolve() == ["u1", "a1", "u2"] and second.size == 3 and second.parent.parent is first
    deep = Conversation.of(None, [0])
    for i in range(1, 5000):  # no recursion, however long the chain
        deep = Conversation.of(deep, [i])
    assert deep.resolve() == list(range(5000))


def test_the_apps_store_keeps_its_bounds_over_http(services, tmp_path):
    clock = Clock()
    app = create_app(LocalBackend.of_services(services, Settings(home=tmp_path)))
    app.state.responses = ResponseStore(max_stored=2, ttl_s=10, clock=clock)
    with http_server(app) as url:
        c = openai_client(url)
        ids = [c.responses.create(model=GEMMA, input=f"Hi {i}", max_output_tokens=1).id for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(ids[0])  # the oldest went when the third came
        assert c.responses.retrieve(ids[1]).id == ids[1]
        clock.t += 11
        with pytest.raises(openai.NotFoundError):
            c.responses.create(model=GEMMA, input="Hi", previous_response_id=ids[2], max_output_tokens=1)


def test_the_store_bounds_are_settings(tmp_path):
    s = Settings(home=tmp_path, responses_max_stored=5, responses_ttl_s=7, responses_max_bytes=4096)
    lim = Limits.from_settings(s)
    assert (lim.responses_max_stored, lim.responses_ttl_s, lim.responses_max_bytes) == (5, 7, 4096)
    assert Settings(home=tmp_path).responses_max_stored == 1000


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(("field", "value", "param"), [
    ("tools", [{"type": "web_search"}], "tools"),
    ("tools", [{"type": "function", "name": "bad name!"}], "tools.0.name"),
    ("input", [{"type": "item_reference", "id": "x"}], "input"),
    ("input", [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}], "input.0"),
    ("input", [{"role": "robot", "content": "hi"}], "input.0.message.role"),
    ("input", [], "input"),
    ("temperature", 5, "temperature"),
    ("max_output_tokens", 0, "max_output_tokens"),
    ("tool_choice", {"type": "function", "name": "nope"}, None),
    ("tool_choice", {"type": "web_search_preview"}, "tool_choice"),
    ("text", {"format": {"type": "json_schema", "name": "x"}}, "text.format"),
    ("metadata", {f"k{i}": "v" for i in range(17)}, "metadata"),
    ("background", True, "background"),
])
def test_bad_fields_are_400s(api_url, field, value, param):
    body = {"model": GEMMA, "input": "Hi", "max_output_tokens": 2, field: value}
    if field == "tool_choice" and value.get("name"):
        body["tools"] = [WEATHER]
    r = httpx.post(api_url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    if param is not None:
        assert (err["param"] or "").startswith(param), err
    assert len(err["message"]) < 600


def test_the_client_library_gets_the_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model=GEMMA, input="Hi", previous_response_id="resp_unknown", max_output_tokens=1)
    assert "resp_unknown" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="no-such-model", input="Hi")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=GEMMA, input="Hi", tools=[{"type": "file_search", "vector_store_ids": []}])


def test_context_errors_name_this_familys_fields(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=GEMMA, input="Hi", max_output_tokens=5000)
    assert e.value.body["param"] == "max_output_tokens" and "max_output_tokens" in e.value.message


async def _items(*items: Item) -> AsyncIterator[Item]:
    for i in items:
        yield i


async def test_a_failure_mid_stream_is_an_error_event_and_response_failed():
    shell = {"id": "resp_x", "object": "response", "status": "in_progress", "output": []}
    first = event("response.created", 0, {"response": shell}) + event("response.in_progress", 1, {"response": shell})
    f = Failure(500, "server_error", "the engine stopped", code="engine_error")
    out = [i async for i in _passed(_items(first, f), None, ("anonymous", None), Conversation.of(None, []))]
    assert out[0] == first and len(out) == 2
    blocks = [b for b in out[1].split("\n\n") if b]
    err, failed = (json.loads(b.split("\n")[1].removeprefix("data: ")) for b in blocks)
    assert blocks[0].startswith("event: error\n") and blocks[1].startswith("event: response.failed\n")
    assert err == {"type": "error", "sequence_number": 2, "code": "engine_error", "message": "the engine stopped",
                   "param": None}
    assert failed["sequence_number"] == 3 and failed["response"]["status"] == "failed"
    assert failed["response"]["id"] == "resp_x" and failed["response"]["error"]["message"] == "the engine stopped"


def test_the_route_documents_its_request_body(api_url):
    paths = httpx.get(api_url + "/openapi.json", timeout=30).json()["paths"]
    props = paths["/v1/responses"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"input", "instructions", "tools", "previous_response_id", "store", "text"} <= set(props)
