"""The foreground server: Ray (local or joined), the Serve application, and a clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

from kronk.cli import procs
from kronk.cli.common import err, fail
from kronk.settings import Settings

log = logging.getLogger("kronk.server")


class _Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM to unwind into the shutdown."""


def validate_models(settings: Settings) -> None:
    """Every --model is a catalog name, a model in the store, an hf.co reference or an existing .gguf (exit 2)."""
    from kronk.catalog import Catalog
    from kronk.store import InvalidRef, ModelStore, parse_ref

    catalog = Catalog.load(settings)
    store = ModelStore(settings, catalog=catalog)
    for m in settings.models:
        src = m.model_source
        try:
            ref = parse_ref(src)
        except InvalidRef as e:
            fail(f"model {m.name}: {e.message}")
        if ref.kind == "local":
            if ref.path is None or not ref.path.is_file():
                fail(f"model file {src} does not exist; give the path of a .gguf file")
        elif ref.kind == "catalog" and src not in catalog and store.get(src) is None:
            close = [e.name for e in catalog.list() if src.split(":")[0] in e.name][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            fail(f"unknown model {src!r}{hint}; see `kronk catalog list` for names, or give "
                 "hf.co/<org>/<repo>:<QUANT> or a .gguf path")


def local_admin_key(settings: Settings) -> None:
    """With keys on, the local admin key (<home>/local-admin.key, 0600), so that `kronk` commands on this machine
    reach the server with no key typed (docs/security.md)."""
    from kronk.security.keys import KeyFileError, KeyStore, keys_configured

    try:
        if keys_configured(settings):
            store = KeyStore(settings.home)
            store.ensure_local_admin_key()
            err(f"kronk: API keys are on; `kronk` commands from this home use the local admin key "
                f"({store.local_key_path})")
    except (KeyFileError, OSError) as e:
        fail(f"{e}", 1)


def _install_signals(state: dict[str, Any]) -> None:
    def handler(signum: int, frame: Any) -> None:
        if state.get("stopping"):
            # a second Ctrl-C: do not wait for a graceful shutdown
            err("kronk: forced exit")
            procs.kill_all(procs.descendants(os.getpid()))
            os._exit(130)
        state["stopping"] = True
        if state.get("raise", True):
            raise _Stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_server(settings: Settings, url: str, start_timeout: float, detached: bool,
               config_path: str | None) -> int:
    """Start Ray + the Serve app (deployments.launch), block until SIGINT/SIGTERM, then stop everything.
    Returns the exit code."""
    # Ray's worker processes inherit these, so replicas read the same home and config file.
    os.environ["KRONK_HOME"] = str(settings.home)
    if config_path:
        os.environ["KRONK_CONFIG"] = str(config_path)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    local_admin_key(settings)
    procs.write_info(settings.home, {
        "pid": os.getpid(), "url": url, "host": settings.host, "port": settings.port,
        "home": str(settings.home), "models_dir": str(settings.models_path),
        "models": [m.name for m in settings.models], "address": settings.address,
        "detached": detached, "log": str(procs.log_path(settings.home)) if detached else None,
        "started_at": time.time(),
    })
    state: dict[str, Any] = {}
    launch = None
    code = 0
    _install_signals(state)
    try:
        from deployments.launch import Launch

        launch = Launch(settings, start_timeout_s=start_timeout, url=url, log_to_driver=True,
                        say=lambda line: err(f"kronk: {line}"))
        launch.start()
        names = ", ".join(m.name for m in settings.models)
        err(f"kronk: serving {names} at {url} (Ctrl-C or `kronk server stop` to stop)")
        print(url, flush=True)
        while True:
            time.sleep(3600)
    except _Stop:
        code = 0
    except Exception as e:
        err(f"kronk: the server failed to start: {e}")
        code = 1
    finally:
        state["stopping"] = True
        state["raise"] = False
        try:
            if launch is not None:
                launch.stop()
        finally:
            procs.clear_info(settings.home, os.getpid())
        err("kronk: stopped")
    return code
