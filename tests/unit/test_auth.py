"""API keys: required from non-local clients when configured; loopback and /health stay open."""

import httpx
import pytest

from kronk.api.app import create_app
from kronk.serving.local import LocalBackend
from kronk.settings import load_settings


@pytest.fixture
def app(tmp_path):
    return create_app(LocalBackend.of_services({}, load_settings({"home": str(tmp_path)})), api_keys=["s3cret"])


async def get(app, path, client_host, headers=None):
    transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://kronk") as c:
        return await c.get(path, headers=headers or {})


async def test_remote_client_without_key_gets_401_envelope(app):
    r = await get(app, "/v1/models", "10.0.0.7")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"


async def test_remote_client_with_wrong_key_is_refused(app):
    r = await get(app, "/v1/models", "10.0.0.7", {"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "not valid" in r.json()["error"]["message"]


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}])
async def test_remote_client_with_key_is_served(app, headers):
    r = await get(app, "/v1/models", "10.0.0.7", headers)
    assert r.status_code == 200 and r.json()["object"] == "list"


async def test_loopback_and_health_need_no_key(app):
    assert (await get(app, "/v1/models", "127.0.0.1")).status_code == 200
    assert (await get(app, "/health", "10.0.0.7")).status_code == 200


async def test_no_keys_configured_means_open(tmp_path):
    open_app = create_app(LocalBackend.of_services({}, load_settings({"home": str(tmp_path)})), api_keys=[])
    assert (await get(open_app, "/v1/models", "10.0.0.7")).status_code == 200
