"""The keys file (kronk/security/keys.py) and `kronk key`: salted hashes in a 0600 file, listings without secrets,
a running app that follows creates and revokes without a restart, the local admin key, and the refusal to serve
a non-loopback host without keys."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import httpx
import pytest
from click.testing import CliRunner

from kronk.api.app import create_app
from kronk.cli.client import Client
from kronk.cli.main import cli
from kronk.security.access import Access
from kronk.security.keys import LOCAL_ADMIN_NAME, KeyFileError, KeyRecord, KeyStore, fingerprint, keys_configured
from kronk.serving.local import LocalBackend
from kronk.settings import Settings, load_settings


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_keys_are_stored_as_salted_hashes_in_a_0600_file(tmp_path):
    store = KeyStore(tmp_path)
    key, rec = store.create(name="app", rpm=30)
    assert key.startswith("kronk-") and len(key) == len("kronk-") + 32
    text = store.path.read_text()
    assert mode(store.path) == 0o600
    assert key not in text and hashlib.sha256(key.encode()).hexdigest() not in text  # not plain sha256
    (saved,) = json.loads(text)["keys"]
    assert saved["name"] == "app" and saved["rpm"] == 30 and saved["scopes"] == [] and saved["created"]
    assert saved["fingerprint"] == hashlib.sha256(key.encode()).hexdigest()[:8] == rec.fingerprint
    assert len(bytes.fromhex(saved["salt"])) == 16
    # the same key hashes differently under another salt
    key2, rec2 = store.create(name="other")
    assert rec2.salt != rec.salt and rec.matches(key.encode()) and not rec.matches(key2.encode())
    assert not list(tmp_path.glob(".keys.json.*.tmp"))  # the temp file was renamed, not left behind
    with pytest.raises(KeyFileError, match="exists already"):
        store.create(name="app")
    with pytest.raises(KeyFileError, match="local admin"):
        store.create(name=LOCAL_ADMIN_NAME)


def test_revoke_by_name_or_fingerprint(tmp_path):
    store = KeyStore(tmp_path)
    _, a = store.create(name="a")
    _, b = store.create(name="b", admin=True)
    assert store.revoke(b.fingerprint).name == "b"
    assert store.revoke("a").name == "a"
    assert store.list() == []
    with pytest.raises(KeyFileError, match="no key named"):
        store.revoke("a")


def test_the_local_admin_key_is_made_once_reused_and_does_not_turn_keys_on(tmp_path):
    store = KeyStore(tmp_path)
    key = store.ensure_local_admin_key()
    assert mode(store.local_key_path) == 0o600 and store.read_local_admin_key() == key
    assert store.ensure_local_admin_key() == key
    (rec,) = store.list()
    assert rec.local and rec.admin and rec.name == LOCAL_ADMIN_NAME and rec.matches(key.encode())
    assert not store.load().keys_on
    assert not keys_configured(Settings(home=tmp_path))
    store.revoke(LOCAL_ADMIN_NAME)  # revoked: registered again, same key, at the next start
    assert store.ensure_local_admin_key() == key and len(store.list()) == 1
    store.create(name="app")
    assert store.load().keys_on and keys_configured(Settings(home=tmp_path))
    assert keys_configured(Settings(home=tmp_path / "elsewhere", api_keys=["k"]))


async def test_a_running_app_follows_creates_and_revokes_without_a_restart(tmp_path, monkeypatch):
    hashed = []
    matches = KeyRecord.matches
    monkeypatch.setattr(KeyRecord, "matches", lambda self, key: hashed.append(self.name) or matches(self, key))
    clock = Clock()
    app = create_app(LocalBackend.of_services({}, load_settings({"home": str(tmp_path)})),
                     access=Access.from_settings(Settings(home=tmp_path), clock=clock))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))

    async def status(key: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            return (await c.get("/v1/models", headers=headers)).status_code

    assert await status() == 200  # no keys: open to loopback Hosts
    store = KeyStore(tmp_path)
    key, _ = store.create(name="app")
    clock.t += 1.01  # the file is looked at at most once a second
    assert await status() == 401 and await status(key) == 200
    key2, _ = store.create(name="second")
    assert await status(key2) == 401  # within the second: not looked at yet
    clock.t += 1.01
    assert await status(key2) == 200
    store.revoke("app")
    clock.t += 1.01
    assert await status(key) == 401 and await status(key2) == 200  # the cached verification went with it
    assert hashed.count("app") == 1 and hashed.count("second") == 1  # scrypt once per key, kept across reloads
    store.revoke("second")
    clock.t += 1.01
    assert await status() == 200  # no key left: keys off again


async def test_a_damaged_keys_file_fails_closed(tmp_path):
    (tmp_path / "keys.json").write_text("{not json")
    access = Access(home=tmp_path)
    assert access.keys_on() and await access.authenticate(b"kronk-anything") is None
    with pytest.raises(KeyFileError, match="damaged"):
        keys_configured(Settings(home=tmp_path))


# ---------------------------------------------------------------------- `kronk key` and the server's checks


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env={"KRONK_CONFIG": "", **(env or {})}, catch_exceptions=False)


def test_kronk_key_create_list_revoke(tmp_path):
    home = str(tmp_path / "home")
    r = run("key", "create", "--home", home, "--name", "ci", "--rpm", "60")
    assert r.exit_code == 0, r.output
    key = r.stdout.strip()
    assert key.startswith("kronk-") and "shown only this once" in r.stderr
    r = run("key", "create", "--home", home, "--admin")
    admin_key = r.stdout.strip()
    store = KeyStore(tmp_path / "home")
    assert mode(store.path) == 0o600
    assert mode(store.local_key_path) == 0o600  # keys are on: the local admin key exists for the CLI
    saved = store.path.read_text()
    listing = run("key", "list", "--home", home).output + run("key", "list", "--home", home, "--json").output
    for secret in (key, admin_key, store.read_local_admin_key()):
        assert secret not in listing
    for rec in json.loads(saved)["keys"]:
        assert rec["hash"] not in listing and rec["salt"] not in listing
    rows = json.loads(run("key", "list", "--home", home, "--json").output)
    assert {r["name"]: (r["scopes"], r["rpm"]) for r in rows} == {
        "ci": ([], 60), f"key-{fingerprint(admin_key)}": (["admin"], None), LOCAL_ADMIN_NAME: (["admin"], None)}
    text = run("key", "list", "--home", home).output
    assert "FINGERPRINT" in text and fingerprint(key) in text and "local-admin (local)" in text
    assert run("key", "revoke", "ci", "--home", home).exit_code == 0
    r = run("key", "revoke", "ci", "--home", home)
    assert r.exit_code == 2 and "no key named 'ci'" in r.output
    assert "ci" not in {r["name"] for r in json.loads(run("key", "list", "--home", home, "--json").output)}


def test_a_non_loopback_host_without_keys_is_refused_with_how(tmp_path):
    home = str(tmp_path / "home")
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        r = run("server", "start", "--home", home, "--host", host)
        assert r.exit_code == 2, r.output
        assert f"refusing to serve on {host}" in r.output and "kronk key create" in r.output
        assert "--insecure" in r.output
    # --insecure, or a key, gets past that check (to the next one: the unknown model)
    r = run("server", "start", "--home", home, "--host", "0.0.0.0", "--insecure", "true", "--model", "nosuch")
    assert r.exit_code == 2 and "unknown model 'nosuch'" in r.output and "refusing" not in r.output
    run("key", "create", "--home", home)
    r = run("server", "start", "--home", home, "--host", "0.0.0.0", "--model", "nosuch")
    assert r.exit_code == 2 and "unknown model 'nosuch'" in r.output and "refusing" not in r.output


def test_the_cli_sends_kronk_api_key_then_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("KRONK_API_KEY", raising=False)
    settings = Settings(home=tmp_path, api_keys=["from-setting"])
    KeyStore(tmp_path).ensure_local_admin_key()
    assert Client.for_settings("http://127.0.0.1:9", settings).http.headers["authorization"] == "Bearer from-setting"
    monkeypatch.setenv("KRONK_API_KEY", "from-env")
    assert Client.for_settings("http://127.0.0.1:9", settings).http.headers["authorization"] == "Bearer from-env"
    # the local admin key goes only to the server started from this home (none is running here)
    monkeypatch.delenv("KRONK_API_KEY")
    assert "authorization" not in Client.for_settings("http://127.0.0.1:9", Settings(home=tmp_path)).http.headers
