"""The stored responses of one HTTP front (``store: true``): in this process's memory, bounded in count
(``responses_max_stored``) and size (``responses_max_bytes``; the least recently used goes first) and age
(``responses_ttl_s`` after it was made), each visible only to the API key that made it (with keys off, everyone
is the same anonymous principal).

An entry keeps its response object (``GET /v1/responses/{id}``) and the conversation a follow-up continues: the
input items it answered, the previous chain's included, then its own output items. Conversations share their
earlier turns (a :class:`Conversation` is a node that points at the one it continues), so a long chain holds each
item once, however many of its responses are stored; each entry is counted with its whole conversation, an upper
bound of what it keeps alive. A restart (or another front: each Serve ingress replica
has its own) knows none of them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from kronk.api.limits import DEFAULT_LIMITS
from kronk.errors import ErrorKind, KronkError
from kronk.security.auth import principal_of

Owner = tuple[str, str | None]  # a principal's name and key fingerprint


class ResponseNotFound(KronkError):
    """No stored response by that id for this key (never made, another key's, expired, deleted): 404 with
    OpenAI's ``invalid_request_error``."""

    kind = ErrorKind.MODEL_NOT_FOUND  # (404, invalid_request_error)
    code = "not_found"


@dataclass(frozen=True, slots=True)
class Conversation:
    """Items in order: ``parent``'s, then ``items``."""

    parent: Conversation | None
    items: tuple[Any, ...]
    size: int  # how many items in all
    chars: int  # their text in all (what the entry keeps alive, about)

    @classmethod
    def of(cls, parent: Conversation | None, items: list[Any] | tuple[Any, ...]) -> Conversation:
        chars = sum(_chars(i) for i in items)
        if parent is None:
            return cls(None, tuple(items), len(items), chars)
        return cls(parent, tuple(items), len(items) + parent.size, chars + parent.chars)

    def resolve(self) -> list[Any]:
        """Every item, oldest first (iterative: no recursion, however long the chain)."""
        nodes: list[Conversation] = []
        node: Conversation | None = self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return [item for n in reversed(nodes) for item in n.items]


def _chars(item: Any) -> int:
    """About how much of memory an item holds: its fields' text (pydantic items), else its JSON."""
    if hasattr(item, "model_dump"):
        return 64 + sum(len(v) if isinstance(v, str) else len(json.dumps(v, default=str))
                        for v in item.model_dump().values())
    return len(json.dumps(item, default=str))


@dataclass(slots=True)
class Stored:
    owner: Owner
    response: dict[str, Any]
    conversation: Conversation  # what a follow-up continues: the input it answered, then its output
    expires_at: float
    cost: int  # bytes, about: the response's JSON and the whole conversation's text


def owner_of(request: Request) -> Owner:
    """Whose responses a request sees: its API key's (name and fingerprint), or the anonymous principal's."""
    who = principal_of(request)
    return ("anonymous", None) if who is None else (who.name, who.fingerprint)


class ResponseStore:
    def __init__(self, max_stored: int = DEFAULT_LIMITS.responses_max_stored,
                 ttl_s: float = DEFAULT_LIMITS.responses_ttl_s, max_bytes: int = DEFAULT_LIMITS.responses_max_bytes,
                 clock: Callable[[], float] = time.monotonic):
        self.max_stored = max_stored
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0  # the stored entries' costs together
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Stored] = OrderedDict()  # least recently used first
        self._made: dict[str, float] = {}  # id -> expiry, in the order they were stored (oldest first)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._made:
            rid, expires = next(iter(self._made.items()))
            if expires > now:
                break
            del self._made[rid]
            self._drop(rid)

    def _drop(self, rid: str) -> None:
        entry = self._entries.pop(rid, None)
        self._made.pop(rid, None)
        if entry is not None:
            self.bytes -= entry.cost

    def put(self, rid: str, owner: Owner, response: dict[str, Any], conversation: Conversation) -> bool:
        """Keep ``response``; False when it is not kept: the store keeps none, the response is larger than all of
        ``max_bytes``, or the id is another key's."""
        cost = len(json.dumps(response, default=str)) + conversation.chars
        if self.max_stored <= 0 or cost > self.max_bytes:
            return False
        with self._lock:
            now = self.clock()
            self._expire(now)
            old = self._entries.get(rid)
            if old is not None and old.owner != owner:
                return False
            self._drop(rid)
            self._entries[rid] = Stored(owner, response, conversation, now + self.ttl_s, cost)
            self._made[rid] = now + self.ttl_s
            self.bytes += cost
            while len(self._entries) > self.max_stored or self.bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))  # the least recently used
            return True

    def get(self, rid: str, owner: Owner, param: str | None = None) -> Stored:
        """The stored response (now the most recently used), else :class:`ResponseNotFound`."""
        with self._lock:
            self._expire(self.clock())
            entry = self._entries.get(rid)
            if entry is None or entry.owner != owner:
                entry = None
            else:
                self._entries.move_to_end(rid)
        if entry is None:
            what = "Previous response" if param == "previous_response_id" else "Response"
            raise ResponseNotFound(f"{what} with id '{rid[:80]}' not found.", param=param,
                                   code="previous_response_not_found" if param else None)
        return entry

    def delete(self, rid: str, owner: Owner) -> None:
        self.get(rid, owner)
        with self._lock:
            self._drop(rid)

    def taken(self, rid: str) -> bool:
        """Whether any key's stored response has this id (a client may pick its request ids)."""
        with self._lock:
            return rid in self._entries


def store_of(request: Request) -> ResponseStore:
    """The app's store (``app.state.responses``), made on first use within the app's limits."""
    state = request.app.state
    store = getattr(state, "responses", None)
    if store is None:
        limits = getattr(state, "limits", DEFAULT_LIMITS)
        store = state.responses = ResponseStore(limits.responses_max_stored, limits.responses_ttl_s,
                                                limits.responses_max_bytes)
    return store
