"""The access middleware (one per app) and the ``require_admin`` route dependency.

* Keys on (the ``api_keys`` setting, or a key in ``<home>/keys.json``): every request needs one, whatever
  address it comes from (a forwarder on the same host makes every client look local, so the address grants
  nothing): ``Authorization: Bearer <key>`` (the OpenAI SDK) or ``x-api-key: <key>`` (the Anthropic SDK),
  compared as bytes in constant time; else 401. A key with an ``rpm`` gets 429 with ``Retry-After`` beyond it.
* Keys off (the default): the ``Host`` must be a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``, any
  port) or one of ``allowed_hosts``, and an ``Origin``, when sent, too; else 403. That keeps web pages out: a
  DNS-rebinding page sends its own name as Host, a cross-site page its own Origin.
* Always: a POST/PUT/PATCH/DELETE body that is not JSON (``application/json``, ``...+json``) gets 415, so no
  page can send a ``text/plain`` (preflight-free) body that is read as JSON. No CORS header is ever granted.

``GET /health`` is always open (probes); with keys on, ``GET`` of the browser UI's static files (``/ui/...``,
and ``/`` from a browser) needs no key (they hold no data; the page asks for a key before it calls the API).
The middleware puts the request's :class:`Principal` in ``scope["kronk.principal"]``; :func:`require_admin`
reads it. Keys are never logged.
"""

from __future__ import annotations

from fastapi import Depends
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from kronk.api.wire import wire_for
from kronk.errors import KronkError, PermissionDenied, RateLimited, Unauthorized, UnsupportedMediaType
from kronk.security.access import ANONYMOUS, Access, Principal, host_name, origin_host
from kronk.serving.items import Failure
from kronk.ui import is_ui_request

OPEN_PATHS = {"/health"}
# the browser UI's static files (kronk/ui): public, so a page can load to ask for a key
UI_VISITOR = Principal("ui", admin=False, anonymous=True)
PRINCIPAL_KEY = "kronk.principal"
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


def presented_key(scope: Scope) -> bytes | None:
    """The key a request carries, as the bytes it sent (no decoding: any byte is just part of a wrong key)."""
    auth = _header(scope, b"authorization")
    if auth is not None and auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    key = _header(scope, b"x-api-key")
    return key.strip() if key is not None else None


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in (b"0", b"")
    return _header(scope, b"transfer-encoding") is not None


async def _answer(err: KronkError, scope: Scope, receive: Receive, send: Send,
                  headers: dict[str, str] | None = None) -> None:
    wire = wire_for(scope.get("path", ""))
    await wire.error_response(Failure.of(err), headers)(scope, receive, send)


class AccessMiddleware:
    def __init__(self, app: ASGIApp, access: Access):
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        access = self.access
        if access.keys_on() and is_ui_request(scope):
            who = UI_VISITOR  # the UI's static files hold no data
        elif access.keys_on():
            got = presented_key(scope)
            who = await access.authenticate(got) if got else None
            if who is None:
                msg = ("An API key is required: send 'Authorization: Bearer <key>' (make one with `kronk key "
                       "create`)." if not got else "The API key is not valid.")
                await _answer(Unauthorized(msg), scope, receive, send, {"WWW-Authenticate": "Bearer"})
                return
            wait = access.retry_after(who)
            if wait:
                await _answer(RateLimited(
                    f"Rate limit reached for the key {who.name!r} ({who.rpm} requests per minute); retry after "
                    f"{wait} s.", retry_after_s=wait), scope, receive, send, {"Retry-After": str(wait)})
                return
        else:
            who = ANONYMOUS
            problem = self._host_problem(scope)
            if problem:
                await _answer(PermissionDenied(problem, code="host_not_allowed"), scope, receive, send)
                return
        if scope.get("method") in BODY_METHODS and _has_body(scope):
            ctype = (_header(scope, b"content-type") or b"").decode("latin-1")
            if not is_json(ctype):
                shown = f"Content-Type {ctype!r}" if ctype else "no Content-Type"
                await _answer(UnsupportedMediaType(
                    f"The request body has {shown}; send JSON with 'Content-Type: application/json'."),
                    scope, receive, send)
                return
        scope[PRINCIPAL_KEY] = who
        await self.app(scope, receive, send)

    def _host_problem(self, scope: Scope) -> str | None:
        host = _header(scope, b"host")
        if host is not None:
            name = host_name(host.decode("latin-1"))
            if not self.access.host_allowed(name):
                return (f"The Host {name!r} is not allowed: with no API keys configured, kronk answers only "
                        "requests for localhost, 127.0.0.1 or [::1] and the names in the allowed_hosts setting "
                        "(--allowed-hosts / KRONK_ALLOWED_HOSTS), or configure API keys (`kronk key create`).")
        origin = _header(scope, b"origin")
        if origin is not None:
            name = origin_host(origin.decode("latin-1"))
            if name is None or not self.access.host_allowed(name):
                shown = origin.decode("latin-1")[:100]
                return (f"The Origin {shown!r} is not allowed: with no API keys configured, kronk answers only "
                        "pages from localhost, 127.0.0.1 or [::1] and the names in the allowed_hosts setting "
                        "(--allowed-hosts / KRONK_ALLOWED_HOSTS).")
        return None


def principal_of(request: Request) -> Principal | None:
    return request.scope.get(PRINCIPAL_KEY)


def require_admin(request: Request) -> None:
    """A route dependency (``dependencies=[Depends(require_admin)]``): with keys on, only a key with the admin
    scope passes; 403 ``permission_error`` otherwise. With keys off every request passes (the Host check has
    run). Fails closed where the middleware did not run."""
    who = principal_of(request)
    if who is None or not who.admin:
        name = f"the key {who.name!r}" if who is not None else "this request"
        raise PermissionDenied(f"This needs an admin key; {name} does not have the admin scope (make one with "
                               "`kronk key create --admin`).")


# for routes: `@router.post(..., dependencies=ADMIN_ONLY)`
ADMIN_ONLY = [Depends(require_admin)]
