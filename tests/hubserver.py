"""A real local HTTP server speaking the Hugging Face Hub's file protocol, for tests.

It serves in-memory repos on 127.0.0.1:<free port>:

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``?blobs=true``
  adds ``size``, ``blobId`` and ``lfs {sha256, size, pointerSize}`` to siblings)
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``?recursive=true``)
* ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length``, ``Accept-Ranges`` and
  Range requests (206 + ``Content-Range``, 416 past the end); optionally a 302 to
  ``/cdn/...`` as the real hub does for LFS files
* gated repos: 401 (no token) / 403 (wrong token) with ``X-Error-Code: GatedRepo``
  unless ``Authorization: Bearer <the repo's token>`` is sent
* unknown repo / revision / file: 404 with ``X-Error-Code`` RepoNotFound /
  RevisionNotFound / EntryNotFound

Knobs for tests: ``cut_after`` (drop the connection after N body bytes, once),
``corrupt`` (serve wrong bytes of the right length), ``hold`` (pause a file after N
bytes until released), ``throttle_s`` (sleep per chunk), ``oversend`` (append N bytes
to a file's body beyond the size its metadata and ``Content-Range`` announce, with no
``Content-Length``: the body ends when the connection closes; with
``oversend_length`` the ``Content-Length`` counts the extra bytes too), ``served``
(body bytes written per file) and ``requests`` (a log of what came in).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

_TRUE = {"1", "true", "True", "yes"}


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str
    gated: bool = False
    token: str | None = None
    gate_api: bool = False  # the real hub shows a gated repo's info to anyone; True gates the API too

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(".gguf") or len(self.files[path]) > 10_000

    def blob_id(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Hold:
    after: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class HubServer:
    def __init__(self, chunk_size: int = 64 * 1024):
        self.repos: dict[str, FakeRepo] = {}
        self.chunk_size = chunk_size
        self.served: Counter[str] = Counter()  # "repo/path" -> body bytes written
        self.requests: list[dict[str, Any]] = []
        self.cut_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.oversend: dict[str, int] = {}
        self.oversend_length = False
        self.holds: dict[str, Hold] = {}
        self.throttle_s = 0.0
        self.redirect = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ setup

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        gated: bool = False,
        token: str | None = None,
        gate_api: bool = False,
    ) -> FakeRepo:
        commit = hashlib.sha1(repo_id.encode() + "".join(sorted(files)).encode()).hexdigest()
        repo = FakeRepo(repo_id, dict(files), commit, gated, token, gate_api)
        self.repos[repo_id] = repo
        return repo

    @staticmethod
    def key(repo_id: str, path: str) -> str:
        return f"{repo_id}/{path}"

    def hold(self, repo_id: str, path: str, after: int) -> Hold:
        h = Hold(after)
        self.holds[self.key(repo_id, path)] = h
        return h

    def file_url(self, repo_id: str, path: str, rev: str = "main") -> str:
        return f"{self.url}/{repo_id}/resolve/{rev}/{quote(path)}"

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for h in self.holds.values():
            h.release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _log(self, status: int) -> dict[str, Any]:
        entry = {
            "method": self.command,
            "path": urlsplit(self.path).path,
            "status": status,
            "range": self.headers.get("Range"),
            "auth": self.headers.get("Authorization"),
            "sent": 0,  # body bytes written for this request
        }
        with self.hub._lock:
            self.hub.requests.append(entry)
        return entry

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, key: str = "",
              length: bool = True) -> None:
        """Answer; with ``key`` (a file), the body goes out through the test knobs in _stream. ``length``:
        send a Content-Length (else the connection closes after the body, which is how its end is told)."""
        entry = self._log(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD" and body:
            if key:
                self._stream(key, body, entry)
            else:
                self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(
            status,
            json.dumps({"error": message}).encode(),
            {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
        )

    def _find_repo(self, segments: list[str]) -> tuple[FakeRepo | None, list[str]]:
        for n in (2, 1):
            rid = "/".join(segments[:n])
            if len(segments) >= n and rid in self.hub.repos:
                return self.hub.repos[rid], segments[n:]
        return None, segments

    def _authorized(self, repo: FakeRepo) -> bool:
        if not repo.gated:
            return True
        auth = self.headers.get("Authorization")
        if auth == f"Bearer {repo.token}":
            return True
        status = 403 if auth else 401
        self._error(
            status,
            "GatedRepo",
            f"Access to model {repo.repo_id} is restricted. You must have access "
            "to it and be authenticated to access it. Please log in.",
        )
        return False

    def _revision_ok(self, repo: FakeRepo, rev: str) -> bool:
        if rev in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return False

    # ------------------------------------------------------------------ routes

    def _route(self) -> None:
        try:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            segments = [unquote(s) for s in parts.path.strip("/").split("/")]
            if segments[:2] == ["api", "models"]:
                self._api(segments[2:], query)
            elif segments[:1] == ["cdn"]:
                repo, rest = self._find_repo(segments[1:])
                if repo is None or "/".join(rest) not in repo.files:
                    self._error(404, "EntryNotFound", "no such blob")
                else:
                    self._file(repo, "/".join(rest))
            elif "resolve" in segments:
                i = segments.index("resolve")
                repo, extra = self._find_repo(segments[:i])
                if repo is None or extra:
                    self._error(404, "RepoNotFound", "Repository not found")
                    return
                if len(segments) < i + 3:
                    self._error(404, "EntryNotFound", "Entry not found")
                    return
                self._resolve(repo, segments[i + 1], "/".join(segments[i + 2 :]))
            else:
                self._error(404, "RepoNotFound", "Repository not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_HEAD = _route

    def _api(self, segments: list[str], query: dict[str, list[str]]) -> None:
        repo, rest = self._find_repo(segments)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if repo.gate_api and not self._authorized(repo):
            return
        if not rest or rest[0] == "revision":
            rev = rest[1] if len(rest) > 1 else "main"
            if self._revision_ok(repo, rev):
                self._json(self._info(repo, blobs=query.get("blobs", [""])[0] in _TRUE))
        elif rest[0] == "tree" and len(rest) >= 2:
            if self._revision_ok(repo, rest[1]):
                self._json(self._tree(repo, "/".join(rest[2:]), query.get("recursive", [""])[0] in _TRUE))
        else:
            self._error(404, "EntryNotFound", "unknown API route")

    def _info(self, repo: FakeRepo, blobs: bool) -> dict[str, Any]:
        siblings = []
        for p in sorted(repo.files):
            s: dict[str, Any] = {"rfilename": p}
            if blobs:
                s["size"] = len(repo.files[p])
                s["blobId"] = repo.blob_id(p)
                if repo.is_lfs(p):
                    s["lfs"] = {"sha256": repo.sha256(p), "size": len(repo.files[p]), "pointerSize": 134}
            siblings.append(s)
        return {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.commit,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "gguf",
            "tags": ["gguf"],
            "siblings": siblings,
        }

    def _tree(self, repo: FakeRepo, under: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p in sorted(repo.files):
            if not p.startswith(prefix):
                continue
            parents = p[len(prefix) :].split("/")[:-1]
            dirs.update(prefix + "/".join(parents[: i + 1]) for i in range(len(parents) if recursive else 0))
            if parents and not recursive:
                dirs.add(prefix + parents[0])
                continue
            e: dict[str, Any] = {"type": "file", "oid": repo.blob_id(p), "size": len(repo.files[p]), "path": p}
            if repo.is_lfs(p):
                e["lfs"] = {"oid": repo.sha256(p), "size": len(repo.files[p]), "pointerSize": 134}
            out.append(e)
        out += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        return out

    def _resolve(self, repo: FakeRepo, rev: str, path: str) -> None:
        if not self._authorized(repo) or not self._revision_ok(repo, rev):
            return
        if path not in repo.files:
            self._error(404, "EntryNotFound", f"{path} does not exist at revision {rev}")
            return
        if self.hub.redirect and repo.is_lfs(path):
            self._send(
                302,
                headers={
                    "Location": f"{self.hub.url}/cdn/{quote(repo.repo_id)}/{quote(path)}?sig=x",
                    "X-Repo-Commit": repo.commit,
                    "X-Linked-Etag": f'"{repo.sha256(path)}"',
                    "X-Linked-Size": str(len(repo.files[path])),
                },
            )
            return
        self._file(repo, path)

    def _file(self, repo: FakeRepo, path: str) -> None:
        key = self.hub.key(repo.repo_id, path)
        data = repo.files[path]
        if key in self.hub.corrupt:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        etag = f'"{repo.sha256(path)}"' if repo.is_lfs(path) else f'"{repo.blob_id(path)}"'
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "X-Linked-Etag": etag,
            "X-Linked-Size": str(len(data)),
            "X-Repo-Commit": repo.commit,
        }
        start, end, status = 0, len(data) - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= len(data):
                self._send(416, headers={"Content-Range": f"bytes */{len(data)}"})
                return
            start = int(m.group(1))
            end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        extra = self.hub.oversend.get(key, 0)
        body = data[start : end + 1] + make_gguf(extra, seed=99)[:extra]
        self._send(status, body, headers, key=key, length=not extra or self.hub.oversend_length)

    def _stream(self, key: str, body: bytes, entry: dict[str, Any]) -> None:
        hub = self.hub
        with hub._lock:
            cut = hub.cut_after.pop(key, None)
        hold = hub.holds.get(key)
        sent = 0
        while sent < len(body):
            n = hub.chunk_size
            if cut is not None:
                n = min(n, cut - sent)
            if hold is not None and not hold.release.is_set() and sent < hold.after:
                n = min(n, hold.after - sent)
            if n > 0:
                chunk = body[sent : sent + n]
                self.wfile.write(chunk)
                sent += len(chunk)
                with hub._lock:
                    hub.served[key] += len(chunk)
                    entry["sent"] += len(chunk)
            if cut is not None and sent >= cut:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if hold is not None and sent >= hold.after and not hold.release.is_set():
                self.wfile.flush()
                hold.reached.set()
                while not hold.release.wait(0.05) and not hub._stopping.is_set():
                    pass
            if hub.throttle_s:
                self.wfile.flush()
                time.sleep(hub.throttle_s)


def make_gguf(size: int, seed: int = 0) -> bytes:
    """Deterministic fake model bytes that start with the GGUF magic."""
    block = hashlib.sha256(b"kronk-test-%d" % seed).digest() * 64
    data = (b"GGUF" + block * (size // len(block) + 1))[:size]
    return data
