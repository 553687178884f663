"""Pulls over HTTP through the Serve app's model manager, against a local fake Hugging Face Hub."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from kronk.settings import Settings
from kronk.store import ModelStore
from tests.hubserver import HubServer, make_gguf
from tests.integration.utils import serve_app
from tests.waiting import until

pytestmark = pytest.mark.slow

REPO = "org/Tiny-GGUF"
FILE = "tiny-Q4_K_M.gguf"
GONE = "org/Gone-GGUF"


@pytest.fixture(scope="module")
def hub():
    server = HubServer(chunk_size=32 * 1024)
    server.add_repo(REPO, {FILE: make_gguf(2_000_000, seed=11)})
    server.add_repo(GONE, {"gone-Q4_0.gguf": make_gguf(100_000, seed=12)})
    with server:
        yield server


@pytest.fixture(scope="module")
def env(hub, tmp_path_factory):
    models = tmp_path_factory.mktemp("models with space")
    # A model pulled earlier whose file someone deleted by hand: the server must start anyway.
    store = ModelStore(Settings(home=models.parent / "home", models_dir=models, hf_endpoint=hub.url))
    store.pull(f"hf.co/{GONE}/gone-Q4_0.gguf")
    for f in models.rglob("gone-Q4_0.gguf"):
        f.unlink()
    args = {"models": [{"name": "gemma3-270m", "parallel": 2, "ctx_size": 1024}],
            "models_dir": str(models), "hf_endpoint": hub.url}
    with serve_app(args) as url:
        yield url, models


def listed(url: str) -> tuple[set[str], set[str]]:
    store = {m["name"] for m in httpx.get(url + "/v1/store/models", timeout=30).json()["data"]}
    v1 = {m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]}
    return store, v1


def test_hand_deleted_model_is_not_listed_and_server_started(env):
    url, _ = env
    store, v1 = listed(url)
    assert not any("Gone" in n for n in store | v1)
    assert "gemma3-270m" in v1


def test_deleting_the_served_model_is_a_conflict(env):
    url, models = env
    r = httpx.delete(url + "/v1/models/gemma3-270m", timeout=30)  # through the model manager actor
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_in_use"
    assert "gemma3-270m" in listed(url)[0] and list(models.glob("gemma3-270m/*.gguf"))


def test_pull_survives_client_disconnect_and_others_see_progress(env, hub):
    url, models = env
    hold = hub.hold(REPO, FILE, after=500_000)
    ref = f"hf.co/{REPO}/{FILE}"
    with httpx.stream("POST", url + "/v1/models/pull", json={"model": ref, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        first = json.loads(next(line for line in r.iter_lines() if line.startswith("data: "))[6:])
    job_id = first["id"]  # the client is gone now; the job must go on
    assert hold.reached.wait(30)
    seen = httpx.get(f"{url}/v1/models/pull/{job_id}", timeout=30).json()
    assert seen["status"] == "running" and seen["bytes_done"] > 0 and seen["bytes_total"] == 2_000_000
    # a second pull of the same model joins the running job
    assert httpx.post(url + "/v1/models/pull", json={"model": ref}, timeout=30).json()["id"] == job_id
    hold.release.set()
    until(lambda: httpx.get(f"{url}/v1/models/pull/{job_id}", timeout=30).json()["status"] == "succeeded", 60,
          "the pull to succeed")
    assert hub.served[HubServer.key(REPO, FILE)] == 2_000_000  # downloaded once
    store, v1 = listed(url)
    name = seen["model"]
    assert name in store and name in v1
    card = next(m for m in httpx.get(url + "/v1/models", timeout=30).json()["data"] if m["id"] == name)
    assert card["served"] is True and card["pinned"] is False and card["state"] == "available"  # the pool serves it
    listing = httpx.get(url + "/v1/store/models", timeout=30).text  # no path of the server's disk
    assert name in listing and str(models) not in listing

    # deleted by hand: gone from both listings at once
    folder = next(p for p in models.iterdir() if p.is_dir() and "Tiny" in p.name)
    shutil.rmtree(folder)
    store, v1 = listed(url)
    assert name not in store and name not in v1

    # and pulled again over HTTP, then removed through the API
    job = httpx.post(url + "/v1/models/pull", json={"model": ref}, timeout=30).json()
    until(lambda: httpx.get(f"{url}/v1/models/pull/{job['id']}", timeout=30).json()["status"] == "succeeded", 60,
          "the second pull to succeed")
    assert httpx.delete(f"{url}/v1/models/{name}", timeout=30).json()["deleted"] is True
    assert name not in listed(url)[0]
    r = httpx.delete(f"{url}/v1/models/{name}", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_pull_errors_are_openai_envelopes(env):
    url, _ = env
    r = httpx.post(url + "/v1/models/pull", json={"model": "no-such-catalog-model"}, timeout=30)
    assert 400 <= r.status_code < 500 and r.json()["error"]["message"]
    r = httpx.get(url + "/v1/models/pull/nope", timeout=30)
    assert r.status_code == 404
