"""Model files are safe to serve and to pull: a served model cannot be deleted (409), a hub cannot write more
bytes than it announced, a pull that would not fit is refused up front (507), and nothing a client sees names
the server's paths, pids or nodes. One process: the real app over the real small models, a real local Hub."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from kronk.api.app import create_app
from kronk.serving.backend import model_card, stats_of
from kronk.serving.local import LocalBackend
from kronk.serving.service import ModelService
from kronk.settings import ModelConfig, Settings
from kronk.store import (
    InsufficientStorage,
    Manifest,
    ManifestFile,
    ModelNotFound,
    ModelStore,
    PullJobManager,
    SizeMismatch,
)
from kronk.store.manifest import write_manifest
from kronk.store.store import SPACE_MARGIN_BYTES
from tests.helpers import GEMMA, SMOL, http_server
from tests.hubserver import HubServer, make_gguf
from tests.models import gemma_path, smollm_path
from tests.waiting import until

REPO = "org/Tiny-GGUF"
FILE = "Tiny-Q4_K_M.gguf"
REF = f"hf.co/{REPO}:Q4_K_M"
SIZE = 3_000_000
DATA = make_gguf(SIZE, seed=7)
EXTRA = 1_000_000

pytestmark = pytest.mark.usefixtures("no_hub_env")  # no Hugging Face token or endpoint from the machine


@pytest.fixture
def hub():
    server = HubServer(chunk_size=64 * 1024)
    server.add_repo(REPO, {FILE: DATA, "README.md": b"# tiny\n"})
    with server:
        yield server


def settings_for(tmp_path: Path, hub: HubServer | None = None, **kw) -> Settings:
    return Settings(home=tmp_path / "home", models_dir=tmp_path / "my models", hf_endpoint=hub.url if hub else
                    "http://127.0.0.1:9", **kw)


def installed(store: ModelStore, name: str, size: int = 200_000) -> Manifest:
    """A small GGUF put in the store as a pull leaves it (file + manifest)."""
    data = make_gguf(size, seed=3)
    folder = store.model_dir(name)
    folder.mkdir(parents=True)
    (folder / "m-Q4_K_M.gguf").write_bytes(data)
    return write_manifest(folder, Manifest(
        name=name, ref=name, source="hf", hf_repo=REPO, commit="c" * 40, primary="m-Q4_K_M.gguf",
        files=[ManifestFile(name="m-Q4_K_M.gguf", size=size, sha256=hashlib.sha256(data).hexdigest())]))


def files_in(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()} if folder.exists() else {}


def disk_with(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=free * 2, used=free, free=free))


# ---------------------------------------------------------------------- deleting a served model: 409


def test_deleting_a_served_model_is_a_conflict(api_url: str) -> None:
    for model in (GEMMA, SMOL):
        r = httpx.delete(f"{api_url}/v1/models/{model}", timeout=30)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "model_in_use" and err["type"] == "conflict_error" and err["param"] == "model"
        assert repr(model) in err["message"] and "being served" in err["message"]
    assert Path(gemma_path()).is_file() and Path(smollm_path()).is_file()


def test_an_unserved_model_can_be_deleted_and_a_served_alias_cannot(
    tmp_path: Path, services: dict[str, ModelService]
) -> None:
    # "chat" is served from the stored hf.co model: deleting that stored model would pull its file from under it
    settings = settings_for(tmp_path, models=[ModelConfig(name="chat", source=REF)])
    store = ModelStore(settings)
    served_file = installed(store, REF)
    spare = installed(store, "hf.co/org/Spare-GGUF:Q4_K_M")
    backend = LocalBackend.of_services({"chat": services[GEMMA], SMOL: services[SMOL]}, settings)
    with http_server(create_app(backend)) as url:
        r = httpx.delete(f"{url}/v1/models/huggingface.co/{REPO}:q4_k_m", timeout=30)  # any spelling of it
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_in_use"
        assert "(as 'chat')" in r.json()["error"]["message"]
        assert store.get(REF) is not None and served_file.primary_path.is_file()

        r = httpx.delete(f"{url}/v1/models/{spare.name}", timeout=30)
        assert r.status_code == 200 and r.json() == {"id": spare.name, "object": "model", "deleted": True}
        assert not spare.dir.exists() and [m.name for m in store.list()] == [REF]
        r = httpx.delete(f"{url}/v1/models/{spare.name}", timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ---------------------------------------------------------------------- never more bytes than announced


class MaxSize:
    """The largest file seen in a folder, sampled every few ms while a pull runs."""

    def __init__(self, folder: Path):
        self.folder, self.max, self._stop = folder, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.max = max([self.max, *(p.stat().st_size for p in self.folder.iterdir())])
            except OSError:
                pass
            time.sleep(0.002)

    def __enter__(self) -> MaxSize:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)


def test_a_hub_that_sends_more_than_announced_is_stopped_at_the_size(tmp_path: Path, hub: HubServer) -> None:
    store = ModelStore(settings_for(tmp_path, hub), retries=0, backoff_s=0.01)
    key = hub.key(REPO, FILE)
    hub.oversend[key] = EXTRA  # metadata and Content-Range say SIZE; the body runs on, no Content-Length
    raw = httpx.get(hub.file_url(REPO, FILE), timeout=30)  # what the stand-in sends, seen by a plain client
    assert len(raw.content) == SIZE + EXTRA and "content-length" not in raw.headers
    hold = hub.hold(REPO, FILE, after=SIZE + EXTRA // 2)  # and then stalls: a client still reading waits here
    folder = store.model_dir(REF)
    result: dict[str, BaseException] = {}

    def pull() -> None:
        try:
            store.pull(REF)
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=pull, daemon=True)
    try:
        with MaxSize(folder) as seen:
            t.start()
            until(lambda: not t.is_alive(), 20, lambda: f"the pull to stop at the announced size (files: "
                  f"{files_in(folder)}, the hub sent {hub.served[key]} bytes)", 0.02)
    finally:
        hold.release.set()
        t.join(10)
    err = result.get("error")
    assert isinstance(err, SizeMismatch) and err.code == "size_mismatch", repr(err)
    assert f"more than the expected {SIZE} bytes" in err.message and FILE in err.message
    assert seen.max <= SIZE, f"a file of {seen.max} bytes, past the announced {SIZE}, was on disk"
    assert all(n <= SIZE for n in files_in(folder).values())
    assert not any(n.endswith((".gguf", ".part", ".json")) for n in files_in(folder))
    assert store.list() == [] and store.get(REF) is None


def test_a_response_that_announces_more_is_refused_before_writing(tmp_path: Path, hub: HubServer) -> None:
    store = ModelStore(settings_for(tmp_path, hub), retries=0, backoff_s=0.01)
    key = hub.key(REPO, FILE)
    hub.oversend[key] = EXTRA
    hub.oversend_length = True  # Content-Length says SIZE + EXTRA, the metadata SIZE
    folder = store.model_dir(REF)
    with MaxSize(folder) as seen, pytest.raises(SizeMismatch) as ei:
        store.pull(REF)
    assert f"announces {SIZE + EXTRA} bytes, more than the expected {SIZE}" in ei.value.message
    assert seen.max == 0 and not any(n.endswith((".gguf", ".part", ".json")) for n in files_in(folder))
    assert store.get(REF) is None
    hub.oversend.clear()
    assert store.pull(REF).primary_path.read_bytes() == DATA  # an honest hub: the pull works


# ---------------------------------------------------------------------- free space: 507


def test_a_pull_that_would_not_fit_is_refused_before_any_download(
    tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(settings_for(tmp_path, hub), retries=0, backoff_s=0.01)
    free = SIZE + SPACE_MARGIN_BYTES - 1  # the file fits, the margin does not
    disk_with(monkeypatch, free)
    with pytest.raises(InsufficientStorage) as ei:
        store.pull(REF)
    e = ei.value
    assert e.code == "insufficient_storage" and e.kind.status == 507 and (e.needed, e.free) == (SIZE, free)
    assert f"needs {SIZE} bytes" in e.message and f"{free} bytes" in e.message and REF in e.message
    assert str(store.root) not in e.message
    assert hub.served[hub.key(REPO, FILE)] == 0 and not store.model_dir(REF).exists()
    assert store.list() == []

    # a partial left by an earlier pull counts: only the rest must fit
    folder = store.model_dir(REF)
    folder.mkdir(parents=True)
    (folder / f".{FILE}.{hub.repos[REPO].sha256(FILE)[:12]}.part").write_bytes(DATA[:2_000_000])
    disk_with(monkeypatch, SIZE - 2_000_000 + SPACE_MARGIN_BYTES)
    assert store.pull(REF).primary_path.read_bytes() == DATA
    assert hub.served[hub.key(REPO, FILE)] == SIZE - 2_000_000


def test_the_pull_route_answers_507_and_the_job_records_it(
    tmp_path: Path, hub: HubServer, services: dict[str, ModelService]
) -> None:
    settings = settings_for(tmp_path, hub)
    backend = LocalBackend.of_services({GEMMA: services[GEMMA]}, settings)
    with http_server(create_app(backend)) as url:
        with pytest.MonkeyPatch.context() as mp:
            disk_with(mp, 1_000_000)
            jobs = PullJobManager(store=ModelStore(settings))  # a job records the failure and its code
            job = jobs.wait(jobs.start(REF).id, timeout=30).snapshot()
            assert job["status"] == "failed" and job["error_code"] == "insufficient_storage"
            assert "not enough free space" in job["error"]
            for stream in (False, True):  # the route refuses the pull at once
                r = httpx.post(f"{url}/v1/models/pull", json={"model": REF, "stream": stream}, timeout=60)
                assert r.status_code == 507, r.text
                err = r.json()["error"]
                assert err["code"] == "insufficient_storage" and err["type"] == "server_error"
                assert "needs 3000000 bytes" in err["message"] and "1000000 bytes" in err["message"]
            listed = httpx.get(f"{url}/v1/models/pull", timeout=30).json()["data"]
            assert [(j["status"], j["error_code"]) for j in listed] == [("failed", "insufficient_storage")] * 2
            assert hub.served[hub.key(REPO, FILE)] == 0

        # room enough: the same route starts the pull
        r = httpx.post(f"{url}/v1/models/pull", json={"model": REF}, timeout=60)
        assert r.status_code == 200 and r.json()["status"] in ("running", "succeeded")
        until(lambda: httpx.get(f"{url}/v1/models/pull/{r.json()['id']}", timeout=30).json()["status"]
              == "succeeded", 30, "the pull to succeed")


# ---------------------------------------------------------------------- no paths, pids or node ids for clients


def test_stats_and_cards_name_no_path_pid_or_node(api_url: str) -> None:
    text = httpx.get(f"{api_url}/v1/stats", timeout=30).text
    models = json.loads(text)["models"]
    for model in (GEMMA, SMOL):
        info = models[model]
        assert not {"model_path", "pid", "node_id"} & set(info), sorted(info)
        assert info["replica"] and info["stats"]["n_slots"] >= 1 and info["context_length"] > 0
    for path in (gemma_path(), smollm_path()):
        assert str(Path(path).parent) not in text
    cards = httpx.get(f"{api_url}/v1/models", timeout=30).text
    assert str(Path(gemma_path()).parent) not in cards and "model_path" not in cards


def test_what_a_serve_replica_says_reaches_clients_without_where_it_runs() -> None:
    """The info of deployments.llm.LlamaReplica (node id, pid, the GGUF's path; the error of a model that did
    not load) shaped for clients, as the routing ingress does."""
    info = {"model": "m", "error": "model m could not be loaded: model file not found: /srv/kronk/models/m/m.gguf",
            "replica": "llm-m#abc", "model_path": "/srv/kronk/models/m/m.gguf", "node_id": "f" * 56, "pid": 4242,
            "stats": None}
    shown = json.dumps([stats_of({"m": info}, {"m": 2}, []), model_card("m", 0, info)])
    for secret in ("/srv/kronk", "f" * 56, "4242", "model_path", "node_id", '"pid"'):
        assert secret not in shown
    stats = stats_of({"m": info}, {"m": 2}, [])["models"]["m"]
    assert stats["replica"] == "llm-m#abc" and stats["replicas"] == 2
    assert stats["error"] == "model m could not be loaded: model file not found: m.gguf"
    assert model_card("m", 0, info)["error"] == stats["error"]


def test_store_listing_pull_jobs_and_errors_name_no_path(
    tmp_path: Path, hub: HubServer, services: dict[str, ModelService]
) -> None:
    settings = settings_for(tmp_path, hub)
    root = str(settings.models_path)
    backend = LocalBackend.of_services({GEMMA: services[GEMMA]}, settings)
    with http_server(create_app(backend)) as url:
        job = httpx.post(f"{url}/v1/models/pull", json={"model": REF}, timeout=60).json()
        done = until(lambda: (j := httpx.get(f"{url}/v1/models/pull/{job['id']}", timeout=30).json())["status"]
                     == "succeeded" and j, 30, "the pull to succeed")
        assert done["manifest"]["name"] == REF and done["manifest"]["size_bytes"] == SIZE
        store = httpx.get(f"{url}/v1/store/models", timeout=30)
        [m] = store.json()["data"]
        assert (m["name"], m["size_bytes"], m["primary"], m["files"][0]["size"]) == (REF, SIZE, FILE, SIZE)
        answers = [json.dumps(done), store.text, httpx.get(f"{url}/v1/models", timeout=30).text,
                   httpx.get(f"{url}/v1/models/pull", timeout=30).text]
        for text in answers:
            assert root not in text and str(tmp_path) not in text
            assert not any(key in text for key in ('"path"', '"dir"', '"mmproj_path"'))
    with pytest.raises(ModelNotFound) as ei:  # a local file that is not there: its name, not its folder
        ModelStore(settings).resolve(str(tmp_path / "elsewhere" / "gone.gguf"))
    assert "gone.gguf" in ei.value.message and str(tmp_path) not in ei.value.message
    with pytest.raises(ModelNotFound) as ei:
        ModelStore(settings).resolve("llama3.2:3b")
    assert root not in ei.value.message


def test_an_unexpected_pull_error_names_no_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(settings_for(tmp_path))
    where = str(store.root / "hf.co--org--X" / ".x.gguf.part")

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device", where)

    monkeypatch.setattr(store, "pull", full_disk)
    job = PullJobManager(store=store)
    snap = job.wait(job.start(REF).id, timeout=30).snapshot()
    assert snap["status"] == "failed" and snap["error_code"] == "internal_error"
    assert "No space left on device" in snap["error"] and ".x.gguf.part" in snap["error"]
    assert str(tmp_path) not in snap["error"]
