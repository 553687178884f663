"""The browser UI: static files in this package (``index.html``, ``app.js`` and its ES modules, ``style.css``),
served at ``/ui/``, with ``GET /`` redirecting there. No build step: the files are what the browser runs.

:func:`mount_ui` adds the routes to an app (``create_app`` calls it). Every UI answer carries a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script, no framing) and
``X-Content-Type-Options: nosniff``. The files are public (they hold no data; every number the UI shows comes
from the API, with the key the user gives it), so with keys on they are served without one
(``kronk.security.auth``); with keys off the Host/Origin check applies to them as to any route.
``GET /ui/config.json`` tells the page whether keys are on, so it can ask for one before calling the API.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

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


def is_ui_path(path: str) -> bool:
    """Paths the UI's routes answer (the key check lets GET/HEAD on them through: see kronk.security.auth)."""
    return path == "/" or path == PREFIX.rstrip("/") or path.startswith(PREFIX)


def mount_ui(app: FastAPI, keys_on: Any = None) -> None:
    """``GET /`` -> 307 to ``/ui/``; ``GET /ui/<file>``: the static files; ``GET /ui/config.json``: whether keys
    are on (``keys_on()``, a callable; default: never)."""
    files = ui_files()

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse(PREFIX, status_code=307)

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
