"""Prefix affinity (kronk/serving/affinity.py, deployments/router.py): a call's routing keys, the table's choice,
and Serve's routing loop driving the router over stand-in replicas (no Ray cluster: Serve's router needs none
until it sends a request)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.completions.schemas import CompletionRequest
from kronk.api.http import context_of
from kronk.api.messages.schemas import MessagesRequest
from kronk.api.ollama.schemas import ChatBody, GenerateBody
from kronk.api.responses.schemas import ResponsesRequest
from kronk.serving import affinity as A
from kronk.serving.affinity import NO_KEYS, AffinityTable, RoutingKeys, routing_keys
from kronk.serving.call import Call, Endpoint, RequestContext

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = {"role": "system", "content": "You are terse."}


def chat_call(messages: list[dict[str, Any]], session: str | None = None, **extra: Any) -> Call:
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **extra})
    return Call(Endpoint.CHAT, req, RequestContext("r", session_id=session))


def conversation(turns: int) -> list[dict[str, str]]:
    out = [SYSTEM]
    for i in range(turns):
        out.append({"role": "user", "content": f"question {i}"})
        out.append({"role": "assistant", "content": f"answer {i}"})
    return out


# ---------------------------------------------------------------------------- keys
def test_one_key_per_block_each_chained_on_the_one_before():
    keys = routing_keys(chat_call(conversation(2))).prefix
    assert len(keys) == 5  # one per message (no tools: the empty first block makes no key)
    assert all(len(k) == A.DIGEST_BYTES for k in keys) and len(set(keys)) == len(keys)
    # the same message after another history is another key: each key stands for the whole start
    a = routing_keys(chat_call([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}])).prefix
    b = routing_keys(chat_call([{"role": "user", "content": "z"}, {"role": "user", "content": "y"}])).prefix
    c = routing_keys(chat_call([{"role": "user", "content": "x"}, {"role": "user", "content": "w"}])).prefix
    assert a[0] != b[0] and a[1] != b[1] and a[0] == c[0] and a[1] != c[1]


def test_a_continued_chat_starts_with_every_key_of_its_last_turn():
    turn = conversation(3)[:-1]  # ends with the user's question
    nxt = [*turn, {"role": "assistant", "content": "answer 2"}, {"role": "user", "content": "question 3"}]
    k1, k2 = routing_keys(chat_call(turn)).prefix, routing_keys(chat_call(nxt)).prefix
    assert k2[: len(k1)] == k1 and len(k2) == len(k1) + 2
    # sampling fields do not change the prompt, so they do not change the keys
    assert routing_keys(chat_call(turn, temperature=0, max_tokens=3)).prefix == k1


def test_tools_and_template_options_are_part_of_the_first_block():
    msgs = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    plain = routing_keys(chat_call(msgs)).prefix
    tooled = routing_keys(chat_call(msgs, tools=[tool])).prefix
    templ = routing_keys(chat_call(msgs, chat_template_kwargs={"enable_thinking": False})).prefix
    assert len({plain[0], tooled[0], templ[0]}) == 3


def test_keys_are_stable_across_processes():
    # blake2b, not Python's salted hash(): two ingress replicas (or a restart) compute the same keys
    code = ("from tests.unit.test_affinity import chat_call, conversation; from kronk.serving.affinity import "
            "routing_keys; print(routing_keys(chat_call(conversation(1))).prefix[-1].hex())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip() for seed in (1, 2)}
    assert runs == {routing_keys(chat_call(conversation(1))).prefix[-1].hex()}


def test_work_is_bounded_in_blocks_and_bytes():
    long_chat = [{"role": "user", "content": f"m{i}"} for i in range(500)]
    assert len(routing_keys(chat_call(long_chat)).prefix) == A.MAX_BLOCKS
    # two long chats that differ only beyond the bound share every key
    other = [*long_chat[:-1], {"role": "user", "content": "different"}]
    assert routing_keys(chat_call(other)).prefix == routing_keys(chat_call(long_chat)).prefix
    # one huge message: hashed up to the byte budget, then no more keys
    huge = [{"role": "user", "content": "a" * (A.MAX_BYTES + 10)}, {"role": "user", "content": "after"}]
    keys = routing_keys(chat_call(huge)).prefix
    assert len(keys) == 1  # the huge message, cut at the budget; nothing after it
    text = CompletionRequest(model="m", prompt="b" * (A.MAX_BYTES * 2))
    assert len(routing_keys(Call(Endpoint.COMPLETIONS, text, RequestContext("r"))).prefix) <= A.MAX_BLOCKS


def test_text_prompts_are_cut_into_blocks():
    def keys(prompt: Any) -> tuple[bytes, ...]:
        return routing_keys(Call(Endpoint.COMPLETIONS, CompletionRequest(model="m", prompt=prompt),
                                 RequestContext("r"))).prefix

    base = "x" * (2 * A.TEXT_BLOCK_CHARS)
    k1, k2 = keys(base), keys(base + "more text")
    assert len(k1) == 2 and len(k2) == 3 and k2[:2] == k1  # two full blocks, then the rest
    assert keys([base]) == k1  # a list of one prompt is that prompt
    tokens = list(range(3 * A.TOKEN_BLOCK))
    assert len(keys(tokens)) == 3 and keys([*tokens, 1, 2])[:3] == keys(tokens)
    gen = GenerateBody.model_validate({"model": "m", "prompt": base, "system": "be brief"})
    g = routing_keys(Call(Endpoint.OLLAMA_GENERATE, gen, RequestContext("r"))).prefix
    assert len(g) == 3 and g[1] != k1[0]  # the system prompt first, then the prompt's blocks


def test_every_conversation_family_has_keys_and_a_continuation_shares_them():
    short = [{"role": "user", "content": "hi"}]
    longer = [*short, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    for endpoint, make, head in [
        (Endpoint.MESSAGES, lambda m: MessagesRequest.model_validate({"model": "m", "max_tokens": 5,
                                                                      "system": "terse", "messages": m}), 1),
        (Endpoint.OLLAMA_CHAT, lambda m: ChatBody.model_validate({"model": "m", "messages": m}), 0),
        (Endpoint.RESPONSES, lambda m: ResponsesRequest.model_validate(
            {"model": "m", "instructions": "terse", "input": [{"type": "message", **x} for x in m]}), 1),
    ]:
        a = routing_keys(Call(endpoint, make(short), RequestContext("r"))).prefix
        b = routing_keys(Call(endpoint, make(longer), RequestContext("r"))).prefix
        assert len(a) == head + 1 and len(b) == head + 3 and b[: len(a)] == a, endpoint


def test_a_responses_continuation_carries_the_stored_conversation():
    # the route resolves previous_response_id at the HTTP front: the call holds the stored items, then the new
    # input (ResponsesRequest.with_input), so it continues the previous turn's keys like a chat
    first = ResponsesRequest.model_validate({"model": "m", "input": "hi"})
    nxt = ResponsesRequest.model_validate({"model": "m", "input": "more", "previous_response_id": "resp_1"})
    nxt = nxt.model_copy(update={"input": [*first.input, {"type": "message", "role": "assistant",
                                                          "content": "hello"}, *nxt.input]})
    a = routing_keys(Call(Endpoint.RESPONSES, first, RequestContext("r"))).prefix
    b = routing_keys(Call(Endpoint.RESPONSES, nxt, RequestContext("r"))).prefix
    assert b[: len(a)] == a and len(b) == len(a) + 2


def test_calls_without_a_prompt_to_cache_have_no_keys():
    assert routing_keys(None) is NO_KEYS and routing_keys("text") is NO_KEYS
    assert not routing_keys(Call(Endpoint.EMBEDDINGS, object(), RequestContext("r")))
    # an odd request object gives no keys rather than an error
    assert not routing_keys(Call(Endpoint.CHAT, object(), RequestContext("r")))


def test_the_session_comes_from_the_header_or_prompt_cache_key():
    msgs = [{"role": "user", "content": "hi"}]
    s1 = routing_keys(chat_call(msgs, session="conv-1")).session
    assert s1 is not None and s1 == routing_keys(chat_call([{"role": "user", "content": "x"}], "conv-1")).session
    assert routing_keys(chat_call(msgs, session="conv-2")).session != s1
    assert routing_keys(chat_call(msgs)).session is None
    assert routing_keys(chat_call(msgs, prompt_cache_key="conv-1")).session == s1
    assert routing_keys(chat_call(msgs, session="x" * (A.MAX_SESSION_ID + 1))).session is None


def _request(headers: dict[str, str]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": [
        (k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_context_of_reads_a_bounded_session_header():
    assert context_of(_request({"x-session-id": "abc"})).session_id == "abc"
    assert context_of(_request({})).session_id is None
    assert context_of(_request({"x-session-id": "a" * (A.MAX_SESSION_ID + 1)})).session_id is None


# ---------------------------------------------------------------------------- the table's choice
def keys_of(*names: str, session: str | None = None) -> RoutingKeys:
    return RoutingKeys(session.encode() if session else None, tuple(n.encode() for n in names))


def test_the_longest_known_prefix_wins_and_its_replica_is_first():
    t: AffinityTable[str] = AffinityTable(busy_at=2, rng=random.Random(0))
    t.record(keys_of("h", "a"), "r1")
    t.record(keys_of("h", "b"), "r2")  # the shared head last went to r2
    idle = {"r1": 0, "r2": 0, "r3": 0}.get
    assert t.lookup(keys_of("h", "a", "a2")) == ("r1", 2)
    assert t.choose(keys_of("h", "a", "a2"), ["r1", "r2", "r3"], idle)[0] == ["r1"]
    assert t.choose(keys_of("h", "c"), ["r1", "r2", "r3"], idle)[0] == ["r2"]
    ranks = t.choose(keys_of("h", "a"), ["r1", "r2", "r3"], idle)
    assert [r for [r] in ranks] == ["r1", *sorted({"r2", "r3"}, key=[x for [x] in ranks].index)]


def test_a_busy_replica_gives_way_to_the_least_loaded():
    t: AffinityTable[str] = AffinityTable(busy_at=2)
    t.record(keys_of("h", "a"), "r1")
    k = keys_of("h", "a", "q")
    assert t.choose(k, ["r1", "r2"], {"r1": 1, "r2": 0}.get)[0] == ["r1"]  # a slot is free
    assert t.choose(k, ["r1", "r2"], {"r1": 2, "r2": 0}.get)[:2] == [["r2"], ["r1"]]  # every slot busy
    assert t.choose(k, ["r1", "r2"], {"r1": 3, "r2": 3}.get)[0] == ["r1"]  # busy everywhere: stay
    assert t.choose(k, ["r1", "r2"], {"r1": 5, "r2": 4}.get)[0] == ["r2"]  # busier than another: move
    assert t.choose(k, ["r1", "r2"], {}.get)[0] == ["r1"]  # unknown load counts as idle


def test_the_session_pins_before_the_prefix():
    t: AffinityTable[str] = AffinityTable(busy_at=4)
    t.record(keys_of("h", "a"), "r1")
    t.record(keys_of("h", session="s"), "r2")
    assert t.lookup(keys_of("h", "a", session="s")) == ("r2", -1)
    assert t.lookup(keys_of("h", "a", session="other")) == ("r1", 2)


def test_new_conversations_spread_over_idle_replicas():
    t: AffinityTable[str] = AffinityTable(busy_at=4, rng=random.Random(1))
    firsts = {t.choose(keys_of(f"h{i}"), ["r1", "r2", "r3"], lambda r: 0)[0][0] for i in range(30)}
    assert firsts == {"r1", "r2", "r3"}
    # and the least loaded first when loads differ
    assert t.choose(keys_of("new"), ["r1", "r2", "r3"], {"r1": 2, "r2": 0, "r3": 1}.get)[0] == ["r2"]


def test_replicas_that_go_away_are_forgotten_and_the_table_is_bounded():
    t: AffinityTable[str] = AffinityTable(max_keys=5)
    t.record(keys_of("a", "b"), "r1")
    t.record(keys_of("c"), "r2")
    assert t.lookup(keys_of("a", "b"), alive=["r2"]) == (None, 0)  # a dead replica is never chosen
    assert t.forget(["r2"]) == 2 and len(t) == 1
    for i in range(10):
        t.record(keys_of(f"k{i}"), "r2")
    assert len(t) == 5 and t.lookup(keys_of("k9")) == ("r2", 1) and t.lookup(keys_of("k0")) == (None, 0)


# ---------------------------------------------------------------------------- Serve's routing loop
class FakeReplica:
    """What Serve's request router reads of a running replica, with a queue length it answers probes with."""

    def __init__(self, i: int, max_ongoing: int = 8):
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(unique_id=f"r{i}", deployment_id=DeploymentID("llm-m", "kronk"))
        self.max_ongoing_requests = max_ongoing
        self.node_id, self.availability_zone, self.multiplexed_model_ids = "node", None, set()
        self.queue_len = 0

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.queue_len


def make_router(n: int, busy_at: int = 2) -> tuple[Any, list[FakeReplica]]:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from deployments.router import PrefixAffinityRouter

    router = PrefixAffinityRouter(deployment_id=DeploymentID("llm-m", "kronk"),
                                  handle_source=DeploymentHandleSource.REPLICA, use_replica_queue_len_cache=True)
    router.initialize_state(busy_at=busy_at)
    replicas = [FakeReplica(i) for i in range(n)]
    router.update_replicas(replicas)
    return router, replicas


async def route(router: Any, call: Any) -> FakeReplica:
    """One request through Serve's loop, as Serve's Router does: choose, send (the queue length cache counts it),
    accepted (on_request_routed)."""
    from ray.serve._private.common import RequestMetadata
    from ray.serve.request_router import PendingRequest

    rid = f"req-{random.getrandbits(64)}"
    pr = PendingRequest(args=[call], kwargs={}, metadata=RequestMetadata(request_id=rid, internal_request_id=rid))
    replica = await asyncio.wait_for(router._choose_replica_for_request(pr), 10)
    router.on_send_request(replica.replica_id)
    router.on_request_routed(pr, replica.replica_id, None)
    return replica


def test_serves_router_sends_each_turn_of_a_chat_to_the_replica_that_holds_it():
    async def go() -> None:
        router, replicas = make_router(3)
        chats: dict[int, list[dict[str, str]]] = {c: [] for c in range(6)}  # no start in common
        placed: dict[int, set[str]] = {c: set() for c in chats}
        for turn in range(5):
            for c, msgs in chats.items():
                msgs.append({"role": "user", "content": f"chat {c} turn {turn}"})
                replica = await route(router, chat_call(msgs))
                router.decrement_queue_len_cache(replica.replica_id)  # the turn finished
                placed[c].add(replica.replica_id.unique_id)
                msgs.append({"role": "assistant", "content": f"answer {turn}"})
        assert all(len(p) == 1 for p in placed.values()), placed  # every chat stayed on one replica
        assert len(set().union(*placed.values())) >= 2  # and the chats did not all land on one
        # a request without keys still gets a replica (Serve's power of two choices)
        assert await route(router, None) in replicas

    asyncio.run(go())


def test_serves_router_moves_a_chat_off_a_busy_replica_and_forgets_removed_ones():
    async def go() -> None:
        router, replicas = make_router(2, busy_at=2)
        msgs = [SYSTEM, {"role": "user", "content": "hi"}]
        home = await route(router, chat_call(msgs))
        other = next(r for r in replicas if r is not home)
        router.on_send_request(home.replica_id)  # two more calls in flight there: every slot busy
        msgs += [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
        moved = await route(router, chat_call(msgs))
        assert moved is other
        # the chat's keys went with it: its next turn goes to the new replica
        router.decrement_queue_len_cache(home.replica_id)
        router.decrement_queue_len_cache(home.replica_id)
        router.decrement_queue_len_cache(other.replica_id)
        msgs += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "third"}]
        assert await route(router, chat_call(msgs)) is other
        router.update_replicas([home])  # the replica went away
        assert router.table.lookup(routing_keys(chat_call(msgs))) == (None, 0)
        assert await route(router, chat_call(msgs)) is home

    asyncio.run(go())


def test_a_shared_system_prompt_draws_new_chats_to_one_replica_until_its_slots_are_busy():
    async def go() -> None:
        router, _ = make_router(2, busy_at=2)
        homes = [await route(router, chat_call([SYSTEM, {"role": "user", "content": f"q{i}"}])) for i in range(4)]
        assert homes[0] is homes[1] and homes[2] is homes[3] and homes[1] is not homes[2]

    asyncio.run(go())


@pytest.mark.parametrize("module", ["deployments.router"])
def test_the_router_does_not_load_llama_cpp(module: str):
    # it runs in every caller of a model deployment (the routing ingress), which has no engine
    code = f"import sys, {module}; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=ROOT)
    assert out.stdout.strip() == "False"
