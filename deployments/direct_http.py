"""The one-model replica's own HTTP listener, for a single-node app with Serve's proxy off.

On a machine whose cores all run llama.cpp, Serve's HTTP proxy is a second Python
process in every streamed request: it wakes for every item and preempts the
engine's threads (see benchmarks/README.md). With ``http_front: replica`` each
model replica binds the user's port itself (``SO_REUSEPORT``, so a replaced or
second replica on the same node shares it and the kernel spreads connections)
and runs kronk's FastAPI app on the replica's own event loop, the loop the
``@serve.batch`` admission runs on. Serve still places, health-checks, restarts
and drains the replicas. The listener opens only after the engine has loaded, so
a starting replica never takes connections it cannot serve.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

log = logging.getLogger("ray.serve")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port that other replicas on this node may bind as well."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(
            f"cannot listen on {host}:{port}: {e.strerror}. Another program holds the port (Serve's own "
            "HTTP proxy does, unless it is disabled: http_front 'replica' needs proxy_location Disabled)"
        ) from e
    return sock


class DirectHTTPServer:
    """uvicorn serving ``app`` on a bound socket, as a task on the calling event loop."""

    def __init__(self, app: Any, host: str, port: int):
        self.host, self.port = host, port
        self._sock = bind_socket(host, port)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, lifespan="off", access_log=False, log_config=None,
            timeout_keep_alive=90,  # longer than common client pools keep idle connections (OpenAI SDK: 60s)
            timeout_graceful_shutdown=None))
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        log.info("serving HTTP on %s:%d from this replica", self.host, self.port)

    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def active_requests(self) -> int:
        return sum(1 for c in self._server.server_state.connections if getattr(c, "cycle", None)
                   and not c.cycle.response_complete)

    async def stop(self, timeout_s: float) -> None:
        """Stop taking connections, let running requests finish (at most ``timeout_s``), then close."""
        if self._task is None:
            self._sock.close()
            return
        log.info("closing the HTTP listener on %s:%d; %d requests still running", self.host, self.port,
                 self.active_requests)
        self._server.should_exit = True  # closes the listener; idle keep-alive connections close too
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            log.warning("HTTP requests still running after %.0fs: closing them", timeout_s)
            self._server.force_exit = True
            try:
                await asyncio.wait_for(self._task, 5)
            except Exception:  # the process is going away either way
                self._task.cancel()
        finally:
            self._sock.close()
