"""Access (kronk/security): with keys on, every request needs one, wherever it comes from; with keys off, only
loopback (or allowed) Hosts and Origins; never a body that is not JSON; admin scope for pulls and removal; rate
limits; the replica's own uvicorn takes no X-Forwarded-For."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from deployments.direct_http import DirectHTTPServer
from kronk.api.app import create_app
from kronk.processes import free_port
from kronk.security.access import Access
from kronk.security.keys import KeyStore
from kronk.serving.local import LocalBackend
from kronk.settings import load_settings

KEY = "s3cret"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_app(home, **access):
    return create_app(LocalBackend.of_services({}, load_settings({"home": str(home)})),
                      access=Access(home=home, **access))


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path, api_keys=[KEY])


async def call(app, method, path, client_host="127.0.0.1", headers=None, host="127.0.0.1:8000", **kw):
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as c:
        return await c.request(method, path, headers=headers or {}, **kw)


async def get(app, path, client_host="127.0.0.1", headers=None, host="127.0.0.1:8000"):
    return await call(app, "GET", path, client_host, headers, host)


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---------------------------------------------------------------------- keys on: every request needs one


@pytest.mark.parametrize("client_host", ["127.0.0.1", "::1", "10.0.0.7"])
async def test_keys_on_every_client_needs_one_loopback_included(app, client_host):
    r = await get(app, "/v1/models", client_host)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert error_of(r)["type"] == "authentication_error" and "kronk key create" in error_of(r)["message"]


@pytest.mark.parametrize("forwarded", [{"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"},
                                       {"X-Real-IP": "127.0.0.1"}])
async def test_forwarding_headers_grant_nothing(app, forwarded):
    assert (await get(app, "/v1/models", "10.0.0.7", forwarded)).status_code == 401
    assert (await get(app, "/v1/models", "127.0.0.1", forwarded)).status_code == 401


async def test_wrong_and_non_ascii_keys_are_401_never_500(app):
    for value in ("Bearer nope", "Bearer s3cre", "Bearer s3cret2", "Bearer clé".encode(), b"Bearer \xff\xfe"):
        r = await get(app, "/v1/models", headers={"Authorization": value})
        assert r.status_code == 401 and "not valid" in error_of(r)["message"], value
    r = await get(app, "/v1/models", headers={"x-api-key": "s3crét".encode()})
    assert r.status_code == 401


async def test_a_non_ascii_configured_key_is_compared_as_utf8_bytes(tmp_path):
    app = make_app(tmp_path, api_keys=["clé-ünïcode"])
    assert (await get(app, "/v1/models", headers={"Authorization": "Bearer clé-ünïcode".encode()})).status_code == 200
    assert (await get(app, "/v1/models", headers={"Authorization": "Bearer cle-unicode"})).status_code == 401


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"},
                                     {"x-api-key": KEY}])
async def test_a_valid_key_is_served_from_anywhere_and_health_stays_open(app, headers):
    r = await get(app, "/v1/models", "10.0.0.7", headers, host="kronk.example.com")
    assert r.status_code == 200 and r.json()["object"] == "list"
    assert (await get(app, "/health", "10.0.0.7", host="kronk.example.com")).status_code == 200


# ---------------------------------------------------------------------- keys off: Host and Origin


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"])
async def test_keys_off_a_loopback_host_is_served(tmp_path, host):
    app = make_app(tmp_path)
    assert (await get(app, "/v1/models", "10.0.0.7", host=host)).status_code == 200
    origin = {"Origin": f"http://{host}"}
    assert (await get(app, "/v1/models", headers=origin, host=host)).status_code == 200


@pytest.mark.parametrize("host", ["evil.example:8000", "evil.example", "127.0.0.1.evil.example:8000",
                                  "localhost.evil.example", "192.168.1.5:8000"])
async def test_keys_off_a_dns_rebinding_host_gets_403(tmp_path, host):
    app = make_app(tmp_path)
    r = await get(app, "/v1/models", host=host)
    assert r.status_code == 403
    err = error_of(r)
    assert err["type"] == "permission_error" and err["code"] == "host_not_allowed"
    assert repr(host.split(":")[0]) in err["message"] and "allowed_hosts" in err["message"]
    assert (await call(app, "POST", "/v1/chat/completions", host=host, json={"model": "x"})).status_code == 403


@pytest.mark.parametrize("origin", ["http://evil.example", "https://evil.example:8000", "null",
                                    "http://127.0.0.1.evil.example", "file://"])
async def test_keys_off_a_foreign_origin_gets_403(tmp_path, origin):
    app = make_app(tmp_path)
    r = await call(app, "POST", "/v1/chat/completions", headers={"Origin": origin}, json={"model": "x"})
    assert r.status_code == 403 and error_of(r)["type"] == "permission_error" and "Origin" in error_of(r)["message"]


async def test_keys_off_allowed_hosts_pass(tmp_path):
    app = make_app(tmp_path, allowed_hosts=["kronk.lan", "10.0.0.2"])
    assert (await get(app, "/v1/models", host="kronk.lan:8000")).status_code == 200
    assert (await get(app, "/v1/models", host="KRONK.lan")).status_code == 200
    assert (await get(app, "/v1/models", host="10.0.0.2:8000", headers={"Origin": "http://kronk.lan:3000"})
            ).status_code == 200
    assert (await get(app, "/v1/models", host="other.lan:8000")).status_code == 403
    everyone = make_app(tmp_path, allowed_hosts=["*"])
    assert (await get(everyone, "/v1/models", host="anything.example")).status_code == 200


async def test_a_preflight_is_granted_no_cors_headers(tmp_path):
    preflight = {"Origin": "http://127.0.0.1:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for app, extra in ((make_app(tmp_path), {}), (make_app(tmp_path, api_keys=[KEY]),
                                                  {"Authorization": f"Bearer {KEY}"})):
        r = await call(app, "OPTIONS", "/v1/chat/completions", headers={**preflight, **extra})
        assert not any(h.lower().startswith("access-control-") for h in r.headers), r.headers


# ---------------------------------------------------------------------- 415 for bodies that are not JSON


@pytest.mark.parametrize("ctype", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", None])
@pytest.mark.parametrize("keys", [[], [KEY]])
async def test_a_body_that_is_not_json_gets_415(tmp_path, ctype, keys):
    app = make_app(tmp_path, api_keys=keys)
    headers = {"Authorization": f"Bearer {KEY}"} if keys else {}
    if ctype:
        headers["Content-Type"] = ctype
    body = b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}'
    for method, path in (("POST", "/v1/chat/completions"), ("DELETE", "/v1/models/x"), ("PUT", "/v1/models/x")):
        r = await call(app, method, path, headers=headers, content=body)
        assert r.status_code == 415, (method, path, r.status_code, r.text)
        err = error_of(r)
        assert err["type"] == "invalid_request_error" and err["code"] == "unsupported_media_type"
        assert "application/json" in err["message"]


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8", "Application/JSON",
                                   "application/merge-patch+json"])
async def test_json_bodies_pass(tmp_path, ctype):
    r = await call(make_app(tmp_path), "POST", "/v1/chat/completions", headers={"Content-Type": ctype},
                   content=b'{"model": "nosuch", "messages": [{"role": "user", "content": "hi"}]}')
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"
    # no body at all (a DELETE) needs no Content-Type
    assert (await call(make_app(tmp_path), "DELETE", "/v1/models/nosuch")).status_code == 404


# ---------------------------------------------------------------------- scopes


def _keyed(tmp_path, **access):
    store = KeyStore(tmp_path)
    user, _ = store.create(name="user")
    admin, _ = store.create(name="ops", admin=True)
    return make_app(tmp_path, **access), {"Authorization": f"Bearer {user}"}, {"Authorization": f"Bearer {admin}"}


ADMIN_ROUTES = [("POST", "/v1/models/pull", {"json": {"model": "hf.co/org/repo/x.gguf", "stream": False}}),
                ("DELETE", "/v1/models/pull/nosuchjob", {}), ("DELETE", "/v1/models/nosuch", {})]


@pytest.mark.parametrize(("method", "path", "kw"), ADMIN_ROUTES)
async def test_pull_cancel_and_delete_need_the_admin_scope(tmp_path, method, path, kw):
    app, user, admin = _keyed(tmp_path)
    r = await call(app, method, path, headers=user, **kw)
    assert r.status_code == 403
    err = error_of(r)
    assert err["type"] == "permission_error" and "'user'" in err["message"] and "admin" in err["message"]
    # an admin key reaches the route (which then answers for itself), and so do the api_keys setting's keys
    if method == "DELETE":
        assert (await call(app, method, path, headers=admin, **kw)).status_code == 404
        setting = make_app(tmp_path, api_keys=[KEY])
        assert (await call(setting, method, path, headers={"x-api-key": KEY}, **kw)).status_code == 404
    # a non-admin key may still read and infer
    assert (await get(app, "/v1/models", headers=user)).status_code == 200
    assert (await get(app, "/v1/models/pull", headers=user)).status_code == 200


async def test_keys_off_admin_routes_are_open_to_allowed_hosts(tmp_path):
    app = make_app(tmp_path)
    assert (await call(app, "DELETE", "/v1/models/nosuch")).status_code == 404
    assert (await call(app, "DELETE", "/v1/models/nosuch", host="evil.example")).status_code == 403


# ---------------------------------------------------------------------- rate limits


async def test_a_key_with_rpm_gets_429_with_retry_after_then_recovers(tmp_path):
    store = KeyStore(tmp_path)
    slow, _ = store.create(name="slow", rpm=2)
    fast, _ = store.create(name="fast")
    clock = Clock()
    app = make_app(tmp_path, clock=clock)
    h = {"Authorization": f"Bearer {slow}"}
    assert (await get(app, "/v1/models", headers=h)).status_code == 200
    clock.t += 10
    assert (await get(app, "/v1/models", headers=h)).status_code == 200
    clock.t += 10
    r = await get(app, "/v1/models", headers=h)
    assert r.status_code == 429 and r.headers["retry-after"] == "40"
    err = error_of(r)
    assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "retry after 40 s" in err["message"] and "'slow'" in err["message"]
    # the limit is per key: others are not held back; refused requests are not counted
    assert [(await get(app, "/v1/models", headers={"x-api-key": fast})).status_code for _ in range(5)] == [200] * 5
    clock.t += 39
    assert (await get(app, "/v1/models", headers=h)).status_code == 429
    clock.t += 1.5  # the first request left the window
    assert (await get(app, "/v1/models", headers=h)).status_code == 200
    assert (await get(app, "/v1/models", headers=h)).status_code == 429


# ---------------------------------------------------------------------- the replica's own HTTP front


async def test_the_replica_front_takes_no_client_address_from_x_forwarded_for():
    async def echo(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": scope["client"][0].encode()})

    port = free_port()
    front = DirectHTTPServer(echo, "127.0.0.1", port)
    front.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as c:
            for _ in range(200):
                try:
                    r = await c.get(f"http://127.0.0.1:{port}/", headers={"X-Forwarded-For": "203.0.113.9"})
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
        assert r.text == "127.0.0.1"
    finally:
        await front.stop(5)
