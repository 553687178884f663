"""One error table: every error kind maps to an HTTP status and an OpenAI error `type`.

The engine and the store raise these typed exceptions; ``kronk.api.errors`` turns
them into the OpenAI envelope ``{"error": {"message", "type", "param", "code"}}``.
They are plain picklable exceptions so they survive a Ray handle hop.
"""

from __future__ import annotations

import re
from enum import Enum


class ErrorKind(Enum):
    """(HTTP status, OpenAI error type)."""

    INVALID_REQUEST = (400, "invalid_request_error")
    CONTEXT_LENGTH = (400, "invalid_request_error")
    AUTHENTICATION = (401, "authentication_error")
    PERMISSION = (403, "permission_error")
    NOT_FOUND = (404, "not_found_error")
    MODEL_NOT_FOUND = (404, "invalid_request_error")
    CONFLICT = (409, "conflict_error")
    PAYLOAD_TOO_LARGE = (413, "invalid_request_error")
    MEDIA_TYPE = (415, "invalid_request_error")
    RATE_LIMIT = (429, "rate_limit_error")
    SERVER = (500, "server_error")
    UNAVAILABLE = (503, "server_error")
    INSUFFICIENT_STORAGE = (507, "server_error")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def type(self) -> str:
        return self.value[1]


class KronkError(Exception):
    """Base of every error a client can be told about."""

    kind: ErrorKind = ErrorKind.SERVER
    code: str | None = None
    retry_after_s: float | None = None  # when to try again (a 503/429's Retry-After header), if known

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    def __reduce__(self):  # keep param/code across pickling (Ray)
        return (_rebuild, (type(self), self.message, self.param, self.code, self.__dict__))

    def to_dict(self) -> dict:
        return {"message": self.message, "type": self.kind.type, "param": self.param, "code": self.code}


def _rebuild(cls, message, param, code, state):
    obj = cls.__new__(cls)
    Exception.__init__(obj, message)
    obj.__dict__.update(state)
    obj.message, obj.param, obj.code = message, param, code
    return obj


class InvalidRequest(KronkError):
    kind = ErrorKind.INVALID_REQUEST
    code = "invalid_value"


class ContextLengthExceeded(KronkError):
    kind = ErrorKind.CONTEXT_LENGTH
    code = "context_length_exceeded"

    def __init__(self, n_prompt: int, n_ctx: int, *, param: str | None = "messages", n_completion: int | None = None,
                 prompt_part: str = "the messages"):
        if n_completion is None:
            message = (f"This model's maximum context length is {n_ctx} tokens, but the prompt has {n_prompt} "
                       f"tokens. Shorten the prompt (or raise the model's ctx_size).")
        else:  # OpenAI's wording for a token limit that the context cannot hold
            message = (f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                       f"{n_prompt + n_completion} tokens ({n_prompt} in {prompt_part}, {n_completion} in the "
                       f"completion). Please reduce the length of {prompt_part} or completion (no {param} at all "
                       f"means the rest of the context).")
        super().__init__(message, param=param)
        self.n_prompt, self.n_ctx, self.n_completion = n_prompt, n_ctx, n_completion


class PayloadTooLarge(KronkError):
    kind = ErrorKind.PAYLOAD_TOO_LARGE
    code = "request_too_large"


class ModelNotFound(KronkError):
    kind = ErrorKind.MODEL_NOT_FOUND
    code = "model_not_found"


class NotFound(KronkError):
    kind = ErrorKind.NOT_FOUND
    code = "not_found"


class Unauthorized(KronkError):
    kind = ErrorKind.AUTHENTICATION
    code = "invalid_api_key"


class PermissionDenied(KronkError):
    kind = ErrorKind.PERMISSION
    code = "insufficient_scope"


class UnsupportedMediaType(KronkError):
    kind = ErrorKind.MEDIA_TYPE
    code = "unsupported_media_type"


class RateLimited(KronkError):
    kind = ErrorKind.RATE_LIMIT
    code = "rate_limit_exceeded"


class Unsupported(KronkError):
    kind = ErrorKind.INVALID_REQUEST
    code = "unsupported"


class EngineOverloaded(KronkError):
    """The model cannot take the request now (its wait queue is full, the request waited too long, its replica
    went away): a 503 whose ``retry_after_s`` becomes the Retry-After header."""

    kind = ErrorKind.UNAVAILABLE
    code = "overloaded"


class EngineError(KronkError):
    kind = ErrorKind.SERVER
    code = "engine_error"


# An absolute POSIX path (not a URL's path, not a repo id): its folders are dropped, its last name is kept.
_ABS_DIRS = re.compile(r"(?<![\w.~/:-])/(?:[^\s/'\"`:,;()\[\]{}<>]+/)+")


def redact_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last name (``/srv/models/x/m.gguf`` -> ``m.gguf``): what a
    client is told never shows where the server keeps its files."""
    return _ABS_DIRS.sub("", text)


class Pinned(KronkError):
    """A model the config pins (its own deployment): it cannot be loaded or unloaded on request."""

    kind = ErrorKind.CONFLICT
    code = "model_pinned"


class MemoryBudgetExceeded(KronkError):
    """A model (with the settings asked for) does not fit the memory budget: a 503. ``retry_after_s`` is set
    by whoever knows that waiting can help (a pool whose loaded models will go idle); without it the model
    cannot fit even in the whole budget, and the message says what would (a smaller context, fewer slots,
    a quantized KV cache, a larger budget)."""

    kind = ErrorKind.UNAVAILABLE
    code = "insufficient_memory"

    def __init__(self, message: str, *, needed_bytes: int, budget_bytes: int, param: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message, param=param, retry_after_s=retry_after_s)
        self.needed_bytes, self.budget_bytes = needed_bytes, budget_bytes
