"""Prefix-affinity routing (deployments/router.py) through the real app: one model with two replicas behind the
routing ingress, real llama.cpp, real HTTP.

A 12-turn chat: from turn 2 on, each turn prefills only what is new (the user's message and the template's
markup around it), which it can only do on the replica that served the turn before; the chat's tokens all land
on one replica's counters. A Responses chain (``previous_response_id``) the same. Unrelated requests with one
``x-session-id`` all land on one replica. That the default router does not keep a chat in place is a matter of
chance, so it is measured, not tested: benchmarks/prefix_routing.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from benchmarks.workloads import CHAT_TURNS
from kronk.telemetry import prometheus
from tests.helpers import GEMMA
from tests.integration.utils import serve_app
from tests.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = {"name": GEMMA, "min_replicas": 2, "max_replicas": 2, "parallel": 2, "ctx_size": 4096, "num_cpus": 1,
         "threads": 1}
# Tokens a turn may prefill beyond its new message: a re-rendered answer can tokenize a little differently from
# the tokens generated at its end, and the prompt's last token is always computed again.
SLACK = 16


@pytest.fixture(scope="module")
def url():
    with serve_app({"models": [MODEL]}) as u:  # 2 x 1 CPU + the ingress and model manager: serve_app's 4
        until(lambda: httpx.get(u + "/v1/stats", timeout=30).json()["models"][GEMMA]["replicas"] == 2, 120,
              "two running replicas")
        yield u


def completion_tokens_by_replica(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for name, labels, value in prometheus.parse(text):
        if name == "kronk_completion_tokens_total" and labels.get("model") == GEMMA:
            out[labels["replica"]] = out.get(labels["replica"], 0.0) + value
    return out


def settled(url: str, expected_total: float) -> dict[str, float]:
    """Every replica's counters once they add up to ``expected_total`` (the board is pushed after each request)."""
    got: dict[str, Any] = {}

    def ok() -> bool:
        got["v"] = completion_tokens_by_replica(url)
        return sum(got["v"].values()) == expected_total

    until(ok, 30, lambda: f"the board to count {expected_total} tokens: {got.get('v')}", 0.5)
    return got["v"]


def where_they_went(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {r: n - before.get(r, 0.0) for r, n in after.items() if n - before.get(r, 0.0) > 0}


def test_a_long_chats_later_turns_prefill_only_the_new_message(url):
    before = completion_tokens_by_replica(url)
    messages: list[dict[str, str]] = []
    usages = []
    with httpx.Client(timeout=300) as h:
        for user in CHAT_TURNS:  # 12 turns
            messages.append({"role": "user", "content": user})
            r = h.post(url + "/v1/chat/completions", json={"model": GEMMA, "messages": messages, "max_tokens": 8,
                                                           "temperature": 0})
            assert r.status_code == 200, r.text
            body = r.json()
            usages.append(body["usage"])
            messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
    assert len(usages) == 12
    for turn in range(1, len(usages)):
        prev, cur = usages[turn - 1], usages[turn]
        # what this turn adds to the last one's prompt besides the answer the replica generated (and holds)
        new = cur["prompt_tokens"] - prev["prompt_tokens"] - prev["completion_tokens"]
        prefilled = cur["prompt_tokens"] - cur["prompt_tokens_details"]["cached_tokens"]
        assert prefilled <= new + SLACK, (turn + 1, prefilled, new, usages)
    assert usages[-1]["prompt_tokens"] > 4 * (new + SLACK)  # a full prefill would have been caught
    after = settled(url, sum(before.values()) + sum(u["completion_tokens"] for u in usages))
    assert len(where_they_went(before, after)) == 1, (before, after)  # one replica served the whole chat


def test_a_responses_chain_stays_on_its_replica(url):
    with httpx.Client(timeout=300) as h:
        prev_id, usages = None, []
        for user in CHAT_TURNS[:5]:
            body: dict[str, Any] = {"model": GEMMA, "input": user, "max_output_tokens": 8, "temperature": 0}
            if prev_id:
                body["previous_response_id"] = prev_id
            r = h.post(url + "/v1/responses", json=body)
            assert r.status_code == 200, r.text
            prev_id = r.json()["id"]
            usages.append(r.json()["usage"])
    for turn in range(1, len(usages)):
        prev, cur = usages[turn - 1], usages[turn]
        new = cur["input_tokens"] - prev["input_tokens"] - prev["output_tokens"]
        prefilled = cur["input_tokens"] - cur["input_tokens_details"]["cached_tokens"]
        assert prefilled <= new + SLACK, (turn + 1, prefilled, new, usages)


def test_a_session_id_pins_unrelated_requests_to_one_replica(url):
    before = completion_tokens_by_replica(url)
    total = 0
    with httpx.Client(timeout=300) as h:
        for i in range(6):  # nothing in common but the session: without it each would go to the least loaded
            r = h.post(url + "/v1/chat/completions", headers={"x-session-id": "pinned-conversation"},
                       json={"model": GEMMA, "max_tokens": 4, "temperature": 0,
                             "messages": [{"role": "user", "content": f"Unrelated question {i}: {CHAT_TURNS[i]}"}]})
            assert r.status_code == 200, r.text
            total += r.json()["usage"]["completion_tokens"]
    after = settled(url, sum(before.values()) + total)
    assert len(where_they_went(before, after)) == 1, (before, after)
