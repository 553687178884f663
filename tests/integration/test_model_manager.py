"""The model manager actor on a real local Ray cluster, pulling from a local fake hub.

A first client (a separate driver process) starts a pull and exits; a second one
(this test) finds the same named actor, watches the job's progress, joins it,
and gets the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from deployments.board import get_board
from deployments.model_manager import ACTOR_NAME, NAMESPACE, get_or_create_model_manager
from kronk.settings import Settings
from kronk.store import ModelNotFound
from tests.hubserver import HubServer, make_gguf
from tests.processes import processes_named, thread_nices
from tests.waiting import until

pytestmark = pytest.mark.slow

REPO = "org/Tiny-GGUF"
FILE = "Tiny-Q4_K_M.gguf"
SIZE = 2_000_000
ROOT = Path(__file__).resolve().parents[2]

FIRST_CLIENT = """
import json, sys, ray
from deployments.model_manager import get_or_create_model_manager
ray.init(address=sys.argv[1], namespace="kronk-client", log_to_driver=False)
mm = get_or_create_model_manager(json.loads(sys.argv[2]))
job = ray.get(mm.pull.remote(sys.argv[3]))
print(json.dumps(job), flush=True)
ray.shutdown()
"""


@pytest.fixture(scope="module")
def ray_cluster():
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KRONK_HF_TOKEN", "HF_ENDPOINT"):
        os.environ.pop(var, None)
    ctx = ray.init(num_cpus=2, include_dashboard=False, namespace="kronk-test", log_to_driver=False)
    try:
        yield ctx
    finally:
        ray.shutdown()


@pytest.fixture
def hub():
    server = HubServer()
    server.add_repo(REPO, {FILE: make_gguf(SIZE), "Tiny-Q8_0.gguf": make_gguf(300_000, seed=1)})
    with server:
        yield server


def test_pull_through_the_actor_seen_by_another_client(ray_cluster, hub: HubServer, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", models_dir=tmp_path / "models dir", hf_endpoint=hub.url)
    hold = hub.hold(REPO, FILE, after=500_000)
    ref = f"hf.co/{REPO}:Q4_K_M"
    mm = None
    try:
        # first client: another driver process starts the pull, then exits
        out = subprocess.run(
            [sys.executable, "-c", FIRST_CLIENT, ray_cluster.address_info["address"],
             json.dumps(settings.to_args()), ref],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        started = json.loads(out.stdout.strip().splitlines()[-1])
        assert started["status"] in ("queued", "running") and started["model"] == ref

        # second client: the same named actor, found by name
        mm = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
        assert get_or_create_model_manager(settings.to_args())._actor_id == mm._actor_id
        assert hold.reached.wait(30), "the pull goes on after its caller exited"
        snap = until(lambda: (s := ray.get(mm.job.remote(started["id"])))["bytes_done"] > 0 and s, 30,
                     "the first bytes")
        assert snap["status"] == "running" and snap["bytes_total"] == SIZE and snap["bytes_done"] <= 500_000
        assert ray.get(mm.pull.remote(f"huggingface.co/{REPO}:q4_k_m"))["id"] == started["id"]  # joins
        assert [j["id"] for j in ray.get(mm.jobs.remote())] == [started["id"]]
        hold.release.set()
        done = ray.get(mm.wait.remote(started["id"], 60))
        assert done["status"] == "succeeded", done["error"]
        assert done["bytes_done"] == SIZE and hub.served[hub.key(REPO, FILE)] == SIZE
        # a pull is background work: the actor's process, all its threads, yield the CPU to the models
        assert len(processes_named("ray::ModelManagerActor")) == 1
        assert thread_nices("ray::ModelManagerActor") == {19}

        # the manager's numbers reach the stats board (Ray's GCS key-value store), where /metrics reads them
        def pulls_on_board() -> float:
            return sum(s["value"] for snap in get_board().all() if snap["component"] == "manager"
                       for s in snap["series"] if s["name"] == "kronk_pull_jobs_total"
                       and s["labels"].get("status") == "succeeded")
        until(lambda: pulls_on_board() == 1, 30, "the succeeded pull on the board")
        models = ray.get(mm.list_models.remote())
        assert [m["name"] for m in models] == [ref] and "path" not in models[0]  # plain data, no path
        loaded = ray.get(mm.resolve.remote(ref))  # the path to load: only for whoever loads it
        assert Path(loaded).stat().st_size == SIZE
        assert " " in loaded  # the models dir with a space was used

        # resolve pulls what is missing (blocking) and returns the path to load
        path = ray.get(mm.resolve.remote({"name": "small", "source": f"hf.co/{REPO}:Q8_0"}))
        assert Path(path).stat().st_size == 300_000
        assert ray.get(mm.resolve.remote(ref)) == loaded
        with pytest.raises(ModelNotFound):
            ray.get(mm.resolve.remote("no-such-model:1b"))
        assert {e["name"] for e in ray.get(mm.catalog.remote("gemma3"))} >= {"gemma3-270m", "gemma3:1b"}
        assert ray.get(mm.remove.remote(ref)) is True
        assert [m["name"] for m in ray.get(mm.list_models.remote())] == [f"hf.co/{REPO}:Q8_0"]
    finally:
        hold.release.set()
        if mm is not None:
            ray.kill(mm)
