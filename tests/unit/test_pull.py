"""Pulls and pull jobs against a real local HTTP server speaking the Hub protocol."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kronk.errors import NotFound
from kronk.settings import Settings
from kronk.store import (
    ChecksumMismatch,
    GatedRepo,
    HubError,
    InvalidRef,
    ModelStore,
    PullCancelled,
    PullJobManager,
    RepoNotFound,
)
from tests.hubserver import HubServer, make_gguf
from tests.waiting import until

REPO = "org/Tiny-GGUF"
FILE = "Tiny-Q4_K_M.gguf"
SIZE = 3_000_000
DATA = make_gguf(SIZE)
TOKEN = "hf_SeCrEt_test_token_0123456789"
GATED_MSG = (
    "org/Gated-GGUF is gated on Hugging Face: accept its license on the model page "
    "(https://huggingface.co/org/Gated-GGUF) and set KRONK_HF_TOKEN (or HF_TOKEN)"
)
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("no_hub_env")  # no Hugging Face token or endpoint from the machine


@pytest.fixture
def hub():
    server = HubServer(chunk_size=64 * 1024)
    server.add_repo(
        REPO,
        {
            FILE: DATA,
            "Tiny-Q8_0.gguf": make_gguf(200_000, seed=1),
            "Q6_K/Tiny-Q6_K-00001-of-00002.gguf": make_gguf(150_000, seed=2),
            "Q6_K/Tiny-Q6_K-00002-of-00002.gguf": make_gguf(50_000, seed=3),
            "README.md": b"# tiny\n",
        },
    )
    server.add_repo("org/Gated-GGUF", {"g-Q4_0.gguf": make_gguf(100_000, seed=4)}, gated=True, token=TOKEN)
    server.add_repo("org/Closed-GGUF", {"c-Q4_0.gguf": make_gguf(1000, seed=5)}, gated=True, token=TOKEN, gate_api=True)
    with server:
        yield server


def make_store(tmp_path: Path, hub: HubServer, **kw) -> ModelStore:
    retries = kw.pop("retries", 3)
    kw.setdefault("models_dir", tmp_path / "models")
    settings = Settings(home=tmp_path / "home", hf_endpoint=hub.url, **kw)
    return ModelStore(settings, retries=retries, backoff_s=0.01)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------- pulls


def test_pull_and_idempotence(tmp_path: Path, hub: HubServer) -> None:
    store = make_store(tmp_path, hub)
    events = []
    m = store.pull(f"hf.co/{REPO}/{FILE}", progress=events.append)
    assert m.primary_path.read_bytes() == DATA
    assert m.commit == hub.repos[REPO].commit and m.hf_repo == REPO and m.source == "hf"
    assert files_in(m.dir) == [FILE, "manifest.json"]
    assert [x.name for x in store.list()] == [f"hf.co/{REPO}/{FILE}"]
    phases = [e.phase for e in events]
    assert phases[0] == "resolving" and phases[-1] == "done"
    assert "downloading" in phases and "verifying" in phases
    assert events[-1].bytes_done == events[-1].bytes_total == SIZE
    assert [e.bytes_done for e in events] == sorted(e.bytes_done for e in events)
    n = len(hub.requests)
    assert store.pull(f"huggingface.co/{REPO}/{FILE}").name == m.name
    assert len(hub.requests) == n, "a present model is returned without touching the network"


def test_cut_mid_file_resumes_with_range(tmp_path: Path, hub: HubServer) -> None:
    store = make_store(tmp_path, hub)
    key = hub.key(REPO, FILE)
    hub.cut_after[key] = 1_000_000
    m = store.pull(f"hf.co/{REPO}:Q4_K_M")
    assert m.primary_path.read_bytes() == DATA
    assert hub.served[key] == SIZE, "only the remainder is downloaded again"
    gets = [r for r in hub.requests if r["method"] == "GET" and FILE in r["path"]]
    assert [g["range"] for g in gets] == [None, "bytes=1000000-"]
    assert gets[1]["status"] == 206


def test_failed_pull_leaves_a_partial_the_next_pull_resumes(tmp_path: Path, hub: HubServer) -> None:
    store = make_store(tmp_path, hub, retries=0)
    key = hub.key(REPO, FILE)
    hub.cut_after[key] = 1_200_000
    with pytest.raises(HubError, match="pull again to resume"):
        store.pull(f"hf.co/{REPO}:Q4_K_M")
    folder = store.model_dir(f"hf.co/{REPO}:Q4_K_M")
    partials = [p for p in folder.iterdir() if p.name.endswith(".part")]
    assert len(partials) == 1 and partials[0].stat().st_size == 1_200_000
    assert store.list() == [] and store.get(f"hf.co/{REPO}:Q4_K_M") is None
    m = store.pull(f"hf.co/{REPO}:Q4_K_M")
    assert m.primary_path.read_bytes() == DATA
    assert hub.served[key] == SIZE
    assert files_in(folder) == [FILE, "manifest.json"]


def test_corrupt_bytes_are_rejected_and_never_look_present(tmp_path: Path, hub: HubServer) -> None:
    store = make_store(tmp_path, hub)
    hub.corrupt.add(hub.key(REPO, FILE))
    with pytest.raises(ChecksumMismatch, match="sha256") as ei:
        store.pull(f"hf.co/{REPO}:Q4_K_M")
    assert "discarded" in str(ei.value)
    folder = store.model_dir(f"hf.co/{REPO}:Q4_K_M")
    assert [p for p in files_in(folder) if p.endswith((".gguf", ".part", ".json"))] == []
    assert store.list() == [] and store.get(f"hf.co/{REPO}:Q4_K_M") is None
    with pytest.raises(Exception, match="not in the store"):
        store.resolve(f"hf.co/{REPO}:Q4_K_M")
    hub.corrupt.clear()
    assert store.pull(f"hf.co/{REPO}:Q4_K_M").primary_path.read_bytes() == DATA


def test_quant_ref_picks_the_right_files(tmp_path: Path, hub: HubServer) -> None:
    store = make_store(tmp_path, hub)
    m = store.pull(f"hf.co/{REPO}:q8_0")
    assert m.name == f"hf.co/{REPO}:Q8_0" and [f.name for f in m.files] == ["Tiny-Q8_0.gguf"]
    assert hub.served[hub.key(REPO, FILE)] == 0
    split = store.pull(f"hf.co/{REPO}:Q6_K")
    assert [f.name for f in split.files] == ["Tiny-Q6_K-00001-of-00002.gguf", "Tiny-Q6_K-00002-of-00002.gguf"]
    assert split.primary == "Tiny-Q6_K-00001-of-00002.gguf"
    assert (split.dir / "Tiny-Q6_K-00002-of-00002.gguf").stat().st_size == 50_000
    with pytest.raises(RepoNotFound, match="available quantizations: Q4_K_M, Q6_K, Q8_0"):
        store.pull(f"hf.co/{REPO}:Q2_K")
    assert store.pull(f"hf.co/{REPO}").primary == FILE  # no tag: Q4_K_M, like Ollama


def test_models_dir_with_a_space(tmp_path: Path, hub: HubServer) -> None:
    models = tmp_path / "my models" / "kronk store"
    store = make_store(tmp_path, hub, models_dir=str(models))
    assert store.root == models
    m = store.pull(f"hf.co/{REPO}:Q8_0")
    assert m.primary_path.is_file() and models in m.primary_path.parents
    assert (models / ".locks").is_dir()


def test_not_found_errors(tmp_path: Path, hub: HubServer) -> None:
    store = make_store(tmp_path, hub)
    with pytest.raises(RepoNotFound, match="org/Nope-GGUF not found"):
        store.pull("hf.co/org/Nope-GGUF:Q4_K_M")
    with pytest.raises(RepoNotFound, match=r"nope\.gguf not found in org/Tiny-GGUF"):
        store.pull(f"hf.co/{REPO}/nope.gguf")
    with pytest.raises(InvalidRef):
        store.pull("hf.co/org")
    with pytest.raises(KeyError, match="not in the catalog"):
        store.pull("no-such-model:7b")
    assert store.list() == []


def test_unreachable_hub_is_a_clear_error(tmp_path: Path) -> None:
    store = ModelStore(Settings(home=tmp_path, models_dir=tmp_path / "m", hf_endpoint="http://127.0.0.1:9"))
    with pytest.raises(HubError, match=re.escape("cannot reach the Hugging Face Hub at http://127.0.0.1:9")):
        store.pull(f"hf.co/{REPO}:Q4_K_M")


def test_gated_repo_needs_the_token(tmp_path: Path, hub: HubServer) -> None:
    ref = "hf.co/org/Gated-GGUF:Q4_0"
    with pytest.raises(GatedRepo) as ei:
        make_store(tmp_path, hub).pull(ref)
    assert str(ei.value) == GATED_MSG
    with pytest.raises(GatedRepo) as ei:  # the API itself answers 401 GatedRepo
        make_store(tmp_path, hub).pull("hf.co/org/Closed-GGUF:Q4_0")
    assert "org/Closed-GGUF is gated on Hugging Face" in str(ei.value)
    wrong = "hf_wrong_token_abcdef"
    with pytest.raises(GatedRepo) as ei:  # info is public, the file answers 403 GatedRepo
        make_store(tmp_path, hub, hf_token=wrong).pull(ref)
    assert str(ei.value) == GATED_MSG and wrong not in repr(ei.value)
    assert make_store(tmp_path, hub).list() == []
    n = len(hub.requests)
    m = make_store(tmp_path, hub, hf_token=TOKEN).pull(ref)
    assert m.primary_path.stat().st_size == 100_000
    sent = hub.requests[n:]
    assert len(sent) == 2 and all(r["auth"] == f"Bearer {TOKEN}" and r["status"] == 200 for r in sent)


def test_token_from_hf_token_env(tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    m = make_store(tmp_path, hub).pull("hf.co/org/Closed-GGUF:Q4_0")
    assert m.primary_path.is_file()


def test_redirect_to_cdn_is_followed(tmp_path: Path, hub: HubServer) -> None:
    hub.redirect = True
    m = make_store(tmp_path, hub).pull(f"hf.co/{REPO}:Q8_0")
    assert m.primary_path.read_bytes() == hub.repos[REPO].files["Tiny-Q8_0.gguf"]
    assert any(r["path"].startswith("/cdn/") for r in hub.requests)


def test_catalog_entry_from_the_hub(tmp_path: Path, hub: HubServer) -> None:
    sha = hub.repos[REPO].sha256("Tiny-Q8_0.gguf")
    entry = {
        "family": "tiny", "hf_repo": REPO, "files": ["Tiny-Q8_0.gguf"], "quant": "Q8_0", "size_bytes": 200_000,
        "context_length": 2048, "kv_cache_type": "q8_0", "capabilities": ["chat", "tools"], "license": "mit",
        "chat_template": "chatml",
    }  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    (home / "catalog.yaml").write_text(
        yaml.safe_dump(
            {
                "models": [
                    {**entry, "name": "tiny:1m", "sha256": {"Tiny-Q8_0.gguf": sha}},
                    {**entry, "name": "tiny:pinned-wrong", "sha256": {"Tiny-Q8_0.gguf": "0" * 64}},
                ]
            }
        )
    )
    store = make_store(tmp_path, hub)
    m = store.pull("tiny:1m")
    assert (m.name, m.chat_template, m.kv_cache_type, m.context_length) == ("tiny:1m", "chatml", "q8_0", 2048)
    assert m.capabilities == ["chat", "tools"] and m.family == "tiny"
    assert store.resolve("tiny:1m") == m.primary_path
    # an hf.co reference to the same file inherits the catalog's template
    assert store.pull(f"hf.co/{REPO}/Tiny-Q8_0.gguf").chat_template == "chatml"
    served = hub.served[hub.key(REPO, "Tiny-Q8_0.gguf")]
    with pytest.raises(ChecksumMismatch, match="changed upstream"):
        store.pull("tiny:pinned-wrong")
    assert hub.served[hub.key(REPO, "Tiny-Q8_0.gguf")] == served


def test_cancel_keeps_the_partial_for_resume(tmp_path: Path, hub: HubServer) -> None:
    store = make_store(tmp_path, hub)
    store.progress_interval_s = 0.0
    hub.throttle_s = 0.01
    cancel = threading.Event()

    def progress(p) -> None:
        if p.bytes_done >= 500_000:
            cancel.set()

    with pytest.raises(PullCancelled):
        store.pull(f"hf.co/{REPO}:Q4_K_M", progress=progress, cancel=cancel)
    folder = store.model_dir(f"hf.co/{REPO}:Q4_K_M")
    part = next(p for p in folder.iterdir() if p.name.endswith(".part"))
    kept = part.stat().st_size
    assert 500_000 <= kept < SIZE and store.list() == []
    hub.throttle_s = 0.0
    assert store.pull(f"hf.co/{REPO}:Q4_K_M").primary_path.read_bytes() == DATA
    last = [r for r in hub.requests if r["path"].endswith(FILE)][-1]
    assert last["range"] == f"bytes={kept}-" and last["status"] == 206
    assert last["sent"] == SIZE - kept, "only the remainder is downloaded"


PULL_SCRIPT = """
import json, sys
from kronk.settings import Settings
from kronk.store import ModelStore
home, models, endpoint, ref = sys.argv[1:5]
store = ModelStore(Settings(home=home, models_dir=models, hf_endpoint=endpoint))
print("ready", flush=True)
m = store.pull(ref)
print(json.dumps({"path": str(m.primary_path), "name": m.name}), flush=True)
"""


def test_two_processes_pull_the_same_model_once(tmp_path: Path, hub: HubServer) -> None:
    key = hub.key(REPO, FILE)
    hold = hub.hold(REPO, FILE, after=1_000_000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(tmp_path / "home"), str(tmp_path / "shared models"), hub.url, f"hf.co/{REPO}:Q4_K_M"]
    procs = [
        subprocess.Popen([sys.executable, "-c", PULL_SCRIPT, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        for _ in range(2)
    ]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        assert hold.reached.wait(30), "one process must be mid-download"
        time.sleep(0.5)  # the other one is waiting on the lock by now
        assert hub.served[key] == 1_000_000
        hold.release.set()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    assert Path(results[0]["path"]).read_bytes() == DATA
    assert hub.served[key] == SIZE, "downloaded once"
    api_calls = [r for r in hub.requests if r["path"].startswith("/api/models/")]
    assert len(api_calls) == 1, "the second process found the model present"


# ---------------------------------------------------------------------- jobs


def test_second_start_joins_the_running_job(tmp_path: Path, hub: HubServer) -> None:
    mgr = PullJobManager(store=make_store(tmp_path, hub))
    hold = hub.hold(REPO, FILE, after=500_000)
    job = mgr.start(f"hf.co/{REPO}:Q4_K_M")
    assert hold.reached.wait(10)
    until(lambda: job.snapshot()["bytes_done"] > 0, 10, "the first bytes", 0.02)
    again = mgr.start(f"huggingface.co/{REPO}:q4_k_m")
    assert again is job and [j.id for j in mgr.list()] == [job.id]
    snap = json.loads(json.dumps(mgr.get(job.id).snapshot()))
    assert snap["status"] == "running" and snap["model"] == f"hf.co/{REPO}:Q4_K_M"
    assert snap["bytes_total"] == SIZE and 0 < snap["bytes_done"] <= 500_000
    hold.release.set()
    done = mgr.wait(job.id, timeout=20).snapshot()
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["bytes_done"] == SIZE and done["finished_at"] >= done["started_at"]
    assert done["manifest"]["name"] == f"hf.co/{REPO}:Q4_K_M" and str(mgr.store.root) not in json.dumps(done)
    assert mgr.store.get(f"hf.co/{REPO}:Q4_K_M").primary_path.read_bytes() == DATA
    assert hub.served[hub.key(REPO, FILE)] == SIZE
    assert mgr.start(f"hf.co/{REPO}:Q4_K_M").id != job.id  # a finished job is not joined


def test_job_outlives_the_thread_that_started_it(tmp_path: Path, hub: HubServer) -> None:
    mgr = PullJobManager(store=make_store(tmp_path, hub))
    hold = hub.hold(REPO, FILE, after=100_000)
    started: list[str] = []
    t = threading.Thread(target=lambda: started.append(mgr.start(f"hf.co/{REPO}:Q4_K_M").id))
    t.start()
    t.join()
    assert not t.is_alive() and hold.reached.wait(10)
    assert mgr.get(started[0]).status == "running"
    hold.release.set()
    assert mgr.wait(started[0], timeout=20).status == "succeeded"
    assert mgr.store.get(f"hf.co/{REPO}:Q4_K_M") is not None


def test_cancel_and_failed_jobs(tmp_path: Path, hub: HubServer) -> None:
    mgr = PullJobManager(store=make_store(tmp_path, hub, hf_token=TOKEN.replace("0", "1")))
    hold = hub.hold(REPO, FILE, after=300_000)
    job = mgr.start(f"hf.co/{REPO}:Q4_K_M")
    assert hold.reached.wait(10)
    assert mgr.cancel(job.id) is True
    hold.release.set()
    snap = mgr.wait(job.id, timeout=20).snapshot()
    assert snap["status"] == "cancelled" and "cancelled" in snap["error"]
    assert mgr.cancel(job.id) is False
    bad = mgr.wait(mgr.start("hf.co/org/Gated-GGUF:Q4_0").id, timeout=20).snapshot()
    assert bad["status"] == "failed" and bad["error"] == GATED_MSG and bad["error_code"] == "gated_repo"
    assert TOKEN.replace("0", "1") not in json.dumps(bad)
    with pytest.raises(InvalidRef):
        mgr.start("not a ref")
    with pytest.raises(KeyError):
        mgr.start("no-such-model:1b")
    assert mgr.get("nope") is None
    with pytest.raises(NotFound):
        mgr.wait("nope", 0.1)
