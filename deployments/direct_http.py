"""The one-model replica's own HTTP listener, for a single-node app with Serve's proxy off.

On a machine whose cores all run llama.cpp, Serve's HTTP proxy is a second Python
process in every streamed request: it wakes for every item and preempts the
engine's threads (see benchmarks/README.md). With ``http_front: replica`` each
model replica accepts connections on the user's port itself and runs kronk's
FastAPI app on the replica's own event loop, the loop the ``@serve.batch``
admission runs on. Its socket is a copy of the one that the process which
started Serve keeps (``deployments/listener.py``), so connections wait instead
of being refused while no replica accepts; without a keeper the replica binds
the port itself (``SO_REUSEPORT``, so a second replica on the node shares it).
Serve still places, health-checks, restarts and drains the replicas. A replica
accepts only after its engine has loaded, so it never takes connections it
cannot serve.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn

from deployments.listener import bind_socket, fetch_listener

log = logging.getLogger("ray.serve")


class DirectHTTPServer:
    """uvicorn serving ``app`` on a bound socket, as a task on the calling event loop."""

    def __init__(self, app: Any, host: str, port: int):
        self.host, self.port = host, port
        kept = fetch_listener(host, port)
        self.shared = kept is not None
        self._sock = kept if kept is not None else bind_socket(host, port, reuse_port=True)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, lifespan="off", access_log=False, log_config=None,
            proxy_headers=False,  # never take the client address from X-Forwarded-For (docs/security.md)
            timeout_keep_alive=90,  # longer than common client pools keep idle connections (OpenAI SDK: 60s)
            timeout_graceful_shutdown=None))
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        log.info("serving HTTP on %s:%d from this replica (%s)", self.host, self.port,
                 "the kept listener" if self.shared else "its own socket")

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
