"""Talking to a running kronk server over HTTP (the routes in kronk/api)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from kronk.cli import procs
from kronk.cli.common import fail
from kronk.security.access import LOOPBACK_HOSTS, host_name
from kronk.security.keys import KeyStore
from kronk.settings import Settings

API_KEY_ENV = "KRONK_API_KEY"


class ServerError(Exception):
    """The server answered with an error envelope (or could not be reached)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message = message
        self.status = status


def server_url(url: str | None, settings: Settings) -> str:
    """--url / KRONK_URL, else the server started from this home, else http://<host>:<port>."""
    if url:
        return url.rstrip("/")
    info = procs.read_info(settings.home)
    if info and info.get("url"):
        return str(info["url"]).rstrip("/")
    return f"http://{procs.client_host(settings.host)}:{settings.port}"


def _is_home_server(url: str, settings: Settings) -> bool:
    """Whether ``url`` is the server started from this home (its URL, or a loopback name for its port): the only
    server the local admin key is sent to."""
    info = procs.read_info(settings.home)
    if not info:
        return False
    if str(info.get("url") or "").rstrip("/") == url.rstrip("/"):
        return True
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    return host_name(parts.netloc) in LOOPBACK_HOSTS and port == info.get("port")


def api_key_for(url: str, settings: Settings) -> str | None:
    """The key the CLI sends: ``$KRONK_API_KEY``, else the first of the ``api_keys`` setting, else (for the server
    started from this home only) the local admin key that it wrote there (docs/security.md)."""
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV].strip()
    if settings.api_keys:
        return settings.api_keys[0].get_secret_value()
    if _is_home_server(url, settings):
        return KeyStore(settings.home).read_local_admin_key()
    return None


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("detail")
        if msg:
            return str(msg)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {r.status_code}: {r.text[:200]}"


def _with_hint(message: str, status: int) -> str:
    if status == 401:
        return (f"{message} Set {API_KEY_ENV} to a key (`kronk key create` makes one), or run the command on "
                "the server's machine with its home, where the local admin key is used.")
    return message


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)

    @classmethod
    def for_settings(cls, url: str | None, settings: Settings, timeout: float = 30.0) -> Client:
        target = server_url(url, settings)
        return cls(target, api_key_for(target, settings), timeout)

    def health(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """GET /health within ``timeout`` s: the answer if a kronk server is there, else None."""
        try:
            r = self.http.get("/health", timeout=timeout)
            body = r.json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if r.status_code == 200 and isinstance(body, dict) and "status" in body else None

    def require(self) -> dict[str, Any]:
        health = self.health()
        if health is None:
            fail(f"no kronk server is answering at {self.url}; start one with `kronk server start` "
                 "(or point --url / KRONK_URL at it)", 1)
        return health

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach the server at {self.url}: {e}") from e
        if r.status_code >= 400:
            raise ServerError(_with_hint(_message(r), r.status_code), r.status_code)
        return r.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def stream(self, path: str, body: dict[str, Any] | None, timeout: float | None = None,
               method: str = "POST") -> Iterator[dict[str, Any]]:
        """POST (or ``method``) and yield the JSON of each SSE ``data:`` event until ``[DONE]``."""
        try:
            with self.http.stream(method, path, json=body, timeout=httpx.Timeout(timeout, connect=5.0)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ServerError(_with_hint(_message(r), r.status_code), r.status_code)
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        yield json.loads(data)
                    except ValueError:
                        continue
        except httpx.HTTPError as e:
            raise ServerError(f"the connection to {self.url} failed: {e}") from e

    def close(self) -> None:
        self.http.close()
