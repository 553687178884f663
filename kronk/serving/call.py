"""A call: what a route sends to a model after validating the request once.

The route parses the body into its endpoint family's pydantic request and wraps it
with the :class:`Endpoint` and one :class:`RequestContext`. Nothing downstream
validates the body again or dispatches on strings: the model's service looks the
endpoint up in its handler table. Calls pickle (pydantic models and dataclasses),
so the same object crosses a Serve handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Endpoint(Enum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"  # OpenAI's /v1/responses
    MESSAGES = "messages"  # Anthropic's /v1/messages
    MESSAGES_COUNT_TOKENS = "messages_count_tokens"  # Anthropic's /v1/messages/count_tokens
    OLLAMA_CHAT = "ollama_chat"  # Ollama's /api/chat
    OLLAMA_GENERATE = "ollama_generate"  # Ollama's /api/generate
    OLLAMA_EMBED = "ollama_embed"  # Ollama's /api/embed and /api/embeddings
    RERANK = "rerank"  # /v1/rerank (Cohere / Jina, as llama-server serves it)
    TOKENIZE = "tokenize"  # /v1/tokenize (vLLM's) and llama-server's /tokenize
    DETOKENIZE = "detokenize"  # /v1/detokenize and /detokenize
    APPLY_TEMPLATE = "apply_template"  # /v1/apply-template and llama-server's /apply-template


@dataclass(frozen=True)
class RequestContext:
    """The small part of an HTTP request that travels with it: its one id and the trace context.

    ``request_id`` is the client's ``X-Request-ID`` (when valid) or a generated one; it is the engine's request
    id, the response's ``id`` (``chatcmpl-<id>``, ``cmpl-<id>``), the spans' ``kronk.request_id`` and what
    ``/v1/stats`` shows for the slot that runs it. ``session_id``: the client's ``x-session-id`` (at most
    kronk.serving.affinity.MAX_SESSION_ID characters), a conversation's name that routes its turns to one replica.
    """

    request_id: str
    traceparent: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class Call:
    endpoint: Endpoint
    request: Any  # the endpoint family's validated pydantic request (it has a ``model`` field)
    ctx: RequestContext

    @property
    def model(self) -> str:
        return self.request.model
