"""The browser UI: static files in this package (``index.html``, ``app.js`` and its ES modules, ``style.css``),
served at ``/ui/``, with ``GET /`` redirecting there. No build step: the files are what the browser runs.

:func:`mount_ui` adds the routes to an app (``create_app`` calls it). Every UI answer carries a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script, no framing) and
``X-Content-Type-Options: nosniff``. ``GET /`` redirects a browser only (``Accept: text/html``): the Ollama
family answers other clients' ``GET /``. The files are public (they hold no data; every number the UI shows comes
from the API, with the key the user gives it), so with keys on they are served without one
(``kronk.security.auth``); with keys off the Host/Origin check applies to them as to any route.
``GET /ui/config.json`` tells the page whether keys are on, so it can ask for one before calling the API.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kronk.errors import NotFound

PREFIX = "/ui/"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
MAX_NAME = 64


def ui_files() -> dict[str, bytes]:
    """The UI's files by name (read once: they ship inside the package)."""
    root = resources.files("kronk.ui").joinpath("static")
    return {f.name: f.read_bytes() for f in root.iterdir()
            if f.is_file() and any(f.name.endswith(ext) for ext in TYPES)}


def _wants_html(scope: Scope) -> bool:
    accept = next((v for k, v in scope.get("headers", ()) if k.lower() == b"accept"), b"")
    return b"text/html" in accept.lower()


def is_ui_request(scope: Scope) -> bool:
    """A GET/HEAD the UI answers: ``/ui`` and ``/ui/...``, and ``/`` from a browser (``Accept: text/html``; other
    clients' ``GET /`` is the Ollama family's liveness probe). The key check lets these through
    (kronk.security.auth)."""
    if scope.get("method") not in ("GET", "HEAD"):
        return False
    path = scope.get("path", "")
    return path == PREFIX.rstrip("/") or path.startswith(PREFIX) or (path == "/" and _wants_html(scope))


class RootRedirect:
    """``GET /`` from a browser -> 307 to ``/ui/``; anything else goes on to the app's routes (a middleware, not a
    route: the Ollama family answers ``GET /`` to its clients, whatever the order the routes were added in)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/" and is_ui_request(scope):
            await RedirectResponse(PREFIX, status_code=307, headers=HEADERS)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def mount_ui(app: FastAPI, keys_on: Any = None) -> None:
    """``GET /`` (a browser's) -> 307 to ``/ui/``; ``GET /ui/<file>``: the static files; ``GET /ui/config.json``:
    whether keys are on (``keys_on()``, a callable; default: never). Call it before adding the access middleware,
    so that it runs inside it."""
    files = ui_files()
    app.add_middleware(RootRedirect)

    @app.get("/ui", include_in_schema=False)
    async def ui_bare() -> Response:
        return RedirectResponse(PREFIX, status_code=307)

    @app.get(PREFIX + "config.json", include_in_schema=False)
    async def ui_config(request: Request) -> Response:
        return JSONResponse({"keys_on": bool(keys_on()) if keys_on is not None else False}, headers=HEADERS)

    @app.get(PREFIX + "{name:path}", include_in_schema=False)
    async def ui_file(name: str) -> Response:
        name = name or "index.html"
        body = files.get(name) if len(name) <= MAX_NAME else None
        if body is None:
            raise NotFound(f"no UI file {name[:MAX_NAME]!r}", param="path")
        ext = name[name.rfind("."):]
        return Response(body, media_type=TYPES[ext], headers=HEADERS)
