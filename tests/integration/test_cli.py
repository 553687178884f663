"""The `kronk` CLI, run as a subprocess: settings precedence, bad input, pulls, and a real server.

Every test has its own KRONK_HOME; client commands get a KRONK_URL with nobody behind it unless
they are meant to talk to the test's server, so nothing here touches another server. The one
server test starts a detached server with every engine flag set while the environment says
otherwise, checks what the server really does, and stops it, leaving no process and no port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from kronk.settings import DEFAULT_MODEL
from kronk.store.refs import store_dirname
from tests.hubserver import HubServer, make_gguf
from tests.integration.cli_utils import (
    KRONK,
    ROOT,
    alive,
    clean_env,
    free_port,
    get_json,
    kill_session,
    kronk,
    kronk_json,
    port_open,
    session_members,
)
from tests.processes import thread_nices
from tests.waiting import until

REPO = "org/Tiny-GGUF"
FILE = "Tiny-Q4_K_M.gguf"
SIZE = 3_000_000
DATA = make_gguf(SIZE)
REF = f"hf.co/{REPO}/{FILE}"
TOKEN = "hf_TopSecret_cli_token_987654321"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def hub():
    server = HubServer(chunk_size=64 * 1024)
    server.add_repo(REPO, {FILE: DATA, "Tiny-Q8_0.gguf": make_gguf(200_000, seed=1)})
    with server:
        yield server


def _one_clear_line(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, p.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])


# ---------------------------------------------------------------------- help and bad input


def test_help_lists_the_commands_and_flags(home: Path) -> None:
    env = clean_env(home)
    top = kronk("--help", env=env, check=0).stdout
    for cmd in ("server", "model", "catalog", "chat", "config"):
        assert cmd in top
    start = kronk("server", "start", "--help", env=env, check=0).stdout
    for flag in ("--host", "--port", "--home", "--models-dir", "--config", "--model", "--parallel", "--ctx-size",
                 "--kv-cache-type", "--gpu-layers", "--min-replicas", "--max-replicas", "--address", "--detach",
                 "--http-front", "KRONK_MODELS_DIR"):
        assert flag in start, flag


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["server", "start", "--port", "abc"], ["--port", "'abc' is not a valid integer"]),
        (["server", "start", "--port", "70000"], ["--port", "70000"]),
        (["server", "start", "--kv-cache-type", "q9"], ["--kv-cache-type", "q8_0"]),
        (["server", "start", "--no-such-flag"], ["--no-such-flag"]),
        (["server", "start", "--model", "nosuchmodel"], ["unknown model 'nosuchmodel'", "kronk catalog list"]),
        (["server", "start", "--config", "/nonexistent/kronk.yaml"], ["/nonexistent/kronk.yaml", "does not exist"]),
        (["server", "start", "--http-front", "replica", "--max-replicas", "3"],  # routed by prefix (the default)
         ["--http-front replica", "prefix_routing false", "--http-front proxy"]),
        (["server", "start", "--http-front", "replica", "--max-replicas", "3", "--prefix-routing", "false"],
         ["--http-front replica", "fixed replica count", "--http-front proxy"]),
        (["server", "start", "--http-front", "sideways"], ["--http-front", "sideways"]),
        (["model", "show", "nosuchmodel"], ["nosuchmodel", "not installed", "kronk model pull"]),
        (["model", "rm", "nosuchmodel"], ["nosuchmodel", "not installed"]),
        (["model", "pull", "nosuchmodel"], ["nosuchmodel", "catalog"]),
        (["catalog", "show", "nosuchmodel"], ["nosuchmodel", "kronk catalog list"]),
        (["chat", "nosuchmodel"], ["unknown model 'nosuchmodel'"]),
        (["catalog", "list", "--family", "nofamily"], ["nofamily", "gemma3"]),
        (["catalog", "list", "--capability", "flying"], ["--capability", "flying"]),
        (["server", "start", "--host", "0.0.0.0"], ["refusing to serve on 0.0.0.0", "no API keys",
                                                    "kronk key create", "--insecure"]),
        (["key", "revoke", "nosuchkey"], ["nosuchkey", "kronk key list"]),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(home: Path, args: list[str], words: list[str]) -> None:
    _one_clear_line(kronk(*args, env=clean_env(home)), *words)


def test_uncreatable_models_dir_and_bad_env_values_exit_2(tmp_path: Path, home: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    p = kronk("server", "start", "--models-dir", str(blocker / "models"), env=clean_env(home))
    _one_clear_line(p, str(blocker / "models"), "--models-dir")
    p = kronk("server", "start", env=clean_env(home, KRONK_PORT="eighty"))
    _one_clear_line(p, "'eighty'", "port", "KRONK_PORT")
    p = kronk("config", "show", env=clean_env(home, KRONK_KV_CACHE_TYPE="q9"))
    _one_clear_line(p, "kv_cache_type", "KRONK_KV_CACHE_TYPE")


# ---------------------------------------------------------------------- settings precedence


def _settings(out: dict) -> dict[str, dict]:
    return {r["setting"]: r for r in out["settings"]}


def test_precedence_flag_over_env_over_config_over_default(tmp_path: Path, home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(
        "port: 9100\nparallel: 7\nctx_size: 2048\nkv_cache_type: q4_0\nmodels_dir: /tmp/from-config\n"
    )
    env = clean_env(home, KRONK_PORT="9200", KRONK_KV_CACHE_TYPE="q8_0", KRONK_PARALLEL="5")
    s = _settings(kronk_json("config", "show", "--json", "--parallel", "3", env=env))
    assert (s["parallel"]["value"], s["parallel"]["source"]) == (3, "flag --parallel")
    assert (s["port"]["value"], s["port"]["source"]) == (9200, "env KRONK_PORT")
    assert (s["kv_cache_type"]["value"], s["kv_cache_type"]["source"]) == ("q8_0", "env KRONK_KV_CACHE_TYPE")
    assert (s["ctx_size"]["value"], s["ctx_size"]["source"]) == (2048, f"config {home / 'config.yaml'}")
    assert s["models_dir"]["value"] == "/tmp/from-config"
    assert (s["batch_size"]["value"], s["batch_size"]["source"]) == (512, "default")
    assert s["models_dir"]["flag"] == "--models-dir" and s["models_dir"]["env"] == "KRONK_MODELS_DIR"
    # --config (and KRONK_CONFIG) pick another file; the env still beats it
    other = tmp_path / "other.yaml"
    other.write_text("port: 9300\nctx_size: 4096\n")
    for args, extra in ((["--config", str(other)], {}), ([], {"KRONK_CONFIG": str(other)})):
        s = _settings(kronk_json("config", "show", "--json", *args, env={**env, **extra}))
        assert s["ctx_size"]["value"] == 4096 and s["ctx_size"]["source"] == f"config {other}"
        assert s["port"]["value"] == 9200 and s["parallel"]["value"] == 5
    # --home finds that home's config.yaml
    s = _settings(kronk_json("config", "show", "--json", "--home", str(home), env=clean_env(tmp_path / "elsewhere")))
    assert s["ctx_size"]["value"] == 2048 and s["home"]["source"] == "flag --home"
    # the plain-text view shows the same
    text = kronk("config", "show", env=env, check=0).stdout
    assert "env KRONK_PORT" in text and "config" in text


def test_config_show_never_prints_the_token(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(f"hf_token: {TOKEN}\napi_keys: ['{TOKEN}-key']\n")
    for env in (clean_env(home), clean_env(home, KRONK_HF_TOKEN=TOKEN), clean_env(home, HF_TOKEN=TOKEN)):
        for args in ((), ("--json",)):
            p = kronk("config", "show", *args, env=env, check=0)
            assert TOKEN not in p.stdout + p.stderr
            assert "********" in p.stdout
    # a bad value next to a secret: the error names the setting, never the secret
    p = kronk("config", "show", env=clean_env(home, KRONK_API_KEYS='["' + TOKEN))  # broken JSON list
    assert p.returncode == 2 and TOKEN not in p.stdout + p.stderr and "api_keys" in p.stderr


# ---------------------------------------------------------------------- model store, no server


def test_pull_progress_on_stderr_repeat_is_a_noop_and_list_json(home: Path, hub: HubServer) -> None:
    env = clean_env(home, KRONK_HF_ENDPOINT=hub.url)
    hub.throttle_s = 0.03
    p = kronk("model", "pull", REF, env=env, check=0)
    assert "%" in p.stderr and REF in p.stderr, p.stderr  # progress lines on stderr
    assert "%" not in p.stdout and p.stdout.startswith("pulled"), p.stdout
    models = kronk_json("model", "list", "--json", env=env)
    assert [m["name"] for m in models] == [REF]
    assert Path(models[0]["path"]).read_bytes() == DATA and models[0]["served"] is False
    n = len(hub.requests)
    p = kronk("model", "pull", REF, env=env, check=0)
    assert "already present" in p.stdout and len(hub.requests) == n, "a repeated pull touches nothing"
    shown = kronk_json("model", "show", REF, "--json", env=env)
    assert shown["size_bytes"] == SIZE
    assert kronk("model", "check", env=env, check=0).stdout.startswith("ok")
    kronk("model", "rm", REF, env=env, check=0)
    assert kronk_json("model", "list", "--json", env=env) == []


def test_ctrl_c_stops_a_pull_and_the_same_command_resumes(home: Path, hub: HubServer) -> None:
    env = clean_env(home, KRONK_HF_ENDPOINT=hub.url)
    hub.throttle_s = 0.05
    proc = subprocess.Popen([*KRONK, "model", "pull", REF], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        folder = home / "models"
        parts = lambda: [p for p in folder.rglob("*.part") if p.stat().st_size >= 300_000]  # noqa: E731
        until(parts, 30, "the download to start")
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, errs)
    assert "resume" in errs
    kept = parts()[0].stat().st_size
    assert kept < SIZE
    hub.throttle_s = 0.0
    kronk("model", "pull", REF, env=env, check=0)
    last = [r for r in hub.requests if r["path"].endswith(FILE)][-1]
    assert last["status"] == 206 and last["range"].startswith("bytes=")
    assert last["sent"] < SIZE, "only the remainder is downloaded"
    assert any((home / "models").rglob(FILE))


def test_catalog_list_json_and_filters(home: Path) -> None:
    env = clean_env(home)
    entries = kronk_json("catalog", "list", "--json", env=env)
    assert any(e["name"] == "gemma3-270m" for e in entries)
    gemma = kronk_json("catalog", "list", "--json", "--family", "gemma3", env=env)
    assert gemma and all(e["family"] == "gemma3" for e in gemma)
    vision = kronk_json("catalog", "list", "--json", "--capability", "vision", env=env)
    assert vision and all("vision" in e["capabilities"] for e in vision)
    assert "gemma3-270m" in kronk("catalog", "show", "gemma3-270m", env=env, check=0).stdout


# ---------------------------------------------------------------------- API keys


def test_key_create_list_revoke_keep_secrets_out_of_listings(home: Path) -> None:
    env = clean_env(home)
    key = kronk("key", "create", "--name", "ci", "--rpm", "60", env=env, check=0).stdout.strip()
    assert key.startswith("kronk-")
    keys_file = home / "keys.json"
    assert keys_file.stat().st_mode & 0o777 == 0o600 and key not in keys_file.read_text()
    hashes = [r["hash"] for r in json.loads(keys_file.read_text())["keys"]]
    listing = kronk("key", "list", env=env, check=0).stdout
    assert "ci" in listing and "60" in listing and key not in listing and not any(h in listing for h in hashes)
    assert {r["name"] for r in kronk_json("key", "list", "--json", env=env)} == {"ci", "local-admin"}
    assert kronk("key", "revoke", "ci", env=env, check=0).stdout.startswith("revoked ci")
    assert {r["name"] for r in kronk_json("key", "list", "--json", env=env)} == {"local-admin"}


@pytest.mark.slow
def test_a_keyed_server_is_reached_by_the_cli_without_typing_a_key(home: Path) -> None:
    """Keys on: loopback clients need one too; the server writes the local admin key at start and `kronk`
    commands from its home use it; a key made or revoked while the server runs counts within seconds; a key
    without the admin scope cannot delete models."""
    setting_key = "kronk-from-the-api-keys-setting"
    env = clean_env(home, KRONK_API_KEYS=setting_key)
    # the CLI's side: no key anywhere, the server found through <home>/server.json
    client_env = {k: v for k, v in env.items() if k not in ("KRONK_URL", "KRONK_API_KEYS")}
    local = home / "local-admin.key"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pid = None
    try:
        p = kronk("server", "start", "--detach", "--port", str(port), "--parallel", "1", "--ctx-size", "512",
                  env=env, timeout=400, check=0)
        assert p.stdout.strip() == url
        pid = json.loads((home / "server.pid").read_text())
        assert local.stat().st_mode & 0o777 == 0o600

        def status(key: str | None = None, method: str = "GET", path: str = "/v1/models") -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.request(method, url + path, headers=headers, timeout=30, trust_env=False).status_code

        assert status() == 401  # from loopback, too
        assert status("kronk-not-a-key") == 401 and status(setting_key) == 200
        assert get_json(url + "/health")["models"] == [DEFAULT_MODEL]

        # no key typed: the CLI uses the local admin key
        listed = kronk_json("model", "list", "--json", env=client_env)
        assert [(m["name"], m["served"]) for m in listed] == [(DEFAULT_MODEL, True)]
        assert kronk_json("server", "status", "--json", env=client_env)["running"]
        p = kronk("model", "rm", "nosuchmodel", env=client_env)  # admin scope: the route answers for itself
        assert p.returncode == 2 and "not installed" in p.stderr, p.stderr
        # ...and a wrong key given explicitly is refused, with a hint
        p = kronk("model", "list", env={**client_env, "KRONK_API_KEY": "kronk-wrong"})
        assert p.returncode == 1 and "KRONK_API_KEY" in p.stderr, p.stderr

        # created and revoked while it runs (no restart); no admin scope: no removal
        user = kronk("key", "create", "--name", "user", env=client_env, check=0).stdout.strip()
        until(lambda: status(user) == 200, 30, "the new key to be accepted")
        assert status(user, "DELETE", f"/v1/models/{DEFAULT_MODEL}") == 403
        kronk("key", "revoke", "user", env=client_env, check=0)
        until(lambda: status(user) == 401, 30, "the revoked key to be refused")
        assert status(setting_key) == 200

        kronk("server", "stop", env=client_env, timeout=120, check=0)
        assert not alive(pid) and session_members(pid) == []
    finally:
        if pid is not None and session_members(pid):
            kronk("server", "stop", "--timeout", "20", env=client_env, timeout=60)
            kill_session(pid)


# ---------------------------------------------------------------------- a real server


def _kv_bytes_per_cell(kv_type: str) -> float:
    from kronk.engine.kvcache import BYTES_PER_ELEMENT
    from kronk.engine.model import LlamaModel
    from tests.models import smollm_path

    m = LlamaModel(smollm_path(), vocab_only=True)  # the default model's
    arch = m.architecture
    layers, heads = int(m.meta(f"{arch}.block_count")), int(m.meta(f"{arch}.attention.head_count_kv"))
    head_dim = int(m.meta(f"{arch}.embedding_length")) // int(m.meta(f"{arch}.attention.head_count"))
    # a GGUF without key/value lengths (SmolLM2's) has heads of embedding_length / head_count
    k = int(m.meta(f"{arch}.attention.key_length") or head_dim)
    v = int(m.meta(f"{arch}.attention.value_length") or head_dim)
    return layers * heads * (k + v) * BYTES_PER_ELEMENT[kv_type]


@pytest.mark.slow
def test_server_flags_beat_env_then_stop_leaves_nothing(tmp_path: Path, home: Path, hub: HubServer) -> None:
    flag_port, env_port = free_port(), free_port()
    flag_models, env_models = tmp_path / "flag models", tmp_path / "env-models"
    env = clean_env(home, KRONK_PORT=str(env_port), KRONK_MODELS_DIR=str(env_models), KRONK_PARALLEL="2",
                    KRONK_CTX_SIZE="512", KRONK_KV_CACHE_TYPE="f16", KRONK_HF_ENDPOINT=hub.url)
    client_env = {k: v for k, v in env.items() if k != "KRONK_URL"}  # found through <home>/server.json
    url = f"http://127.0.0.1:{flag_port}"
    pid = None
    try:
        p = kronk("server", "start", "--detach", "--port", str(flag_port), "--models-dir", str(flag_models),
                  "--parallel", "3", "--ctx-size", "1024", "--kv-cache-type", "q8_0", "--background-nice", "10",
                  env=env, timeout=400, check=0)
        assert p.stdout.strip() == url
        pid = json.loads((home / "server.pid").read_text())
        assert alive(pid) and os.getsid(pid) == pid

        # the flags won: port, models dir, parallel, ctx size, KV type
        assert not port_open(env_port)
        health = get_json(url + "/health")
        assert health["models"] == [DEFAULT_MODEL]
        stats = get_json(url + "/v1/stats")["models"][DEFAULT_MODEL]["stats"]
        assert stats["n_slots"] == 3 and stats["n_ctx_slot"] == 1024
        assert stats["kv_bytes"] / stats["kv_cells_total"] == pytest.approx(_kv_bytes_per_cell("q8_0"))
        card = next(c for c in get_json(url + "/v1/models")["data"] if c["id"] == DEFAULT_MODEL)
        assert card["context_length"] == 1024
        assert (flag_models / store_dirname(DEFAULT_MODEL) / "manifest.json").is_file() and not env_models.exists()
        # Ray's services yield the CPU to the model (--background-nice); the model's replica keeps its priority
        assert thread_nices("gcs_server", pid) == thread_nices("ray::ServeController", pid) == {10}
        assert thread_nices("ray::ServeReplica:kronk:", pid) == {0}

        # client commands find the server from the home
        status = kronk_json("server", "status", "--json", env=client_env)
        assert status["running"] and status["url"] == url and status["pid"] == pid
        listed = kronk_json("model", "list", "--json", env=client_env)
        assert [(m["name"], m["served"]) for m in listed] == [(DEFAULT_MODEL, True)]
        ps = kronk_json("model", "ps", "--json", "--interval", "0.2", env=client_env)["models"]  # beside "states"
        assert ps[0]["model"] == DEFAULT_MODEL and ps[0]["slots"] == 3

        # chat keeps the history, so the second turn reuses the first one's prefix
        p = kronk("chat", DEFAULT_MODEL, "--max-tokens", "8", "--temperature", "0", env=client_env,
                  input="Hello\nAnd then?\n", timeout=120, check=0)
        reused = [line for line in p.stderr.splitlines() if "reused from cache" in line]
        assert len(reused) == 2 and not reused[1].split(" prompt tokens, ")[1].startswith("0 "), p.stderr
        _one_clear_line(kronk("chat", "nosuchmodel", env=client_env), "nosuchmodel", DEFAULT_MODEL)

        # a pull through the server's model manager: progress on stderr, the file in its models dir
        p = kronk("model", "pull", REF, env=client_env, timeout=120, check=0)
        assert REF in p.stderr and p.stdout.startswith("pulled")
        assert any(flag_models.rglob(FILE))
        assert "already present" in kronk("model", "pull", REF, env=client_env, check=0).stdout
        assert thread_nices("ray::ModelManagerActor", pid) == {10}  # pulls are background work too

        # a second server on the same port is refused up front
        _one_clear_line(kronk("server", "start", "--port", str(flag_port), "--home", str(tmp_path / "h2"),
                              env=env), str(flag_port), "--port")
        assert "kronk" in kronk("server", "logs", env=client_env, check=0).stdout

        kronk("server", "stop", env=client_env, timeout=120, check=0)
        assert not alive(pid)
        assert session_members(pid) == [], "a process of the server outlived it"
        assert not port_open(flag_port)
        assert not (home / "server.pid").exists()
        assert kronk("server", "status", env=client_env).returncode == 1
    finally:
        if pid is not None and session_members(pid):
            kronk("server", "stop", "--timeout", "20", env=client_env, timeout=60)
            kill_session(pid)


@pytest.mark.slow
def test_ctrl_c_on_a_foreground_server_leaves_nothing(tmp_path: Path, home: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group, Ray's helpers included."""
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*KRONK, "server", "start", "--port", str(port)], env=clean_env(home), cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        until(lambda: "kronk: deploying" in log.read_text(), 120, "Ray and Serve to start")
        assert json.loads((home / "server.json").read_text())["pid"] == proc.pid
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        until(lambda: not session_members(proc.pid), 10, "Ray's processes to exit")
        assert not port_open(port)
        assert not (home / "server.json").exists()
        assert "kronk: stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_session(proc.pid)
