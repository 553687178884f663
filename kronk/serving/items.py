"""What a call yields: items.

* a streamed request yields strings of ready-made Server-Sent Events (several events may share one item);
* a non-streamed request yields one dict, the whole JSON response;
* a request that fails yields one :class:`Failure` (first, before anything else, when the request itself is
  wrong; last, when something breaks mid-stream) and nothing after it.

A Failure is the one form an error takes across the replica hop: the model's service turns every exception into
one, and the route turns it into the OpenAI error envelope (an HTTP status before the first byte, an SSE
``error`` event after it).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

from kronk.errors import ErrorKind, KronkError

log = logging.getLogger("kronk.serving")


@dataclass(frozen=True)
class Failure:
    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None  # when the client may try again: the Retry-After header (a 503, a 429)

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """The failure a client is told about: a KronkError as it is; anything else as a 500 with a reference
        (the traceback goes to the log, not to the client)."""
        if isinstance(exc, KronkError):
            return cls(exc.kind.status, exc.kind.type, exc.message, exc.param, exc.code, exc.retry_after_s)
        ref = uuid.uuid4().hex[:12]
        log.error("internal error %s", ref, exc_info=exc)
        return cls(ErrorKind.SERVER.status, ErrorKind.SERVER.type, f"internal server error (reference {ref})",
                   None, "internal_error")

    def headers(self) -> dict[str, str] | None:
        """The response headers this failure asks for: ``Retry-After`` (whole seconds, rounded up) when known."""
        if self.retry_after_s is None:
            return None
        return {"Retry-After": str(max(0, math.ceil(self.retry_after_s)))}

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def sse(self) -> str:
        return "data: " + json.dumps(self.envelope()) + "\n\n"


Item = str | dict[str, Any] | Failure


def sse(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


SSE_DONE = "data: [DONE]\n\n"
