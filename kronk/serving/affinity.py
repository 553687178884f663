"""Prefix affinity: which replica of a model should take a call, so that its engine already holds the prompt's start.

Each replica's engine keeps the KV state of the prompts it served (docs/configuration.md, "Shared prefixes"): turn
N of a chat prefills only what is new *if* it lands on the replica that served turn N-1. The router in front of
the replicas (``deployments/router.py``) sees a call before it is rendered and tokenized (that happens once, in
the replica), so it cannot match tokens; it matches the request's own content instead:

* **Prefix keys** (:func:`routing_keys`): chained hashes of the request's leading blocks. The first block is what a
  chat template puts before the conversation (tools, the system prompt or instructions, template options); then
  one block per message (or Responses input item), each key hashing the one before it and the block, so key ``i``
  stands for "this exact start, up to block ``i``". A continued chat repeats every earlier message, so its keys
  start with every key the previous turn had. (An empty first block, a chat without tools, makes no key of its
  own: every such chat would share it.) Text prompts (completions, Ollama's generate) are cut into blocks
  of :data:`TEXT_BLOCK_CHARS` characters, token-id prompts into :data:`TOKEN_BLOCK` ids. The work is bounded:
  at most :data:`MAX_BLOCKS` keys over the first :data:`MAX_BYTES` bytes.
* **A session key**: the ``x-session-id`` header (``RequestContext.session_id``), else an OpenAI
  ``prompt_cache_key`` field in the body: a client's own name for a conversation, which pins it.

A Responses call that continues a stored response (``previous_response_id``) needs nothing of its own: the store
is at the HTTP front, and the call carries the whole conversation (the stored items, then the new input), so its
prefix keys continue the previous turn's like a chat's.

:class:`AffinityTable` is the router's memory and choice, free of Ray: which replica served each key last (an LRU
bounded map), and the ranked replicas for a call given their current loads.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kronk.serving.call import Call, Endpoint

MAX_BLOCKS = 64  # prefix keys per call, at most
MAX_BYTES = 256 * 1024  # bytes of a request's content hashed, at most
TEXT_BLOCK_CHARS = 1024  # a text prompt's block
TOKEN_BLOCK = 256  # a token-id prompt's block
MAX_SESSION_ID = 256  # a longer x-session-id (or prompt_cache_key) is not used
DIGEST_BYTES = 8
MAX_KEYS = 100_000  # the table's size: keys beyond it drop the least recently used

# The endpoints whose prompt is a conversation (field of its items), and those whose prompt is text.
CONVERSATION_FIELD = {Endpoint.CHAT: "messages", Endpoint.MESSAGES: "messages", Endpoint.OLLAMA_CHAT: "messages",
                      Endpoint.RESPONSES: "input"}
TEXT_FIELD = {Endpoint.COMPLETIONS: "prompt", Endpoint.OLLAMA_GENERATE: "prompt"}
# What a chat template renders before the conversation, wherever an endpoint family has it.
HEAD_FIELDS = ("tools", "system", "instructions", "chat_template_kwargs", "raw")


@dataclass(frozen=True)
class RoutingKeys:
    """A call's keys: its session (None: none given) and its prefix keys, shortest prefix first."""

    session: bytes | None
    prefix: tuple[bytes, ...]

    def __bool__(self) -> bool:
        return self.session is not None or bool(self.prefix)


NO_KEYS = RoutingKeys(None, ())


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))  # framed: (a, bc) and (ab, c) differ
        h.update(p)
    return h.digest()


def _plain(value: Any) -> Any:
    """A request value as JSON-able data (pydantic models dumped without their unset Nones)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True, by_alias=True)
    raise TypeError(f"not JSON data: {type(value).__name__}")


def canonical(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, pydantic models as their JSON dump."""
    if hasattr(value, "model_dump"):
        value = _plain(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain).encode()


class _Chain:
    """Chained block hashes within the bounds (MAX_BLOCKS keys, MAX_BYTES bytes)."""

    def __init__(self, tag: str):
        self.last = _digest(b"kronk-affinity-1", tag.encode())
        self.keys: list[bytes] = []
        self.budget = MAX_BYTES

    @property
    def full(self) -> bool:
        return len(self.keys) >= MAX_BLOCKS or self.budget <= 0

    def add(self, block: bytes) -> bool:
        """Adds a block's key (a block beyond the byte budget counts only up to it); False once full."""
        if self.full:
            return False
        block = block[: self.budget]
        self.budget -= len(block)
        self.last = _digest(self.last, block)
        self.keys.append(self.last)
        return not self.full


def _head(request: Any) -> bytes:
    return canonical({f: v for f in HEAD_FIELDS if (v := getattr(request, f, None)) is not None})


def _first_prompt(prompt: Any) -> str | list[int] | None:
    """A completions prompt's text or token ids (for a list of prompts, the first one's)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) for t in prompt):
            return prompt
        first = prompt[0]
        if isinstance(first, str) or (isinstance(first, list) and all(isinstance(t, int) for t in first)):
            return first
    return None


def prefix_keys(call: Call) -> tuple[bytes, ...]:
    """The chained keys of the call's leading blocks (empty: an endpoint without a prompt to cache)."""
    request = call.request
    conversation = CONVERSATION_FIELD.get(call.endpoint)
    text = TEXT_FIELD.get(call.endpoint)
    if conversation is None and text is None:
        return ()
    items = getattr(request, conversation, None) if conversation is not None else None
    prompt = _first_prompt(getattr(request, text, None)) if text is not None else None
    if not items and not prompt:  # nothing to prefill (e.g. Ollama's load-the-model request)
        return ()
    chain = _Chain(call.endpoint.value)
    head = _head(request)
    if head != b"{}" and not chain.add(head):  # no key for an empty head: every chat would share it
        return tuple(chain.keys)
    if items:
        for item in items:
            if not chain.add(canonical(item)):
                break
    elif isinstance(prompt, str):
        for i in range(0, len(prompt), TEXT_BLOCK_CHARS):
            if not chain.add(prompt[i:i + TEXT_BLOCK_CHARS].encode("utf-8", "surrogatepass")):
                break
    elif prompt is not None:
        for i in range(0, len(prompt), TOKEN_BLOCK):
            if not chain.add(canonical(prompt[i:i + TOKEN_BLOCK])):
                break
    return tuple(chain.keys)


def session_of(call: Call) -> str | None:
    """The conversation's name a client gave: the ``x-session-id`` header, else a ``prompt_cache_key`` field."""
    sid = getattr(call.ctx, "session_id", None)
    if sid is None:
        extra = getattr(call.request, "model_extra", None) or {}
        sid = extra.get("prompt_cache_key")
    if isinstance(sid, str) and 0 < len(sid) <= MAX_SESSION_ID:
        return sid
    return None


def routing_keys(call: Any) -> RoutingKeys:
    """The call's session and prefix keys; :data:`NO_KEYS` for anything that is not a :class:`Call` with a prompt
    (the router then balances by load alone). Never raises: a key is a hint."""
    if not isinstance(call, Call):
        return NO_KEYS
    try:
        sid = session_of(call)
        session = _digest(b"kronk-session-1", sid.encode("utf-8", "surrogatepass")) if sid is not None else None
        return RoutingKeys(session, prefix_keys(call))
    except Exception:  # a request shape this module does not know: no affinity rather than no answer
        return NO_KEYS


R = TypeVar("R", bound=Hashable)


class AffinityTable(Generic[R]):
    """Which replica served each key last (LRU-bounded), and the ranked choice for a call.

    ``busy_at``: the requests at which a replica counts as busy (a model's ``parallel``: every slot taken). The
    replica that served the call's longest known prefix (or its session) is kept unless it is busy *and* another
    replica has fewer requests; then the least loaded takes the call (and its keys move there).
    """

    def __init__(self, busy_at: int = 1, max_keys: int = MAX_KEYS, rng: random.Random | None = None):
        self.busy_at = max(1, busy_at)
        self.max_keys = max(1, max_keys)
        self._owner: OrderedDict[bytes, R] = OrderedDict()
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        return len(self._owner)

    def lookup(self, keys: RoutingKeys, alive: Iterable[R] | None = None) -> tuple[R | None, int]:
        """The replica that served the session, else the longest known prefix, last, among ``alive`` (None: any);
        with how many prefix keys matched (-1: matched by the session; 0: no match)."""
        live = None if alive is None else set(alive)

        def ok(r: R | None) -> bool:
            return r is not None and (live is None or r in live)

        if keys.session is not None and ok(r := self._owner.get(keys.session)):
            return r, -1
        for depth in range(len(keys.prefix), 0, -1):
            if ok(r := self._owner.get(keys.prefix[depth - 1])):
                return r, depth
        return None, 0

    def record(self, keys: RoutingKeys, replica: R) -> None:
        """The replica now holds the call's prefix (and its session)."""
        for k in (*keys.prefix, *((keys.session,) if keys.session is not None else ())):
            self._owner[k] = replica
            self._owner.move_to_end(k)
        while len(self._owner) > self.max_keys:
            self._owner.popitem(last=False)

    def forget(self, alive: Iterable[R]) -> int:
        """Drops every key of a replica not in ``alive``; how many were dropped."""
        live = set(alive)
        gone = [k for k, r in self._owner.items() if r not in live]
        for k in gone:
            del self._owner[k]
        return len(gone)

    def choose(self, keys: RoutingKeys, candidates: Sequence[R], load: Callable[[R], int | None]
               ) -> list[list[R]]:
        """Ranked replicas for the call, one per rank, most preferred first (each rank is tried in turn when the one
        before is full). ``load``: a replica's ongoing requests, None when unknown (counted as 0: a replica this
        router sent nothing to lately).

        With an affinity replica: it first, unless it is busy and another one has fewer requests; then the least
        loaded. Without one: the least loaded, ties broken at random (so that new conversations spread)."""
        if not candidates:
            return []

        def q(r: R) -> int:
            return load(r) or 0

        shuffled = list(candidates)
        self._rng.shuffle(shuffled)
        by_load = sorted(shuffled, key=q)  # stable: random among equals
        owner, _ = self.lookup(keys, candidates) if keys else (None, 0)
        if owner is None:
            return [[r] for r in by_load]
        others = [r for r in by_load if r != owner]
        if others and q(owner) >= self.busy_at and q(others[0]) < q(owner):
            return [[others[0]], [owner], *([r] for r in others[1:])]
        return [[owner], *([r] for r in others)]
