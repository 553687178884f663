"""Helpers the tests share (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import openai
import uvicorn

from kronk.processes import free_port

__all__ = ["GEMMA", "SMOL", "free_port", "http_server", "openai_client", "sse_events", "sse_usage"]

GEMMA = "gemma3-270m"
SMOL = "smollm2:135m"


def sse_events(lines: str | Iterable[str]) -> list[dict[str, Any]]:
    """The JSON events of an SSE body (its text, or its lines), without the closing ``[DONE]``."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]


def sse_usage(text: str) -> dict[str, Any]:
    """The usage an SSE body reports (its last event that has one)."""
    return next(e["usage"] for e in reversed(sse_events(text)) if e.get("usage"))


def openai_client(url: str, timeout_s: float = 120) -> openai.OpenAI:
    """The official client on a kronk server, no retries (a failure shows as it is)."""
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=timeout_s)


@contextmanager
def http_server(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, on an event loop in a thread of this process (real
    HTTP, no Ray); yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", access_log=False,
                                           log_config=None))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="test-http", daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "the test HTTP server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
