"""One listening socket for the replicas that take HTTP themselves, held by the process that starts Serve.

With ``http_front: replica`` the model's replicas accept connections on the
user's port. If each replica bound the port itself, nothing would listen while
Serve restarts a crashed replica or replaces it in an update, so clients would
be refused, and connections queued on a closing replica's socket would be reset.
Instead the process that starts Serve (``kronk server start``, the tests, the
benchmarks) binds the port once and keeps it (:class:`ListenerKeeper`); every
replica on the node gets a copy of that socket over a Unix socket
(:func:`fetch_listener`, ``SCM_RIGHTS``) and accepts from the one queue. A
connection that arrives while no replica accepts waits in the queue until one
does, as a request to Ollama waits for its model to load.

Linux only (an abstract Unix socket, its peer's uid checked). Where no keeper
runs (another OS, ``serve run`` with ``http_front: replica``), a replica binds
the port itself with ``SO_REUSEPORT`` (``deployments/direct_http.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import threading

log = logging.getLogger("ray.serve")

SUPPORTED = sys.platform.startswith("linux")
BACKLOG = 2048  # uvicorn's default


def keeper_address(host: str, port: int) -> str:
    """The abstract Unix socket name where the keeper of host:port hands out its socket."""
    return f"\0kronk-http-listener/{host}/{port}"


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A socket bound to host:port (``reuse_port``: other sockets may bind it too, SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
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


class ListenerKeeper:
    """Binds and listens on host:port and hands a copy of the socket to each local process of this user
    that asks (a thread serving ``keeper_address``). ``close()`` stops both."""

    def __init__(self, host: str, port: int):
        if not SUPPORTED:
            raise RuntimeError("a shared HTTP listener needs Linux")
        self.host, self.port = host, port
        self.sock = bind_socket(host, port, reuse_port=False)
        self.sock.listen(BACKLOG)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._server.bind(keeper_address(host, port))
        except OSError as e:
            self.sock.close()
            self._server.close()
            raise RuntimeError(f"another process already keeps the listener of {host}:{port}: {e}") from e
        self._server.listen(16)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"kronk-listener-{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            with conn:
                try:
                    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
                        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
                    if uid != os.getuid():
                        log.warning("refused the HTTP listener of port %d to uid %d", self.port, uid)
                        continue
                    socket.send_fds(conn, [b"listener"], [self.sock.fileno()])
                except OSError as e:  # the asking replica went away
                    log.debug("handing out the listener failed: %s", e)

    def close(self) -> None:
        self._closed.set()
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> ListenerKeeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fetch_listener(host: str, port: int, timeout_s: float = 10.0) -> socket.socket | None:
    """A copy of the keeper's listening socket for host:port, or None when no keeper runs on this node."""
    if not SUPPORTED:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        try:
            conn.connect(keeper_address(host, port))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 16, 1)
    if not fds:
        raise RuntimeError(f"the keeper of {host}:{port} sent no socket (another user's process?)")
    return socket.socket(fileno=fds[0])
