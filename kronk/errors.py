"""One error table: every error kind maps to an HTTP status and an OpenAI error `type`.

The engine and the store raise these typed exceptions; ``kronk.api.errors`` turns
them into the OpenAI envelope ``{"error": {"message", "type", "param", "code"}}``.
They are plain picklable exceptions so they survive a Ray handle hop.
"""

from __future__ import annotations

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
    SERVER = (500, "server_error")
    UNAVAILABLE = (503, "server_error")

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

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

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

    def __init__(self, n_prompt: int, n_ctx: int, *, param: str | None = "messages"):
        super().__init__(
            f"This model's maximum context length is {n_ctx} tokens, but the prompt has {n_prompt} "
            f"tokens. Shorten the prompt (or raise the model's ctx_size).",
            param=param,
        )
        self.n_prompt, self.n_ctx = n_prompt, n_ctx


class ModelNotFound(KronkError):
    kind = ErrorKind.MODEL_NOT_FOUND
    code = "model_not_found"


class NotFound(KronkError):
    kind = ErrorKind.NOT_FOUND
    code = "not_found"


class Unauthorized(KronkError):
    kind = ErrorKind.AUTHENTICATION
    code = "invalid_api_key"


class Unsupported(KronkError):
    kind = ErrorKind.INVALID_REQUEST
    code = "unsupported"


class EngineOverloaded(KronkError):
    kind = ErrorKind.UNAVAILABLE
    code = "overloaded"


class EngineError(KronkError):
    kind = ErrorKind.SERVER
    code = "engine_error"
